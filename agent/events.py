"""Events: what happened, to what, why. Logged, kept in a bounded ring for status."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

Severity = Literal["info", "warning", "error"]
log = logging.getLogger("sortie.events")


@dataclass(frozen=True)
class Event:
    at: float
    """Wall-clock time (seconds since the epoch)."""
    kind: str
    """Machine-readable kind, e.g. ``workload.started`` or ``mission.rejected``."""
    subject: str
    """What it is about: ``mission/NAME``, ``partition/P`` or ``workload/P/W``."""
    message: str
    severity: Severity = "info"
    partition: str | None = None
    """The partition it is about, typed (consumers never parse ``subject``)."""
    workload: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    def __init__(self, capacity: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
        self._ring: deque[Event] = deque(maxlen=capacity)
        self._clock = clock
        self._subscribers: list[Callable[[Event], None]] = []
        self._pending: deque[Event] = deque()
        self._delivering = False
        self.internal_errors: dict[str, int] = {}
        """Bugs of ours contained at an input boundary, per source (status shows them)."""

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        """Call ``fn`` with every event emitted from now on (health monitor, telemetry)."""
        self._subscribers.append(fn)

    def emit(self, kind: str, subject: str, message: str, severity: Severity = "info", *,
             partition: str | None = None, workload: str | None = None) -> Event:
        """Record and deliver an event. Subscribers see every event in the order it was
        emitted: one emitted by a subscriber while it handles another (a health verdict
        on a crash) is queued behind it, so every subscriber sees the cause first."""
        ev = Event(self._clock(), kind, subject, message, severity, partition, workload)
        self._ring.append(ev)
        level = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
        log.log(level[severity], "%s %s: %s", kind, subject, message)
        self._pending.append(ev)
        if not self._delivering:
            self._delivering = True
            try:
                while self._pending:
                    queued = self._pending.popleft()
                    for fn in list(self._subscribers):
                        try:
                            fn(queued)
                        except Exception:  # one subscriber's bug must not starve the rest
                            log.exception("event subscriber %r failed on %s", fn, queued.kind)
                            self.internal_errors["events"] = (
                                self.internal_errors.get("events", 0) + 1)
            finally:
                self._delivering = False
        return ev

    def internal_error(self, source: str, what: str, exc: BaseException) -> None:
        """A bug of ours met while handling input: loud (the traceback is logged, the
        count is in status) but contained, so that input can never stop the agent."""
        log.error("%s: internal error while %s", source, what, exc_info=exc)
        self.internal_errors[source] = self.internal_errors.get(source, 0) + 1
        self.emit("agent.internal-error", source, f"while {what}: {type(exc).__name__} "
                  "(traceback in the log)", "error")

    def recent(self, limit: int = 50) -> list[Event]:
        return list(self._ring)[-limit:]

    def of_kind(self, kind: str) -> list[Event]:
        return [e for e in self._ring if e.kind == kind]
