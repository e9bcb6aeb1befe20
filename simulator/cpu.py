"""The simulated board: cores, a kernel-like cgroup v2 tree and a CPU model that fills
``cpu.stat`` the way the kernel does for CFS bandwidth (quota, period, burst, throttling),
cpusets, freezing and SCHED_DEADLINE reservations.

The model advances in fixed slices (1 ms by default). In each slice, every core offers
``slice x speed x capacity`` of work; runnable tasks are served SCHED_DEADLINE first
(earliest deadline), then CFS: each task on its core unless another allowed core is
less busy, and on a shared core the least CPU received first, re-picked at the tick.
CPU time is charged to the task's group and every ancestor.

CFS bandwidth follows the kernel's mechanism (kernel/sched/fair.c, Linux 6.18), because
throttling counts depend on it: each group has a pool refilled with its quota every
period and a runtime per core, pulled from the pool 5 ms at a time
(``sched_cfs_bandwidth_slice_us``). Runtime is charged at the scheduler tick (4 ms at
Debian's HZ=250), so a running task overruns its quota by up to a tick and the debt is
paid from the next refill. A group whose runtime is spent with the pool empty is
throttled until a refill pays its debt; ``nr_throttled`` counts the period boundaries at
which it was throttled. Its tasks stay queued and are held back (and throttled time
counted) only once one is due to run. A core's runtime beyond 1 ms goes back to the
pool when the group's last task there sleeps. docs/simulator.md has the measurements.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.cgroups.fs import parse_cpu_list
from agent.models import HardwareProfile
from simulator.cgroupfs import FakeCgroup2Fs, _err, _Group
from simulator.workloads import Demand

INF = float("inf")
PID_BASE = 10_000_000  # above any real pid_max: a stray kill() can never hit a real process
LATENCY_US = 3000.0  # half of CFS's 6 ms target latency: a sleeper's wake-up credit
BANDWIDTH_SLICE_US = 5000.0  # sched_cfs_bandwidth_slice_us: pulled from the pool at once
MIN_LOCAL_US = 1000.0  # min_cfs_rq_runtime: kept on a core when the group goes idle
TICK_US = 4000.0  # HZ=250 (Debian's kernels on amd64 and arm64)
SLICE_SPENT_US = 500.0  # a task that used its slice yields to others this close behind
TICK_COST_US = 1.2  # most CPU a tick takes from the task it interrupts (0.6 us on average)


@dataclass(slots=True)
class GroupState:
    """Per-cgroup model state (on ``_Group.sim``)."""

    quota_us: float | None = None
    period_us: float = 100_000.0
    burst_us: float = 0.0
    cpus: frozenset[int] | None = None
    frozen: bool = False
    memory_max_mib: float | None = None
    # CFS bandwidth
    period_end: float = 0.0
    runtime_left: float = 0.0
    """The global pool (cfs_b->runtime)."""
    runtime_snap: float = 0.0
    local: dict[int, float] = field(default_factory=dict)
    """Runtime pulled to each core (cfs_rq->runtime_remaining); negative: a debt."""
    throttled_since: float | None = None
    """When the group ran out (cfs_rq throttled); counted in nr_throttled."""
    held_since: float | None = None
    """When a task of the throttled group was first due to run and could not: Linux
    6.18 throttles tasks only then, and counts throttled time from there."""
    used_this: float = 0.0
    started: bool = False
    """The period timer runs (started by writing cpu.max, stopped after an idle period,
    restarted on the same phase when the group pulls runtime again)."""
    idle: bool = False
    """No runtime pulled since the last expiry (cfs_b->idle)."""
    timer_set: bool = False
    """The period timer has a phase (set by the first cpu.max write)."""
    # counters (cpu.stat, memory.events, pids.events)
    usage_us: float = 0.0
    nr_periods: int = 0
    nr_throttled: int = 0
    throttled_us: float = 0.0
    nr_bursts: int = 0
    burst_used_us: float = 0.0
    oom_kill: int = 0
    pids: set[int] = field(default_factory=set)

    def forward(self, now: float) -> None:
        """hrtimer_forward_now: the next expiry after ``now``, on the timer's phase."""
        if self.period_end <= now:
            self.period_end += (now - self.period_end) // self.period_us * self.period_us
            while self.period_end <= now:
                self.period_end += self.period_us


@dataclass(slots=True)
class Task:
    pid: int
    group: _Group
    demand: Demand
    env: dict[str, str]
    started_us: float
    deadline: tuple[float, float, float] | None = None
    """SCHED_DEADLINE (runtime, deadline, period) in us."""
    dl_left: float = 0.0
    dl_period_end: float = 0.0
    alive: bool = True
    exit_status: int | None = None
    """waitstatus_to_exitcode style: >= 0 exit code, < 0 signal."""
    # Derived from the tree; recomputed when the board's topology version changes.
    seen: int = -1
    chain: list[_Group] = field(default_factory=list)
    cpus: list[int] = field(default_factory=list)
    states: list[GroupState] = field(default_factory=list)
    limited: list[GroupState] = field(default_factory=list)
    mem_limit: float | None = None
    frozen: bool = False
    partition: str | None = None
    wake_us: float = 0.0
    """Nothing can happen to this task before this time unless the tree changes."""
    vruntime: float = 0.0
    """CPU received, CFS style: the lowest runs first on a shared core."""
    last_given: float = -1.0
    """Start of the last slice in which the task got CPU."""
    last_run_slice: float = -1.0
    """Start of the last slice in which the task was runnable."""
    core: int | None = None
    """Core the task last ran on while runnable (None once it sleeps)."""
    slept: bool = False
    """It had nothing to do since it last ran: its return is a wake-up."""
    held_v: float | None = None
    """The core's virtual time when a throttle first kept the task from running."""

    def throttled_groups(self) -> list[GroupState]:
        return [st for st in self.limited if st.throttled_since is not None]


class _Steady:
    """What a slice did, when the next one could repeat it (see ``SimBoard._repeat``)."""

    def __init__(self, version: int, wake_us: float) -> None:
        self.version, self.wake_us = version, wake_us
        self.runs: list[tuple[int, Task, list[_Group]]] = []
        self.queued: list[Task] = []
        """Every task runnable or held on a busy core (their turn waits for a tick)."""
        self.limited: list[GroupState] = []
        self.ok = True

    def add(self, core: int, ran: list[tuple[Task, list[_Group]]], left: float,
            items: list[tuple[Task, list[_Group]]],
            queued: list[tuple[Task, list[GroupState]]]) -> None:
        if len(ran) > 1 or (ran and left > 1e-9):
            self.ok = False  # the core was shared or left idle in this slice
            return
        if ran:
            self.runs.append((core, ran[0][0], ran[0][1]))
        for t, _ in items:
            # A waiting task's demand must not change by itself (bursts draw at each
            # slice); periodic releases carry their own timestamps.
            if t.demand.spec.pattern not in ("runaway", "periodic") and \
                    not any(t is r for _, r, _ in self.runs):
                self.ok = False
                return
            self.queued.append(t)
            self.limited += t.limited
        for t, groups in queued:
            self.queued.append(t)
            self.limited += groups


class SimCgroupFs(FakeCgroup2Fs):
    """cgroup2 tree whose dynamic files come from the CPU model."""

    def __init__(self, root: Path, board: SimBoard) -> None:
        self.board = board
        cpus = ",".join(str(c.id) for c in board.hw.cores)
        super().__init__(root, cpus=cpus)
        self.top.sim = GroupState()

    def on_mkdir(self, group: _Group) -> None:
        group.sim = GroupState(period_end=self.board.now_us + 100_000)

    def read(self, path: Path) -> str:
        g = self._group(path.parent)
        st: GroupState | None = g.sim if g is not None else None
        if st is not None:
            name = path.name
            if name == "cpu.stat":
                return (f"usage_usec {int(st.usage_us)}\nuser_usec {int(st.usage_us)}\n"
                        f"system_usec 0\nnr_periods {st.nr_periods}\n"
                        f"nr_throttled {st.nr_throttled}\nthrottled_usec "
                        f"{int(st.throttled_us)}\nnr_bursts {st.nr_bursts}\n"
                        f"burst_usec {int(st.burst_used_us)}\n")
            if name == "memory.events":
                return f"low 0\nhigh 0\nmax 0\noom 0\noom_kill {st.oom_kill}\n"
            if name == "pids.events":
                return "max 0\n"
            if name == "cgroup.procs" and g is not None:
                return "".join(f"{p}\n" for p in sorted(self.board.pids_in(g)))
        return super().read(path)

    def write(self, path: Path, value: str) -> None:
        super().write(path, value)
        g = self._group(path.parent)
        if g is None or g.sim is None:
            return
        st: GroupState = g.sim
        v = value.strip()
        self.board.touch()
        if path.name == "cpu.max":
            quota, period = g.files["cpu.max"].split()
            st.quota_us = None if quota == "max" else float(quota)
            st.period_us = float(period)
            # tg_set_cfs_bandwidth: refill, clear the cores' runtime, unthrottle, and
            # start the period timer if it is not running. Its phase is the kernel's
            # choice: measured here, groups written in the same millisecond got phases
            # spread over the whole period, so the model draws it; later writes keep it.
            now = self.board.now_us
            st.runtime_left = st.runtime_snap = st.quota_us or 0.0
            st.local.clear()
            if st.throttled_since is not None:
                if st.held_since is not None:
                    st.throttled_us += max(0.0, now - st.held_since)
                st.throttled_since = st.held_since = None
            if not st.timer_set:
                st.timer_set = True
                st.period_end = now + self.board.jitter.uniform(0.0, st.period_us)
            elif not st.started:
                st.forward(now)
            st.started = st.quota_us is not None
            st.idle = False
        elif path.name == "cpu.max.burst":
            st.burst_us = float(v)
        elif path.name == "cpuset.cpus":
            st.cpus = parse_cpu_list(v) if v else None
        elif path.name == "cgroup.freeze":
            st.frozen = v == "1"
        elif path.name == "memory.max":
            st.memory_max_mib = None if v == "max" else int(v) / (1 << 20)
        elif path.name == "cgroup.procs":
            self.board.move(int(v), g)

    def _w_cgroup_procs(self, path: Path, g: _Group, v: str) -> None:
        if not v.isdigit() or int(v) not in self.board.tasks:
            raise _err(path, "kernel refused write: No such process", 3, v)


def _partition_of(g: _Group) -> str | None:
    parts = g.path.strip("/").split("/")
    return parts[1][2:] if len(parts) >= 2 and parts[1].startswith("p-") else None


class SimBoard:
    """Cores (with speed and a capacity factor over time) and the tasks running on them."""

    def __init__(self, hw: HardwareProfile, root: Path, seed: int = 0,
                 slice_us: float = 1000.0, tick_us: float = TICK_US) -> None:
        self.hw = hw
        self.now_us = 0.0
        self.slice_us = slice_us
        self.tick_us = tick_us
        self.current: dict[int, int | None] = {}
        """The CFS task each core runs until the next tick."""
        self._steady: _Steady | None = None
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, seeded on purpose
        self.jitter = random.Random(seed ^ 0x7E1C)  # noqa: S311 - tick costs, seeded too
        self.speed = {c.id: c.relative_speed for c in hw.cores}
        self.capacity = {c.id: 1.0 for c in hw.cores}
        """Per-core factor: 0 offline, 0.6 thermally throttled, 1 nominal."""
        self.memory_mib = hw.memory_mib
        self.tasks: dict[int, Task] = {}
        self._next_pid = PID_BASE
        self.on_exit: Callable[[Task], None] = lambda t: None
        self.fs = SimCgroupFs(root, self)
        self.busy_us = {c.id: 0.0 for c in hw.cores}
        """CPU time handed out per core (for the timeline picture)."""
        self.last_on_core: dict[int, str | None] = {}
        """Partition that last ran on each core."""
        self.ran: dict[int, str | None] = {}
        """Who ran on each core in the last slice (cores that idled are absent)."""
        self.version = 0
        self._online: list[int] = []
        self._online_seen = -1
        self.on_change: Callable[[], None] = lambda: None
        """Called when something may make a task runnable (the driver wakes up)."""

    def touch(self) -> None:
        """The tree, a limit, a freeze or the capacity changed."""
        self.version += 1
        self.on_change()

    def set_capacity(self, core: int, factor: float) -> None:
        self.capacity[core] = factor
        self.touch()

    # -- tasks ---------------------------------------------------------------------
    def pids_in(self, g: _Group) -> set[int]:
        st: GroupState = g.sim
        return set(st.pids)

    def spawn(self, demand: Demand, env: dict[str, str]) -> Task:
        self._next_pid += 1
        t = Task(self._next_pid, self.fs.top, demand, env, self.now_us)
        self.tasks[t.pid] = t
        self.fs.top.sim.pids.add(t.pid)
        self.touch()
        return t

    def move(self, pid: int, g: _Group) -> None:
        t = self.tasks[pid]
        t.group.sim.pids.discard(pid)
        t.group = g
        g.sim.pids.add(pid)
        self.touch()

    def exit(self, t: Task, status: int) -> None:
        if not t.alive:
            return
        t.alive, t.exit_status = False, status
        t.group.sim.pids.discard(t.pid)
        self.on_exit(t)
        self.touch()

    def reap(self, pid: int) -> int | None:
        t = self.tasks.pop(pid, None)
        return None if t is None else t.exit_status

    # -- the CPU model -------------------------------------------------------------
    @staticmethod
    def chain(g: _Group) -> list[_Group]:
        out = []
        node: _Group | None = g
        while node is not None:
            out.append(node)
            node = node.parent
        return out

    def _cpus(self, chain: list[_Group]) -> set[int]:
        cpus = set(self.speed)
        for g in chain:
            st: GroupState = g.sim
            if st.cpus is not None:
                cpus &= st.cpus
        return {c for c in cpus if self.capacity.get(c, 0) > 0}

    def _refresh(self, t: Task) -> None:
        chain = self.chain(t.group)
        t.chain = chain
        t.cpus = sorted(self._cpus(chain))
        t.states = [g.sim for g in chain]
        t.limited = [st for st in t.states if st.quota_us is not None]
        t.mem_limit = min((g.sim.memory_max_mib for g in chain
                           if g.sim.memory_max_mib is not None), default=None)
        t.frozen = any(g.sim.frozen for g in chain)
        t.partition = _partition_of(t.group)
        t.seen = self.version

    def _is_tick(self, now: float) -> bool:
        """A scheduler tick falls in the slice starting at ``now``."""
        phase = now % self.tick_us
        return self.slice_us >= self.tick_us or phase < 1e-3 \
            or phase > self.tick_us - 1e-3 or phase + self.slice_us > self.tick_us + 1e-3

    def step(self) -> float:
        """Advance the model by one slice; returns when it next needs to run (us)."""
        now, dt = self.now_us, self.slice_us
        end = now + dt
        if self._steady is not None and self._repeat(self._steady, now, dt):
            self.now_us = end
            return end
        self._steady = None
        rolled: set[int] = set()
        runnable: list[tuple[Task, list[_Group]]] = []
        held: dict[int, list[tuple[Task, list[GroupState]]]] = {}
        """Per core: tasks still queued there whose group is throttled."""
        wake = float("inf")
        has_dl = False
        version = self.version
        for t in self.tasks.values():  # exits only mark tasks; reaping happens later
            if not t.alive:
                continue
            if t.seen == version and now < t.wake_us:
                if t.wake_us < wake:  # noqa: PLR1730 - asleep; min() is slower in this loop
                    wake = t.wake_us
                continue
            if t.seen != version:
                self._refresh(t)
            for st in t.limited:
                if now >= st.period_end and id(st) not in rolled:
                    rolled.add(id(st))
                    self._rollover(st, now)
            d = t.demand
            if d.may_crash and d.crash_due(now):
                self.exit(t, 1)
                continue
            if t.mem_limit is not None and (d.grows or d.spec.memory_mib > t.mem_limit) \
                    and d.memory_at(now) > t.mem_limit:
                for g in t.chain:
                    g.sim.oom_kill += 1
                self.exit(t, -9)
                continue
            if t.frozen:
                t.wake_us = float("inf")  # a thaw changes the tree version
                continue
            if d.work_us != INF or d.may_hang or now < d.ready_us:  # runaways stay as they are
                d.advance(now, dt)
            if d.work_us <= 0:
                t.slept = True
                if t.core is not None:
                    self._sleep(t)
                t.wake_us = d.next_event_us(now, t.mem_limit)
                wake = min(wake, t.wake_us)
                continue
            blocked = None
            for st in t.limited:  # a loop: most slices find no group throttled
                if st.throttled_since is not None:
                    blocked = t.throttled_groups()
                    break
            if blocked:  # waits for the refill that pays its debt
                refill = max(st.period_end for st in blocked)
                wake = min(wake, refill)
                if t.held_v is None and t.core is not None:
                    # Watched every slice until it is due to run (then it is held).
                    held.setdefault(t.core, []).append((t, blocked))
                    t.wake_us = now
                else:
                    t.wake_us = refill
                continue
            t.wake_us = now
            runnable.append((t, t.chain))
            has_dl = has_dl or t.deadline is not None
        pending = wake  # the next wake-up or refill of a task that is not runnable now
        if runnable:
            wake = end
        if self._online_seen != version:
            self._online = [c for c in self.speed if self.capacity.get(c, 0) > 0]
            self._online_seen = version
        free = dict.fromkeys(self._online, dt)
        given: dict[int, dict[str | None, float]] = {c: {} for c in free}
        if not runnable:
            for queued in held.values():
                for t, groups in queued:
                    t.last_run_slice = now
                    self._hold(t, groups, now, t.vruntime)
            self.ran = {}
            self.now_us = end
            return wake
        # SCHED_DEADLINE first, earliest period end first, each on its emptiest core.
        dl = sorted((x for x in runnable if x[0].deadline is not None),
                    key=lambda x: x[0].dl_period_end) if has_dl else []
        for t, chain in dl:
            assert t.deadline is not None
            if end > t.dl_period_end:
                t.dl_left, t.dl_period_end = t.deadline[0], now + t.deadline[2]
            cpus = [c for c in t.cpus if free.get(c, 0) > 1e-9]
            if cpus:
                core = max(cpus, key=lambda c: (free[c], -c))
                tau = min(free[core], t.dl_left, self._cap(t, core, dt))
                t.dl_left -= tau
                self._run(t, chain, core, tau, now, dt - free[core] + tau, given)
                free[core] -= tau
        # CFS: spread tasks over their allowed cores, then time-slice each core.
        placed: dict[int, list[tuple[Task, list[_Group]]]] = {c: [] for c in free}
        # Pinned tasks (a dedicated core) first, then the others, each in pid order.
        spread = []
        for x in runnable:
            t = x[0]
            if t.deadline is not None:
                continue
            if len(t.cpus) == 1:
                if free.get(t.cpus[0], 0) > 1e-9:
                    placed[t.cpus[0]].append(x)
            else:
                spread.append(x)
        for t, chain in spread:
            if t.core is not None and not dl and t.core in placed and not placed[t.core] \
                    and t.core in t.cpus:
                placed[t.core].append((t, chain))  # its own core is free: it stays
                continue
            cpus = t.cpus if not dl else [c for c in t.cpus if free.get(c, 0) > 1e-9]
            if cpus:
                # A task stays on its core unless another one is less busy (a load
                # balancer moves tasks to even out queues, not at every tick).
                core = min(cpus, key=lambda c: (len(placed[c]), c != t.core, -free[c], c))
                placed[core].append((t, chain))
        # A scheduler tick falls in this slice: charge the running tasks and re-pick.
        tick = self._is_tick(now)
        # Worth recording only if the next slice could repeat this one.
        steady = _Steady(self.version, pending) \
            if not dl and pending > end and not self._is_tick(end) else None
        for core, items in placed.items():
            queued = held.pop(core, [])
            for t, _ in queued:
                t.last_run_slice = now  # still queued: a throttle alone moves nothing
            if not items:
                for t, groups in queued:  # nothing else to run: each is due, and held
                    self._hold(t, groups, now, t.vruntime)
                continue
            ran_here = self._serve_one(core, items[0], now, tick, free, given) \
                if len(items) == 1 and not queued else \
                self._serve(core, items, queued, now, tick, free, given)
            if steady is not None:
                steady.add(core, ran_here, free[core], items, queued)
                if not steady.ok:
                    steady = None
        ran = {}
        for c, by in given.items():
            if by:
                ran[c] = self.last_on_core[c] = \
                    next(iter(by)) if len(by) == 1 else max(by, key=by.__getitem__)
        self.ran = ran
        self.now_us = end
        self._steady = steady
        return wake

    def _serve(self, core: int, items: list[tuple[Task, list[_Group]]],
               queued: list[tuple[Task, list[GroupState]]], now: float, tick: bool,
               free: dict[int, float], given: dict[int, dict[str | None, float]]
               ) -> list[tuple[Task, list[_Group]]]:
        """One core's CFS slice: place returning tasks, charge the tick, pick and run.
        Returns the tasks that ran, in order."""
        dt = self.slice_us
        ran: list[tuple[Task, list[_Group]]] = []
        # CFS on a shared core: the task with the least CPU received runs first for
        # the slice; a task waking from sleep gets no more than a short credit
        # (min_vruntime - latency/2), as the kernel places sleepers, and may preempt
        # at once. A throttled group's tasks stay queued (Linux 6.18 throttles a task
        # only when it is due to run): a throttle that ends before that leaves no
        # trace, and one that holds a task back keeps its lag (EEVDF).
        if len(items) == 1:
            vmin = items[0][0].vruntime
        else:
            awake = [t.vruntime for t, _ in items
                     if t.last_run_slice >= now - dt - 1e-6]
            vmin = min(awake) if awake else min(t.vruntime for t, _ in items)
        woken: set[int] = set()
        for t, _ in items:
            if t.slept:
                t.vruntime = max(t.vruntime, vmin - LATENCY_US)
                woken.add(t.pid)
            elif t.held_v is not None:
                t.vruntime += max(0.0, vmin - t.held_v)
            elif t.last_run_slice < now - dt - 1e-6:
                t.vruntime = max(t.vruntime, vmin - LATENCY_US)
            t.slept, t.held_v = False, None
            t.last_run_slice = now
        left = free[core]
        if tick:
            # The tick's own cost, not charged to any task (measured: a spinner alone
            # on a core is charged 99.985 % of wall time). Without it, runtimes
            # charged in whole ticks would tie exactly, which real ones never do.
            left -= self.jitter.uniform(0.0, TICK_COST_US)
        cur = self.current.get(core)
        if tick:
            # The tick charges the running task's group whether or not it keeps the
            # core: out of runtime with the pool empty, it is throttled now.
            for t, _ in items:
                if t.pid == cur:
                    self._pull(t, core, now, BANDWIDTH_SLICE_US)
        # At a tick the running task has used its slice: it keeps the core only if
        # it is behind the others by more than the noise of tick timing (EEVDF gives
        # it a new deadline behind theirs). Ties go to whoever ran longest ago.
        order: list[tuple[Task, list[_Group], list[GroupState] | None]] = [
            (t, ch, None) for t, ch in items] + [(t, [], g) for t, g in queued]
        if len(order) > 1:
            order.sort(key=lambda x: (
                x[0].vruntime + (SLICE_SPENT_US if x[0].pid == cur else 0.0),
                x[0].last_given, x[0].pid))
        if not tick and not woken and len(order) > 1:
            # Between ticks the running task keeps the core (and is not charged:
            # it may overrun its quota until the tick).
            order.sort(key=lambda x: x[0].pid != cur)
        for t, ch, waiting in order:
            if left <= 1e-9:
                break
            if waiting is not None:  # due to run, but its group is throttled
                self._hold(t, waiting, now, vmin)
                continue
            # A pick only checks (throttle_cfs_rq asks the pool for 1 ns); a wake-up
            # is charged like a tick and asks for a whole slice.
            target = BANDWIDTH_SLICE_US if t.pid in woken else 1e-3
            if (t.pid != cur or tick) and not self._pull(t, core, now, target):
                self._hold(t, t.throttled_groups(), now, vmin)
                continue
            tau = min(left, self._cap(t, core, dt))
            if tau > 0:
                self._run(t, ch, core, tau, now, dt - left + tau, given)
                t.vruntime += tau
                t.last_given = now
                t.core, cur = core, t.pid
                left -= tau
                ran.append((t, ch))
        self.current[core] = cur
        free[core] = left
        return ran

    def _serve_one(self, core: int, item: tuple[Task, list[_Group]], now: float,
                   tick: bool, free: dict[int, float],
                   given: dict[int, dict[str | None, float]]
                   ) -> list[tuple[Task, list[_Group]]]:
        """``_serve`` for a core with one task and nothing held (the common case)."""
        t, ch = item
        woke = t.slept
        if t.held_v is not None and not woke:
            t.vruntime += max(0.0, t.vruntime - t.held_v)
        t.slept, t.held_v = False, None
        t.last_run_slice = now
        left = free[core]
        cur = self.current.get(core)
        if tick:
            left -= self.jitter.uniform(0.0, TICK_COST_US)
            if t.pid == cur:
                self._pull(t, core, now, BANDWIDTH_SLICE_US)
        if (t.pid != cur or tick) and not self._pull(
                t, core, now, BANDWIDTH_SLICE_US if woke else 1e-3):
            self._hold(t, t.throttled_groups(), now, t.vruntime)
            free[core] = left
            return []
        tau = min(left, self._cap(t, core, self.slice_us))
        if tau <= 0:
            free[core] = left
            return []
        self._run(t, ch, core, tau, now, self.slice_us - left + tau, given)
        t.vruntime += tau
        t.last_given = now
        t.core = core
        self.current[core] = t.pid
        free[core] = left - tau
        return [item]

    def _repeat(self, sd: _Steady, now: float, dt: float) -> bool:
        """Mid-tick, with nothing due to wake and the tree unchanged, a slice in which
        every busy core ran one task for all of it repeats itself: the same tasks run
        again. False (nothing changed) when anything could make this slice differ."""
        if sd.version != self.version or now >= sd.wake_us or self._is_tick(now):
            return False
        for st in sd.limited:
            if now >= st.period_end:
                return False  # a refill is due
        for core, t, _ in sd.runs:
            d = t.demand
            d.advance(now, dt)  # idempotent for one ``now``: the full step may redo it
            if d.work_us < dt * self.speed[core] * self.capacity[core] \
                    or d.may_crash or d.grows or t.demand.spec.hang_at_s is not None:
                return False
        given: dict[int, dict[str | None, float]] = {c: {} for c, _, _ in sd.runs}
        for core, t, chain in sd.runs:
            self._run(t, chain, core, dt, now, dt, given)
            t.vruntime += dt
            t.last_given = now
        for t in sd.queued:
            t.last_run_slice = now
        return True

    def _cap(self, t: Task, core: int, dt: float) -> float:
        """Most CPU time ``t`` can use on ``core`` in this slice."""
        rate = self.speed[core] * self.capacity[core]
        return min(dt, t.demand.work_us / rate)

    def _pull(self, t: Task, core: int, now: float, target: float) -> bool:
        """The kernel's check at a tick, a wake-up or a pick (__assign_cfs_rq_runtime):
        a group out of local runtime on ``core`` pulls up to ``target`` from its pool;
        with the pool empty it is throttled and ``t`` cannot run."""
        ok = True
        for st in t.limited:
            local = st.local.get(core, 0.0)
            if local > 0:
                continue
            if not st.started:  # start_cfs_bandwidth
                st.started = True
                st.forward(now)
            amount = min(max(0.0, st.runtime_left), target - local)
            if amount > 0:
                st.runtime_left -= amount
                st.local[core] = local = local + amount
                st.idle = False
            if local <= 0:
                if st.throttled_since is None:
                    st.throttled_since = now
                ok = False
        return ok

    @staticmethod
    def _hold(t: Task, groups: list[GroupState], now: float, vmin: float) -> None:
        """``t`` is due to run and its group is throttled: the task is throttled now."""
        if t.held_v is None:
            t.held_v = vmin
        for st in groups:
            if st.held_since is None:
                st.held_since = now

    def _sleep(self, t: Task) -> None:
        """The task's last runnable moment on its core has passed: its groups hand the
        core's local runtime beyond 1 ms back to the pool (return_cfs_rq_runtime)."""
        core, t.core = t.core, None
        if core is None:
            return
        if self.current.get(core) == t.pid:
            self.current[core] = None
        for st in t.limited:
            slack = st.local.get(core, 0.0) - MIN_LOCAL_US
            if slack > 0 and not any(o.core == core and any(x is st for x in o.limited)
                                     for o in self.tasks.values() if o is not t):
                st.local[core] -= slack
                st.runtime_left += slack

    def _run(self, t: Task, chain: list[_Group], core: int, tau: float, now: float,
             done_at: float, given: dict[int, dict[str | None, float]]) -> None:
        if tau <= 0:
            return
        rate = self.speed[core] * self.capacity[core]
        self.busy_us[core] += tau
        p = t.partition
        given[core][p] = given[core].get(p, 0.0) + tau
        t.demand.consumed(tau * rate, now + done_at)
        for st in t.states:
            st.usage_us += tau
        if t.deadline is None:  # SCHED_DEADLINE time is not CFS bandwidth
            for st in t.limited:
                st.used_this += tau
                st.local[core] = st.local.get(core, 0.0) - tau
        else:
            for st in t.limited:
                st.used_this += tau

    def _rollover(self, st: GroupState, now: float) -> None:
        if not st.started:
            return
        while now >= st.period_end:
            # do_sched_cfs_period_timer: count the period; a group throttled at this
            # moment counts as throttled in it; refill, then pay the throttled cores'
            # debts and unthrottle. An expiry marks the timer idle, a pull clears
            # the mark, and a mark still set at the next expiry stops the timer.
            st.nr_periods += 1
            quota = st.quota_us or 0.0
            st.runtime_left += quota
            if st.runtime_snap > st.runtime_left:  # more than the quota was used
                st.nr_bursts += 1
                st.burst_used_us += st.runtime_snap - st.runtime_left
            st.runtime_left = st.runtime_snap = min(st.runtime_left, quota + st.burst_us)
            st.period_end += st.period_us
            st.used_this = 0.0
            if st.throttled_since is None:
                if st.idle:
                    st.started = False
                    return
                st.idle = True
                continue
            st.nr_throttled += 1
            for core, local in st.local.items():
                if local <= 0 and st.runtime_left > 0:
                    amount = min(-local + 1e-3, st.runtime_left)
                    st.runtime_left -= amount
                    st.local[core] = local + amount
            if all(v > 0 for v in st.local.values()):
                if st.held_since is not None:
                    st.throttled_us += max(0.0, st.period_end - st.period_us - st.held_since)
                st.throttled_since = st.held_since = None
            st.idle = False
