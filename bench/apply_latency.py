"""Desired-state change -> workload running in its cgroup, against cgroup-tools.

Agent: Engine.submit() of a mission that adds one partition (quota, cpuset, memory, pids)
with one workload; the clock stops when the workload's PID is in the partition's
cgroup.procs. Peers, interleaved in the same run: the floor (``bench/spawn_floor.py``: the
same placement, limits read back, user dropped, exec, by the leanest code, in a small
interpreter of its own), and cgcreate + cgset + cgexec placing the same process with the
same limits, timed until its PID shows in cgroup.procs.
Run as root on a cgroup v1 host:  .venv/bin/python -m bench.apply_latency [N [QUIET_MS]]
(QUIET_MS, default 50: the pause before every placement; 0 runs them back to back.)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.runtime.spawn import SPAWNER
from agent.status import Origin
from bench._util import row, summary
from tests.conftest import CGROUP_ROOT, purge_prefix

ORIGIN = Origin("config")

BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})
CONTROLLERS = "cpu,cpuacct,cpuset,memory,pids"
QUIET_S = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.05
"""Before every measured placement: each starts from a quiet kernel, as a mission change
does. On v1 the first write to a ``cgroup.procs`` after a quiet spell waits for an RCU
grace period (``cgroup_threadgroup_rwsem``); back to back, a placement would find it
still warm from the one before and look faster than any real change."""


def mission(gen: int, with_new: bool) -> MissionProfile:
    parts = [{"name": "base", "criticality": "C", "budget": {"quota_us": 10_000,
              "period_us": 100_000}, "memory_mib": 32, "pids_max": 8,
              "workloads": [{"name": "w", "command": ["/bin/sleep", "3600"], "user": "nobody"}]}]
    if with_new:
        parts.append({"name": f"new{gen}", "criticality": "E", "cpu": {"dedicated_cores": [1]},
                      "budget": {"quota_us": 20_000, "period_us": 100_000}, "memory_mib": 64,
                      "pids_max": 16, "workloads": [{"name": "w", "command": ["/bin/sleep",
                                                                              "3600"],
                                                     "user": "nobody"}]})
    return MissionProfile.model_validate({"name": "bench", "generation": gen,
                                          "partitions": parts})


def procs(path: Path) -> list[str]:
    return path.read_text().split()


async def agent_once(engine: Engine, gen: int, prefix: str) -> float:
    """From the change to the ``workload.started`` event: the moment exec succeeded in a
    process that joined its cgroup before exec (saving the state happens after it)."""
    m = mission(gen, True)
    target = CGROUP_ROOT / "pids" / prefix / f"p-new{gen}" / "w-w" / "cgroup.procs"
    t0 = time.time()
    d = await engine.submit(m, ORIGIN)
    assert d.outcome == "applied", d
    started = [e for e in engine.events.of_kind("workload.started")
               if e.subject == f"workload/new{gen}/w"]
    pid = engine.runners[f"new{gen}"]["w"].pid
    assert started and procs(target) == [str(pid)], "workload not in its cgroup"
    await engine.submit(mission(gen + 1, False), ORIGIN)
    return (started[-1].at - t0) * 1000


def peer_once(prefix: str, i: int) -> float:
    g = f"{prefix}/peer{i}"
    target = CGROUP_ROOT / "cpu" / g / "cgroup.procs"
    t0 = time.perf_counter()
    subprocess.run(["cgcreate", "-g", f"{CONTROLLERS}:/{g}"], check=True)
    subprocess.run(["cgset", "-r", "cpuset.cpus=1", "-r", "cpuset.mems=0",
                    "-r", "cpu.cfs_period_us=100000", "-r", "cpu.cfs_quota_us=20000",
                    "-r", f"memory.limit_in_bytes={64 << 20}", "-r", "pids.max=16", g],
                   check=True)
    p = subprocess.Popen(["cgexec", "-g", f"{CONTROLLERS}:/{g}", "/usr/sbin/runuser", "-u",
                          "nobody", "--", "/bin/sleep", "3600"], start_new_session=True)
    while not procs(target):
        time.sleep(0)
    t = time.perf_counter() - t0  # cgexec joined and exec'd runuser; the peer's best case
    # runuser forks the sleep: stop both, or cgdelete hands the sleep to the prefix.
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    while procs(target):
        time.sleep(0.001)
    for c in CONTROLLERS.split(","):  # cgdelete removes only the first controller's dir
        subprocess.run(["cgdelete", "-g", f"{c}:/{g}"], check=False)
    return t * 1000


class Floor:
    """The lean placement in its own small process, asked for one placement at a time."""

    def __init__(self) -> None:
        script = Path(__file__).with_name("spawn_floor.py")
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", str(script),
                                      str(CGROUP_ROOT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def once(self, prefix: str, i: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{prefix} floor{i}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the floor peer failed (exit {self.proc.wait()})")
        return float(line)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


async def main(n: int) -> None:
    if not shutil.which("cgcreate"):
        sys.exit("cgroup-tools missing: run .ci/setup")
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
    cfg = AgentConfig(state_dir=tmp / "state", run_dir=tmp / "run", log_dir=tmp / "logs",
                      cgroup_prefix=prefix, agent_cgroup=False, isolate_os=False,
                      report_dir=tmp / "report")
    tmp.chmod(0o755)
    engine = Engine(cfg, BOARD, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
    try:
        await engine.start()
        await engine.submit(mission(1, False), ORIGIN)
        for c in CONTROLLERS.split(","):
            (CGROUP_ROOT / c / prefix).mkdir(exist_ok=True)
        agent, forked, floor, peer = [], [], [], []
        gen = 2
        lean = Floor()
        try:
            for i in range(n):
                await asyncio.sleep(QUIET_S)
                agent.append(await agent_once(engine, gen, prefix))
                SPAWNER.broken = "the bench's comparison"  # the agent forks itself
                await asyncio.sleep(QUIET_S)
                forked.append(await agent_once(engine, gen + 2, prefix))
                SPAWNER.broken = None
                gen += 4
                await asyncio.sleep(QUIET_S)
                floor.append(lean.once(prefix, i))
                await asyncio.sleep(QUIET_S)
                peer.append(peer_once(prefix, i))
        finally:
            lean.close()
        a, f, p = summary(agent), summary(floor), summary(peer)
        print(f"apply -> workload running in its cgroup, {n} applies each, interleaved, "
              f"{QUIET_S * 1000:.0f} ms quiet before each")
        print(row("sortie: admit+plan+cgroups+spawner", a))
        print(row("sortie, forking itself (before)", summary(forked)))
        print(row("floor: same placement, lean code", f))
        print(row("peer: cgcreate+cgset+cgexec", p))
        print(f"ratio sortie/floor: p50 {a['p50'] / f['p50']:.2f}  p99 {a['p99'] / f['p99']:.2f}")
        print(f"ratio sortie/peer: p50 {a['p50'] / p['p50']:.2f}  p99 {a['p99'] / p['p99']:.2f}")
        print(f"target p99 <= 10 ms: {'met' if a['p99'] <= 10 else 'MISSED'}; "
              f"p50 <= 2x the floor's: {'met' if a['p50'] <= 2 * f['p50'] else 'MISSED'}")
    finally:
        try:
            await engine.shutdown(teardown=True)
        finally:
            purge_prefix(prefix)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
