"""Plan: a pure function from desired and observed state to an ordered list of actions.

Order is the safety argument: processes leave before their cgroup goes, limits are set
before processes start, and cores are released before another partition claims them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agent.cgroups import PartitionLimits
from agent.models import HardwareProfile, MissionProfile, Partition, Workload
from agent.policy.placement import partition_cores, placement_pool
from agent.timing.sched import SchedPolicy, policies_for, workload_hash

MIB = 1 << 20


@dataclass(frozen=True)
class DesiredPartition:
    limits: PartitionLimits
    workloads: Mapping[str, Workload]
    digest: str
    """Digest of the partition's spec and limits; equal digests mean nothing to do."""
    scheds: Mapping[str, SchedPolicy | None] = field(default_factory=dict)
    """Real-time policy each workload starts with (rt / deadline budgets)."""

    def sched(self, workload: str) -> SchedPolicy | None:
        return self.scheds.get(workload)


@dataclass(frozen=True)
class ObservedWorkload:
    spec_hash: str | None
    """Spec the managed process runs (None: a group exists but nothing manages it)."""


@dataclass(frozen=True)
class ObservedPartition:
    limits: PartitionLimits | None
    workloads: Mapping[str, ObservedWorkload] = field(default_factory=dict)


@dataclass(frozen=True)
class EnsurePartition:
    partition: str
    limits: PartitionLimits
    phase: int = 3
    """2 when the partition only gives cores up, so claims in phase 3 find them free."""


@dataclass(frozen=True)
class RemovePartition:
    partition: str
    phase: int = 1


@dataclass(frozen=True)
class StopWorkload:
    partition: str
    workload: str
    remove_group: bool
    phase: int = 0


@dataclass(frozen=True)
class StartWorkload:
    partition: str
    spec: Workload
    phase: int = 4


@dataclass(frozen=True)
class RestartWorkload:
    """Stop the old spec and start the new one (the spec changed)."""

    partition: str
    spec: Workload
    phase: int = 4


Action = EnsurePartition | RemovePartition | StopWorkload | StartWorkload | RestartWorkload


CRITICALITY_WEIGHT: dict[str, int] = {"A": 1_000, "B": 500, "C": 200, "D": 100, "E": 0}
"""CFS weight by design assurance level where partitions share cores: a higher DAL wins
contention by design (x2-x5 per level, DAL D the kernel's default); DAL E is the idle
class. Deadlines are proven by rt budgets, not weights (docs/determinism.md)."""


def partition_limits(part: Partition, cores: frozenset[int], mems: str) -> PartitionLimits:
    """Kernel values for one partition. Pure."""
    b = part.budget
    rt = b.rt if b.mode == "rt" else None
    return PartitionLimits(
        cpus=cores,
        mems=mems,
        quota_us=b.quota_us,
        period_us=b.period_us,
        burst_us=b.burst_us,
        memory_bytes=part.memory_mib * MIB,
        pids_max=part.pids_max,
        rt_runtime_us=rt.runtime_us if rt else 0,
        rt_period_us=rt.period_us if rt else 1_000_000,
        exclusive=bool(part.cpu.dedicated_cores) and part.cpu.exclusive,
        weight=CRITICALITY_WEIGHT[part.criticality],
    )


def desired_state(mission: MissionProfile, board: HardwareProfile,
                  mems: str) -> dict[str, DesiredPartition]:
    """Per-partition desired state of an admitted mission. Pure."""
    pool = placement_pool(mission, board)
    out: dict[str, DesiredPartition] = {}
    for p in mission.partitions:
        limits = partition_limits(p, partition_cores(p, pool), mems)
        digest = hashlib.sha256(
            (p.model_dump_json() + repr(sorted(limits.cpus)) + mems).encode()).hexdigest()
        out[p.name] = DesiredPartition(limits, {w.name: w for w in p.workloads}, digest,
                                       policies_for(p))
    return out


def changed_partitions(old: Mapping[str, DesiredPartition],
                       new: Mapping[str, DesiredPartition]) -> set[str]:
    """Partitions whose desired state differs: one digest comparison each."""
    names = old.keys() | new.keys()
    return {n for n in names
            if n not in old or n not in new or old[n].digest != new[n].digest}


def plan(desired: Mapping[str, DesiredPartition],
         observed: Mapping[str, ObservedPartition],
         scope: Iterable[str] | None = None) -> list[Action]:
    """Actions that take ``observed`` to ``desired``, in a safe order.

    ``scope`` limits the work to the named partitions, so one change among many costs
    only its own partitions; ``None`` reconciles everything.
    """
    names = sorted(desired.keys() | observed.keys()) if scope is None else sorted(set(scope))
    actions: list[Action] = []
    for name in names:
        want, have = desired.get(name), observed.get(name)
        if want is None:
            if have is not None:
                actions += [StopWorkload(name, w, remove_group=True)
                            for w in sorted(have.workloads)]
                actions.append(RemovePartition(name))
            continue
        if have is None or have.limits is None:
            actions.append(EnsurePartition(name, want.limits))
        elif have.limits != want.limits:
            shrinks = want.limits.cpus <= have.limits.cpus
            actions.append(EnsurePartition(name, want.limits, phase=2 if shrinks else 3))
        have_wl = have.workloads if have else {}
        limits_change = have is not None and have.limits != want.limits
        for w in sorted(have_wl.keys() - want.workloads.keys()):
            actions.append(StopWorkload(name, w, remove_group=True))
        for w, spec in sorted(want.workloads.items()):
            running = have_wl.get(w)
            if running is None or running.spec_hash is None:
                actions.append(StartWorkload(name, spec))
            elif running.spec_hash != workload_hash(spec, want.sched(w)):
                if limits_change:
                    # Out before the limits move: e.g. RT runtime cannot drop to 0 while
                    # the old SCHED_FIFO process still runs in the group.
                    actions += [StopWorkload(name, w, remove_group=False),
                                StartWorkload(name, spec)]
                else:
                    actions.append(RestartWorkload(name, spec))
    # Stable sort: phases in order, partitions alphabetical inside a phase.
    return sorted(actions, key=lambda a: a.phase)


def describe(action: Action) -> str:
    match action:
        case EnsurePartition(partition=p, limits=lim):
            return (f"ensure partition {p}: cpus {sorted(lim.cpus)} quota {lim.quota_us}/"
                    f"{lim.period_us} us burst {lim.burst_us} us memory "
                    f"{lim.memory_bytes // MIB} MiB pids {lim.pids_max}")
        case RemovePartition(partition=p):
            return f"remove partition {p}"
        case StopWorkload(partition=p, workload=w):
            return f"stop workload {p}/{w}"
        case StartWorkload(partition=p, spec=s):
            return f"start workload {p}/{s.name}: {' '.join(s.command)}"
        case RestartWorkload(partition=p, spec=s):
            return f"restart workload {p}/{s.name} (spec changed)"
    raise AssertionError(action)
