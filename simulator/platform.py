"""The engine's platform on a simulated board: tasks instead of processes, loop timers
instead of the timekeeper process, virtual clocks."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from agent.cgroups import CgroupBackend
from agent.cgroups.backend import partition_dir, workload_dir
from agent.errors import AgentError
from agent.events import EventLog
from agent.models import MissionProfile, Schedule
from agent.runtime import procs
from agent.runtime.ops import Launch
from agent.status import WindowsStatus
from agent.timing.enforcer import WindowStats, active_schedule
from agent.timing.windows import edges, running_at
from simulator.cpu import SimBoard, Task
from simulator.workloads import Demand, PatternSpec

JobSink = Callable[[str, str, int, int], None]
# Fork to first instruction of a new workload (bench/apply_latency.py measures ~6 ms for
# the whole apply; the exec itself is a few ms of that).
EXEC_US = 3000.0


class SimProcesses:
    def __init__(self, board: SimBoard) -> None:
        self.board = board

    def start_ticks(self, pid: int) -> int | None:
        t = self.board.tasks.get(pid)
        return int(t.started_us) if t else None

    def parent_pid(self, pid: int) -> int | None:
        return 1 if pid in self.board.tasks else None

    def environ(self, pid: int) -> dict[str, str]:
        t = self.board.tasks.get(pid)
        return dict(t.env) if t else {}

    def is_alive(self, pid: int) -> bool:
        t = self.board.tasks.get(pid)
        return bool(t and t.alive)

    def cmdline(self, pid: int) -> str:
        return ""


@dataclass
class SimOps:
    """ProcessOps on simulated tasks."""

    board: SimBoard
    patterns: dict[str, PatternSpec]
    job_sink: JobSink | None = None

    def __post_init__(self) -> None:
        self._watchers: dict[int, Callable[[], None]] = {}
        self._exec_free_us = 0.0
        self.board.on_exit = self._exited

    def _exited(self, t: Task) -> None:
        cb = self._watchers.pop(t.pid, None)
        if cb is not None:
            asyncio.get_running_loop().call_soon(cb)

    def prepare(self) -> None:
        pass  # simulated processes need no spawner

    def helpers(self) -> list[int]:
        return []

    def placement(self, cgroup_version: str) -> str:
        return "simulated"

    async def launch_many(self, backend: CgroupBackend,
                          reqs: Sequence[Launch]) -> list[int | AgentError]:
        out: list[int | AgentError] = []
        for r in reqs:  # one after another, as launch() models the agent's execs
            try:
                out.append(self.launch(backend, r))
            except AgentError as exc:
                out.append(exc)
        return out

    def launch(self, backend: CgroupBackend, req: Launch) -> int:
        key = f"{req.partition}/{req.workload}"
        main = req.env.get(procs.ENV_WORKLOAD) == key
        spec = self.patterns.get(key, PatternSpec()) if main else PatternSpec()
        def report(response_us: int, deadline_us: int) -> None:
            # Looked up at each job: a restarted agent receives the reports.
            if self.job_sink is not None:
                self.job_sink(req.partition, req.workload, response_us, deadline_us)

        # The agent starts processes one after another: each exec waits for the previous.
        ready = max(self.board.now_us, self._exec_free_us) + EXEC_US
        self._exec_free_us = ready
        demand = Demand(spec, self.board.rng, self.board.now_us, report if main else None,
                        exec_us=ready - self.board.now_us)
        task = self.board.spawn(demand, dict(req.env))
        if req.sched is not None and req.sched.kind == "deadline":
            self._admit_deadline(req)
            task.deadline = (req.sched.runtime_ns / 1000, req.sched.deadline_ns / 1000,
                             req.sched.period_ns / 1000)
        leaf = backend.prefix, partition_dir(req.partition), workload_dir(req.workload)
        self.board.fs.write(self.board.fs.root.joinpath(*leaf, "cgroup.procs"), str(task.pid))
        if not main:  # a health check: it answers at once, successfully
            asyncio.get_running_loop().call_later(0.001, self.board.exit, task, 0)
        return task.pid

    def _admit_deadline(self, req: Launch) -> None:
        assert req.sched is not None
        total = sum(t.deadline[0] / t.deadline[2] for t in self.board.tasks.values()
                    if t.alive and t.deadline)
        total += req.sched.runtime_ns / req.sched.period_ns
        if total > 0.95 * len(self.board.speed):
            raise AgentError(f"cannot start {req.command[0]!r}: set SCHED_DEADLINE: Device "
                             "or resource busy [errno 16] - kernel admission control "
                             "refused the reservation")

    def watch(self, pid: int, on_exit: Callable[[], None]) -> object | None:
        t = self.board.tasks.get(pid)
        if t is None or not t.alive:
            return None
        self._watchers[pid] = on_exit
        return pid

    def unwatch(self, handle: object) -> None:
        assert isinstance(handle, int)
        self._watchers.pop(handle, None)

    def reap(self, pid: int) -> int | None:
        return self.board.reap(pid)

    def kill(self, pid: int, sig: signal.Signals) -> None:
        t = self.board.tasks.get(pid)
        if t is None or not t.alive:
            return
        if sig == signal.SIGTERM and t.demand.spec.ignores_sigterm:
            return
        self.board.exit(t, -int(sig))


class SimWindows:
    """Windows enforced by loop timers on the simulated tree (exact edges)."""

    def __init__(self, backend: CgroupBackend, events: EventLog, cpus: list[int]) -> None:
        self.backend = backend
        self.events = events
        self.mode: str | None = None
        self.stats: dict[str, WindowStats] = {}
        self.edges_seen: list[dict[str, Any]] = []
        self._schedule: Schedule | None = None
        self._pending: Schedule | None = None
        self._windowed: frozenset[str] = frozenset()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int | None:
        return None

    async def start(self, mission: MissionProfile, mode: str | None) -> None:
        await self.stop()
        sched = active_schedule(mission, mode)
        windowed = frozenset(w.partition for s in mission.schedules for w in s.windows)
        if sched is None or not windowed:
            return
        self._schedule, self._windowed, self.mode = sched, windowed, sched.name
        self.stats = {p: WindowStats() for p in windowed}
        loop = asyncio.get_running_loop()
        self._frame_start = loop.time()
        inside = running_at(sched, windowed, 0)
        for p in windowed:
            self.backend.freeze(p, None, p not in inside)
        self._queue = [e for e in edges(sched, windowed) if e.offset_us > 0]
        self._arm()

    def _arm(self) -> None:
        assert self._schedule is not None
        loop = asyncio.get_running_loop()
        if not self._queue:
            self._frame_start += self._schedule.major_frame_us / 1e6
            if self._pending is not None:
                self._schedule, self._pending = self._pending, None
                self.mode = self._schedule.name
                inside = running_at(self._schedule, self._windowed, 0)
                for p in self._windowed:
                    if p not in inside:
                        self.backend.freeze(p, None, True)
                self.events.emit("mode.switched", f"schedule/{self.mode}",
                                 "at a major-frame boundary")
            self._queue = list(edges(self._schedule, self._windowed))
        e = self._queue.pop(0)
        due = self._frame_start + e.offset_us / 1e6
        self._timer = loop.call_at(due, self._fire, e, due)

    def _fire(self, e: Any, due: float) -> None:
        usage = self.backend.cpu_sample(e.partition).usage_ns
        if e.kind == "thaw":
            self.backend.freeze(e.partition, None, False)
            self.stats[e.partition].on_thaw(int(due * 1e9), int(due * 1e9), usage)
        else:
            self.backend.freeze(e.partition, None, True)
            self.stats[e.partition].on_freeze(usage)
        self.edges_seen.append({"k": e.kind, "p": e.partition, "t": due})
        self._arm()

    def switch(self, mission: MissionProfile, mode: str) -> None:
        sched = active_schedule(mission, mode)
        if sched is None:
            raise AgentError(f"mission {mission.name!r} has no schedule named {mode!r}")
        self._pending = sched

    def until_boundary_s(self) -> float:
        if self._timer is None or self._schedule is None:
            return 0.0
        end = self._frame_start + self._schedule.major_frame_us / 1e6
        return max(0.0, end - asyncio.get_running_loop().time())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for p in self._windowed:
            with contextlib.suppress(AgentError):
                self.backend.freeze(p, None, False)
        self._windowed = frozenset()

    def detach(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def status(self) -> WindowsStatus:
        return WindowsStatus(self.mode, self._timer is not None, "sim",
                             {p: s.figures() for p, s in self.stats.items()})
