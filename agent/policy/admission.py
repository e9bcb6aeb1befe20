"""Admission: does a mission fit a board? Pure; returns every violation with its path.

A rejected mission changes nothing; the caller keeps flying what it had.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping

from agent.cgroups.features import KernelFeatures
from agent.errors import Violation
from agent.models import HardwareProfile, MissionProfile
from agent.policy import deadlines
from agent.policy.deadlines import TimingEnv
from agent.policy.placement import (
    EPSILON,
    partition_cores,
    shared_pool,
    windowed,
)

# Kernel limits for CFS bandwidth (kernel/sched/core.c: tg_set_cfs_bandwidth).
MIN_QUOTA_US = 1_000
MIN_PERIOD_US = 1_000
MAX_PERIOD_US = 1_000_000
# SCHED_DEADLINE: the kernel admits at most sched_rt_runtime/sched_rt_period (95 %) of
# every CPU of a root domain, and runtime >= 1 us; periods here stay <= 1 s.
DL_MAX_SHARE = 0.95
MIN_DL_RUNTIME_US = 1


def admit(mission: MissionProfile, board: HardwareProfile,
          kernel: KernelFeatures | None = None,
          derate: Mapping[int, float] | None = None,
          timing: TimingEnv | None = None) -> list[Violation]:
    """All reasons ``mission`` does not fit ``board``; empty means admitted.

    ``derate`` scales cores that currently deliver less than nominal (thermal
    throttling): budgets are nominal-speed CPU time, so a core at 60 % holds 60 %, and
    a job's WCET there is longer. Every timed workload's deadline must be proven
    (``deadlines.analyse``) under ``timing``'s assumptions."""
    kernel = kernel or KernelFeatures()
    shape = [
        *_names(mission),
        *_board_match(mission, board),
        *_kernel_limits(mission, kernel),
        *_modes(mission, board, kernel),
        *_placement(mission, board),
        *_capacity(mission, board, derate or {}),
        *_windows(mission, board, kernel),
        *deadlines.timing_violations(mission),
    ]
    if shape:
        return shape  # bounds only for a mission whose shape holds
    env = timing or TimingEnv(tick_us=kernel.tick_us)
    return deadlines.violations(deadlines.analyse(mission, board, env, derate))


def _dupes(names: list[str]) -> set[str]:
    return {n for n, k in Counter(names).items() if k > 1}


def _names(m: MissionProfile) -> Iterator[Violation]:
    dup = _dupes([p.name for p in m.partitions])
    for i, p in enumerate(m.partitions):
        if p.name in dup:
            yield Violation(f"partitions[{i}].name", f"duplicate partition name {p.name!r}")
        wdup = _dupes([w.name for w in p.workloads])
        for j, w in enumerate(p.workloads):
            if w.name in wdup:
                yield Violation(f"partitions[{i}].workloads[{j}].name",
                                f"duplicate workload name {w.name!r} in partition {p.name!r}")
    sdup = _dupes([s.name for s in m.schedules])
    known = {p.name for p in m.partitions}
    for i, s in enumerate(m.schedules):
        if s.name in sdup:
            yield Violation(f"schedules[{i}].name", f"duplicate schedule name {s.name!r}")
        for j, win in enumerate(s.windows):
            if win.partition not in known:
                yield Violation(f"schedules[{i}].windows[{j}].partition",
                                f"no partition named {win.partition!r}")
    if m.initial_schedule is not None and m.initial_schedule not in {s.name for s in m.schedules}:
        yield Violation("initial_schedule", f"no schedule named {m.initial_schedule!r}")
    for i, mode in enumerate(m.holds):
        if mode not in {s.name for s in m.schedules}:
            yield Violation(f"holds[{i}]", f"no schedule named {mode!r}: a hold names a "
                            "mode of this mission")


def _board_match(m: MissionProfile, board: HardwareProfile) -> Iterator[Violation]:
    if m.board is not None and m.board != board.name:
        yield Violation("board", f"mission is for board {m.board!r}, this board is {board.name!r}")


def _kernel_limits(m: MissionProfile, kernel: KernelFeatures) -> Iterator[Violation]:
    for i, p in enumerate(m.partitions):
        b, at = p.budget, f"partitions[{i}].budget"
        if b.quota_us < MIN_QUOTA_US:
            yield Violation(f"{at}.quota_us",
                            f"{b.quota_us} us is below the kernel minimum of {MIN_QUOTA_US} us")
        if b.period_us < MIN_PERIOD_US:
            yield Violation(f"{at}.period_us",
                            f"{b.period_us} us is below the kernel minimum of {MIN_PERIOD_US} us")
        if b.period_us > MAX_PERIOD_US:
            yield Violation(f"{at}.period_us",
                            f"{b.period_us} us is above the kernel maximum of {MAX_PERIOD_US} us")
        if b.burst_us > b.quota_us:
            yield Violation(f"{at}.burst_us",
                            f"{b.burst_us} us exceeds the quota of {b.quota_us} us")
        if b.burst_us and not kernel.cfs_burst:
            yield Violation(f"{at}.burst_us", "this kernel has no CFS burst support")
        if p.pids_max < len(p.workloads):
            yield Violation(f"partitions[{i}].pids_max",
                            f"{p.pids_max} is fewer than the {len(p.workloads)} workloads")


def _modes(m: MissionProfile, board: HardwareProfile,
           kernel: KernelFeatures) -> Iterator[Violation]:
    pool = shared_pool(m, board)
    wins = windowed(m)
    dl_total = 0.0
    for i, p in enumerate(m.partitions):
        b, at = p.budget, f"partitions[{i}].budget"
        if b.mode != "rt" and b.rt is not None:
            yield Violation(f"{at}.rt", f"given, but the budget mode is {b.mode!r}")
        if b.mode != "deadline" and b.deadline is not None:
            yield Violation(f"{at}.deadline", f"given, but the budget mode is {b.mode!r}")
        if b.mode != "cfs" and p.name in wins:
            yield Violation(f"{at}.mode", f"{b.mode} partitions cannot also have time "
                                          "windows (freezing preempts their reservation)")
        if b.mode == "rt":
            if b.rt is None:
                yield Violation(f"{at}.rt", "required in rt mode")
            elif b.rt.runtime_us > b.rt.period_us or b.rt.period_us > MAX_PERIOD_US:
                yield Violation(f"{at}.rt", f"need runtime_us <= period_us <= "
                                            f"{MAX_PERIOD_US}, got {b.rt.runtime_us}/"
                                            f"{b.rt.period_us}")
            if not kernel.rt_group_sched:
                yield Violation(f"{at}.mode", "this kernel has no RT group scheduling "
                                              "(cgroup v2, or CONFIG_RT_GROUP_SCHED off)")
        if b.mode == "deadline":
            d = b.deadline
            if d is None:
                yield Violation(f"{at}.deadline", "required in deadline mode")
            elif not (MIN_DL_RUNTIME_US <= d.runtime_us <= d.deadline_us <= d.period_us
                      <= MAX_PERIOD_US):
                yield Violation(f"{at}.deadline", "need 1 <= runtime_us <= deadline_us <= "
                                f"period_us <= {MAX_PERIOD_US}, got {d.runtime_us}/"
                                f"{d.deadline_us}/{d.period_us}")
            else:
                dl_total += d.runtime_us / d.period_us
            if len(p.workloads) != 1:
                yield Violation(f"partitions[{i}].workloads", "a deadline partition holds "
                                f"exactly one task, got {len(p.workloads)} workloads")
            if not kernel.sched_deadline:
                yield Violation(f"{at}.mode", "this kernel has no SCHED_DEADLINE")
            if p.cpu.dedicated_cores or pool != board.core_ids:
                # sched_setattr() refuses EPERM unless the task's cpus span its root domain.
                yield Violation(f"partitions[{i}].cpu", "SCHED_DEADLINE needs the task's cpus "
                                "to span the whole board; use the shared pool and no "
                                "dedicated cores in this mission")
    cap = DL_MAX_SHARE * len(board.core_ids)
    if dl_total > cap + EPSILON:
        yield Violation("partitions", f"SCHED_DEADLINE reservations add up to {dl_total:.3f} "
                                      f"CPU; the kernel admits at most {cap:.3f}")


def _placement(m: MissionProfile, board: HardwareProfile) -> Iterator[Violation]:
    owner: dict[int, str] = {}
    for i, p in enumerate(m.partitions):
        at = f"partitions[{i}].cpu.dedicated_cores"
        cores = p.cpu.dedicated_cores
        if len(set(cores)) != len(cores):
            yield Violation(at, f"core listed twice in {cores}")
        for c in sorted(set(cores)):
            if c not in board.core_ids:
                yield Violation(at, f"core {c} does not exist on board {board.name!r} "
                                    f"(cores {sorted(board.core_ids)})")
            elif c in board.reserved.cores:
                yield Violation(at, f"core {c} is reserved for the OS and the agent")
            elif c in owner:
                yield Violation(at, f"core {c} is already dedicated to partition {owner[c]!r}")
            else:
                owner[c] = p.name


def _capacity(m: MissionProfile, board: HardwareProfile,
              derate: Mapping[int, float]) -> Iterator[Violation]:
    def cap_of(c: int) -> float:
        return board.core_capacity(c) * derate.get(c, 1.0)

    pool = shared_pool(m, board)
    pool_capacity = sum(cap_of(c) for c in pool)
    shared: list[tuple[str, float]] = []
    for i, p in enumerate(m.partitions):
        n = len(partition_cores(p, pool) & board.core_ids) or 1
        util = p.budget.utilisation(n)
        if p.cpu.dedicated_cores:
            cores = set(p.cpu.dedicated_cores) & board.core_ids
            cap = sum(cap_of(c) for c in cores)
            where = f"its dedicated cores {sorted(cores)}"
        else:
            shared.append((p.name, util))
            cap = pool_capacity
            where = f"the shared pool {sorted(pool)}"
        if not p.cpu.dedicated_cores and not pool:
            yield Violation(f"partitions[{i}].cpu",
                            "partition uses the shared pool but every core is dedicated")
        elif util > cap + EPSILON:
            yield Violation(f"partitions[{i}].budget.quota_us",
                            f"budget {util:.3f} CPU exceeds the {cap:.3f} CPU of {where}")
    total = sum(u for _, u in shared)
    if pool and total > pool_capacity + EPSILON:
        parts = ", ".join(f"{n} {u:.3f}" for n, u in shared)
        yield Violation("partitions",
                        f"shared pool {sorted(pool)} offers {pool_capacity:.3f} CPU after the "
                        f"OS reserve; budgets ask {total:.3f} ({parts})")
    mem_cap = board.memory_mib - board.reserved.memory_mib
    mem = sum(p.memory_mib for p in m.partitions)
    if mem > mem_cap:
        yield Violation("partitions",
                        f"memory limits add up to {mem} MiB; the board offers {mem_cap} MiB "
                        f"after the {board.reserved.memory_mib} MiB reserve")
    pid_cap = board.max_pids - board.reserved.pids
    pids = sum(p.pids_max for p in m.partitions)
    if pids > pid_cap:
        yield Violation("partitions", f"pids limits add up to {pids}; the board offers {pid_cap} "
                                      f"after the {board.reserved.pids} reserve")


def _windows(m: MissionProfile, board: HardwareProfile,
             kernel: KernelFeatures) -> Iterator[Violation]:
    pool = shared_pool(m, board)
    by_name = {p.name: p for p in m.partitions}
    wins = windowed(m)
    if wins and not kernel.freezer:
        yield Violation("schedules", "time windows need a cgroup freezer (v1 freezer or "
                                     "v2 cgroup.freeze), which this kernel lacks")
    # A core is either time-partitioned or not: a partition without windows would run
    # through every other partition's windows on the same core.
    for i, p in enumerate(m.partitions):
        if p.name in wins:
            continue
        cores = partition_cores(p, pool) & board.core_ids
        for q in m.partitions:
            shared = cores & partition_cores(q, pool)
            if q.name in wins and shared:
                yield Violation(f"partitions[{i}]", f"runs on cores {sorted(shared)} next to "
                                f"windowed partition {q.name!r} but has no windows itself")
                break
    for s_i, s in enumerate(m.schedules):
        placed: list[tuple[int, int, frozenset[int], int]] = []
        for w_i, w in enumerate(s.windows):
            at = f"schedules[{s_i}].windows[{w_i}]"
            end = w.offset_us + w.duration_us
            if end > s.major_frame_us:
                yield Violation(at, f"window ends at {end} us, after the major frame of "
                                    f"{s.major_frame_us} us")
            part = by_name.get(w.partition)
            if part is None:
                continue
            cores = partition_cores(part, pool) & board.core_ids
            for start2, end2, cores2, w2 in placed:
                shared_cores = cores & cores2
                if shared_cores and w.offset_us < end2 and start2 < end:
                    yield Violation(at, f"overlaps windows[{w2}] on cores {sorted(shared_cores)}")
            placed.append((w.offset_us, end, cores, w_i))


def generation_violations(new: MissionProfile, current: MissionProfile | None) -> list[Violation]:
    """Never go back in time: a mission name's generation only increases. Pure."""
    if current is None or current.name != new.name:
        return []
    if new.generation < current.generation:
        return [Violation("generation", f"{new.generation} is older than the running "
                                         f"generation {current.generation}")]
    if new.generation == current.generation and new != current:
        return [Violation("generation", f"generation {new.generation} is already running with "
                                         "different content; raise the generation to change it")]
    return []
