"""Holds: why the board defers a change to the flying mission. An operator holds the
board (``sortie hold``, or the node annotation ``sortie.dev/hold``), or the flying
mission lists its current mode in ``holds`` (take-off, landing). A change that arrives
held is admitted first (a refusal is said at once) and then waits as the one pending
change, the newest replacing an older one, until the hold ends.

Holds are kept in the state directory (``holds.json``, written like the last-known-good
state): a board restarted mid-landing still holds. A file that cannot be trusted holds
too, saying so, until an operator releases it: silently dropping a hold could apply a
change in the middle of a landing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.engine.state import decode, encode, write_atomic
from agent.errors import StoreError

if TYPE_CHECKING:
    from agent.engine.port import Decision
    from agent.models import MissionProfile
    from agent.status import Origin

SOURCES = ("operator", "kube")
"""Who may hold: ``sortie hold`` on the board, the node annotation in the cluster."""
CORRUPT = "state"
"""The hold said when holds.json cannot be trusted (released by any source)."""


@dataclass(frozen=True)
class Hold:
    source: str
    reason: str
    since: float

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "reason": self.reason, "since": self.since}


class HoldBook:
    """The holds in force, persisted on every change."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "holds.json"
        self.holds: dict[str, Hold] = {}

    def load(self, now: float) -> str | None:
        """Read the holds kept across a restart; says why when the file cannot be
        trusted (the board then holds until released)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._distrust(f"{self.path}: unreadable ({exc.strerror})", now)
        try:
            self.holds = _parse(decode(data))
        except (ValueError, KeyError, TypeError) as exc:
            return self._distrust(f"{self.path}: {exc}", now)
        return None

    def _distrust(self, why: str, now: float) -> str:
        self.holds = {CORRUPT: Hold(CORRUPT, f"{why}; held until `sortie release`", now)}
        return why

    def set(self, source: str, reason: str, now: float) -> bool:
        """Hold for ``source``; False when it already held for that reason. In force at
        once; ``save`` keeps it across a restart."""
        old = self.holds.get(source)
        if old is not None and old.reason == reason:
            return False
        self.holds[source] = Hold(source, reason, now if old is None else old.since)
        return True

    def clear(self, source: str) -> bool:
        """End ``source``'s hold (and a distrusted file's); False when it held nothing."""
        gone = [s for s in (source, CORRUPT) if s in self.holds]
        for s in gone:
            del self.holds[s]
        return bool(gone)

    def reason(self) -> str | None:
        if not self.holds:
            return None
        return "; ".join(f"held by {h.source}: {h.reason}" for h in self.holds.values())

    def save(self) -> None:
        payload = {"holds": [h.to_dict() for h in self.holds.values()
                             if h.source != CORRUPT]}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, encode(payload))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write holds: {exc.strerror}") from exc


def _parse(payload: dict[str, Any]) -> dict[str, Hold]:
    holds = {}
    for h in payload["holds"]:
        if h["source"] not in SOURCES or not isinstance(h["reason"], str):
            raise ValueError(f"a hold of unknown source {h['source']!r}")
        holds[h["source"]] = Hold(h["source"], h["reason"], float(h["since"]))
    return holds


@dataclass
class Pending:
    """A change admitted while held, waiting for the hold to end."""

    source: str
    mission: MissionProfile | None
    """None: the source withdrew the flying mission (``why`` says why)."""
    origin: Origin | None
    why: str
    since: float
    later: asyncio.Future[Decision]


def superseded(p: Pending, why: str) -> Decision:
    from agent.engine.port import Decision
    name, gen = (p.mission.name, p.mission.generation) if p.mission else ("", 0)
    return Decision("superseded", name, gen, reason=why)


class Waiting:
    """The one change that waits while the board holds: the newest received; an older
    one is answered ``superseded``."""

    def __init__(self) -> None:
        self.change: Pending | None = None

    def put(self, source: str, mission: MissionProfile | None, origin: Origin | None,
            why: str, now: float) -> tuple[asyncio.Future[Decision], bool]:
        """Keep this change waiting: its future, and whether it already was the one."""
        old = self.change
        if old is not None and mission is not None and (old.mission, old.origin) == (
                mission, origin):
            return old.later, True
        fut: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.change = Pending(source, mission, origin, why, now, fut)
        if old is not None:
            what = f"generation {mission.generation}" if mission else "withdrawal"
            answer(old, superseded(old, f"replaced by {source}'s {what}"))
        return fut, False

    def take(self) -> Pending | None:
        p, self.change = self.change, None
        return p

    def drop(self, source: str, why: str) -> None:
        """A source's change that waits goes (the source withdrew)."""
        if self.change is not None and self.change.source == source:
            answer(self.change, superseded(self.change, why))
            self.change = None


def answer(p: Pending, d: Decision) -> None:
    if not p.later.done():
        p.later.set_result(d)
