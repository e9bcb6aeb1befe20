"""The job-report sockets: a workload reports for itself alone; nobody else can speak for
it (another user, another cgroup, a look-alike cgroup path) or drown it."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
import time
from pathlib import Path

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.health.reports import RATE_PER_S
from agent.models import AgentConfig, HardwareProfile
from agent.status import Origin
from tests.conftest import CGROUP_ROOT, needs_root_v1
from tests.helpers import mission, partition, wait_for, workload

ORIGIN = Origin("config")

pytestmark = needs_root_v1

REPORTER = ("import os, socket, sys, time\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "s.sendto(b'job 100 10000', os.environ['SORTIE_REPORT_SOCKET'])\n"
            "time.sleep(3600)\n")


async def flying(cfg: AgentConfig, board: HardwareProfile) -> Engine:
    e = Engine(cfg, board, V1Backend(CGROUP_ROOT, cfg.cgroup_prefix), StateStore(cfg.state_dir))
    await e.start()
    d = await e.submit(mission(partition("ctl", crit="A", workloads=[
        workload("loop", command=["/usr/bin/python3", "-c", REPORTER])])), ORIGIN)
    assert d.outcome == "applied", d
    await wait_for(lambda: e.monitor.jobs.get(("ctl", "loop")), 5)
    return e


def send_as(user: str, path: Path, data: bytes, cgroup: Path | None = None,
            count: int = 1) -> subprocess.CompletedProcess[str]:
    """Send from a fresh process: as ``user``, optionally placed in ``cgroup`` first."""
    code = ("import os, socket, sys, pwd\n"
            f"cg = {str(cgroup) if cgroup else None!r}\n"
            "if cg:\n"
            "    open(cg + '/cgroup.procs', 'w').write(str(os.getpid()))\n"
            f"pw = pwd.getpwnam({user!r})\n"
            "os.setgid(pw.pw_gid); os.setuid(pw.pw_uid)\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            "s.setblocking(False)\n"
            "sent = 0\n"
            f"for _ in range({count}):\n"
            "    try:\n"
            f"        s.sendto({data!r}, {str(path)!r}); sent += 1\n"
            "    except BlockingIOError:\n"
            "        pass\n"
            "    except OSError as e:\n"
            "        print('refused', e.errno); sys.exit(0)\n"
            "print('sent', sent)\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


async def test_each_workload_has_its_own_socket_owned_by_its_user(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    e = await flying(agent_config, board)
    try:
        assert e.reports is not None
        path = e.reports.path("ctl", "loop")
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == 65534, "owned by the workload's user (nobody)"
        env = Path(f"/proc/{e.runners['ctl']['loop'].pid}/environ").read_bytes()
        assert f"SORTIE_REPORT_SOCKET={path}".encode() in env
        # another user cannot even send
        res = await asyncio.to_thread(send_as, "daemon", path, b"job 99999 1")
        assert res.stdout.split() == ["refused", "13"], res
    finally:
        await e.shutdown(teardown=True)
    assert not path.exists(), "removed with its workload"


async def test_a_look_alike_cgroup_path_cannot_report(agent_config: AgentConfig,
                                                      board: HardwareProfile,
                                                      prefix: str) -> None:
    """What a user can build in a delegated cgroup of their own: a path that *ends* in
    PREFIX/p-ctl/w-loop. Only the exact path from the hierarchy root is the workload."""
    e = await flying(agent_config, board)
    fake = CGROUP_ROOT / "pids" / prefix / "elsewhere" / prefix / "p-ctl" / "w-loop"
    try:
        fake.mkdir(parents=True)
        assert e.reports is not None
        path = e.reports.path("ctl", "loop")
        before = e.monitor.jobs[("ctl", "loop")].jobs
        res = await asyncio.to_thread(send_as, "nobody", path, b"job 99999 1", fake)
        assert res.stdout.split() == ["sent", "1"], res
        await wait_for(lambda: e.reports.count.rejected >= 1, 3)
        assert e.monitor.jobs[("ctl", "loop")].jobs == before
        assert not e.events.of_kind("health.deadline-miss"), "a fake miss reached the monitor"
    finally:
        for d in (fake, fake.parent, fake.parent.parent, fake.parent.parent.parent):
            if d.exists():
                d.rmdir()  # the sender has exited: empty
        await e.shutdown(teardown=True)


async def test_a_flood_costs_a_bounded_share_and_the_loop_stays_live(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    e = await flying(agent_config, board)
    try:
        assert e.reports is not None
        path = e.reports.path("ctl", "loop")
        flood = asyncio.create_task(asyncio.to_thread(
            send_as, "nobody", path, b"junk", None, 200_000))
        # While it floods, the event loop keeps turning promptly.
        worst = 0.0
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            t0 = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - t0 - 0.01)
        res = await flood
        assert res.returncode == 0, res
        print(f"flood: {res.stdout.strip()}; worst loop lateness {worst * 1000:.1f} ms; "
              f"{e.reports.count}")
        assert e.reports.count.throttled >= 1
        assert e.reports.count.rejected <= RATE_PER_S * 3, e.reports.count
        assert worst < 0.05, f"the loop stalled {worst * 1000:.0f} ms under the flood"
    finally:
        await e.shutdown(teardown=True)
