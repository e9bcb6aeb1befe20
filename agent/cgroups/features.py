"""What the running kernel offers (read by the backends, used by admission)."""

from __future__ import annotations

import functools
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
    tick_us: int = 4_000
    """The scheduler tick (1 / CONFIG_HZ): how late the kernel may notice a spent budget."""


# The coarsest tick a Linux kernel builds with (HZ=100): what a bound assumes when the
# kernel's configuration cannot be read.
COARSEST_TICK_US = 10_000


@functools.cache  # the kernel's configuration does not change while it runs
def kernel_tick_us() -> int:
    """1 / CONFIG_HZ of the running kernel, from its configuration (/proc/config.gz or
    /boot/config-RELEASE); the coarsest possible when neither can be read."""
    import gzip
    import os
    import re

    sources = [("/proc/config.gz", True), (f"/boot/config-{os.uname().release}", False)]
    for path, zipped in sources:
        try:
            with (gzip.open(path, "rt") if zipped else open(path)) as f:
                text = f.read()
        except OSError:
            continue
        m = re.search(r"^CONFIG_HZ=(\d+)$", text, re.M)
        if m and int(m.group(1)) > 0:
            return 1_000_000 // int(m.group(1))
    return COARSEST_TICK_US
