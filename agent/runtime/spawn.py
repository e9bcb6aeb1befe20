"""Start a process inside a cgroup: it joins the group before exec (or, on cgroup v2, is
born in it), so the workload's code never runs outside it.

The work is done by the spawner (``spawnd``), a small process started once: forking it
costs far less than forking the agent, and its children are still the agent's children.
When it cannot run (no interpreter to start it with, it died and cannot restart), the
agent forks itself, with the very same ``spawnd.child``: slower, never unsafe. Any failure
before exec travels back through a close-on-exec pipe, so the caller gets the real
reason (not a bare exit code 127).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import marshal
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import WorkloadError
from agent.runtime import spawnd
from agent.runtime.identity import DEFAULT_PATH, Identity
from agent.timing.syscalls import deadline_attr

if TYPE_CHECKING:
    from agent.timing.sched import SchedPolicy  # the models: too heavy to start early

log = logging.getLogger("sortie.runtime")

REPLY_TIMEOUT_S = 10.0
"""A spawner that does not answer in this long is killed and started again."""
BATCH = 64
"""Starts per message to the spawner, at most (and ``spawnd.MAX_FDS`` descriptors)."""

Started = tuple[int, str | None] | WorkloadError
"""A process and its failure before exec (still ours to reap), or why none started."""


@dataclass(frozen=True)
class SpawnRequest:
    argv: Sequence[str]
    """argv with ``argv[0]`` an absolute path."""
    identity: Identity
    working_dir: str
    env: Mapping[str, str]
    join_fds: Sequence[int]
    log_fd: int
    sched: SchedPolicy | None = None
    """Real-time policy set after joining the cgroup (RT budgets apply there)."""
    cgroup_fd: int | None = None
    """cgroup v2: the group's directory, for ``CLONE_INTO_CGROUP``."""

    def wire(self) -> dict[str, Any]:
        """What ``spawnd.child`` needs, in types marshal carries."""
        sched: tuple[str, Any, str] | None = None
        if self.sched is not None:
            s = self.sched
            how = (deadline_attr(s.runtime_ns, s.deadline_ns, s.period_ns)
                   if s.kind == "deadline" else s.priority)
            sched = (s.kind, how, s.describe())
        return {"argv": list(self.argv), "cwd": self.working_dir, "sched": sched,
                "env": {"PATH": DEFAULT_PATH, "HOME": self.identity.home, **self.env},
                "uid": self.identity.uid, "gid": self.identity.gid,
                "groups": list(self.identity.groups), "drop": os.getuid() == 0,
                "has_cgroup_fd": self.cgroup_fd is not None}


class Spawner:
    """The agent's end of the spawner process: started by ``warm``, restarted when it
    has died, given up on (fork in-process) when it cannot start."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._owner = 0     # the process that started it (a forked agent must not share)
        self.broken: str | None = None
        """Why the spawner cannot be used (in-process fork instead), None while it can."""
        self.into_cgroup = True  # until a kernel refuses CLONE_INTO_CGROUP
        self._answered = False  # it answered a ping since it was started
        self._pending: deque[asyncio.Future[dict[str, Any]]] = deque()
        """Messages sent from the event loop, oldest first, whose answers are due."""
        self._reader: asyncio.AbstractEventLoop | None = None

    @property
    def pid(self) -> int | None:
        return self._pid if self._owner == os.getpid() else None

    def launch(self) -> bool:
        """Start the spawner process without waiting for it: its interpreter starts
        while the agent imports (``sortie run``); ``warm`` then checks that it answers.
        False when it cannot be started."""
        if self.broken is not None:
            return False
        if self._sock is not None and self._owner == os.getpid():
            return True
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            theirs.set_inheritable(True)
            # Imported from its own directory (not run as a script): bytecode from the
            # cache, and only the standard library on the path (-I -S).
            boot = (f"import sys; sys.path.insert(0, {os.path.dirname(spawnd.__file__)!r}); "
                    "import spawnd; spawnd.main()")
            pid = os.posix_spawn(self.python, [self.python, "-I", "-S", "-c", boot,
                                               str(theirs.fileno()), str(os.getpid())], {})
        except OSError as exc:
            ours.close()
            self.broken = f"cannot start {self.python}: {exc.strerror}"
            log.warning("spawner unavailable, forking the agent instead: %s", self.broken)
            return False
        finally:
            theirs.close()
        ours.settimeout(REPLY_TIMEOUT_S)
        self._sock, self._pid, self._owner, self._answered = ours, pid, os.getpid(), False
        return True

    def warm(self) -> bool:
        """Start the spawner if it is not running and see that it answers; False when
        it cannot be used."""
        if not self.launch():
            return False
        if self._answered:
            return True
        try:
            answer = self._ask({"ping": True}, [])
        except OSError as exc:
            answer = {"error": str(exc)}
        if answer.get("pong") != self._pid:
            self.close(kill=True)
            self.broken = f"the spawner did not answer: {answer.get('error', answer)}"
            log.warning("spawner unavailable, forking the agent instead: %s", self.broken)
            return False
        self._answered = True
        return True

    def _send(self, req: dict[str, Any], fds: list[int]) -> None:
        assert self._sock is not None
        socket.send_fds(self._sock, [marshal.dumps(req)], fds)

    def _ask(self, req: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        assert self._sock is not None
        self._send(req, fds)
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self._sock is not None
        reply = self._sock.recv(1 << 18)
        if not reply:
            raise ConnectionResetError("the spawner exited")
        answer: dict[str, Any] = marshal.loads(reply)  # noqa: S302 - our own child
        return answer

    def _post(self, reqs: Sequence[SpawnRequest]
              ) -> tuple[list[Sequence[SpawnRequest]], list[list[dict[str, Any]]], int] | None:
        """Send every message for ``reqs``: (the chunks, their batches, how many went).
        The spawner clones every child of a message before it waits for any exec
        (``spawnd.start_batch``), and every message goes before the first answer is
        read: the next batch begins while the kernel's threadgroup lock is still warm
        from the last (cgroup v1). None when the spawner cannot be used."""
        if not self.warm():
            return None
        chunks = list(_chunks(reqs, self.into_cgroup))
        messages = [self._message(chunk) for chunk in chunks]
        sent = 0
        for i, (msg, fds) in enumerate(messages):
            try:
                self._send(msg, fds)
            except OSError:
                if i > 0 or self._pending:
                    break  # it died mid-way: what it got is answered (or failed) below
                # It died since the last start (nothing of these began): a fresh one.
                self.close(kill=True)
                if not self.warm():
                    return None
                self._send(msg, fds)
            sent += 1
        return chunks, [m["batch"] for m, _ in messages], sent

    def spawn_many(self, reqs: Sequence[SpawnRequest]) -> list[Started] | None:
        """Each request's (pid, failure before exec) or the reason it did not start,
        in order, waiting for the answers here; None when the spawner cannot be used
        (or answers are already due on the event loop: the caller forks instead)."""
        if not reqs:
            return []
        if self._pending:
            return None
        posted = self._post(reqs)
        if posted is None:
            return None
        chunks, batches, sent = posted
        out: list[Started] = []
        for i, chunk in enumerate(chunks):
            if i >= sent or self._sock is None:
                out += _lost(chunk, "it exited")
                continue
            try:
                answer = self._answer()
            except OSError as exc:
                # It died or hangs mid-start: a fresh one next time; these starts fail
                # (into a backoff), a child it may have made is stopped with its group.
                self.close(kill=True)
                out += _lost(chunk, str(exc))
                continue
            out += self._results(chunk, batches[i], answer)
        return out

    async def spawn_many_async(self, reqs: Sequence[SpawnRequest]) -> list[Started] | None:
        """``spawn_many`` with the answers awaited on the event loop: nothing else of
        the agent waits while the kernel places the children."""
        if not reqs:
            return []
        posted = self._post(reqs)
        if posted is None:
            return None
        chunks, batches, sent = posted
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(sent)]
        self._pending.extend(futures)
        if futures and self._reader is None and self._sock is not None:
            loop.add_reader(self._sock.fileno(), self._on_answer)
            self._reader = loop
        out: list[Started] = []
        for i, chunk in enumerate(chunks):
            if i >= sent:
                out += _lost(chunk, "it exited")
                continue
            try:
                answer = await asyncio.wait_for(asyncio.shield(futures[i]), REPLY_TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                self.close(kill=True)  # as in spawn_many
                out += _lost(chunk, str(exc) or f"no answer in {REPLY_TIMEOUT_S:g} s")
                continue
            out += self._results(chunk, batches[i], answer)
        return out

    def _on_answer(self) -> None:
        """The socket is readable: the oldest pending message's answer."""
        try:
            answer = self._answer()
        except BlockingIOError:
            return
        except OSError as exc:
            self.close(kill=True, why=exc)
            return
        if self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(answer)
        if not self._pending:
            self._stop_reading()

    def _stop_reading(self) -> None:
        if self._reader is not None and self._sock is not None:
            self._reader.remove_reader(self._sock.fileno())
        self._reader = None

    def _message(self, chunk: Sequence[SpawnRequest]) -> tuple[dict[str, Any], list[int]]:
        batch, fds = [], []
        for req in chunk:
            wire = req.wire()
            wire["has_cgroup_fd"] = wire["has_cgroup_fd"] and self.into_cgroup
            wire["njoin"] = len(req.join_fds)
            fds += [req.log_fd, *([req.cgroup_fd] if req.cgroup_fd is not None
                                  and wire["has_cgroup_fd"] else []), *req.join_fds]
            batch.append(wire)
        return {"batch": batch}, fds

    def _results(self, chunk: Sequence[SpawnRequest], batch: list[dict[str, Any]],
                 answer: dict[str, Any]) -> list[Started]:
        results = answer.get("results")
        if not isinstance(results, list) or len(results) != len(chunk):
            return [WorkloadError(f"cannot start {r.argv[0]!r}: "
                                  f"{answer.get('error', 'spawner: no answer')}")
                    for r in chunk]
        out: list[Started] = []
        for req, wire, res in zip(chunk, batch, results, strict=True):
            if wire["has_cgroup_fd"] and not res.get("into_cgroup", True):
                self.into_cgroup = False  # the kernel lacks it: do not offer it again
            pid = res.get("pid")
            out.append(WorkloadError(f"cannot start {req.argv[0]!r}: {res.get('error')}")
                       if pid is None else (pid, res.get("error")))
        return out

    def close(self, kill: bool = False, why: BaseException | None = None) -> None:
        """Stop the spawner (closing our end ends it) and reap it; answers still due
        fail with ``why``."""
        self._stop_reading()
        while self._pending:
            fut = self._pending.popleft()
            if not fut.done():
                fut.set_exception(why or ConnectionResetError("the spawner was stopped"))
        sock, pid, owner = self._sock, self._pid, self._owner
        self._sock = self._pid = None
        self._answered = False
        if sock is None or owner != os.getpid():
            return
        sock.close()
        if pid is not None:
            with contextlib.suppress(ChildProcessError, ProcessLookupError):
                if kill:
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)


SPAWNER = Spawner()
"""One per agent process: every runner's launches go through it."""
atexit.register(SPAWNER.close)  # reaped, not left to the interpreter's teardown


def _chunks(reqs: Sequence[SpawnRequest],
            into_cgroup: bool) -> Iterator[Sequence[SpawnRequest]]:
    """Messages' worth of requests: at most BATCH, and the descriptors one may carry."""
    start, fds = 0, 0
    for i, req in enumerate(reqs):
        need = 1 + (req.cgroup_fd is not None and into_cgroup) + len(req.join_fds)
        if i > start and (i - start >= BATCH or fds + need > spawnd.MAX_FDS):
            yield reqs[start:i]
            start, fds = i, 0
        fds += need
    yield reqs[start:]


def _fork_self(req: SpawnRequest) -> tuple[int, str | None]:
    wire = req.wire()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(err_r)
            devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            spawnd.child(wire, list(req.join_fds), req.log_fd, err_w, devnull, clean=False)
        os.close(err_w)
        err_w = -1
        return pid, spawnd.exec_failure(err_r)
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)


def _lost(chunk: Sequence[SpawnRequest], why: str) -> list[Started]:
    return [WorkloadError(f"cannot start {r.argv[0]!r}: spawner: {why}") for r in chunk]


def spawn_many(reqs: Sequence[SpawnRequest],
               spawner: Spawner = SPAWNER) -> list[int | WorkloadError]:
    """Start the processes side by side; each PID once its exec succeeded, or the
    reason it did not start. Every process is the caller's child."""
    started = spawner.spawn_many(reqs)
    return _settle(reqs, started if started is not None else [_fork_self(r) for r in reqs])


async def spawn_many_async(reqs: Sequence[SpawnRequest],
                           spawner: Spawner = SPAWNER) -> list[int | WorkloadError]:
    """``spawn_many``, the spawner's answers awaited on the event loop."""
    started = await spawner.spawn_many_async(reqs)
    return _settle(reqs, started if started is not None else [_fork_self(r) for r in reqs])


def _settle(reqs: Sequence[SpawnRequest],
            started: list[Started]) -> list[int | WorkloadError]:
    """A child that failed before exec is reaped; its reason becomes its result."""
    out: list[int | WorkloadError] = []
    for req, s in zip(reqs, started, strict=True):
        if isinstance(s, WorkloadError):
            out.append(s)
            continue
        pid, failure = s
        if failure is not None:
            os.waitpid(pid, 0)
            out.append(WorkloadError(f"cannot start {req.argv[0]!r}: {failure}"))
        else:
            out.append(pid)
    return out


def spawn(req: SpawnRequest, spawner: Spawner = SPAWNER) -> int:
    """Start the process; returns its PID once exec succeeded, else raises WorkloadError.
    The process is the caller's child either way."""
    (got,) = spawn_many([req], spawner)
    if isinstance(got, WorkloadError):
        raise got
    return got
