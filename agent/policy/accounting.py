"""Accounting: cumulative cgroup counters -> per-partition figures per period. Pure."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from agent.cgroups import CpuSample


@dataclass(frozen=True)
class Usage:
    """One partition over one accounting interval."""

    interval_s: float
    cpu_used_s: float
    """CPU time consumed in the interval, seconds."""
    share: float
    """CPU used as a fraction of one core (0.2 = 20 % of a core)."""
    budget_share: float
    """Budget as a fraction of one core (quota / period)."""
    periods: int
    """CFS periods elapsed in the interval."""
    throttled_periods: int
    """Periods in which the partition hit its quota."""
    throttled_s: float
    """Time spent throttled, seconds."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usage_between(before: CpuSample, after: CpuSample, interval_s: float,
                  budget_share: float) -> Usage:
    if interval_s <= 0:
        raise ValueError("interval must be positive")
    used = max(0, after.usage_ns - before.usage_ns) / 1e9
    return Usage(
        interval_s=interval_s,
        cpu_used_s=used,
        share=used / interval_s,
        budget_share=budget_share,
        periods=max(0, after.nr_periods - before.nr_periods),
        throttled_periods=max(0, after.nr_throttled - before.nr_throttled),
        throttled_s=max(0, after.throttled_ns - before.throttled_ns) / 1e9,
    )
