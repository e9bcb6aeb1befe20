"""Job reports: how a workload tells the agent each job finished, and when.

Each workload gets its own unix datagram socket (path in ``SORTIE_REPORT_SOCKET``),
owned by the workload's user with mode 0600: the kernel lets no other user (root aside)
send to it, so a stranger can neither speak for a workload nor flood its reports. Each
datagram is ASCII ``job RESPONSE_US DEADLINE_US [EXEC_US]``: one completed job, its
response time (release to completion) and its deadline, and optionally the CPU time it
took, all in microseconds (an EXEC_US above the declared ``timing.wcet_us`` is a WCET
overrun for the health monitor: the proof assumed the WCET). The sender must moreover
sit in exactly that workload's cgroup (``/PREFIX/p-P/w-W`` from the hierarchy root,
identified by the kernel through SCM_CREDENTIALS): another process of the same user
cannot report for it, and a path someone builds in a delegated cgroup of their own
(``.../sortie/p-X/w-Y``) does not match. Each socket is read at most ``RATE_PER_S``
datagrams a second; past that it is left unread for the rest of the second (the kernel
queues, then refuses), so one noisy workload costs the agent a bounded share of a core
and nobody else's reports.

Example (send without blocking: a full queue must not delay the job)::

    import os, socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.setblocking(False)
    try:
        s.sendto(b"job 1830 10000", os.environ["SORTIE_REPORT_SOCKET"])
    except (BlockingIOError, OSError):
        pass  # the agent is busy or restarting: this report is lost, not the deadline
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.status import ReportsStatus

log = logging.getLogger("sortie.reporting")

_CREDS = struct.Struct("iII")  # pid, uid, gid
MAX_DATAGRAM = 256
RATE_PER_S = 2000
"""Datagrams read per socket and second (a 1 kHz job reports 1000)."""
RCVBUF = 32 * 1024
NEGATIVE_TTL_S = 1.0
"""How long a sender found outside the workload's cgroup is refused without looking again."""

Sink = Callable[[str, str, int, int, int | None], None]
"""(partition, workload, response_us, deadline_us)."""
Key = tuple[str, str]


def cgroup_path(pid: int) -> str | None:
    """The process's path in the pids hierarchy (v1) or the unified one (v2)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = {}
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            found[(parts[0] == "0", parts[1])] = parts[2]
    # v1's pids hierarchy when there is one (a hybrid host also lists its controller-less
    # unified tree, which is systemd's), else the v2 tree.
    return next((path for (_, ctl), path in found.items() if ctl == "pids"),
                found.get((True, "")))


def parse(data: bytes) -> tuple[int, int, int | None] | None:
    fields = data.split()
    if len(fields) not in (3, 4) or fields[0] != b"job" \
            or any(len(f) > 12 for f in fields[1:]):
        return None
    try:
        response, deadline = int(fields[1]), int(fields[2])
        exec_us = int(fields[3]) if len(fields) == 4 else None
    except ValueError:
        return None
    if response < 0 or deadline <= 0 or (exec_us is not None and exec_us < 0):
        return None
    return response, deadline, exec_us


@dataclass
class Counts:
    accepted: int = 0
    rejected: int = 0
    """Malformed, or sent from outside the workload's cgroup."""
    throttled: int = 0
    """Times a socket was left unread for the rest of a second (over RATE_PER_S)."""
    internal_errors: int = 0


@dataclass
class _Socket:
    key: Key
    path: Path
    sock: socket.socket
    expected: str
    owner: tuple[int, int]
    window: float = 0.0
    used: int = 0
    paused: asyncio.TimerHandle | None = None
    strangers: dict[int, float] = field(default_factory=dict)


class ReportHub:
    """The workloads' report sockets, one per workload, read on the event loop."""

    def __init__(self, directory: Path, prefix: str, sink: Sink,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory
        self.prefix = prefix
        self.sink = sink
        self.clock = clock
        self.count = Counts()
        self._sockets: dict[Key, _Socket] = {}
        self._loop = asyncio.get_running_loop()
        directory.mkdir(parents=True, exist_ok=True)
        # Traversable by every workload user, listable by nobody but root.
        os.chmod(directory, 0o711)  # noqa: S103 - search only: sockets are 0600

    def path(self, partition: str, workload: str) -> Path:
        # Names are DNS labels (no '.'): the file name cannot be shared by two workloads.
        return self.directory / f"p-{partition}.w-{workload}.sock"

    def open(self, partition: str, workload: str, uid: int, gid: int) -> str:
        """The workload's socket (made now, or kept), owned by its user; its path."""
        key = (partition, workload)
        cur = self._sockets.get(key)
        if cur is not None and cur.owner == (uid, gid):
            return str(cur.path)
        if cur is not None:
            self._close(cur)
        path = self.path(partition, workload)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setblocking(False)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            old = os.umask(0o177)  # never reachable by others, even for an instant
            try:
                sock.bind(str(path))
            finally:
                os.umask(old)
            os.chown(path, uid, gid)
        except OSError:
            sock.close()
            raise
        s = _Socket(key, path, sock, f"/{self.prefix}/p-{partition}/w-{workload}", (uid, gid))
        self._sockets[key] = s
        self._loop.add_reader(sock.fileno(), self._drain, s)
        return str(path)

    def retain(self, keys: set[Key]) -> None:
        """Close the sockets of workloads that are gone."""
        for key in [k for k in self._sockets if k not in keys]:
            self._close(self._sockets.pop(key))

    def close(self) -> None:
        for s in self._sockets.values():
            self._close(s)
        self._sockets.clear()

    def _close(self, s: _Socket) -> None:
        if s.paused is not None:
            s.paused.cancel()
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(s.sock.fileno())
        s.sock.close()
        with contextlib.suppress(FileNotFoundError):
            s.path.unlink()

    def status(self) -> ReportsStatus:
        c = self.count
        return ReportsStatus(str(self.directory), len(self._sockets), c.accepted, c.rejected,
                             c.throttled, c.internal_errors)

    # -- reading -----------------------------------------------------------------------
    def _drain(self, s: _Socket) -> None:
        now = self.clock()
        if now - s.window >= 1.0:
            s.window, s.used = now, 0
        while s.used < RATE_PER_S:
            try:
                data, anc, _, _ = s.sock.recvmsg(MAX_DATAGRAM,
                                                 socket.CMSG_SPACE(_CREDS.size))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("report socket %s: %s", s.path, exc.strerror)
                return
            s.used += 1
            pid = next((_CREDS.unpack(d[:_CREDS.size])[0] for lvl, typ, d in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), 0)
            job = parse(data)
            if job is None or not self._from_workload(s, pid, now):
                self.count.rejected += 1
                continue
            self.count.accepted += 1
            try:
                self.sink(s.key[0], s.key[1], *job)
            except Exception:  # a bug of ours: loud, counted, and the socket stays read
                log.exception("report from %s/%s: internal error", *s.key)
                self.count.internal_errors += 1
        # Over the rate: leave the socket unread for the rest of this second.
        self.count.throttled += 1
        self._loop.remove_reader(s.sock.fileno())
        s.paused = self._loop.call_later(max(0.0, s.window + 1.0 - now), self._resume, s)

    def _resume(self, s: _Socket) -> None:
        s.paused = None
        if self._sockets.get(s.key) is s:
            self._loop.add_reader(s.sock.fileno(), self._drain, s)

    def _from_workload(self, s: _Socket, pid: int, now: float) -> bool:
        if pid <= 0:
            return False
        seen = s.strangers.get(pid)
        if seen is not None and now - seen < NEGATIVE_TTL_S:
            return False
        if cgroup_path(pid) == s.expected:
            return True
        if len(s.strangers) > 1024:
            s.strangers.clear()
        s.strangers[pid] = now
        return False
