"""Last-known-good state on disk: versioned, checksummed, atomic, with one previous copy.

Write: temp file, fsync, keep the current file as ``.prev`` (hard link + rename, so a
valid current file exists at every instant), rename temp over current, fsync the dir.
Read: current if its checksum holds, else ``.prev``, else nothing; never garbage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ProfileError, StoreError
from agent.events import EventLog
from agent.models import MissionProfile
from agent.models.loading import validate
from agent.status import Origin

log = logging.getLogger("sortie.store")

FORMAT = "sortie.state"
VERSION = 1


def _digest(payload: Any) -> str:
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(canon).hexdigest()


def encode(payload: dict[str, Any]) -> bytes:
    doc = {"format": FORMAT, "version": VERSION, "sha256": _digest(payload), "payload": payload}
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def decode(data: bytes) -> dict[str, Any]:
    """Payload of a state document; ValueError says why it is not trustworthy."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError("not a sortie state file")
    if doc.get("version") != VERSION:
        raise ValueError(f"unsupported state version {doc.get('version')!r}")
    payload = doc.get("payload")
    if not isinstance(payload, dict) or doc.get("sha256") != _digest(payload):
        raise ValueError("checksum mismatch")
    return payload


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either old or new, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if path.exists():
        prev_tmp = path.with_name(f".{path.name}.prev.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(prev_tmp)
        os.link(path, prev_tmp)
        os.replace(prev_tmp, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


@dataclass(frozen=True)
class StoredMission:
    mission: MissionProfile
    origin: Origin
    """Where it came from: source kind, location, key id, when it was admitted."""
    recovered: bool = False
    """Loaded from the previous copy because the current one was corrupt or missing."""


class StateStore:
    """The agent's state directory (root only)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.path = directory / "last-known-good.json"
        self.withdrawn: dict[str, Any] | None = None
        """Set by ``load`` when the newest record says the mission was withdrawn."""

    def _ensure_dir(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
        except OSError as exc:
            raise StoreError(f"{self.dir}: cannot create state directory: {exc.strerror}") \
                from exc

    def save(self, stored: StoredMission) -> None:
        self._ensure_dir()
        payload = {"mission": stored.mission.model_dump(mode="json"),
                   "origin": stored.origin.to_dict()}
        try:
            write_atomic(self.path, encode(payload))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write state: {exc.strerror}") from exc

    def save_withdrawn(self, origin: dict[str, Any]) -> None:
        """Record that no mission flies (its source withdrew it). Written like a mission,
        so a crash can never bring back the withdrawn one from the previous copy."""
        self._ensure_dir()
        try:
            write_atomic(self.path, encode({"mission": None, "origin": origin}))
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot write state: {exc.strerror}") from exc

    def load(self) -> StoredMission | None:
        """The newest trustworthy copy, or None. Corruption is logged, never returned."""
        prev = self.path.with_name(self.path.name + ".prev")
        for candidate in (self.path, prev):
            try:
                data = candidate.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.error("state file %s unreadable: %s; trying the previous copy",
                          candidate, exc.strerror)
                continue
            try:
                payload = decode(data)
                if payload.get("mission") is None and isinstance(payload.get("origin"), dict):
                    self.withdrawn = payload["origin"]
                    return None
                mission = validate(MissionProfile, payload.get("mission"), str(candidate))
            except (ValueError, ProfileError) as exc:
                log.error("state file %s is corrupt (%s); trying the previous copy",
                          candidate, exc)
                continue
            return StoredMission(mission, Origin.from_dict(payload.get("origin")),
                                 recovered=candidate == prev)
        return None


def load_announced(store: StateStore, events: EventLog) -> StoredMission | None:
    """``store.load()``, with an event saying what was found (loaded, recovered from
    the previous copy, or corrupt beyond both copies)."""
    stored = store.load()
    if stored is None and store.path.exists() and store.withdrawn is None:
        events.emit("state.corrupt", str(store.path),
                    "no trustworthy state copy; flying the configured mission", "error")
    if stored is not None:
        events.emit("state.recovered" if stored.recovered else "state.loaded",
                    f"mission/{stored.mission.name}",
                    f"last-known-good generation {stored.mission.generation}"
                    + (" from the previous copy: the current one was corrupt"
                       if stored.recovered else ""),
                    "warning" if stored.recovered else "info")
    return stored
