"""Replay protection: the highest generation accepted per mission name, kept in the
state directory so it survives restarts and power loss (atomic, checksummed).

It fails closed: when the ledger exists but neither copy can be read, what was accepted
before is unknown, so every envelope issued before that moment is refused ("re-sign
it"); only pushes signed afterwards can be fresh. The moment is saved with the ledger.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.engine.state import decode, encode, write_atomic
from agent.errors import StoreError

log = logging.getLogger("sortie.ledger")


@dataclass(frozen=True)
class Verdict:
    fresh: bool
    """A new generation: go on and apply it."""
    duplicate: bool
    """The same (name, generation, content) again: answer as before, apply nothing."""
    reason: str = ""


def _entries(raw: Any) -> dict[str, tuple[int, str]]:
    if not isinstance(raw, dict):
        raise ValueError("missions is not a mapping")
    out = {}
    for k, v in raw.items():
        if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int)
                and isinstance(v[1], str)):
            raise ValueError(f"entry {k!r} is not [generation, digest]")
        out[str(k)] = (v[0], v[1])
    return out


class GenerationLedger:
    def __init__(self, directory: Path, clock: Any = time.time) -> None:
        self.path = directory / "generations.json"
        self.seen: dict[str, tuple[int, str]] = {}
        self.not_before = 0
        """Envelopes issued before this (unix s) are refused: the ledger was lost then."""
        self.unsaved: str | None = None
        """Why the last record did not reach the disk (it holds in memory)."""
        candidates = (self.path, self.path.with_name(self.path.name + ".prev"))
        present = False
        for candidate in candidates:
            try:
                data = candidate.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                present = True
                log.error("generation ledger %s unreadable (%s)", candidate, exc.strerror)
                continue
            present = True
            try:
                payload = decode(data)
                if "missions" in payload:
                    self.seen = _entries(payload["missions"])
                    nb = payload.get("not_before", 0)
                    self.not_before = nb if isinstance(nb, int) else 0
                else:  # the first format: the missions alone
                    self.seen = _entries(payload)
            except ValueError as exc:
                log.error("generation ledger %s unusable (%s); trying the previous copy",
                          candidate, exc)
                continue
            return
        if present:
            self.not_before = int(clock()) + 1
            log.error("generation ledger lost (no copy is readable): envelopes issued "
                      "before %d are refused until planners re-sign them", self.not_before)
            try:
                self._save()
            except StoreError as exc:
                log.error("%s (the refusal holds while the agent runs)", exc)

    def check(self, name: str, generation: int, digest: str, issued_at: int | None = None
              ) -> Verdict:
        if issued_at is not None and issued_at < self.not_before:
            return Verdict(False, False, "issued before this board's replay ledger was "
                           f"lost (at {self.not_before}); sign it again")
        last = self.seen.get(name)
        if last is None or generation > last[0]:
            return Verdict(True, False)
        if generation == last[0] and digest == last[1]:
            return Verdict(False, True)
        if generation == last[0]:
            return Verdict(False, False, f"generation {generation} of {name!r} was already "
                                         "accepted with different content (replay?)")
        return Verdict(False, False, f"generation {generation} of {name!r} is older than "
                                     f"the accepted {last[0]} (replay?)")

    def record(self, name: str, generation: int, digest: str) -> None:
        """Remember an accepted generation; StoreError when the disk refused it (the
        record still holds in memory until the agent restarts)."""
        self.seen[name] = (generation, digest)
        self._save()

    def _save(self) -> None:
        payload = {"missions": {k: list(v) for k, v in self.seen.items()},
                   "not_before": self.not_before}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(self.path, encode(payload))
        except OSError as exc:
            self.unsaved = f"{self.path}: {exc.strerror or exc}"
            raise StoreError(f"replay ledger not saved: {self.unsaved}") from exc
        self.unsaved = None
