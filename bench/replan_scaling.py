"""One change among N workloads: re-plan time must not grow with N.

Measures the incremental path the engine uses (digest diff, then plan scoped to the
changed partitions) against a full re-plan of everything, at N = 50, 500 and 5000
workloads (10 per partition), in the same run. Pure: no root needed.
Run:  .venv/bin/python -m bench.replan_scaling
"""

from __future__ import annotations

import time

from agent.models import HardwareProfile, MissionProfile
from agent.policy.planning import (
    DesiredPartition,
    ObservedPartition,
    ObservedWorkload,
    changed_partitions,
    desired_state,
    plan,
)
from bench._util import row, summary

PER = 10


def board() -> HardwareProfile:
    return HardwareProfile.model_validate({
        "name": "big", "arch": "aarch64", "cores": [{"id": i} for i in range(4)],
        "memory_mib": 10 ** 7, "max_pids": 10 ** 7,
        "reserved": {"cores": [0], "memory_mib": 512}})


def mission(n_parts: int, bumped: int | None) -> MissionProfile:
    parts = [{"name": f"p{i}", "criticality": "C",
              "budget": {"quota_us": 1000 if i != bumped else 2000, "period_us": 1_000_000},
              "memory_mib": 1, "pids_max": PER,
              "workloads": [{"name": f"w{j}", "command": ["/bin/sleep", "1"]}
                            for j in range(PER)]} for i in range(n_parts)]
    return MissionProfile.model_validate({"name": "m", "generation": 1, "partitions": parts})


def observed(d: dict[str, DesiredPartition]) -> dict[str, ObservedPartition]:
    return {p: ObservedPartition(x.limits, {w: ObservedWorkload(s.spec_hash())
                                            for w, s in x.workloads.items()})
            for p, x in d.items()}


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def main() -> None:
    hw = board()
    print(f"one partition changed among N workloads ({PER} per partition)")
    results = {}
    for n in (50, 500, 5000):
        parts = n // PER
        old = desired_state(mission(parts, None), hw, "0")
        new = desired_state(mission(parts, parts // 2), hw, "0")
        obs = observed(old)
        scope = changed_partitions(old, new)
        assert len(scope) == 1
        inc_plan = summary(timed(lambda new=new, obs=obs, scope=scope: plan(new, obs, scope),
                                 200))
        diff = summary(timed(lambda old=old, new=new: changed_partitions(old, new), 200))
        full = summary(timed(lambda new=new, obs=obs: plan(new, obs), 20))
        m = mission(parts, parts // 2)
        digest = summary(timed(lambda m=m: desired_state(m, hw, "0"), 20))
        results[n] = (inc_plan, diff, full)
        print(row(f"N={n:<5} scoped plan", inc_plan, "us"))
        print(row(f"N={n:<5} digest diff", diff, "us"))
        print(row(f"N={n:<5} peer: full re-plan", full, "us"))
        print(row(f"N={n:<5} (per new profile) digests", digest, "us"))
    growth_inc = results[5000][0]["p50"] / results[50][0]["p50"]
    growth_full = results[5000][2]["p50"] / results[50][2]["p50"]
    print(f"growth 50 -> 5000 workloads: scoped plan x{growth_inc:.2f}, full re-plan "
          f"x{growth_full:.1f}, digest diff x{results[5000][1]['p50'] / results[50][1]['p50']:.1f}")


if __name__ == "__main__":
    main()
