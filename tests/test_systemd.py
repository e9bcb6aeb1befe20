"""systemd's notify protocol: a datagram socket stands in for systemd."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.systemd import Notifier
from tests.conftest import REPO, needs_root_v1
from tests.helpers import agent_files, mission_doc, partition, wait_for_sync, workload


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.05)
    yield s, path
    s.close()


def received(s: socket.socket, seconds: float) -> list[tuple[float, str]]:
    out, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            out.append((time.monotonic(), s.recv(4096).decode()))
        except TimeoutError:
            continue
    return out


def test_the_environment_decides_and_garbage_disables_quietly(
        systemd: tuple[socket.socket, str]) -> None:
    s, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}, pid=42)
    assert n.watchdog_s == 0.4 and n.ready("flying m generation 1")
    assert n.watchdog() and n.stopping()
    n.close()
    got = [m for _, m in received(s, 0.2)]
    assert got[0].split("\n")[:2] == ["READY=1", "STATUS=flying m generation 1"]
    assert got[1:] == ["WATCHDOG=1", "STOPPING=1\nSTATUS=stopping"]
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000",
                     "WATCHDOG_PID": "7"}, pid=42).watchdog_s is None  # not ours
    for env in ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "-5"},
                {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "ten"},
                {"NOTIFY_SOCKET": "relative/path", "WATCHDOG_USEC": "100"}):
        assert Notifier(env).watchdog_s is None
    assert not Notifier({}).enabled and not Notifier({}).ready("x")
    gone = Notifier({"NOTIFY_SOCKET": str(Path(path).with_name("nobody"))})
    assert not gone.ready("x") and not gone.ready("x") and gone.failed == 2
    gone.close()


def test_the_abstract_namespace_is_reached() -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"sortie-test-{os.getpid()}"
    s.bind("\0" + name)
    s.settimeout(1)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    try:
        assert n.status("hello")
        assert s.recv(100) == b"STATUS=hello"
    finally:
        n.close()
        s.close()


@needs_root_v1
def test_the_agent_is_ready_pets_from_its_loop_and_goes_silent_when_frozen(
        tmp_path: Path, prefix: str, systemd: tuple[socket.socket, str]) -> None:
    s, path = systemd
    logs = Path(f"/tmp/{prefix}-logs")
    cfg = agent_files(tmp_path, prefix, logs, mission_doc(
        partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]), name="demo"))
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg),
                              "--teardown"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        first = wait_for_sync(lambda: received(s, 0.1) or None, 20)
        ready = first[0][1]
        assert ready.startswith("READY=1\nSTATUS=flying demo generation 1"), ready
        pets = [t for t, m in received(s, 2.0) if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pets)]
        assert 7 <= len(pets) <= 13 and max(gaps) < 0.4, gaps  # every 200 ms
        agent.send_signal(signal.SIGSTOP)  # a hung agent: nobody pets for it
        received(s, 0.1)  # one already in flight
        assert [m for _, m in received(s, 1.0) if m == "WATCHDOG=1"] == []
        agent.send_signal(signal.SIGCONT)
        assert [m for _, m in received(s, 0.6) if m == "WATCHDOG=1"]
        agent.send_signal(signal.SIGTERM)
        last = [m for _, m in received(s, 3.0)]
        assert any(m.startswith("STOPPING=1") for m in last), last
        assert agent.wait(15) == 0
    finally:
        if agent.poll() is None:
            agent.send_signal(signal.SIGCONT)
            agent.kill()
            agent.wait()
        import shutil
        shutil.rmtree(logs, ignore_errors=True)


async def test_a_change_stuck_under_the_lock_stops_the_petting(
        systemd: tuple[socket.socket, str]) -> None:
    import asyncio

    from agent.daemon import pet
    from agent.engine.locking import WriterLock
    _, path = systemd
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    lock = WriterLock(time.monotonic)
    task = asyncio.create_task(pet(n, lock, 0.1))
    try:
        await asyncio.sleep(0.32)
        before = n.sent
        assert before >= 4
        async with lock.held():  # a reconcile that hangs
            await asyncio.sleep(0.4)
            stuck = n.sent
        assert stuck - before <= 2  # petted only while held less than one period
        await asyncio.sleep(0.2)
        assert n.sent > stuck  # free again: petting resumes
    finally:
        task.cancel()
        n.close()
