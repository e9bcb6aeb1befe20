"""The timekeeper: a small real-time process that enforces time windows.

It runs apart from the agent so that window edges do not wait for the agent's event
loop: SCHED_FIFO on the OS cores, absolute deadlines from CLOCK_MONOTONIC, one write to a
freezer file per edge. It reports every edge (scheduled and actual time, the partition's
CPU counter) as a JSON line on stdout, takes schedule switches on stdin, switches at a
major-frame boundary, and keeps enforcing the current schedule if the agent goes away.

Protocol, stdin (one JSON object per line): the first line is the setup
``{"partitions": {name: {"freeze": path, "frozen": "FROZEN", "thawed": "THAWED",
"usage": path, "usage_key": null|"usage_usec"}}, "windowed": [...], "schedule": {...},
"epoch_ns": int, "cpus": [..], "priority": int}``; later lines are
``{"op": "switch", "schedule": {...}}`` or ``{"op": "stop"}``.
stdout: ``{"k": "thaw"|"freeze", "p": name, "s": sched_ns, "a": actual_ns, "u": usage_ns,
"f": frame}`` and ``{"k": "mode", "name": ..., "a": ns, "f": frame}``.
"""

from __future__ import annotations

import errno
import json
import os
import select
import sys
import time
from typing import Any

from agent.models import Schedule
from agent.timing.windows import edges, running_at

_FDS: dict[tuple[str, int], int] = {}


class Commands:
    """stdin read without Python's buffering: a line that arrived with the setup (a stop
    or a switch right behind it) would otherwise sit in a buffer select() cannot see."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.open = True

    def line(self) -> bytes | None:
        """A complete line already read, if any."""
        if b"\n" not in self.buf:
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def fill(self) -> None:
        """Read what is there (call when select says readable)."""
        chunk = os.read(self.fd, 65536)
        if not chunk:
            self.open = False
        self.buf += chunk

    def wait_line(self, timeout_s: float | None) -> bytes | None:
        """The next line, waiting at most ``timeout_s`` (None: until one comes)."""
        while True:
            got = self.line()
            if got is not None or not self.open:
                return got
            ready, _, _ = select.select([self.fd], [], [], timeout_s)
            if not ready:
                return None
            self.fill()


def _fd(path: str, flags: int) -> int:
    # Kept open: an edge costs one write and one pread, not open/close pairs.
    key = (path, flags)
    if key not in _FDS:
        _FDS[key] = os.open(path, flags | os.O_CLOEXEC)
    return _FDS[key]


def _write(path: str, value: str) -> None:
    os.write(_fd(path, os.O_WRONLY), value.encode())


def _gone(part: dict[str, Any], exc: OSError) -> None:
    """The agent removed the partition under us (a mission change, a teardown): it has
    nothing left to gate. Anything else is a real failure."""
    if exc.errno not in (errno.ENODEV, errno.ENOENT):
        raise exc
    part["gone"] = True


def _usage_ns(part: dict[str, Any]) -> int:
    if part.get("gone"):
        return 0
    try:
        data = os.pread(_fd(part["usage"], os.O_RDONLY), 65536, 0)
    except OSError as exc:
        _gone(part, exc)
        return 0
    key = part.get("usage_key")
    if key is None:
        return int(data)
    for line in data.decode().splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return int(v) * 1000
    return 0


def _set(part: dict[str, Any], thawed: bool) -> None:
    if part.get("gone"):
        return
    try:
        _write(part["freeze"], part["thawed"] if thawed else part["frozen"])
    except OSError as exc:
        _gone(part, exc)


_OUT: list[str] = []


def _emit(obj: dict[str, Any], flush: bool = True) -> None:
    # Own buffer: stdout may be unbuffered (PYTHONUNBUFFERED), and every write would
    # wake the agent.
    _OUT.append(json.dumps(obj, separators=(",", ":")) + "\n")
    if flush:
        _flush()


_REPORTING = [True]


def _flush() -> None:
    if _OUT and _REPORTING[0]:
        data = "".join(_OUT).encode()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(1, view):]
        except OSError:
            # The agent is gone (broken pipe): keep enforcing the windows, stop reporting.
            _REPORTING[0] = False
    _OUT.clear()


def _realtime(cpus: list[int], priority: int) -> str:
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        return f"affinity {cpus}: {exc.strerror}"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as exc:
        return f"SCHED_FIFO {priority}: {exc.strerror}"
    return ""


def run(stdin_fd: int = 0) -> int:
    commands = Commands(stdin_fd)
    first = commands.wait_line(None)
    if first is None:
        return 1  # the agent went away before it said anything
    setup = json.loads(first)
    parts: dict[str, dict[str, Any]] = setup["partitions"]
    windowed = frozenset(setup["windowed"])
    schedule = Schedule.model_validate(setup["schedule"])
    pending: Schedule | None = None
    epoch = int(setup["epoch_ns"])
    problem = _realtime(setup.get("cpus", [0]), int(setup.get("priority", 80)))
    _emit({"k": "start", "rt": problem or "ok", "a": time.monotonic_ns()})
    frame_ns = schedule.major_frame_us * 1000
    now = time.monotonic_ns()
    frame = max(0, (now - epoch) // frame_ns)
    # Enter the current frame in the right state before following its edges.
    inside = running_at(schedule, windowed, (now - epoch - frame * frame_ns) // 1000)
    for p in windowed:
        _set(parts[p], p in inside)
    skip_before = now  # edges already past at start-up: the state above covers them
    while True:
        frame_start = epoch + frame * frame_ns
        for e in edges(schedule, windowed):
            due = frame_start + e.offset_us * 1000
            # Sleep on stdin so commands arrive at once, but never past the edge.
            while True:
                left = due - time.monotonic_ns()
                if left <= 0:
                    break
                if not commands.open:
                    # The agent is gone: keep the mission flying.
                    time.sleep(left / 1e9)
                    continue
                line = commands.wait_line(left / 1e9)
                if line is not None:
                    cmd = json.loads(line)
                    if cmd.get("op") == "stop":
                        return 0
                    if cmd.get("op") == "switch":
                        pending = Schedule.model_validate(cmd["schedule"])
            if due < skip_before:
                continue
            part = parts[e.partition]
            if e.kind == "thaw":
                usage = _usage_ns(part)
                _set(part, True)
                actual = time.monotonic_ns()
            else:
                _set(part, False)
                actual = time.monotonic_ns()
                usage = _usage_ns(part)
            # Reports go out once per frame: the agent wakes 10 times a second, not 30.
            _emit({"k": e.kind, "p": e.partition, "s": due, "a": actual, "u": usage,
                   "f": frame}, flush=False)
        _flush()
        frame += 1
        if pending is not None:
            schedule, pending = pending, None
            # Switch at the boundary: align the new frame length to this instant.
            epoch = epoch + frame * frame_ns
            frame_ns = schedule.major_frame_us * 1000
            frame = 0
            inside = running_at(schedule, windowed, 0)
            for p in windowed:
                if p not in inside:
                    _set(parts[p], False)
            _emit({"k": "mode", "name": schedule.name, "a": time.monotonic_ns(), "f": 0,
                   "epoch": epoch})


if __name__ == "__main__":
    sys.exit(run())
