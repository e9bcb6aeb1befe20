"""Where partitions run: the shared pool, the cores pool partitions are placed on, each
partition's cores, the windowed ones. Pure."""

from __future__ import annotations

from agent.models import HardwareProfile, MissionProfile, Partition

# Float sums of budgets must not fail on rounding noise.
EPSILON = 1e-9


def windowed(mission: MissionProfile) -> set[str]:
    """Partitions that own a window in any schedule (they run only inside windows)."""
    return {w.partition for s in mission.schedules for w in s.windows}


def shared_pool(mission: MissionProfile, board: HardwareProfile) -> frozenset[int]:
    """Cores of the board that no partition owns."""
    owned = {c for p in mission.partitions for c in p.cpu.dedicated_cores}
    return board.core_ids - owned


def placement_pool(mission: MissionProfile, board: HardwareProfile) -> frozenset[int]:
    """Cores the shared-pool partitions are placed on: the pool without the OS's reserved
    cores when the other pool cores carry every pool budget (the OS keeps its cores to
    itself, and on cgroup v2 an exclusive dedicated core can then be a partition root),
    else the whole pool, sharing the reserved cores as admission counted them."""
    pool = shared_pool(mission, board)
    spare = pool - frozenset(board.reserved.cores)
    shared = [p for p in mission.partitions if not p.cpu.dedicated_cores]
    if not spare or not shared or any(p.budget.mode == "deadline" for p in shared):
        return pool  # SCHED_DEADLINE tasks must span their root domain
    need = [p.budget.utilisation(len(spare)) for p in shared]
    capacity = sum(board.core_capacity(c) for c in spare)
    return spare if sum(need) <= capacity + EPSILON else pool


def partition_cores(part: Partition, pool: frozenset[int]) -> frozenset[int]:
    return frozenset(part.cpu.dedicated_cores) if part.cpu.dedicated_cores else pool
