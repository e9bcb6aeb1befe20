"""An asyncio event loop on virtual time: whenever nothing is ready, time jumps to the
next timer instead of waiting for it. The agent's timers (restart backoff, accounting,
health checks, windows) all run on loop time, so a simulated hour takes seconds and two
runs with the same inputs take identical paths."""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, cast


class _JumpingSelector:
    def __init__(self, inner: selectors.BaseSelector, loop: VirtualTimeLoop) -> None:
        self._inner = inner
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = self._inner.select(0)
        if not events and timeout is not None and timeout > 0:
            # To the timer itself rather than by the timeout: now + (when - now) is not
            # always ``when`` in floating point, and the model's slices sit on a grid.
            self._loop.advance_to(self._loop.next_timer(self._loop.time() + timeout))
        return events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start_s: float = 0.0) -> None:
        super().__init__()
        self._virtual_now = start_s
        inner: selectors.BaseSelector = self._selector  # type: ignore[has-type]
        self._selector = cast(selectors.BaseSelector, _JumpingSelector(inner, self))

    def time(self) -> float:
        return self._virtual_now

    def advance_to(self, when: float) -> None:
        """Jump to ``when`` itself (no float error piling up over many small steps)."""
        self._virtual_now = max(self._virtual_now, when)

    def next_timer(self, default: float) -> float:
        """When the earliest timer is due (``default`` when there is none)."""
        scheduled = self._scheduled  # type: ignore[attr-defined]
        return float(scheduled[0].when()) if scheduled else default

    def quiet_until(self) -> float:
        """Time of the next timer when no callback is ready, else now: until then,
        nothing else can run, so a callback may move time forward on its own."""
        if self._ready:  # type: ignore[attr-defined]
            return self._virtual_now
        return self.next_timer(float("inf"))
