"""Does criticality order the CPU? The issue-15 case, measured three ways in one run.

A DAL A partition in the shared pool (CFS budget 50 %) runs a periodic task: 4 ms of CPU
every 10 ms, response = release -> completion. Beside it a DAL E partition (CFS budget
80 %) runs ``stress-ng --cpu 16`` (a hijacked miner). Both groups share the pool's two
cores. Three variants, each for SECONDS:

* equal weights: cpu.shares 1024 for both, no idle class (what the agent wrote before
  criticality weights; put back by hand here);
* criticality weights: what the agent writes now (DAL A weight 1000 = shares 10240, DAL E
  the idle class);
* rt: the DAL A task under SCHED_FIFO in an RT budget of 5 of 10 ms (miner at 70 %).

Run as root on a cgroup v1 host:  .venv/bin/python -m bench.criticality [SECONDS]
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.status import Origin
from bench._util import equal_weights, row, summary
from tests.conftest import CGROUP_ROOT, purge_prefix

BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})
TASK = """
import sys, time
out = open(sys.argv[1], "a", buffering=1)
period, work = 0.010, 0.004
release = time.monotonic() + period
while True:
    time.sleep(max(0.0, release - time.monotonic()))
    t0 = time.thread_time()
    while time.thread_time() - t0 < work:
        pass
    out.write(f"{(time.monotonic() - release) * 1e6:.0f}\\n")
    release += period
"""


def mission(gen: int, out: Path, rt: bool) -> MissionProfile:
    task = {"name": "loop", "command": ["/usr/bin/python3", "-c", TASK, str(out)],
            "stop_grace_ms": 200}
    budget: dict[str, Any] = {"quota_us": 50_000, "period_us": 100_000}
    if rt:
        budget = {"mode": "rt", "quota_us": 1_000, "period_us": 100_000,
                  "rt": {"runtime_us": 5_000, "period_us": 10_000}}
    miner = {"name": "miner", "command": ["/usr/bin/stress-ng", "--cpu", "16", "--quiet",
                                          "--temp-path", "/tmp"], "stop_grace_ms": 200}
    return MissionProfile.model_validate({"name": "crit", "generation": gen, "partitions": [
        {"name": "fc", "criticality": "A", "memory_mib": 64, "budget": budget,
         "workloads": [task]},
        {"name": "miner", "criticality": "E", "memory_mib": 128, "pids_max": 64,
         "budget": {"quota_us": 70_000 if rt else 80_000, "period_us": 100_000},
         "workloads": [miner]}]})


async def main(seconds: float) -> None:
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="sortie-crit-"))
    tmp.chmod(0o777)
    cfg = AgentConfig(node_name="bench", state_dir=tmp / "state", run_dir=tmp / "run",
                      log_dir=tmp / "logs", cgroup_prefix=prefix, agent_cgroup=False,
                      isolate_os=False, report_dir=None)
    engine = Engine(cfg, BOARD, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
    results: dict[str, list[float]] = {}
    try:
        await engine.start()
        for gen, (name, rt) in enumerate((("equal weights", False),
                                          ("criticality weights", False),
                                          ("rt budget", True)), start=1):
            out = tmp / f"r{gen}.txt"
            out.touch()
            out.chmod(0o666)
            d = await engine.submit(mission(gen, out, rt), Origin("config"))
            assert d.outcome == "applied", d
            if name == "equal weights":
                equal_weights(prefix, ("fc", "miner"))
            await asyncio.sleep(1.0)  # the miner's 16 workers up; then measure afresh
            out.write_text("")
            await asyncio.sleep(seconds)
            results[name] = [float(x) / 1000 for x in out.read_text().split()]
    finally:
        await engine.shutdown(teardown=True)
        purge_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"DAL A task 4 ms / 10 ms beside a 16-thread DAL E miner, {seconds:g} s each; "
          "response (ms)")
    for name, r in results.items():
        misses = sum(1 for x in r if x > 10.0)
        print(row(name, summary(r)) + f"  misses {misses}/{len(r)}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 15.0))
