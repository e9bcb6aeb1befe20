"""Shared helpers: percentiles and a uniform way to print a figure with its peer."""

from __future__ import annotations

import statistics


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90),
            "p99": pct(values, 99), "max": max(values), "mean": statistics.fmean(values)}


def row(name: str, s: dict[str, float], unit: str = "ms") -> str:
    return (f"{name:<36} n={int(s['n']):<4} p50={s['p50']:9.2f}{unit} p90={s['p90']:9.2f}{unit}"
            f" p99={s['p99']:9.2f}{unit} max={s['max']:9.2f}{unit}")


def equal_weights(prefix: str, partitions: tuple[str, ...]) -> None:
    """What the agent wrote before criticality weights (the kernel's default weight for
    every group, no idle class), put back by hand on a v1 host for a peer run."""
    from tests.conftest import CGROUP_ROOT
    for p in partitions:
        d = CGROUP_ROOT / "cpu" / prefix / f"p-{p}"
        with open(d / "cpu.idle", "w") as f:
            f.write("0")
        with open(d / "cpu.shares", "w") as f:
            f.write("1024")
