"""List-then-watch bookkeeping, pure: the objects known now, the resourceVersion to
resume from, and the reconnect delay. The I/O loop lives in ``agent.sources.kube.source``."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from agent.sources.kube.objects import key, rv_int, well_formed

Obj = dict[str, Any]


@dataclass
class ProfileCache:
    """What the server holds, as far as the board has seen. Never moves backwards: an
    event older than what is known for its object (or than the whole cache, for
    bookmarks) is ignored."""

    objects: dict[str, Obj] = field(default_factory=dict)
    resource_version: str = ""
    """Where the next watch starts."""

    def _advance(self, rv: str | None) -> None:
        if not rv:
            return
        new, cur = _int(rv), _int(self.resource_version)
        if new is None or cur is None or new > cur:
            self.resource_version = rv

    def reset(self, items: list[Obj], resource_version: str) -> None:
        """A (re)list: the complete truth at ``resource_version``. Objects deleted while
        the board was away are simply absent."""
        self.objects = {key(o): o for o in items if well_formed(o)}
        self.resource_version = resource_version

    def apply(self, etype: str, obj: Obj) -> bool:
        """One watch event; True when the known objects changed. An object of a shape no
        API server sends is ignored."""
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(rv, str):
            rv = None
        if etype == "BOOKMARK":
            self._advance(rv)
            return False
        if not well_formed(obj):
            return False
        k = key(obj)
        old = self.objects.get(k)
        new_rv, old_rv = rv_int(obj), (rv_int(old) if old is not None else None)
        if old is not None and new_rv is not None and old_rv is not None and new_rv <= old_rv:
            return False  # stale or repeated: never go back
        self._advance(rv)
        if etype == "DELETED":
            return self.objects.pop(k, None) is not None
        if etype in ("ADDED", "MODIFIED"):
            self.objects[k] = obj
            return True
        return False


def _int(rv: str) -> int | None:
    try:
        return int(rv)
    except ValueError:
        return None


def backoff_s(attempt: int, cap_s: float, retry_after_s: float | None = None,
              base_s: float = 0.2, rng: random.Random | None = None) -> float:
    """Jittered exponential backoff (0.5x-1.5x of base * 2^attempt, at most ``cap_s``);
    a server's Retry-After is a floor."""
    r = (rng or random).random()
    delay: float = min(cap_s, base_s * 2 ** min(attempt, 20)) * (0.5 + r)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay
