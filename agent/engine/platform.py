"""The engine's seams to the world beyond cgroups: clocks, processes, the timekeeper.

``Platform()`` is the real machine. The simulator hands the engine its own, so the same
engine code runs against a simulated board on a virtual clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from agent.errors import AgentError
from agent.runtime import procs
from agent.runtime.ops import Launch, ProcessOps, RealOps

if TYPE_CHECKING:
    from agent.cgroups import CgroupBackend
    from agent.events import EventLog
    from agent.models import MissionProfile, Workload
    from agent.status import WindowsStatus, WorkloadStatus
    from agent.timing.enforcer import WindowStats


class Runner(Protocol):
    """One workload under supervision (a real process, or a simulated task)."""

    partition: str
    spec: Workload
    pid: int | None
    adopted: bool
    restarts: int
    log_file: Path

    @property
    def spec_hash(self) -> str: ...
    def start(self) -> None: ...
    def first_launch(self) -> Launch: ...
    def began(self, got: int | AgentError) -> None: ...
    def adopt(self, pid: int) -> None: ...
    async def stop(self) -> None: ...
    def detach(self) -> None: ...
    async def restart(self, reason: str) -> None: ...
    def status(self) -> WorkloadStatus: ...


class Windows(Protocol):
    """Enforces the mission's time windows and reports what happened."""

    mode: str | None
    stats: dict[str, WindowStats]

    @property
    def pid(self) -> int | None: ...
    async def start(self, mission: MissionProfile, mode: str | None) -> None: ...
    def switch(self, mission: MissionProfile, mode: str) -> None: ...
    def until_boundary_s(self) -> float:
        """Seconds to the next major-frame boundary (0 without windows running)."""
    async def stop(self) -> None: ...
    def detach(self) -> None: ...
    def status(self) -> WindowsStatus: ...


class ProcessTable(Protocol):
    def start_ticks(self, pid: int) -> int | None: ...
    def parent_pid(self, pid: int) -> int | None: ...
    def environ(self, pid: int) -> dict[str, str]: ...
    def is_alive(self, pid: int) -> bool: ...
    def cmdline(self, pid: int) -> str: ...


class RealProcesses:
    """/proc."""

    start_ticks = staticmethod(procs.start_ticks)
    parent_pid = staticmethod(procs.parent_pid)
    environ = staticmethod(procs.environ)
    is_alive = staticmethod(procs.is_alive)
    cmdline = staticmethod(procs.cmdline)


WindowsFactory = Callable[["CgroupBackend", "EventLog", list[int]], Windows]


def _real_windows(backend: CgroupBackend, events: EventLog, cpus: list[int]) -> Windows:
    from agent.timing.enforcer import WindowEnforcer
    return WindowEnforcer(backend, events, cpus)


def online_capacity() -> dict[int, float]:
    """Capacity factor per online core from sysfs (1.0: hotplug only, no thermal data)."""
    from agent.cgroups.fs import parse_cpu_list
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return dict.fromkeys(parse_cpu_list(f.read()), 1.0)
    except OSError:
        return {}


@dataclass
class Platform:
    monotonic: Callable[[], float] = time.monotonic
    """Clock for intervals (accounting, re-arming)."""
    wall: Callable[[], float] = time.time
    """Clock for timestamps people read (events, state)."""
    processes: ProcessTable = field(default_factory=RealProcesses)
    ops: ProcessOps = field(default_factory=RealOps)
    """How workloads' processes are launched, watched, reaped and signalled."""
    make_windows: WindowsFactory = _real_windows
    capacity: Callable[[], dict[int, float]] = online_capacity
    """Per-core capacity now: 0 offline, < 1 throttled, cores not listed are offline."""
    memory_mib: Callable[[], int | None] = lambda: None
    """Memory the board offers now, MiB; None: as the hardware profile says."""
