"""systemd's notify protocol (sd_notify(3)): READY=1 after the first reconcile, STATUS=
lines, STOPPING=1, and WATCHDOG=1 from the event loop while it is healthy.

Each message is one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace). Written here in a few lines rather than taken from a library: python-systemd
needs libsystemd built for every board architecture, and sdnotify (unmaintained since
2017) handles neither the abstract namespace nor ``WATCHDOG_PID``. The environment is
input: garbage disables the feature it configures, with one log line, never an error.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("sortie.systemd")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | None = None
        if path.startswith("@") and len(path) > 1:
            self.address = "\0" + path[1:]
        elif path.startswith("/"):
            self.address = path
        elif path:
            log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract: not notifying", path)
        self.watchdog_s: float | None = None
        usec, for_pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec and self.address is not None:
            mine = not for_pid or for_pid == str(pid if pid is not None else os.getpid())
            if usec.isdigit() and int(usec) > 0 and mine:
                self.watchdog_s = int(usec) / 1e6
            elif not mine:
                log.info("the watchdog is for pid %s, not this process", for_pid)
            else:
                log.warning("WATCHDOG_USEC %r is not a positive integer: no watchdog", usec)
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """One message; False (logged once) when systemd cannot be reached."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(lines).encode(errors="replace"), self.address)
        except OSError as exc:
            if not self.failed:
                log.warning("cannot notify systemd at %r: %s", self.address, exc.strerror)
            self.failed += 1
            return False
        self.sent += 1
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
