"""Unix-socket server for the CLI. Root-only by file mode: the socket is created 0600
inside a 0700 directory, so no other user can even connect."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.api.protocol import MAX_REQUEST_BYTES, decode, encode
from agent.errors import AgentError, ProfileError

log = logging.getLogger("sortie.api")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
READ_TIMEOUT_S = 10.0
"""A client that connects and says nothing is let go after this."""


async def serve(path: Path, handlers: dict[str, Handler]) -> None:
    """Serve until cancelled; removes the socket on the way out."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, 0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                line = await reader.readuntil(b"\n")
            req = decode(line)
            op = req.get("op")
            handler = handlers.get(op) if isinstance(op, str) else None
            if handler is None:
                reply: dict[str, Any] = {"ok": False, "error": f"unknown op {op!r}; "
                                         f"known: {sorted(handlers)}"}
            else:
                reply = {"ok": True, **await handler(req)}
        except (asyncio.LimitOverrunError, asyncio.IncompleteReadError, TimeoutError):
            reply = {"ok": False, "error": "request too large, incomplete or too slow"}
        except (ValueError, json.JSONDecodeError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except ProfileError as exc:
            reply = {"ok": False, "error": str(exc),
                     "violations": [{"path": v.path, "reason": v.reason}
                                    for v in exc.violations]}
        except AgentError as exc:
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug of ours: loud in the log, an answer to the client
            log.exception("local API request failed")
            reply = {"ok": False, "error": f"internal error ({type(exc).__name__}, logged)"}
        try:
            writer.write(encode(reply))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    old = os.umask(0o177)  # the socket is born 0600: no window where others may connect
    try:
        server = await asyncio.start_unix_server(client, path=str(path), limit=MAX_REQUEST_BYTES)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    try:
        async with server:
            await server.serve_forever()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
