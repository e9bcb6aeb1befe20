"""How a runner touches processes: launch into a cgroup, watch for exit, reap, signal.

``RealOps`` forks real processes and watches them through pidfds. The simulator passes
its own ops, so the same supervision code (restart policy, backoff, crash loops, health
checks, stop) drives simulated tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.cgroups import CgroupBackend
from agent.errors import AgentError
from agent.runtime.identity import resolve_command, resolve_identity
from agent.runtime.logs import open_log
from agent.runtime.spawn import SPAWNER, SpawnRequest, spawn_many, spawn_many_async
from agent.timing.sched import SchedPolicy


@dataclass(frozen=True)
class Launch:
    partition: str
    workload: str
    command: Sequence[str]
    user: str | int
    group: str | int | None
    working_dir: str
    env: Mapping[str, str]
    log_file: Path
    sched: SchedPolicy | None = None
    image: str | None = None
    """OCI image digest: launch as a container (ContainerOps)."""
    capabilities: tuple[str, ...] = ()
    network: str = "none"


class ProcessOps(Protocol):
    def prepare(self) -> None:
        """Get ready to launch, once at engine start (the real one starts its spawner,
        so the first workload does not wait for it)."""
        ...

    def helpers(self) -> list[int]:
        """The agent's own helper processes (its spawner): they live in the agent's
        cgroup, with the agent."""
        ...

    def placement(self, cgroup_version: str) -> str:
        """How a new process gets into its group, for the status."""
        ...

    def launch(self, backend: CgroupBackend, req: Launch) -> int:
        """Start a process inside the workload's group; AgentError with the reason."""
        ...

    async def launch_many(self, backend: CgroupBackend,
                          reqs: Sequence[Launch]) -> list[int | AgentError]:
        """Start several side by side (a converge's new workloads), awaiting the
        processes on the loop; each PID or the reason, in order."""
        ...

    def watch(self, pid: int, on_exit: Callable[[], None]) -> object | None:
        """Call ``on_exit`` once the process ends; None when it is already gone."""
        ...

    def unwatch(self, handle: object) -> None: ...

    def reap(self, pid: int) -> int | None:
        """Exit status of our own child (negative: signal), None when unknown."""
        ...

    def kill(self, pid: int, sig: signal.Signals) -> None:
        """Send a signal; a process that is already gone is not an error."""
        ...


class RealOps:
    def prepare(self) -> None:
        SPAWNER.warm()

    def helpers(self) -> list[int]:
        return [] if SPAWNER.pid is None else [SPAWNER.pid]

    def placement(self, cgroup_version: str) -> str:
        if SPAWNER.broken is not None:
            return f"the agent forks itself ({SPAWNER.broken}); joins before exec"
        if cgroup_version == "v2" and SPAWNER.into_cgroup:
            return "spawner; born in its group (clone3 CLONE_INTO_CGROUP)"
        return "spawner; joins its groups before exec"

    def launch(self, backend: CgroupBackend, req: Launch) -> int:
        with contextlib.ExitStack() as opened:
            (got,) = spawn_many([self._request(backend, req, opened)])
        if isinstance(got, AgentError):
            raise got
        return got

    async def launch_many(self, backend: CgroupBackend,
                          reqs: Sequence[Launch]) -> list[int | AgentError]:
        with contextlib.ExitStack() as opened:
            prepared: list[SpawnRequest | AgentError] = []
            for req in reqs:
                try:
                    prepared.append(self._request(backend, req, opened))
                except AgentError as exc:
                    prepared.append(exc)
            started = iter(await spawn_many_async(
                [p for p in prepared if isinstance(p, SpawnRequest)]))
            return [next(started) if isinstance(p, SpawnRequest) else p for p in prepared]

    @staticmethod
    def _request(backend: CgroupBackend, req: Launch,
                 opened: contextlib.ExitStack) -> SpawnRequest:
        """Everything the spawner needs, its descriptors closed with ``opened``."""
        try:
            ident = resolve_identity(req.user, req.group)
            argv = [resolve_command(req.command[0]), *req.command[1:]]
        except LookupError as exc:
            raise AgentError(str(exc)) from exc
        fds = backend.open_join_fds(req.partition, req.workload)
        for fd in fds:
            opened.callback(os.close, fd)
        group = backend.open_group_fd(req.partition, req.workload)
        if group is not None:
            opened.callback(os.close, group)
        try:
            log_fd = open_log(req.log_file)
        except OSError as exc:
            raise AgentError(f"cannot open the log {req.log_file}: {exc.strerror}") from exc
        opened.callback(os.close, log_fd)
        return SpawnRequest(argv, ident, req.working_dir, req.env, fds, log_fd, req.sched,
                            group)

    def watch(self, pid: int, on_exit: Callable[[], None]) -> object | None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        asyncio.get_running_loop().add_reader(fd, on_exit)
        return fd

    def unwatch(self, handle: object) -> None:
        assert isinstance(handle, int)
        asyncio.get_running_loop().remove_reader(handle)
        os.close(handle)

    def reap(self, pid: int) -> int | None:
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return None
        return os.waitstatus_to_exitcode(status)

    def kill(self, pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
