"""The engine's one lock: every change to cgroups and processes holds it, applies and
health orders alike. It also knows how long its holder has held it, the watchdog's
question (a reconcile that hangs must stop the agent's petting)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


class WriterLock:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._lock = asyncio.Lock()
        self._clock = clock
        self._since: float | None = None

    @contextlib.asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        async with self._lock:
            self._since = self._clock()
            try:
                yield
            finally:
                self._since = None

    def locked(self) -> bool:
        return self._lock.locked()

    def busy_for(self) -> float:
        """Seconds the current holder has held it (0 when free)."""
        since = self._since
        return 0.0 if since is None else self._clock() - since
