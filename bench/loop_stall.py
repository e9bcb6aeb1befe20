"""How long the agent's event loop stalls while it converges a mission with time windows
and stops workloads that need the freeze-and-kill sweep.

Each round submits a new generation whose windows change (the timekeeper is stopped and
started again) and whose stubborn workload (it ignores SIGTERM) is replaced (its group is
frozen, killed, thawed). Meanwhile a sampler asks the loop for a 1 ms sleep, again and
again, and records how late each wake-up is. Peer in the same run: the same sampler on the
same loop with the same mission flying and nothing converging.
Run as root on a cgroup v1 host:  .venv/bin/python -m bench.loop_stall [ROUNDS]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.status import Origin
from bench._util import row, summary
from tests.conftest import CGROUP_ROOT, purge_prefix

ORIGIN = Origin("config")

BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})
STUBBORN = ["/bin/sh", "-c", "trap '' TERM; while :; do sleep 1; done"]


def mission(gen: int) -> MissionProfile:
    def part(name: str, stubborn: bool) -> dict[str, object]:
        w = {"name": "w", "command": STUBBORN if stubborn else ["/bin/sleep", "3600"],
             "user": "nobody", "stop_grace_ms": 20, "env": {"ROUND": str(gen)}}
        return {"name": name, "criticality": "C", "memory_mib": 32, "pids_max": 16,
                "budget": {"quota_us": 20_000, "period_us": 100_000}, "workloads": [w]}
    split = 20_000 + 1_000 * (gen % 10)  # the windows move every round
    return MissionProfile.model_validate({
        "name": "stall", "generation": gen,
        "partitions": [part("a", True), part("b", False)],
        "schedules": [{"name": "normal", "major_frame_us": 50_000, "windows": [
            {"partition": "a", "offset_us": 0, "duration_us": split},
            {"partition": "b", "offset_us": split, "duration_us": 50_000 - split}]}]})


async def sample(stop: asyncio.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        out.append((time.perf_counter() - t0 - 0.001) * 1000)


async def main(rounds: int) -> None:
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="sortie-stall-"))
    logs = Path(f"/tmp/{prefix}-logs")
    cfg = AgentConfig(node_name="bench", state_dir=tmp / "state", run_dir=tmp / "run",
                      log_dir=logs, cgroup_prefix=prefix, agent_cgroup=False,
                      isolate_os=False, report_dir=None)
    engine = Engine(cfg, BOARD, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
    try:
        await engine.start()
        assert (await engine.submit(mission(1), ORIGIN)).outcome == "applied"
        idle: list[float] = []
        busy: list[float] = []
        stop = asyncio.Event()
        task = asyncio.create_task(sample(stop, idle))
        await asyncio.sleep(2.0)
        stop.set()
        await task
        stop = asyncio.Event()
        task = asyncio.create_task(sample(stop, busy))
        t0 = time.perf_counter()
        for gen in range(2, rounds + 2):
            d = await engine.submit(mission(gen), ORIGIN)
            assert d.outcome == "applied", d
        took = time.perf_counter() - t0
        stop.set()
        await task
        print(f"event-loop lateness of a 1 ms sleep (ms); {rounds} converges with windows "
              f"and a freeze-and-kill stop each, {took:.1f} s")
        print(row("peer: nothing converging", summary(idle)))
        print(row("during converges", summary(busy)))
    finally:
        await engine.shutdown(teardown=True)
        purge_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
