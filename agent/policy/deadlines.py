"""Deadlines at admission: a sound response-time bound for every timed workload, from
its partition's mode and the interference on its core. Pure.

A bound may be pessimistic, never below what can happen, under these assumptions
(docs/determinism.md): a job is single-threaded and needs at most ``wcet_us``; the
kernel enforces budgets at its tick (a group may overrun its budget by one tick and pays
it back in the next period); interrupts and scheduling latency cost at most
``latency_us`` per job, which is added to every job's execution time.

Supply models (all on one core; a partition spread over several cores is refused, since
a job can wait on a throttled core while another idles):

* never throttled: when the partition's whole demand in any window of one budget period
  fits its budget, the group is never throttled and its tasks get the core whenever
  they are ready, less the interference of higher-priority reservations (a budget in
  every period a window touches, plus one overrun of a tick);
* deferrable server: the budget (RT ``rt_runtime_us`` or the CFS quota, each refilled at
  fixed period boundaries and spent only while the tasks run) can have been used up just
  before a job arrives: no supply for ``period - budget``, then ``budget`` per period,
  one tick less (a previous overrun's debt);
* SCHED_DEADLINE: a constant-bandwidth server whose runtime arrives within each server
  deadline when the root domain passes the global-EDF density test (Goossens, Funk,
  Baruah 2003; one CPU: density <= 1).

Inside a partition, workloads run FIFO (rt) or CFS-fair: both work-conserving, so every
job completes within the partition's busy period, the bound given for each of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agent.errors import Violation
from agent.models import HardwareProfile, MissionProfile, Partition
from agent.policy.placement import partition_cores, placement_pool, windowed
from agent.timing.sched import policies_for

HORIZON_US = 10_000_000
"""Bounds beyond 10 s are reported as unbounded (the demand outgrows the supply)."""


@dataclass(frozen=True)
class TimingEnv:
    """What the bounds assume about the kernel and the board's configuration."""

    tick_us: int = 4_000
    """Budget enforcement granularity (1 / CONFIG_HZ; 250 Hz here)."""
    latency_us: int = 2_000
    """Interrupts and scheduling latency per job, added to each job's WCET (cyclictest at
    priority 80 next to a 16-thread miner on this machine: max 1,376 us)."""
    os_isolated: bool = False
    """The OS's processes are kept off exclusive dedicated cores (config isolate_os)."""


@dataclass(frozen=True)
class Bound:
    path: str
    """``partitions[i].workloads[j].timing``."""
    partition: str
    workload: str
    deadline_us: int
    response_bound_us: int | None
    """None: no bound can be given (see ``why``)."""
    method: str
    why: str = ""
    """When refused: the reason, and what would make it fit where that can be computed."""

    @property
    def proven(self) -> bool:
        return self.response_bound_us is not None and self.response_bound_us <= \
            self.deadline_us


@dataclass(frozen=True)
class _Task:
    wcet: int
    period: int
    priority: int = 0
    """SCHED_FIFO priority (rt partitions: deadline-monotonic); 0 elsewhere."""


Result = tuple[str, int | None, str]
"""(method, bound or None, why) for one workload."""


def sbf_deferrable(t: int, budget: int, period: int) -> int:
    """Least supply in any window of length ``t`` from a budget refilled every period
    and spent greedily (it may have run out just before the window)."""
    gap = period - budget
    if t <= gap:
        return 0
    k, rest = divmod(t - gap, period)
    return k * budget + min(budget, rest)


def _inverse_deferrable(x: int, budget: int, period: int) -> int:
    """The shortest window whose least supply is ``x``."""
    if x <= 0:
        return 0
    k = math.ceil(x / budget) - 1
    return (period - budget) + k * period + (x - k * budget)


def _demand(tasks: list[_Task], t: int) -> int:
    return sum(math.ceil(t / k.period) * k.wcet for k in tasks)


def _window_demand(tasks: list[_Task], window: int) -> int:
    """Most work the tasks can execute in any window of this length (a job released
    before it may still run into it: one more job each)."""
    return sum((math.ceil(window / k.period) + 1) * k.wcet for k in tasks)


def _interference(reservations: list[tuple[int, int, int]], t: int) -> int:
    """Most CPU higher-priority reservations (budget, period, overrun) can take in any
    window of length t: a budget in every period the window touches, and one overrun
    not yet paid back (the kernel notices a spent budget at its tick)."""
    return sum((math.ceil(t / p) + 1) * b + over for b, p, over in reservations)


def _fixpoint(start: int, need: Callable[[int], int],
              inverse: Callable[[int], int]) -> int | None:
    """The smallest window t >= start that surely supplies what it needs,
    ``inverse(need(t)) <= t`` (``inverse(x)``: the shortest window that surely supplies
    x); None past the horizon."""
    t = start
    while t <= HORIZON_US:
        nxt = inverse(need(t))
        if nxt <= t:
            return t
        t = nxt
    return None


def busy_period(tasks: list[_Task], inverse: Callable[[int], int],
                interference: list[tuple[int, int, int]]) -> int | None:
    """Smallest t with supply(t) >= demand(t) + interference(t); None past the horizon.
    ``interference``: (budget, period, overrun) of higher-priority reservations."""
    return _fixpoint(sum(k.wcet for k in tasks),
                     lambda t: _demand(tasks, t) + _interference(interference, t), inverse)


def _finish(work: int, inverse: Callable[[int], int],
            interference: list[tuple[int, int, int]]) -> int | None:
    """When ``work`` is surely done: the smallest s that supplies it beside the
    higher-priority interference in [0, s); None past the horizon."""
    return _fixpoint(work, lambda s: work + _interference(interference, s), inverse)


def fcfs_response(tasks: list[_Task], inverse: Callable[[int], int],
                  interference: list[tuple[int, int, int]]) -> int | None:
    """Worst response when jobs are served in release order (one task's jobs always are;
    SCHED_FIFO tasks of one priority too): at each release r in the busy period after a
    synchronous release, the work released in [0, r] must be done, less r."""
    length = busy_period(tasks, inverse, interference)
    if length is None:
        return None
    worst = 0
    for r in sorted({k * t.period for t in tasks for k in range(length // t.period + 1)
                     if k * t.period < length}):
        done = _finish(sum((r // t.period + 1) * t.wcet for t in tasks), inverse,
                       interference)
        if done is None:
            return None
        worst = max(worst, done - r)
    return worst


def analyse(mission: MissionProfile, board: HardwareProfile, env: TimingEnv | None = None,
            derate: Mapping[int, float] | None = None) -> list[Bound]:
    """A bound (or the reason there is none) for every timed workload of the mission.
    ``derate``: cores running below nominal speed stretch the WCETs of jobs on them."""
    env = env or TimingEnv()
    derate = derate or {}
    pool = placement_pool(mission, board)
    cores = {p.name: partition_cores(p, pool) for p in mission.partitions}
    in_windows = windowed(mission)
    out: list[Bound] = []
    for i, p in enumerate(mission.partitions):
        if not any(w.timing for w in p.workloads):
            continue
        speed = min((derate.get(c, 1.0) for c in cores[p.name]), default=1.0)
        results = iter(_partition(p, mission, cores, in_windows, board, env, speed))
        for j, w in enumerate(p.workloads):
            if w.timing is not None:
                method, bound, why = next(results)
                out.append(Bound(f"partitions[{i}].workloads[{j}].timing", p.name, w.name,
                                 w.timing.deadline, bound, method, why))
    return out


def violations(bounds: list[Bound]) -> list[Violation]:
    out = []
    for b in bounds:
        if b.response_bound_us is None:
            out.append(Violation(b.path, f"no response-time bound for {b.partition}/"
                                         f"{b.workload}: {b.why}"))
        elif b.response_bound_us > b.deadline_us:
            out.append(Violation(b.path, f"{b.partition}/{b.workload} may respond in "
                                         f"{b.response_bound_us} us ({b.method}), after its "
                                         f"deadline of {b.deadline_us} us"
                                 + (f"; {b.why}" if b.why else "")))
    return out


def timing_violations(mission: MissionProfile) -> list[Violation]:
    """The timing declarations themselves: wcet <= deadline <= period."""
    out = []
    for i, p in enumerate(mission.partitions):
        for j, w in enumerate(p.workloads):
            t, at = w.timing, f"partitions[{i}].workloads[{j}].timing"
            if t is None:
                continue
            if t.deadline_us is not None and t.deadline_us > t.period_us:
                out.append(Violation(f"{at}.deadline_us", f"{t.deadline_us} is after the "
                                     f"next release ({t.period_us} us): deadlines after the "
                                     "period are not analysed"))
            if t.wcet_us > t.deadline:
                out.append(Violation(f"{at}.wcet_us", f"{t.wcet_us} exceeds the deadline "
                                     f"{t.deadline} us: no schedule can meet it"))
        rt, timed = p.budget.rt, sum(1 for w in p.workloads if w.timing is not None)
        if p.budget.mode == "rt" and rt is not None and rt.priority + timed - 1 > 99:
            out.append(Violation(f"partitions[{i}].budget.rt.priority", f"{timed} timed "
                                 f"workloads take priorities {rt.priority} to "
                                 f"{rt.priority + timed - 1} (deadline-monotonic), past "
                                 "SCHED_FIFO's 99: at most " f"{100 - timed}"))
    return out


# -- one partition ------------------------------------------------------------------------
def _partition(p: Partition, m: MissionProfile, cores: dict[str, frozenset[int]],
               in_windows: set[str], board: HardwareProfile, env: TimingEnv,
               speed: float) -> list[Result]:
    """One result per timed workload, in the partition's order."""
    timed = [w for w in p.workloads if w.timing is not None]

    def every(why: str) -> list[Result]:
        return [("none", None, why)] * len(timed)

    untimed = [w.name for w in p.workloads if w.timing is None]
    if untimed:
        return every(f"workload(s) {untimed} of the same partition have no timing and may "
                     "use its whole budget: declare theirs too")
    prio = policies_for(p)
    tasks = [_Task(math.ceil(w.timing.wcet_us / speed) + env.latency_us, w.timing.period_us,
                   getattr(prio[w.name], "priority", 0))
             for w in timed if w.timing is not None]
    if p.name in in_windows:
        return [_windows(p, m, tasks, t, env) for t in tasks]
    mine = cores[p.name]
    hp_dl = [(d.runtime_us, d.period_us, env.tick_us) for d in
             (x.budget.deadline for x in m.partitions
              if x.budget.mode == "deadline" and x.name != p.name) if d is not None]
    if p.budget.mode == "deadline":
        return _deadline(p, tasks, m, board, env)
    if len(mine) != 1:
        return every(f"it spans {len(mine)} cores {sorted(mine)}; the analysis is for one "
                     "core: give it one dedicated core, or budgets that leave it one core "
                     "of the pool")
    if p.budget.mode == "rt":
        rt = p.budget.rt
        assert rt is not None
        out: list[Result] = []
        for task in tasks:
            # Other rt partitions on the core with a workload at or above this one's
            # priority take their whole budget (and a tick) when they run.
            rivals = [x for x in m.partitions if x.name != p.name and x.budget.mode == "rt"
                      and x.budget.rt is not None and cores[x.name] & mine
                      and _top_priority(x) >= task.priority]
            hp = hp_dl + [(x.budget.rt.runtime_us, x.budget.rt.period_us, env.tick_us)
                          for x in rivals if x.budget.rt is not None]
            out.append(_server(tasks, task, rt.runtime_us, rt.period_us, hp,
                               [x.name for x in rivals], "rt", env, "fp"))
        return out
    shared = [x.name for x in m.partitions if x.name != p.name and cores[x.name] & mine]
    if not p.cpu.dedicated_cores or shared:
        return every("a CFS partition shares its core with other CFS groups "
                     f"({shared or 'the shared pool'}), and CFS gives no group priority "
                     "over another: use rt mode, or one dedicated core")
    if not (p.cpu.exclusive and env.os_isolated):
        return every("the OS's processes may run on its dedicated core: make it exclusive "
                     "and set isolate_os in the agent config, or use rt mode")
    rts = [(x.budget.rt.runtime_us, x.budget.rt.period_us, env.tick_us)
           for x in m.partitions if x.budget.rt is not None and cores[x.name] & mine]
    # CFS: one workload's jobs come in release order; several share the core fairly.
    order = "fcfs" if len(tasks) == 1 else "busy"
    return [_server(tasks, t, min(p.budget.quota_us, p.budget.period_us), p.budget.period_us,
                    hp_dl + rts, [], "cfs", env, order) for t in tasks]


def _top_priority(x: Partition) -> int:
    return max((getattr(s, "priority", 0) for s in policies_for(x).values()), default=0)


def fp_response(tasks: list[_Task], task: _Task, inverse: Callable[[int], int],
                interference: list[tuple[int, int, int]]) -> int | None:
    """Fixed priorities: the smallest t that supplies the job and every job of the
    partition's higher-priority tasks released in [0, t), beside the interference."""
    higher = [k for k in tasks if k is not task and k.priority > task.priority]
    t = _fixpoint(task.wcet, lambda t: task.wcet + _demand(higher, t)
                  + _interference(interference, t), inverse)
    # A response past the period means backlog: outside what this analysis covers.
    return t if t is not None and t <= task.period else None


def _server(tasks: list[_Task], task: _Task, budget: int, period: int,
            hp: list[tuple[int, int, int]], rivals: list[str], kind: str, env: TimingEnv,
            order: str) -> Result:
    """One task's bound in a budget server. ``order``: ``fp`` (fixed priorities),
    ``fcfs`` (jobs in release order) or ``busy`` (CFS-fair: the whole busy period)."""
    def respond(inverse: Callable[[int], int],
                extra: list[tuple[int, int, int]]) -> int | None:
        if order == "fp":
            return fp_response(tasks, task, inverse, extra)
        if order == "fcfs":
            return fcfs_response(tasks, inverse, extra)
        return busy_period(tasks, inverse, extra)

    window = _window_demand(tasks, period)
    need_budget = window  # never throttled with at least this much per period
    fits = (f"a budget of {need_budget} us per {period} us would never run out"
            if need_budget <= period else
            f"no budget per {period} us suffices ({need_budget} us of demand per period): "
            "fewer or lighter workloads here, or a longer period")
    if window <= budget:
        bound = respond(lambda x: x, hp)
        return (f"{kind} budget never exhausted ({window} of {budget} us per {period} us)",
                bound, "" if bound is not None else
                f"with the higher-priority load on its core ({rivals or 'SCHED_DEADLINE'}) "
                "a job can still run when the next is released")
    if hp:
        return "none", None, (f"the {kind} budget can run out ({window} us of demand per "
                              f"{period} us against {budget}) while higher-priority "
                              f"reservations ({rivals or 'SCHED_DEADLINE'}) share the core: "
                              f"{fits}")
    if budget - env.tick_us <= 0:
        return "none", None, (f"a budget of {budget} us is within one tick "
                              f"({env.tick_us} us) of nothing: {fits}")
    bound = respond(lambda x: _inverse_deferrable(x + env.tick_us, budget, period), [])
    why = fits if bound is not None else f"a job can still run when the next is released: {fits}"
    return f"{kind} deferrable server ({budget} us per {period} us)", bound, why


def _layout(m: MissionProfile, name: str) -> list[tuple[int, tuple[tuple[int, int], ...]]]:
    """Per schedule: (major frame, the partition's windows as (offset, duration))."""
    return [(s.major_frame_us, tuple(sorted((w.offset_us, w.duration_us)
                                            for w in s.windows if w.partition == name)))
            for s in m.schedules]


def sbf_windows(t: int, windows: list[tuple[int, int]], frame: int) -> int:
    """Least supply in any window of length t from (start, end) slices repeated every
    frame: the worst start is the end of a slice."""
    per_frame = sum(e - s for s, e in windows)
    q, r = divmod(t, frame)
    worst = None
    for _, a in windows:
        got = sum(max(0, min(e + k * frame, a + r) - max(s + k * frame, a))
                  for k in (0, 1, 2) for s, e in windows)
        worst = got if worst is None else min(worst, got)
    return q * per_frame + (worst or 0)


def _inverse_windows(x: int, windows: list[tuple[int, int]], frame: int) -> int:
    if x <= 0:
        return 0
    lo, hi = x, HORIZON_US + 1
    if sbf_windows(hi, windows, frame) < x:
        return HORIZON_US + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if sbf_windows(mid, windows, frame) >= x:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _windows(p: Partition, m: MissionProfile, tasks: list[_Task], task: _Task,
             env: TimingEnv) -> Result:
    """Time windows: the partition alone on its cores inside its windows (admission's
    rule), frozen outside them. Each window loses two latency allowances: its thaw, and
    the previous owner's freeze taking hold."""
    layouts = _layout(m, p.name)
    absent = [s.name for s, (_, wins) in zip(m.schedules, layouts, strict=True) if not wins]
    if absent:
        return "none", None, (f"schedule(s) {absent} give it no window: its jobs would wait "
                              "for a mode switch")
    if len(set(layouts)) > 1:
        return "none", None, ("its windows differ between schedules, and a mode switch "
                              "between layouts is not analysed: give it the same windows "
                              "in every schedule")
    if p.budget.mode != "cfs":
        return "none", None, "rt and deadline budgets inside time windows are not analysed"
    demand = _window_demand(tasks, p.budget.period_us)
    if demand > p.budget.quota_us:
        return "none", None, (f"its CFS cap could throttle it inside its windows ({demand} "
                              f"us of demand per {p.budget.period_us} us against a quota of "
                              f"{p.budget.quota_us}): a quota of {demand} us would never "
                              "run out")
    frame, wins = layouts[0]
    loss = 2 * env.latency_us
    slices = [(o + loss, o + d) for o, d in wins if d > loss]
    if not slices:
        return "none", None, (f"every window is within {loss} us (two latency "
                              "allowances) of nothing")
    order = fcfs_response if len(tasks) == 1 else busy_period
    bound = order(tasks, lambda x: _inverse_windows(x, slices, frame), [])
    return (f"time windows ({sum(e - s for s, e in slices)} of {frame} us per frame, "
            f"{loss} us lost per window)", bound, "" if bound is not None else
            "its windows supply less than its workloads need")


def _deadline(p: Partition, tasks: list[_Task], m: MissionProfile, board: HardwareProfile,
              env: TimingEnv) -> list[Result]:
    return [_deadline_one(p, tasks, m, board, env)] * len(tasks)


def _deadline_one(p: Partition, tasks: list[_Task], m: MissionProfile,
                  board: HardwareProfile, env: TimingEnv) -> Result:
    d = p.budget.deadline
    assert d is not None
    if len(tasks) != 1:
        return "none", None, "a SCHED_DEADLINE partition holds one task"
    (task,) = tasks
    if task.period < d.period_us:
        return "none", None, (f"jobs every {task.period} us are more often than the "
                              f"reservation's period {d.period_us} us")
    servers = [x.budget.deadline for x in m.partitions if x.budget.deadline is not None
               and x.budget.mode == "deadline"]
    dens = [(s.runtime_us + env.tick_us) / min(s.deadline_us, s.period_us) for s in servers]
    cpus = len(board.core_ids)
    # No more reservations than CPUs: each gets a CPU whenever it runs (the class above
    # RT and CFS); else the global-EDF density test, with every overrun counted.
    if len(dens) > cpus and sum(dens) > cpus - (cpus - 1) * max(dens):
        return "none", None, (f"the SCHED_DEADLINE reservations' density {sum(dens):.2f} "
                              f"fails the global-EDF test on {cpus} CPU(s)")
    effective = d.runtime_us - env.tick_us
    if effective <= 0:
        return "none", None, (f"a runtime of {d.runtime_us} us is within one tick of "
                              "nothing")
    extra = (math.ceil(task.wcet / effective) - 1) * d.period_us
    return (f"SCHED_DEADLINE server ({d.runtime_us}/{d.deadline_us}/{d.period_us} us)",
            d.deadline_us + extra,
            "" if extra == 0 else f"a runtime of {task.wcet + env.tick_us} us per job")
