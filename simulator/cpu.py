"""The simulated board: cores, a kernel-like cgroup v2 tree and a CPU model that fills
``cpu.stat`` the way the kernel does for CFS bandwidth (quota, period, burst, throttling),
cpusets, freezing and SCHED_DEADLINE reservations.

The model advances in fixed slices (1 ms by default). In each slice, every core offers
``slice x speed x capacity`` of work; runnable tasks (alive, not frozen, not throttled)
are served SCHED_DEADLINE first (earliest deadline), then CFS in order of least CPU
received (fair over time), each on the allowed core with the most time left, at most
one core at a time. CPU time is charged to the task's group and every ancestor; a group
that spends its quota is throttled until its period ends.
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

PID_BASE = 10_000_000  # above any real pid_max: a stray kill() can never hit a real process
LATENCY_US = 3000.0  # half of CFS's 6 ms target latency: a sleeper's wake-up credit


@dataclass
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
    throttled_since: float | None = None
    active: bool = False
    throttled_this: bool = False
    used_this: float = 0.0
    started: bool = False
    """The bandwidth timer runs (the kernel starts it at the group's first activity)."""
    active_before: bool = False
    # counters (cpu.stat, memory.events, pids.events)
    usage_us: float = 0.0
    nr_periods: int = 0
    nr_throttled: int = 0
    throttled_us: float = 0.0
    nr_bursts: int = 0
    burst_used_us: float = 0.0
    oom_kill: int = 0
    pids: set[int] = field(default_factory=set)


@dataclass
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
            st.runtime_left = st.quota_us or 0.0
            st.period_end = self.board.now_us + st.period_us
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
                 slice_us: float = 1000.0) -> None:
        self.hw = hw
        self.now_us = 0.0
        self.slice_us = slice_us
        self.rng = random.Random(seed)  # noqa: S311 - a simulation, seeded on purpose
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
        t.limited = [g.sim for g in chain if g.sim.quota_us is not None]
        t.mem_limit = min((g.sim.memory_max_mib for g in chain
                           if g.sim.memory_max_mib is not None), default=None)
        t.frozen = any(g.sim.frozen for g in chain)
        t.partition = _partition_of(t.group)
        t.seen = self.version

    def step(self) -> float:
        """Advance the model by one slice; returns when it next needs to run (us)."""
        now, dt = self.now_us, self.slice_us
        end = now + dt
        rolled: set[int] = set()
        runnable: list[tuple[Task, list[_Group]]] = []
        wake = float("inf")
        version = self.version
        for t in self.tasks.values():  # exits only mark tasks; reaping happens later
            if not t.alive:
                continue
            if t.seen == version and now < t.wake_us:
                if t.wake_us < wake:  # noqa: PLR1730 - asleep; min() is slower in this loop
                    wake = t.wake_us
                continue
            if t.seen != self.version:
                self._refresh(t)
            for st in t.limited:
                if id(st) not in rolled:
                    rolled.add(id(st))
                    self._rollover(st, now)
            d = t.demand
            if d.crash_due(now):
                self.exit(t, 1)
                continue
            if t.mem_limit is not None and d.memory_at(now) > t.mem_limit:
                for g in t.chain:
                    g.sim.oom_kill += 1
                self.exit(t, -9)
                continue
            if t.frozen:
                t.wake_us = float("inf")  # a thaw changes the tree version
                continue
            d.advance(now, dt)
            if d.work_us <= 0:
                t.wake_us = d.next_event_us(now, t.mem_limit)
                wake = min(wake, t.wake_us)
                continue
            for st in t.limited:
                if not st.started:
                    # The kernel starts a group's period timer when it first runs: each
                    # group's periods have their own phase.
                    st.started, st.period_end = True, now + st.period_us
                    st.runtime_left = st.quota_us or 0.0
                st.active = True
            blocked = [st for st in t.limited if st.runtime_left <= 0]
            if blocked:
                for st in blocked:  # wants CPU with its quota spent: throttled
                    if st.throttled_since is None:
                        st.throttled_since, st.throttled_this = now, True
                t.wake_us = max(st.period_end for st in blocked)
                wake = min(wake, t.wake_us)
                continue
            t.wake_us = now
            runnable.append((t, t.chain))
        if runnable:
            wake = end
        if self._online_seen != version:
            self._online = [c for c in self.speed if self.capacity.get(c, 0) > 0]
            self._online_seen = version
        free = dict.fromkeys(self._online, dt)
        given: dict[int, dict[str | None, float]] = {c: {} for c in free}
        if not runnable:
            self.ran = {}
            self.now_us = end
            return wake
        # SCHED_DEADLINE first, earliest period end first, each on its emptiest core.
        dl = sorted((x for x in runnable if x[0].deadline is not None),
                    key=lambda x: x[0].dl_period_end)
        for t, chain in dl:
            assert t.deadline is not None
            if end > t.dl_period_end:
                t.dl_left, t.dl_period_end = t.deadline[0], now + t.deadline[2]
            cpus = [c for c in t.cpus if free.get(c, 0) > 1e-9]
            if cpus:
                core = max(cpus, key=lambda c: (free[c], -c))
                tau = min(free[core], t.dl_left, self._cap(t, chain, core, dt))
                t.dl_left -= tau
                self._run(t, chain, core, tau, now, dt - free[core] + tau, given)
                free[core] -= tau
        # CFS: spread tasks over their allowed cores, then time-slice each core.
        placed: dict[int, list[tuple[Task, list[_Group]]]] = {c: [] for c in free}
        cfs = sorted((x for x in runnable if x[0].deadline is None),
                     key=lambda x: (len(x[0].cpus), x[0].pid))
        for t, chain in cfs:
            cpus = [c for c in t.cpus if free.get(c, 0) > 1e-9]
            if cpus:
                core = min(cpus, key=lambda c: (len(placed[c]), -free[c], c))
                placed[core].append((t, chain))
        for core, items in placed.items():
            if not items:
                continue
            # CFS on a shared core: the task with the least CPU received runs first for
            # the slice; a task waking from sleep gets no more than a short credit
            # (min_vruntime - latency/2), as the kernel places sleepers.
            awake = [t.vruntime for t, _ in items if t.last_run_slice >= now - dt - 1e-6]
            floor = (min(awake) if awake else min(t.vruntime for t, _ in items)) - LATENCY_US
            for t, _ in items:
                if t.last_run_slice < now - dt - 1e-6:
                    t.vruntime = max(t.vruntime, floor)
                t.last_run_slice = now
            left = free[core]
            # Ties go to whoever ran longest ago (round robin), not to a fixed order.
            for t, ch in sorted(items, key=lambda x: (x[0].vruntime, x[0].last_given,
                                                      x[0].pid)):
                if left <= 1e-9:
                    break
                tau = min(left, self._cap(t, ch, core, dt))
                if tau > 0:
                    self._run(t, ch, core, tau, now, dt - left + tau, given)
                    t.vruntime += tau
                    t.last_given = now
                    left -= tau
            free[core] = left
        ran = {}
        for c, by in given.items():
            if by:
                ran[c] = self.last_on_core[c] = max(by, key=lambda k: by[k])
        self.ran = ran
        self.now_us = end
        return wake

    def _cap(self, t: Task, chain: list[_Group], core: int, dt: float) -> float:
        """Most CPU time ``t`` can use on ``core`` in this slice."""
        rate = self.speed[core] * self.capacity[core]
        cap = min(dt, t.demand.work_us / rate)
        for st in t.limited:
            cap = min(cap, max(0.0, st.runtime_left))
        return cap

    def _run(self, t: Task, chain: list[_Group], core: int, tau: float, now: float,
             done_at: float, given: dict[int, dict[str | None, float]]) -> None:
        if tau <= 0:
            return
        rate = self.speed[core] * self.capacity[core]
        self.busy_us[core] += tau
        p = t.partition
        given[core][p] = given[core].get(p, 0.0) + tau
        t.demand.consumed(tau * rate, now + done_at)
        for g in chain:
            st: GroupState = g.sim
            st.usage_us += tau
            if st.quota_us is not None:
                # Spending the quota is not yet a throttle: it is one only if the group
                # wants CPU again before its refill (the next slices decide that).
                st.used_this += tau
                st.runtime_left -= tau

    def _rollover(self, st: GroupState, now: float) -> None:
        if not st.started:
            return
        while now >= st.period_end:
            # The kernel's timer stays on for one idle period after activity, and
            # counts that period too.
            if st.active or st.active_before:
                st.nr_periods += 1
            st.active_before = st.active
            if st.throttled_this:
                st.nr_throttled += 1
            if st.throttled_since is not None:
                st.throttled_us += max(0.0, st.period_end - st.throttled_since)
                st.throttled_since = None
            quota = st.quota_us or 0.0
            if st.used_this > quota:
                st.nr_bursts += 1
                st.burst_used_us += st.used_this - quota
            # Unused runtime carries over, up to quota + burst (kernel: __refill_cfs_bandwidth).
            st.runtime_left = min(max(0.0, st.runtime_left) + quota, quota + st.burst_us)
            st.period_end += st.period_us
            st.active = st.throttled_this = False
            st.used_this = 0.0
