"""Long steps say what they do, with the time since the build started."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None) -> None:
        self._t0 = time.monotonic()
        self.stream = stream or sys.stderr

    def __call__(self, message: str) -> None:
        print(f"[{time.monotonic() - self._t0:6.1f}s] {message}", file=self.stream, flush=True)
