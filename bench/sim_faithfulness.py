"""Is the simulator faithful? The same missions on this machine's real cgroups (v1) and on
the simulated board, side by side: per-partition CPU share and throttled-period
fraction. Target: within 2 percentage points.

  1. saturating load at 10 / 20 / 50 / 80 % (a core of its own)
  2. bursty jobs under quota: 5 ms every 20 ms under 30 ms / 100 ms, and 8 ms every
     40 ms under 4 ms / 10 ms (each job spans periods and is throttled inside them)
  3. two partitions sharing one core, 50 % + 50 % of budget, both saturating

Run as root on a cgroup v1 host:  .venv/bin/python -m bench.sim_faithfulness
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from agent.models import HardwareProfile, MissionProfile
from bench.determinism import DATA, Bench
from simulator.run import run as run_sim
from simulator.scenario import Scenario

SECONDS = 6.0
BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.0, "memory_mib": 512, "pids": 512}})
SPIN = ["/usr/bin/python3", "-c", "while True: pass"]


def periodic(work_ms: float, period_ms: float) -> list[str]:
    """A job of ``work_ms`` of CPU time released every ``period_ms`` (late: at once)."""
    return ["/usr/bin/python3", "-c", f"""
import time
release = time.monotonic()
while True:
    end = time.thread_time() + {work_ms / 1000}
    while time.thread_time() < end:
        pass
    release += {period_ms / 1000}
    delay = release - time.monotonic()
    if delay > 0:
        time.sleep(delay)
"""]


def part(name: str, quota: int, command: list[str], cores: list[int] | None = None,
         period: int = 100_000) -> dict[str, Any]:
    return {"name": name, "criticality": "C", "cpu": {"dedicated_cores": cores or []},
            "budget": {"quota_us": quota, "period_us": period}, "memory_mib": 64,
            "pids_max": 16, "workloads": [{"name": "w", "command": command,
                                           "user": "nobody", "working_dir": "/tmp"}]}


CASES: dict[str, tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]] = {
    **{f"saturating {b} %": ([part("x", b * 1000, SPIN, cores=[1])],
                             {"x/w": {"pattern": "runaway"}}) for b in (10, 20, 50, 80)},
    "5 ms / 20 ms under 30 % quota": ([part("x", 30_000, periodic(5, 20), cores=[1])],
                                      {"x/w": {"pattern": "periodic", "period_ms": 20,
                                               "work_ms": 5}}),
    "8 ms / 40 ms under 4/10 ms quota": ([part("x", 4_000, periodic(8, 40), cores=[1],
                                               period=10_000)],
                                         {"x/w": {"pattern": "periodic", "period_ms": 40,
                                                  "work_ms": 8}}),
    "two partitions on one core": ([part("x", 50_000, SPIN), part("y", 50_000, SPIN),
                                    part("idle", 1_000, ["/bin/sleep", "3600"], cores=[1])],
                                   {"x/w": {"pattern": "runaway"},
                                    "y/w": {"pattern": "runaway"}}),
}


def mission(parts: list[dict[str, Any]]) -> MissionProfile:
    return MissionProfile.model_validate({"name": "faith", "generation": 1,
                                          "partitions": parts})


async def real(parts: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    async with Bench(BOARD) as b:
        await b.fly(parts)
        await asyncio.sleep(1.0)
        before = {p["name"]: b.engine.backend.cpu_sample(p["name"]) for p in parts}
        await asyncio.sleep(SECONDS)
        out = {}
        for p in parts:
            after = b.engine.backend.cpu_sample(p["name"])
            s0 = before[p["name"]]
            periods = max(1, after.nr_periods - s0.nr_periods)
            out[p["name"]] = ((after.usage_ns - s0.usage_ns) / 1e9 / SECONDS,
                              (after.nr_throttled - s0.nr_throttled) / periods)
        return out


def simulated(parts: list[dict[str, Any]], patterns: dict[str, Any],
              tmp: Path) -> dict[str, tuple[float, float]]:
    m = mission(parts)
    (tmp / "m.yaml").write_text(yaml.safe_dump(m.model_dump(mode="json")))
    sc = Scenario.model_validate({"name": "faith", "mission": str(tmp / "m.yaml"),
                                  "duration_s": SECONDS + 1.0, "workloads": patterns})
    r = run_sim(sc, m, BOARD)
    out = {}
    for p in parts:
        series = [u for u in r.usage.get(p["name"], []) if u[0] > 1.0]
        st = r.partitions[p["name"]]
        share = sum(u[1] for u in series) / max(1, len(series))
        out[p["name"]] = (share, st["throttled_periods"] / max(1, st["periods"]))
    return out


def main() -> None:
    import tempfile
    tmp = Path(tempfile.mkdtemp())
    rows = []
    print(f"simulator vs real cgroups, {SECONDS:g} s each (share of a core, throttled "
          "fraction of periods)")
    for case, (parts, patterns) in CASES.items():
        # Real twice: the kernel's own run-to-run spread is the peer for the difference.
        r1, r2 = asyncio.run(real(parts)), asyncio.run(real(parts))
        s = simulated(parts, patterns, tmp)
        for name in (p["name"] for p in parts if p["name"] != "idle"):
            rs, rt = ((r1[name][i] + r2[name][i]) / 2 for i in (0, 1))
            ss, st = s[name]
            spread_s = abs(r1[name][0] - r2[name][0])
            spread_t = abs(r1[name][1] - r2[name][1])
            rows.append({"case": case, "partition": name, "real_share": rs, "sim_share": ss,
                         "real_throttled": rt, "sim_throttled": st,
                         "real_spread_share": spread_s, "real_spread_throttled": spread_t})
            print(f"  {case:<32} {name:<2} share real {rs * 100:6.2f} sim {ss * 100:6.2f} "
                  f"diff {abs(rs - ss) * 100:4.2f} pt (real-real {spread_s * 100:4.2f})  "
                  f"throttled real {rt * 100:5.1f} sim {st * 100:5.1f} diff "
                  f"{abs(rt - st) * 100:4.1f} pt (real-real {spread_t * 100:4.1f})")
    worst = max(abs(r["real_share"] - r["sim_share"]) for r in rows) * 100
    worst_t = max(abs(r["real_throttled"] - r["sim_throttled"]) for r in rows) * 100
    print(f"worst share difference {worst:.2f} pt, worst throttled-fraction difference "
          f"{worst_t:.1f} pt (target 2 pt)")
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "sim_faithfulness.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
