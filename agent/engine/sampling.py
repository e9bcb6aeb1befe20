"""The accounting tick's reading side: cgroup counters into per-partition usage, fed to
the health monitor, and the workloads' logs kept bounded. Reads cgroups, writes none."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from agent.cgroups import CgroupBackend, CpuSample, PartitionLimits, ResourceUse
from agent.engine.platform import Runner, Windows
from agent.errors import AgentError
from agent.health.monitor import HealthMonitor
from agent.policy.accounting import Usage, usage_between
from agent.policy.planning import DesiredPartition
from agent.runtime.logs import rotate_if_large

log = logging.getLogger("sortie.accounting")


class Sampler:
    def __init__(self, backend: CgroupBackend, monitor: HealthMonitor, windows: Windows,
                 clock: Callable[[], float], log_max_bytes: int) -> None:
        self.backend, self.monitor, self.windows = backend, monitor, windows
        self.clock, self.log_max_bytes = clock, log_max_bytes
        self.usage: dict[str, Usage] = {}
        self.resources: dict[str, ResourceUse] = {}
        self._samples: dict[str, tuple[float, CpuSample]] = {}

    def totals(self, partition: str) -> CpuSample | None:
        """The partition's cumulative CPU counters at the last sample."""
        s = self._samples.get(partition)
        return None if s is None else s[1]

    def forget(self, partition: str) -> None:
        """The partition's group went: a new one's counters start again from zero."""
        self._samples.pop(partition, None)
        self.usage.pop(partition, None)
        self.resources.pop(partition, None)

    def sample(self, desired: dict[str, DesiredPartition],
               present: dict[str, PartitionLimits], runners: Iterable[Runner]) -> None:
        """Usage of every desired partition that exists since the last sample."""
        now = self.clock()
        for p, want in desired.items():
            if p not in present:
                continue
            try:
                cur = self.backend.cpu_sample(p)
            except AgentError as exc:
                log.warning("cannot sample %s: %s", p, exc)
                continue
            prev = self._samples.get(p)
            self._samples[p] = (now, cur)
            if prev is not None and now > prev[0]:
                lim = want.limits
                self.usage[p] = usage_between(prev[1], cur, now - prev[0],
                                              lim.quota_us / lim.period_us)
                self.monitor.on_usage(p, self.usage[p])
            try:
                self.monitor.on_counters(p, self.backend.counters(p))
                self.resources[p] = self.backend.resource_use(p)
            except AgentError as exc:
                log.warning("cannot read counters of %s: %s", p, exc)
            win = self.windows.stats.get(p)
            if win is not None:
                self.monitor.on_windows(p, win.outside_ns)
        self.monitor.check_silence()
        for r in runners:
            rotate_if_large(r.log_file, self.log_max_bytes)
