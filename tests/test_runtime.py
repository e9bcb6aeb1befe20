"""Workload runtime on real cgroups: joins before exec, drops privileges, restarts with
backoff, flags crash loops, stops everything it left, bounds its logs."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.cgroups import PartitionLimits
from agent.cgroups.v1 import V1Backend
from agent.errors import WorkloadError
from agent.events import EventLog
from agent.models import Workload
from agent.runtime import procs, spawnd
from agent.runtime.identity import resolve_identity
from agent.runtime.logs import rotate_if_large
from agent.runtime.spawn import (
    SPAWNER,
    Spawner,
    SpawnRequest,
    _chunks,
    spawn,
    spawn_many,
    spawn_many_async,
)
from agent.runtime.supervisor import RunnerState, WorkloadRunner, backoff_delay_s
from tests.conftest import REPO, needs_root_v1
from tests.helpers import wait_for

LIMITS = PartitionLimits(frozenset({1}), "0", 50_000, 100_000, 0, 64 << 20, 32)


def spec(**kw) -> Workload:
    return Workload.model_validate({"name": "w", "command": ["/bin/sleep", "3600"],
                                    "user": "nobody", **kw})


def test_backoff_doubles_up_to_the_cap() -> None:
    s = spec(restart={"backoff_initial_ms": 100, "backoff_max_ms": 1000})
    assert [backoff_delay_s(s, n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


@pytest.fixture
def part(v1: V1Backend) -> V1Backend:
    v1.apply_partition("p", LIMITS)
    v1.create_workload("p", "w")
    return v1


@pytest.fixture
def logs() -> Path:
    d = Path(f"/tmp/sortie-test-logs-{os.getpid()}")
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def runner(backend: V1Backend, logs: Path, **kw) -> WorkloadRunner:
    return WorkloadRunner("p", spec(**kw), backend, logs, EventLog())


@needs_root_v1
async def test_process_is_in_its_cgroup_from_its_first_instruction(
        part: V1Backend, prefix: str, logs: Path) -> None:
    # The workload's own first action is to print its cgroups: they must already be right.
    r = runner(part, logs, command=["/bin/cat", "/proc/self/cgroup"], restart={"policy": "never"})
    r.start()
    await wait_for(lambda: r.state == RunnerState.STOPPED)
    lines = r.log_file.read_text().splitlines()
    # CPU controllers stop at the partition (one shared budget); the rest have a leaf.
    want = {c: f"/{prefix}/p-p" for c in ("cpu", "cpuacct")}
    want |= {c: f"/{prefix}/p-p/w-w" for c in ("cpuset", "memory", "pids", "freezer")}
    got = {line.split(":")[1]: line.split(":")[2] for line in lines}
    assert {c: got[c] for c in want} == want


@needs_root_v1
async def test_runs_as_the_profile_user_with_its_env(part: V1Backend, logs: Path) -> None:
    r = runner(part, logs, command=["/bin/sh", "-c", "id -u; echo $MODE; pwd"],
               env={"MODE": "cruise"}, working_dir="/tmp", restart={"policy": "never"})
    r.start()
    await wait_for(lambda: r.state == RunnerState.STOPPED)
    uid, mode, cwd = r.log_file.read_text().split()
    assert int(uid) == pwd.getpwnam("nobody").pw_uid and mode == "cruise" and cwd == "/tmp"


@needs_root_v1
async def test_restart_always_with_backoff(part: V1Backend, logs: Path) -> None:
    r = runner(part, logs, command=["/bin/true"],
               restart={"policy": "always", "backoff_initial_ms": 20, "backoff_max_ms": 40,
                        "crash_loop_restarts": 100})
    r.start()
    await wait_for(lambda: r.restarts >= 3)
    await r.stop()
    assert r.last_exit is not None


@needs_root_v1
async def test_on_failure_does_not_restart_a_clean_exit(part: V1Backend, logs: Path) -> None:
    r = runner(part, logs, command=["/bin/true"], restart={"policy": "on-failure"})
    r.start()
    await wait_for(lambda: r.state == RunnerState.STOPPED)
    await asyncio.sleep(0.2)
    assert r.restarts == 0 and r.last_exit is not None and r.last_exit.code == 0


@needs_root_v1
async def test_crash_loop_is_detected_and_reported(part: V1Backend, logs: Path) -> None:
    r = runner(part, logs, command=["/bin/false"],
               restart={"policy": "on-failure", "backoff_initial_ms": 10, "backoff_max_ms": 20,
                        "crash_loop_restarts": 3, "crash_loop_window_s": 10})
    r.start()
    await wait_for(lambda: r.state == RunnerState.CRASH_LOOP)
    assert r.events.of_kind("workload.crash-loop")
    await r.stop()


@needs_root_v1
async def test_stop_kills_what_ignores_sigterm_and_its_children(
        part: V1Backend, logs: Path) -> None:
    script = "trap '' TERM; sleep 3600 & sleep 3600 & wait"
    r = runner(part, logs, command=["/bin/sh", "-c", script], stop_grace_ms=200)
    r.start()
    await wait_for(lambda: len(part.procs("p", "w")) >= 3)
    await r.stop()
    assert part.procs("p", "w") == []
    assert r.events.of_kind("workload.killed")


@needs_root_v1
async def test_start_failure_becomes_an_event_and_backoff(part: V1Backend, logs: Path) -> None:
    r = runner(part, logs, command=["/nonexistent/binary"],
               restart={"policy": "on-failure", "backoff_initial_ms": 10000})
    r.start()
    assert r.state == RunnerState.BACKOFF
    (ev,) = r.events.of_kind("workload.start-failed")
    assert "does not exist" in ev.message
    await r.stop()


@needs_root_v1
async def test_health_check_failures_are_reported_not_acted_on(part: V1Backend,
                                                                 logs: Path) -> None:
    r = runner(part, logs, health_check={"command": ["/bin/false"], "interval_ms": 20,
                                         "timeout_ms": 500, "failure_threshold": 2})
    r.start()
    first = r.pid
    await wait_for(lambda: len(r.events.of_kind("workload.unhealthy")) >= 2)
    ev = r.events.of_kind("workload.unhealthy")[0]
    assert "health check failed 2 times" in ev.message
    assert (ev.partition, ev.workload) == (r.partition, "w")
    # the health monitor decides and the engine restarts: the runner alone never does
    assert r.pid == first and r.restarts == 0 and not r.events.of_kind("workload.restarting")
    await r.stop()


@needs_root_v1
async def test_adopted_process_exit_is_noticed(part: V1Backend, logs: Path) -> None:
    a = runner(part, logs, restart={"policy": "never"})
    a.start()
    pid = a.pid
    assert pid is not None
    a.detach()  # the first agent "dies"
    b = runner(part, logs, restart={"policy": "never"})
    b.adopt(pid)
    os.kill(pid, 9)
    os.waitpid(pid, 0)  # noqa: ASYNC222 - our child here; reaped at once after SIGKILL
    await wait_for(lambda: b.state in (RunnerState.FAILED, RunnerState.STOPPED))
    assert b.last_exit is not None and b.last_exit.code is None  # unknown for an adoptee


@needs_root_v1
async def test_a_workload_inherits_no_descriptor_and_no_new_privileges(
        part: V1Backend, logs: Path) -> None:
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)  # what a careless library in the agent might leave
    try:
        r = runner(part, logs, command=["/bin/sh", "-c",
                                        "ls /proc/self/fd; grep NoNewPrivs /proc/self/status"],
                   restart={"policy": "never"})
        r.start()
        await wait_for(lambda: r.state == RunnerState.STOPPED)
    finally:
        os.close(leak_r)
        os.close(leak_w)
    out = r.log_file.read_text().split()
    fds = sorted(int(x) for x in out[:out.index("NoNewPrivs:")])
    # 0, 1, 2 and the one ls opens to list the directory
    assert fds[:3] == [0, 1, 2] and len(fds) == 4, out
    assert out[-2:] == ["NoNewPrivs:", "1"]


def test_log_rotation_keeps_one_bounded_copy(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    log.write_bytes(b"x" * 6_000 + b"y" * 4096)
    assert rotate_if_large(log, 4096)
    rotated = (tmp_path / "w.log.1").read_bytes()
    assert log.stat().st_size == 0 and rotated == b"y" * 4096, "the newest part is kept"
    assert not rotate_if_large(log, 4096)


def test_a_huge_sparse_log_is_rotated_in_bounded_time(tmp_path: Path) -> None:
    log = tmp_path / "w.log"
    with open(log, "wb") as f:
        f.truncate(1 << 40)  # what a hostile workload can do to its own log: 1 TiB of holes
    import time
    t0 = time.monotonic()
    assert rotate_if_large(log, 1 << 20)
    took = time.monotonic() - t0
    assert (tmp_path / "w.log.1").stat().st_size == 1 << 20 and log.stat().st_size == 0
    assert took < 0.5, took


# -- the spawner -----------------------------------------------------------------------
@needs_root_v1
async def test_workloads_come_from_the_spawner_yet_are_the_agents_children(
        part: V1Backend, logs: Path) -> None:
    r = runner(part, logs, command=["/bin/sh", "-c", "echo $PPID; exit 7"],
               restart={"policy": "never"})
    r.start()
    await wait_for(lambda: r.state == RunnerState.FAILED)
    assert SPAWNER.pid is not None and SPAWNER.broken is None
    # The kernel told us its exit code: the agent is its parent and reaped it.
    assert r.last_exit is not None and r.last_exit.code == 7
    assert int(r.log_file.read_text()) == os.getpid()
    assert procs.parent_pid(SPAWNER.pid) == os.getpid()


@needs_root_v1
async def test_a_dead_spawner_is_replaced_without_failing_a_start(
        part: V1Backend, logs: Path) -> None:
    assert SPAWNER.warm()
    old = SPAWNER.pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await wait_for(lambda: procs.start_ticks(old) is None or not procs.is_alive(old))
    r = runner(part, logs)
    r.start()
    try:
        assert r.state == RunnerState.RUNNING and r.last_error is None
        assert SPAWNER.pid not in (None, old)
        assert r.pid in part.procs("p", "w")
    finally:
        await r.stop()


@needs_root_v1
async def test_a_failed_start_leaves_the_spawner_serving(part: V1Backend, logs: Path) -> None:
    assert SPAWNER.warm()
    before = SPAWNER.pid
    bad = runner(part, logs, working_dir="/nonexistent", restart={"policy": "never"})
    bad.start()
    assert bad.last_error is not None and "chdir /nonexistent" in bad.last_error
    good = runner(part, logs)
    good.start()
    try:
        assert good.state == RunnerState.RUNNING and SPAWNER.pid == before
    finally:
        await good.stop()


@needs_root_v1
def test_without_a_spawner_the_agent_forks_itself_into_the_cgroup(
        part: V1Backend, prefix: str, tmp_path: Path) -> None:
    none = Spawner(python="/nonexistent/python3")
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fds = part.open_join_fds("p", "w")
    try:
        pid = spawn(SpawnRequest(["/bin/cat", "/proc/self/cgroup"],
                                 resolve_identity("nobody", None), "/", {}, fds, log),
                    none)
        _, status = os.waitpid(pid, 0)
    finally:
        for fd in [*fds, log]:
            os.close(fd)
    assert none.broken is not None and "/nonexistent/python3" in none.broken
    assert os.waitstatus_to_exitcode(status) == 0
    groups = {line.split(":")[1]: line.split(":")[2]
              for line in (tmp_path / "log").read_text().splitlines()}
    assert groups["pids"] == f"/{prefix}/p-p/w-w" and groups["cpu"] == f"/{prefix}/p-p"


def test_the_spawner_dies_with_the_agent() -> None:
    with subprocess.Popen(
            [sys.executable, "-c", "import sys, time\nfrom agent.runtime.spawn import SPAWNER\n"
             "assert SPAWNER.warm()\nprint(SPAWNER.pid, flush=True)\ntime.sleep(60)"],
            stdout=subprocess.PIPE, text=True, cwd=REPO) as agent:
        assert agent.stdout is not None
        spawner = int(agent.stdout.readline())
        assert procs.parent_pid(spawner) == agent.pid
        agent.kill()
    deadline = time.monotonic() + 5
    while procs.is_alive(spawner):
        assert time.monotonic() < deadline, "the spawner outlived its agent"
        time.sleep(0.01)


@needs_root_v1
def test_a_batch_starts_side_by_side_and_one_bad_start_fails_alone(
        part: V1Backend, prefix: str, tmp_path: Path) -> None:
    part.apply_partition("p", replace(LIMITS, pids_max=200))  # 40 at once, and their shells
    nobody = resolve_identity("nobody", None)
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                  0o644)
    opened = [log]
    reqs = []
    for i in range(40):  # more than one message's descriptors (7 each on this host)
        fds = part.open_join_fds("p", "w")
        opened += fds
        reqs.append(SpawnRequest(["/bin/sh", "-c", "echo $$ $PPID $(cat /proc/self/cgroup |"
                                  " grep :pids:)"], nobody,
                                 "/nonexistent" if i == 17 else "/", {}, fds, log))
    try:
        got = spawn_many(reqs)
    finally:
        for fd in opened:
            os.close(fd)
    bad = got[17]
    assert isinstance(bad, WorkloadError) and "chdir /nonexistent" in str(bad)
    pids = [p for i, p in enumerate(got) if i != 17]
    assert all(isinstance(p, int) for p in pids)
    for pid in pids:
        os.waitpid(pid, 0)  # ours to reap, every one
    lines = (tmp_path / "log").read_text().splitlines()
    assert sorted(int(line.split()[0]) for line in lines) == sorted(pids)
    assert {line.split()[1] for line in lines} == {str(os.getpid())}
    assert {line.split(":")[-1] for line in lines} == {f"/{prefix}/p-p/w-w"}


def test_batches_split_where_one_message_cannot_carry_the_descriptors() -> None:
    nobody = resolve_identity("nobody", None)
    reqs = [SpawnRequest(["/bin/true"], nobody, "/", {}, list(range(6)), 0)
            for _ in range(50)]
    sizes = [len(c) for c in _chunks(reqs, into_cgroup=False)]
    assert sizes == [36, 14] and 36 * 7 <= spawnd.MAX_FDS < 37 * 7
    v2 = [SpawnRequest(["/bin/true"], nobody, "/", {}, [3], 0, cgroup_fd=4)
          for _ in range(130)]
    assert [len(c) for c in _chunks(v2, into_cgroup=True)] == [64, 64, 2]


@needs_root_v1
async def test_a_converges_starts_leave_the_loop_free_and_a_start_meanwhile_forks(
        part: V1Backend, tmp_path: Path) -> None:
    nobody = resolve_identity("nobody", None)
    log = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
                  0o644)
    opened = [log]

    def req() -> SpawnRequest:
        fds = part.open_join_fds("p", "w")
        opened.extend(fds)
        return SpawnRequest(["/bin/sh", "-c", "echo $PPID"], nobody, "/", {}, fds, log)
    try:
        assert SPAWNER.warm()
        batch = asyncio.create_task(  # noqa: RUF006 - awaited below
            spawn_many_async([req() for _ in range(8)]))
        await asyncio.sleep(0)  # the batch is posted; its answers are due on the loop
        assert not batch.done()
        # A start that cannot wait for the loop meanwhile: the agent forks itself.
        alone = spawn(req())
        started = await batch
    finally:
        for fd in opened:
            os.close(fd)
    assert all(isinstance(p, int) for p in started)
    for pid in [alone, *started]:
        os.waitpid(pid, 0)  # noqa: ASYNC222 - exited /bin/sh, ours to reap
    assert (tmp_path / "log").read_text().split() == [str(os.getpid())] * 9
    assert SPAWNER.pid is not None
