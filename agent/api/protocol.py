"""Wire format: one JSON object per line each way; requests name an ``op``."""

from __future__ import annotations

import json
from typing import Any

MAX_REQUEST_BYTES = 4 << 20


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """A request object; ValueError says why not (bad JSON, too deep, not an object)."""
    try:
        obj = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    return obj
