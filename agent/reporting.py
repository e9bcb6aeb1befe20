"""The job-report socket: how a workload tells the agent each job finished, and when.

A unix datagram socket (path in the workload's ``SORTIE_REPORT_SOCKET``). Each datagram
is ASCII ``job RESPONSE_US DEADLINE_US``: one completed job, its response time and its
deadline, both in microseconds. The sender is identified by the kernel (SCM_CREDENTIALS)
and mapped to its partition and workload through its cgroup, so a workload can only ever
report for itself and nothing outside the agent's partitions is heard. Example::

    import os, socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(b"job 1830 10000", os.environ["SORTIE_REPORT_SOCKET"])
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("sortie.reporting")

_CREDS = struct.Struct("iII")  # pid, uid, gid
MAX_DATAGRAM = 256
MAX_PER_WAKEUP = 1024

Sink = Callable[[str, str, int, int], None]
"""(partition, workload, response_us, deadline_us)."""


def workload_of(pid: int, prefix: str) -> tuple[str, str] | None:
    """Partition and workload of a process, from its cgroup (v1 pids hierarchy or v2)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers not in ("pids", ""):
            continue
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[-3] == prefix and parts[-2].startswith("p-") \
                and parts[-1].startswith("w-"):
            return parts[-2][2:], parts[-1][2:]
    return None


def parse(data: bytes) -> tuple[int, int] | None:
    fields = data.split()
    if len(fields) != 3 or fields[0] != b"job":
        return None
    try:
        response, deadline = int(fields[1]), int(fields[2])
    except ValueError:
        return None
    if response < 0 or deadline <= 0:
        return None
    return response, deadline


class ReportSocket:
    def __init__(self, path: Path, prefix: str, sink: Sink) -> None:
        self.path = path
        self.prefix = prefix
        self.sink = sink
        self.rejected = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock.bind(str(path))
        # Workloads run as other users; who may report is decided by the cgroup check.
        os.chmod(path, 0o666)  # noqa: S103

    def drain(self) -> None:
        for _ in range(MAX_PER_WAKEUP):
            try:
                data, anc, _, _ = self.sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_CREDS.size))
            except BlockingIOError:
                return
            pid = next((_CREDS.unpack(d[:_CREDS.size])[0] for lvl, typ, d in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), None)
            who = workload_of(pid, self.prefix) if pid else None
            job = parse(data)
            if who is None or job is None:
                self.rejected += 1
                continue
            self.sink(who[0], who[1], *job)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
