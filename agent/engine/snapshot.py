"""The engine's state as one typed ``Status`` (the only view the sources and the CLI
get of it)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from agent.status import (
    CgroupStatus,
    DegradedStatus,
    FilesStatus,
    HoldEntry,
    HoldStatus,
    KubeStatus,
    MissionStatus,
    MqttStatus,
    PartitionHealth,
    PartitionStatus,
    PartitionTotals,
    PendingChange,
    SourcesStatus,
    Status,
    TimingAssumptions,
    TimingStatus,
    WorkloadStatus,
)

if TYPE_CHECKING:
    from agent.engine.engine import Engine
    from agent.models import Partition


@dataclass
class SourceProbes:
    """Where each desired-state source's status comes from (set by the daemon)."""

    files: Callable[[], FilesStatus] | None = None
    mqtt: Callable[[], MqttStatus] | None = None
    kube: Callable[[], KubeStatus] | None = None

    def status(self) -> SourcesStatus:
        return SourcesStatus(files=self.files() if self.files else None,
                             mqtt=self.mqtt() if self.mqtt else None,
                             kube=self.kube() if self.kube else None)


def _timed(e: Engine, partition: str, ws: WorkloadStatus, spec: Partition | None,
           health: PartitionHealth) -> WorkloadStatus:
    w = next((x for x in spec.workloads if x.name == ws.name), None) if spec else None
    if w is None or w.timing is None:
        return ws
    jobs = health.jobs.get(ws.name)
    t = TimingStatus(w.timing.period_us, w.timing.wcet_us, w.timing.deadline,
                     e.bounds.get((partition, ws.name)),
                     jobs.jobs if jobs else 0, jobs.misses if jobs else 0,
                     jobs.max_response_us if jobs else 0, jobs.p99_response_us if jobs else 0)
    return replace(ws, timing=t)


def _totals(e: Engine, partition: str) -> PartitionTotals | None:
    cpu = e.sampler.totals(partition)
    if cpu is None:
        return None
    res = e.sampler.resources.get(partition)
    return PartitionTotals(cpu.usage_ns / 1e9, cpu.nr_periods, cpu.nr_throttled,
                           cpu.throttled_ns / 1e9, res.memory_bytes if res else None,
                           res.pids if res else None)


def build_status(e: Engine) -> Status:
    env = e.timing_env()
    parts = []
    for name in sorted(e.desired.keys() | e.limits.keys()):
        spec = e.mission.partition(name) if e.mission else None
        health = e.monitor.status(name)
        lim = e.limits.get(name)
        parts.append(PartitionStatus(
            name=name, criticality=spec.criticality if spec else None,
            desired=name in e.desired,
            cpus=sorted(lim.cpus) if lim else None,
            quota_us=lim.quota_us if lim else None,
            period_us=lim.period_us if lim else None,
            burst_us=lim.burst_us if lim else None,
            memory_bytes=lim.memory_bytes if lim else None,
            pids_max=lim.pids_max if lim else None,
            weight=lim.weight if lim else None,
            usage=e.usage.get(name), health=health,
            workloads=[_timed(e, name, r.status(), spec, health)
                       for _, r in sorted(e.runners.get(name, {}).items())]
            + [WorkloadStatus(w, "orphan") for w in sorted(e.orphans.get(name, {}))],
            totals=_totals(e, name)))
    return Status(
        board=e.board.name,
        cgroup=CgroupStatus(e.backend.version, e.backend.prefix,
                            e.platform.ops.placement(e.backend.version)),
        mission=None if e.mission is None or e.origin is None else MissionStatus(
            e.mission.name, e.mission.generation, e.origin),
        ready_after_s=e.ready_after_s,
        windows=e.windows.status(),
        reports=None if e.reports is None else e.reports.status(),
        internal_errors=dict(e.events.internal_errors),
        sources=e.sources.status(),
        degraded=DegradedStatus(dict(e.capacity), e.memory_mib, list(e.shed)),
        partitions=parts,
        errors=list(e.errors),
        events=e.events.recent(20),
        timing=TimingAssumptions(os.uname().release, env.tick_us, env.latency_us,
                                 env.os_isolated),
        hold=_hold(e))


def _hold(e: Engine) -> HoldStatus:
    p = e.pending
    return HoldStatus(
        e.held_by(), [HoldEntry(h.source, h.reason, h.since) for h in e.holds.holds.values()],
        None if p is None else PendingChange(
            p.source, p.mission.name if p.mission else None,
            p.mission.generation if p.mission else None, p.since))
