"""Degraded modes: when the board loses capacity (a core offline, thermal throttling),
keep the mission that still fits by shedding partitions by criticality. Pure.

Order: every E partition goes before any D, ... before any A, so a higher-criticality
partition never stops while a lower one runs; inside a level, the larger budget first.
Windows of shed partitions leave their schedules with them.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.cgroups.features import KernelFeatures
from agent.errors import Violation
from agent.models import HardwareProfile, MissionProfile
from agent.policy.admission import admit
from agent.policy.deadlines import TimingEnv

ORDER = {"E": 0, "D": 1, "C": 2, "B": 3, "A": 4}


def degraded_board(board: HardwareProfile, capacity: Mapping[int, float],
                   memory_mib: int | None = None) -> HardwareProfile:
    """The board as it is now: offline cores (capacity 0) removed, memory as measured."""
    online = [c for c in board.cores if capacity.get(c.id, 1.0) > 0]
    if not online:
        online = board.cores[:1]  # nothing fits anyway; keep the model valid
    ids = {c.id for c in online}
    reserved = [c for c in board.reserved.cores if c in ids] or [online[0].id]
    memory = board.memory_mib if memory_mib is None else max(
        memory_mib, board.reserved.memory_mib + 1)
    return board.model_copy(update={
        "cores": online, "memory_mib": memory,
        "reserved": board.reserved.model_copy(update={"cores": reserved})})


def without(mission: MissionProfile, shed: set[str]) -> MissionProfile:
    if not shed:
        return mission
    schedules = [s.model_copy(update={"windows": [w for w in s.windows
                                                   if w.partition not in shed]})
                 for s in mission.schedules]
    return mission.model_copy(update={
        "partitions": [p for p in mission.partitions if p.name not in shed],
        "schedules": schedules})


def derating(capacity: Mapping[int, float]) -> dict[int, float]:
    """The cores running below nominal speed (thermal throttling), and how much."""
    return {c: f for c, f in capacity.items() if 0 < f < 1}


def fit(mission: MissionProfile, board: HardwareProfile, capacity: Mapping[int, float],
        kernel: KernelFeatures | None = None, memory_mib: int | None = None,
        timing: TimingEnv | None = None) -> tuple[MissionProfile, list[str], list[Violation]]:
    """(mission that fits, partitions shed in order, why the full mission did not fit)."""
    now = degraded_board(board, capacity, memory_mib)
    derate = derating(capacity)
    why = admit(mission, now, kernel, derate, timing)
    if not why:
        return mission, [], []
    candidates = sorted(mission.partitions,
                        key=lambda p: (ORDER[p.criticality], -p.budget.utilisation()))
    shed: list[str] = []
    for p in candidates:
        shed.append(p.name)
        kept = without(mission, set(shed))
        if kept.partitions and not admit(kept, now, kernel, derate, timing):
            return kept, shed, why
    return without(mission, set(shed)), shed, why


def capacity_cause(capacity: dict[int, float], memory_mib: int | None) -> str:
    """Why the board has less than it had, in words for an event ("" when it has all)."""
    lost = [c for c, f in sorted(capacity.items()) if f == 0]
    slow = derating(dict(sorted(capacity.items())))
    mem = f"memory {memory_mib} MiB" if memory_mib is not None else ""
    return "; ".join(x for x in (f"cores offline {lost}" if lost else "",
                                 f"cores derated {slow}" if slow else "", mem) if x)
