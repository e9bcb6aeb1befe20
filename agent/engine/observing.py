"""Observe: what exists under the agent's prefix (partitions, limits, workload processes).

Read-only. Used at start-up so a restarted agent adopts running workloads, and by
``sortie plan`` when no agent answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.cgroups import CgroupBackend, PartitionLimits
from agent.engine.platform import ProcessTable, RealProcesses
from agent.runtime import procs


@dataclass(frozen=True)
class FoundWorkload:
    pids: tuple[int, ...]
    """Every process in the workload's group."""
    main_pid: int | None
    """The process the agent started (tagged in its environment), if still alive."""
    spec_hash: str | None
    """Spec the main process was started with."""


@dataclass(frozen=True)
class FoundPartition:
    limits: PartitionLimits | None
    workloads: dict[str, FoundWorkload] = field(default_factory=dict)


def find_main(partition: str, workload: str, pids: list[int],
              table: ProcessTable) -> tuple[int | None, str | None]:
    """The agent-started process of a group: tagged, and its parent outside the group."""
    tag = f"{partition}/{workload}"
    members = set(pids)
    for pid in sorted(pids, key=lambda p: table.start_ticks(p) or 0):
        env = table.environ(pid)
        if env.get(procs.ENV_WORKLOAD) == tag and table.parent_pid(pid) not in members:
            return pid, env.get(procs.ENV_SPEC)
    return None, None


def observe(backend: CgroupBackend,
            table: ProcessTable | None = None) -> dict[str, FoundPartition]:
    table = table or RealProcesses()
    out: dict[str, FoundPartition] = {}
    for p in backend.partitions():
        try:
            limits: PartitionLimits | None = backend.read_limits(p)
        except (OSError, ValueError):
            limits = None
        found: dict[str, FoundWorkload] = {}
        for w in backend.workloads(p):
            pids = [pid for pid in backend.procs(p, w) if table.is_alive(pid)]
            main, spec = find_main(p, w, pids, table)
            found[w] = FoundWorkload(tuple(pids), main, spec)
        out[p] = FoundPartition(limits, found)
    return out
