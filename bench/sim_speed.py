"""Simulator speed: a four-core board with 20 workloads, simulated time against wall time.

Peer: the same mission's simulated second with every workload idle (the cost floor of
the engine, timers and accounting without CPU-model work), measured in the same run.
Run:  .venv/bin/python -m bench.sim_speed  (no root needed)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from agent.models import HardwareProfile, MissionProfile, load_file
from simulator.run import run
from simulator.scenario import Scenario

REPO = Path(__file__).resolve().parent.parent
DURATION = 120.0


def mission() -> MissionProfile:
    parts = [{"name": "control", "criticality": "A", "cpu": {"dedicated_cores": [1]},
              "budget": {"quota_us": 50_000, "period_us": 100_000}, "memory_mib": 64,
              "workloads": [{"name": f"w{i}", "command": ["/bin/true"]} for i in range(4)]}]
    for n, crit in (("fusion", "B"), ("mapping", "C"), ("comms", "D"), ("analytics", "E")):
        parts.append({"name": n, "criticality": crit,
                      "budget": {"quota_us": 40_000, "period_us": 100_000}, "memory_mib": 64,
                      "workloads": [{"name": f"w{i}", "command": ["/bin/true"]}
                                    for i in range(4)]})
    return MissionProfile.model_validate({"name": "speed", "generation": 1,
                                          "partitions": parts})


def patterns(m: MissionProfile, busy: bool) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for p in m.partitions:
        for i, w in enumerate(p.workloads):
            key = f"{p.name}/{w.name}"
            if not busy:
                out[key] = {"pattern": "idle"}
            elif i == 0 and p.name == "analytics":
                out[key] = {"pattern": "runaway"}
            elif i % 2 == 0:
                out[key] = {"pattern": "periodic", "period_ms": 10 + 5 * i, "work_ms": 1}
            else:
                out[key] = {"pattern": "bursts", "burst_ms": 20, "idle_ms": 200}
    return out


def main() -> None:
    hw = load_file(HardwareProfile, REPO / "hwprofiles" / "raspberry-pi-4.yaml")
    m = mission()
    tmp = Path(tempfile.mkdtemp())
    (tmp / "m.yaml").write_text(yaml.safe_dump(m.model_dump(mode="json")))
    res = {}
    for label, busy in (("20 workloads (periodic, bursts, a miner)", True),
                        ("peer: same mission, all idle", False)):
        sc = Scenario.model_validate({"name": "speed", "mission": str(tmp / "m.yaml"),
                                      "duration_s": DURATION, "seed": 7,
                                      "workloads": patterns(m, busy)})
        r = run(sc, m, hw)
        res[label] = r
        print(f"{label:<44} {DURATION:g} s simulated in {r.wall_s:6.2f} s: "
              f"{r.speedup:6.0f}x real time")
    busy_r = res["20 workloads (periodic, bursts, a miner)"]
    print(f"target >= 50x for a 4-core board with 20 workloads: "
          f"{'met' if busy_r.speedup >= 50 else 'MISSED'}")


if __name__ == "__main__":
    main()
