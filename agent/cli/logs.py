"""How the agent's own log lines look: journald's way under systemd, JSON for log
shippers, timestamped text on a terminal. (Workload output goes to its own files.)"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import IO

# sd-daemon(3) priority prefixes: journald reads them off the line and drops them.
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
# Libraries that log every request at INFO (a lease renewal every 10 s is a line).
QUIET = ("httpx", "httpcore", "asyncio", "hpack")


class JournalFormatter(logging.Formatter):
    """``<N>logger: message``: journald adds the time and keeps the priority."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        # Every line of a multi-line message keeps the priority.
        return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 6), "level": record.levelname.lower(),
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def under_journald(stream: IO[str], env: dict[str, str] | None = None) -> bool:
    """systemd connected this stream to the journal (``JOURNAL_STREAM`` names its
    device and inode)."""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev.isdigit() and ino.isdigit() and (st.st_dev, st.st_ino) == (int(dev), int(ino))


def configure(level: str, fmt: str, stream: IO[str] = sys.stderr,
              env: dict[str, str] | None = None) -> None:
    """Like logging.basicConfig, a no-op for the root logger when it already has
    handlers (a host program, a test runner); the library loggers are quieted anyway."""
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug"
                                         else logging.WARNING)
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif under_journald(stream, env):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
