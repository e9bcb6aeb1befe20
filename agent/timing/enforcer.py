"""Agent side of time windows: runs the timekeeper process, switches modes, and turns
its edge reports into per-partition window figures (start jitter, CPU outside windows)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from agent.cgroups import CgroupBackend
from agent.cgroups.backend import freeze_awaited
from agent.errors import AgentError
from agent.events import EventLog
from agent.models import MissionProfile, Schedule
from agent.status import Jitter, WindowFigures, WindowsStatus

log = logging.getLogger("sortie.windows")

JITTER_KEEP = 20_000
EDGES_KEEP = 400


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] if s else 0.0


@dataclass
class WindowStats:
    """Window figures of one partition since the schedule started."""

    windows: int = 0
    jitter_us: deque[float] = field(default_factory=lambda: deque(maxlen=JITTER_KEEP))
    inside_ns: int = 0
    outside_ns: int = 0
    _thaw_usage: int | None = None
    _freeze_usage: int | None = None

    def on_thaw(self, sched_ns: int, actual_ns: int, usage_ns: int) -> None:
        self.windows += 1
        self.jitter_us.append((actual_ns - sched_ns) / 1000)
        if self._freeze_usage is not None:
            self.outside_ns += max(0, usage_ns - self._freeze_usage)
        self._thaw_usage = usage_ns

    def on_freeze(self, usage_ns: int) -> None:
        if self._thaw_usage is not None:
            self.inside_ns += max(0, usage_ns - self._thaw_usage)
        self._freeze_usage = usage_ns

    def figures(self) -> WindowFigures:
        j = list(self.jitter_us)
        return WindowFigures(self.windows, Jitter(_pct(j, 50), _pct(j, 99),
                                                  max(j) if j else 0.0),
                             self.inside_ns / 1e9, self.outside_ns / 1e9)


def active_schedule(mission: MissionProfile, mode: str | None) -> Schedule | None:
    if not mission.schedules:
        return None
    name = mode or mission.initial_schedule or mission.schedules[0].name
    return next((s for s in mission.schedules if s.name == name), None)


class WindowEnforcer:
    """Owns one timekeeper process while the mission has windows."""

    def __init__(self, backend: CgroupBackend, events: EventLog, cpus: list[int]) -> None:
        self.backend = backend
        self.events = events
        self.cpus = cpus
        self.mode: str | None = None
        self.stats: dict[str, WindowStats] = {}
        self.edges: deque[dict[str, Any]] = deque(maxlen=EDGES_KEEP)
        self.realtime: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""
        self._windowed: list[str] = []
        self._epoch_ns = 0
        self._frame_ns = 0
        """The current mode's major frame; frames start at _epoch_ns + k * _frame_ns."""
        self._schedules: list[Schedule] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    async def start(self, mission: MissionProfile, mode: str | None) -> None:
        """(Re)start enforcing ``mission``'s windows in ``mode``; no-op without windows."""
        from asyncio import get_running_loop

        await self.stop()
        schedule = active_schedule(mission, mode)
        windowed = sorted({w.partition for s in mission.schedules for w in s.windows})
        if schedule is None or not windowed:
            return
        self.mode, self._windowed = schedule.name, windowed
        self.stats = {p: WindowStats() for p in windowed}
        self._epoch_ns = time.monotonic_ns()
        self._frame_ns = schedule.major_frame_us * 1000
        self._schedules = list(mission.schedules)
        setup = {
            "partitions": {p: self.backend.window_files(p) for p in windowed},
            "windowed": windowed,
            "schedule": schedule.model_dump(mode="json"),
            "epoch_ns": self._epoch_ns,
            "cpus": self.cpus,
            "priority": 80,
        }
        # fork + exec only (as a workload spawn): nothing here waits for the child.
        self._proc = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "agent.timing.timekeeper"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(setup).encode() + b"\n")
        self._proc.stdin.flush()
        os.set_blocking(self._proc.stdout.fileno(), False)
        get_running_loop().add_reader(self._proc.stdout.fileno(), self._readable)
        self.events.emit("windows.started", "schedule/" + schedule.name,
                         f"{len(windowed)} windowed partition(s), major frame "
                         f"{schedule.major_frame_us} us")

    def switch(self, mission: MissionProfile, mode: str) -> None:
        """Switch mode at the next major-frame boundary."""
        schedule = active_schedule(mission, mode)
        if schedule is None:
            raise AgentError(f"mission {mission.name!r} has no schedule named {mode!r}; "
                             f"known: {[s.name for s in mission.schedules]}")
        if not self.running or self._proc is None or self._proc.stdin is None:
            self.mode = mode
            return
        line = {"op": "switch", "schedule": schedule.model_dump(mode="json")}
        self._proc.stdin.write(json.dumps(line).encode() + b"\n")
        self._proc.stdin.flush()

    def until_boundary_s(self) -> float:
        if not self.running or self._frame_ns <= 0:
            return 0.0
        into = (time.monotonic_ns() - self._epoch_ns) % self._frame_ns
        return (self._frame_ns - into) / 1e9

    def _readable(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            chunk = os.read(self._proc.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._ended()
            return
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._record(json.loads(line))

    def _record(self, rec: dict[str, Any]) -> None:
        kind = rec.get("k")
        if kind == "start":
            self.realtime = rec["rt"]
            if rec["rt"] != "ok":
                self.events.emit("windows.degraded", "timekeeper",
                                 f"running without real-time priority: {rec['rt']}",
                                 "warning")
        elif kind == "mode":
            self.mode = rec["name"]
            sched = next((s for s in self._schedules if s.name == self.mode), None)
            if sched is not None and "epoch" in rec:
                self._epoch_ns, self._frame_ns = rec["epoch"], sched.major_frame_us * 1000
            self.events.emit("mode.switched", f"schedule/{rec['name']}",
                             "at a major-frame boundary")
        elif kind in ("thaw", "freeze"):
            st = self.stats.get(rec["p"])
            if st is None:
                return
            if kind == "thaw":
                st.on_thaw(rec["s"], rec["a"], rec["u"])
            else:
                st.on_freeze(rec["u"])
            self.edges.append(rec)

    def _ended(self) -> None:
        from asyncio import get_running_loop

        if self._proc is not None and self._proc.stdout is not None:
            with contextlib.suppress(ValueError, OSError):
                get_running_loop().remove_reader(self._proc.stdout.fileno())
        if self._proc is not None and self._proc.poll() is not None:
            self.events.emit("windows.stopped", "timekeeper",
                             f"exited with code {self._proc.returncode}", "error")

    async def stop(self) -> None:
        """Stop the timekeeper and thaw every windowed partition (they run free again).
        Awaited: the timekeeper's exit and the thaws never block the event loop."""
        from asyncio import get_running_loop

        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdout is not None and proc.stdin is not None
        with contextlib.suppress(ValueError, OSError):
            get_running_loop().remove_reader(proc.stdout.fileno())
        with contextlib.suppress(BrokenPipeError, OSError):
            proc.stdin.write(b'{"op":"stop"}\n')
            proc.stdin.flush()
        if not await _exited(proc, STOP_WAIT_S):
            proc.kill()
            await _exited(proc, STOP_WAIT_S)
        _close_pipes(proc)
        for p in self._windowed:
            with contextlib.suppress(AgentError):
                await freeze_awaited(self.backend, p, None, False)

    def detach(self) -> None:
        """Leave the timekeeper running (the agent exits, the mission keeps flying)."""
        from asyncio import get_running_loop

        proc, self._proc = self._proc, None
        if proc is not None and proc.stdout is not None and proc.stdin is not None:
            with contextlib.suppress(ValueError, OSError):
                get_running_loop().remove_reader(proc.stdout.fileno())
            _close_pipes(proc)
            proc.returncode = 0  # not ours to reap any more; silences Popen's warning

    def status(self) -> WindowsStatus:
        return WindowsStatus(self.mode, self.running, self.realtime,
                             {p: s.figures() for p, s in self.stats.items()})


STOP_WAIT_S = 2.0


async def _exited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll for the child's exit without blocking the loop (the timekeeper ends in well
    under a millisecond when asked; the poll is cheap)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while proc.poll() is None:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.001)
    return True


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    """Close both pipes even when the timekeeper is gone: closing stdin flushes, and a
    broken pipe there must not leave stdout open."""
    for f in (proc.stdin, proc.stdout):
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
