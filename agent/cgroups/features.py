"""What the running kernel offers (read by the backends, used by admission)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KernelFeatures:
    """What the running kernel offers; admission refuses modes it cannot honour."""

    rt_group_sched: bool = True
    """cgroup v1 ``cpu.rt_runtime_us`` exists (CONFIG_RT_GROUP_SCHED)."""
    cfs_burst: bool = True
    """CFS burst (``cpu.cfs_burst_us`` / ``cpu.max.burst``)."""
    sched_deadline: bool = True
    """SCHED_DEADLINE is available (Linux >= 3.14)."""
    freezer: bool = True
    """Partitions can be frozen (v1 freezer or v2 ``cgroup.freeze``): time windows."""
