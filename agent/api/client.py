"""Blocking client for the CLI (one request, one answer)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from agent.api.protocol import MAX_REQUEST_BYTES, decode, encode
from agent.errors import ApiError


class AgentUnreachable(ApiError):
    """Nothing answers at the socket (no agent runs): unlike an agent's refusal."""


def call(path: Path, request: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            s.sendall(encode(request))
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > 4 * MAX_REQUEST_BYTES:
                    raise ApiError(f"{path}: answer too large")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        # A socket file left by an agent that died refuses the connection: no agent.
        raise AgentUnreachable(f"no agent is listening at {path} (is `sortie run` "
                               "running?)") from exc
    except PermissionError as exc:
        raise ApiError(f"{path}: permission denied (the local API is root-only)") from exc
    except (ConnectionError, TimeoutError, OSError) as exc:
        raise ApiError(f"{path}: {exc}") from exc
    try:
        reply = decode(buf)
    except (ValueError, json.JSONDecodeError) as exc:
        raise ApiError(f"{path}: malformed answer: {exc}") from exc
    if not reply.get("ok"):
        raise ApiError(str(reply.get("error", "unknown error")))
    return reply
