"""Start a process inside a cgroup: it joins the group before exec, so the workload's
code never runs outside it.

The forked child writes ``0`` (itself) into ``cgroup.procs`` descriptors the parent
opened, drops privileges, then execs. Any failure in the child travels back through a
close-on-exec pipe, so the caller gets the real reason (not a bare exit code 127).
The agent is single-threaded, which is what makes fork without exec-safe helpers fine.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from agent.errors import WorkloadError
from agent.runtime.identity import DEFAULT_PATH, Identity
from agent.timing.sched import SchedPolicy
from agent.timing.syscalls import deadline_attr, sched_setattr_self

_LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS = 38
MAX_FD = os.sysconf("SC_OPEN_MAX")


def _no_new_privs() -> None:
    """setuid binaries and file capabilities grant nothing from here on (kept across exec
    and fork): a workload can only lose privileges, never gain them."""
    if _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


# What the kernel's refusals mean for a scheduling policy, in a person's words.
_SCHED_HINTS = {
    "fifo": {1: "the partition's RT runtime is 0 or RT scheduling is not allowed here"},
    "deadline": {16: "kernel admission control refused the reservation (total DEADLINE "
                     "bandwidth exceeded)",
                 1: "the task's cpus must span its root domain, or the caller lacks "
                    "CAP_SYS_NICE"},
}


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


def _child(req: SpawnRequest, env: dict[str, str], err_w: int, dl_attr: bytes | None) -> None:
    step = "join cgroup"
    try:
        for fd in req.join_fds:
            os.write(fd, b"0")
        if req.sched is not None:
            step = f"set {req.sched.describe()}"
            if dl_attr is not None:
                sched_setattr_self(dl_attr)
            else:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(req.sched.priority))
        step = "setsid"
        # Own session: a terminal's Ctrl-C aimed at the agent must not hit the mission.
        os.setsid()
        step = "redirect output"
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(req.log_fd, 1)
        os.dup2(req.log_fd, 2)
        # Nothing of the agent's leaks in: whatever a library left inheritable (pipes,
        # sockets, cgroup files) is closed. err_w is close-on-exec and still needed.
        step = "close descriptors"
        os.closerange(3, err_w)
        os.closerange(err_w + 1, MAX_FD)
        step = f"chdir {req.working_dir}"
        os.chdir(req.working_dir)
        if os.getuid() == 0:
            step = "drop privileges"
            os.setgroups(list(req.identity.groups))
            os.setgid(req.identity.gid)
            os.setuid(req.identity.uid)
        step = "set no_new_privs"
        _no_new_privs()
        # Python ignores SIGPIPE; an exec'd program must get the default back.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        step = f"exec {req.argv[0]}"
        os.execve(req.argv[0], list(req.argv), env)
    except BaseException as exc:  # everything must reach the parent
        msg = f"{step}: {exc.strerror if isinstance(exc, OSError) else exc}"
        if isinstance(exc, OSError) and req.sched is not None and step.startswith("set "):
            hint = _SCHED_HINTS[req.sched.kind].get(exc.errno or 0)
            msg += f" [errno {exc.errno}]" + (f" - {hint}" if hint else "")
        try:
            os.write(err_w, msg.encode(errors="replace")[:1024])
        finally:
            os._exit(127)


def spawn(req: SpawnRequest) -> int:
    """Fork and exec; returns the PID once exec succeeded, else raises WorkloadError."""
    env = {"PATH": DEFAULT_PATH, "HOME": req.identity.home, **req.env}
    dl_attr = None
    if req.sched is not None and req.sched.kind == "deadline":
        dl_attr = deadline_attr(req.sched.runtime_ns, req.sched.deadline_ns,
                                req.sched.period_ns)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            os.close(err_r)
            _child(req, env, err_w, dl_attr)
        os.close(err_w)
        err_w = -1
        chunks = []
        while chunk := os.read(err_r, 1024):
            chunks.append(chunk)
    finally:
        os.close(err_r)
        if err_w >= 0:
            os.close(err_w)
    if chunks:
        os.waitpid(pid, 0)
        raise WorkloadError(f"cannot start {req.argv[0]!r}: "
                            f"{b''.join(chunks).decode(errors='replace')}")
    return pid
