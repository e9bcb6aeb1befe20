"""Replay protection: the highest generation accepted per mission name, kept in the
state directory so it survives restarts and power loss (atomic, checksummed)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from agent.store import decode, encode, write_atomic

log = logging.getLogger("sortie.ledger")


@dataclass(frozen=True)
class Verdict:
    fresh: bool
    """A new generation: go on and apply it."""
    duplicate: bool
    """The same (name, generation, content) again: answer as before, apply nothing."""
    reason: str = ""


class GenerationLedger:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "generations.json"
        self.seen: dict[str, tuple[int, str]] = {}
        for candidate in (self.path, self.path.with_name(self.path.name + ".prev")):
            try:
                payload = decode(candidate.read_bytes())
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                log.error("generation ledger %s unusable (%s); trying the previous copy",
                          candidate, exc)
                continue
            self.seen = {k: (int(v[0]), str(v[1])) for k, v in payload.items()
                         if isinstance(v, list) and len(v) == 2}
            break

    def check(self, name: str, generation: int, digest: str) -> Verdict:
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
        self.seen[name] = (generation, digest)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(self.path, encode({k: list(v) for k, v in self.seen.items()}))
