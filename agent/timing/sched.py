"""Scheduling policy a workload starts with, derived from its partition's budget. Pure."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Literal

from agent.models import Budget, Partition, Workload


@dataclass(frozen=True)
class SchedPolicy:
    kind: Literal["fifo", "deadline"]
    priority: int = 0
    """SCHED_FIFO priority (1..99)."""
    runtime_ns: int = 0
    deadline_ns: int = 0
    period_ns: int = 0

    def describe(self) -> str:
        if self.kind == "fifo":
            return f"SCHED_FIFO priority {self.priority}"
        return (f"SCHED_DEADLINE runtime {self.runtime_ns // 1000} us, deadline "
                f"{self.deadline_ns // 1000} us, period {self.period_ns // 1000} us")


def policy_for(budget: Budget) -> SchedPolicy | None:
    """None for CFS: workloads keep SCHED_OTHER."""
    if budget.mode == "rt" and budget.rt is not None:
        return SchedPolicy("fifo", priority=budget.rt.priority)
    if budget.mode == "deadline" and budget.deadline is not None:
        d = budget.deadline
        return SchedPolicy("deadline", runtime_ns=d.runtime_us * 1000,
                           deadline_ns=d.deadline_us * 1000, period_ns=d.period_us * 1000)
    return None


def workload_hash(spec: Workload, sched: SchedPolicy | None) -> str:
    """What a running process was started from: its spec and its scheduling policy."""
    if sched is None:
        return spec.spec_hash()
    return hashlib.sha256((spec.spec_hash() + repr(sched)).encode()).hexdigest()[:16]


def policies_for(part: Partition) -> dict[str, SchedPolicy | None]:
    """Each workload's policy. In an rt partition, timed workloads get SCHED_FIFO
    priorities deadline-monotonic above the partition's priority (shortest deadline
    highest: ``priority + n - 1`` down to ``priority``); untimed ones the partition's."""
    base = policy_for(part.budget)
    out = {w.name: base for w in part.workloads}
    if base is None or base.kind != "fifo":
        return out
    timed = sorted((w for w in part.workloads if w.timing is not None),
                   key=lambda w: (w.timing.deadline if w.timing else 0, w.name))
    for rank, w in enumerate(timed):
        out[w.name] = replace(base, priority=min(99, base.priority + len(timed) - 1 - rank))
    return out
