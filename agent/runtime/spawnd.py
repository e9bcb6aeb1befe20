"""The spawner: a small process the agent starts once and asks to start each workload.

Why a separate process: forking the ~40 MiB agent copies its page tables (1.3-2 ms) on
every start and stalls its event loop for it; this process holds only the standard
library (~10 MiB), so its fork costs a fraction of that. Its children are created with
``clone3(CLONE_PARENT)``: they are the *agent's* children, so the agent reaps them and
learns their exit status exactly as when it forked them itself. On cgroup v2,
``CLONE_INTO_CGROUP`` has the child born inside its group (no migration at all).

Run as a script (``python -I -S spawnd.py FD``) it imports nothing but the standard
library and serves requests on the inherited socket until the agent closes it (or dies:
the parent-death signal). The agent imports ``child`` from here for its in-process
fallback, so what a workload's process does before exec exists once.

Wire (one SOCK_SEQPACKET message each way, ``marshal``: both ends are the same
interpreter; the socket is a private pair between the agent and its child, nobody else
can write to it): ``{"batch": [request, ...]}`` with each request's descriptors in turn
(``log, cgroup dir (if has_cgroup_fd), *cgroup.procs (njoin)``); the reply
``{"results": [{"pid": N}, or {"pid": N | None, "error": text}, ...]}`` in the same
order (a child that failed before exec is still the agent's to reap), or ``{"error":
text}`` for a request it could not read.
"""

from __future__ import annotations

import _socket
import array
import ctypes
import marshal
import os
import signal
import struct
import sys

TYPE_CHECKING = False  # not typing's: importing typing would cost the spawner ~1 MiB
if TYPE_CHECKING:
    from typing import Any

PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
SYS_CLONE3 = 435  # the same number on every architecture (unified table since 5.3)
CLONE_PARENT = 0x00008000
CLONE_INTO_CGROUP = 0x200000000
# struct clone_args (CLONE_ARGS_SIZE_VER2): flags, pidfd, child_tid, parent_tid,
# exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup.
_CLONE_ARGS = struct.Struct("=11Q")
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "armv7l": 380, "armv8l": 380}
MAX_MSG = 1 << 20
MAX_FDS = 253  # SCM_MAX_FD: the most descriptors one message may carry

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

# What the kernel's refusals mean for a scheduling policy, in a person's words.
_SCHED_HINTS = {
    "fifo": {1: "the partition's RT runtime is 0 or RT scheduling is not allowed here"},
    "deadline": {16: "kernel admission control refused the reservation (total DEADLINE "
                     "bandwidth exceeded)",
                 1: "the task's cpus must span its root domain, or the caller lacks "
                    "CAP_SYS_NICE"},
}


def _check(rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def sched_setattr_self(attr: bytes) -> None:
    """sched_setattr(2) on the calling thread (SCHED_DEADLINE: os does not wrap it)."""
    nr = _SCHED_SETATTR.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"sched_setattr number unknown for {os.uname().machine}")
    buf = ctypes.create_string_buffer(attr, len(attr))
    _check(_libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), buf, ctypes.c_long(0)))


def child(req: dict[str, Any], join_fds: list[int], log_fd: int, err_w: int,
          devnull: int, clean: bool) -> None:
    """In the new process: join the cgroups, set the policy, drop privileges, exec.
    Never returns; a failure is written to ``err_w`` (close-on-exec) as "step: reason".

    ``clean``: the parent already is what the exec'd program must inherit (the
    spawner: every descriptor but stdio close-on-exec, no_new_privs set, SIGPIPE and
    SIGXFSZ at their defaults), so the child skips that work; every instruction here is
    paid per start, in pages copied on write."""
    step = "join cgroup"
    sched = req["sched"]
    try:
        for fd in join_fds:
            os.write(fd, b"0")
        if sched is not None:
            step = "set"
            if sched[0] == "deadline":
                sched_setattr_self(sched[1])
            else:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(sched[1]))
        step = "setsid"
        # Own session: a terminal's Ctrl-C aimed at the agent must not hit the mission.
        os.setsid()
        step = "redirect output"
        os.dup2(devnull, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if not clean:
            prepare_exec(err_w)
        step = "chdir"
        os.chdir(req["cwd"])
        if req["drop"]:
            step = "drop privileges"
            os.setgroups(req["groups"])
            os.setgid(req["gid"])
            os.setuid(req["uid"])
        step = "exec"
        os.execve(req["argv"][0], req["argv"], req["env"])
    except BaseException as exc:  # everything must reach the parent
        where = {"set": f"set {sched[2] if sched else ''}", "chdir": f"chdir {req['cwd']}",
                 "exec": f"exec {req['argv'][0]}"}.get(step, step)
        msg = f"{where}: {exc.strerror if isinstance(exc, OSError) else exc}"
        if isinstance(exc, OSError) and sched is not None and step == "set":
            hint = _SCHED_HINTS[sched[0]].get(exc.errno or 0)
            msg += f" [errno {exc.errno}]" + (f" - {hint}" if hint else "")
        try:
            os.write(err_w, msg.encode(errors="replace")[:1024])
        finally:
            os._exit(127)


def prepare_exec(keep: int) -> None:
    """What every exec'd workload must inherit: no descriptor of ours but stdio (whatever
    was inheritable: pipes, sockets, cgroup files) and ``keep`` (close-on-exec),
    no_new_privs (setuid binaries and file capabilities grant nothing from here on: a
    workload can only lose privileges, never gain them), and SIGPIPE and SIGXFSZ at
    their defaults (Python ignores them)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)


def _clone3(flags: int, cgroup_fd: int) -> int:
    # With CLONE_PARENT the kernel wants exit_signal 0: the child inherits ours
    # (SIGCHLD), so the agent is told of its exit as of any child's.
    args = ctypes.create_string_buffer(
        _CLONE_ARGS.pack(flags, 0, 0, 0, 0 if flags & CLONE_PARENT else signal.SIGCHLD,
                         0, 0, 0, 0, 0,
                         cgroup_fd if cgroup_fd >= 0 else 0), _CLONE_ARGS.size)
    # syscall(2) is variadic: every argument must be passed as a full long.
    pid: int = _libc.syscall(ctypes.c_long(SYS_CLONE3), args, ctypes.c_long(_CLONE_ARGS.size))
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def exec_failure(err_r: int) -> str | None:
    """Read the child's close-on-exec pipe to its end: empty once exec succeeded."""
    chunks = []
    while chunk := os.read(err_r, 1024):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace") if chunks else None


def begin(req: dict[str, Any], log_fd: int, cgroup_fd: int, join_fds: list[int],
          devnull: int) -> tuple[int, int, bool]:
    """Clone a child of our parent that joins its groups and execs: (pid, the read end
    of its exec pipe, whether it was born in its group)."""
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        flags = CLONE_PARENT | (CLONE_INTO_CGROUP if cgroup_fd >= 0 else 0)
        try:
            pid = _clone3(flags, cgroup_fd)
        except OSError:
            if not flags & CLONE_INTO_CGROUP:
                raise
            flags = CLONE_PARENT  # a kernel before 5.7: migrate after birth instead
            pid = _clone3(flags, -1)
        if pid == 0:  # the child: born in its group when CLONE_INTO_CGROUP took
            child(req, [] if flags & CLONE_INTO_CGROUP else join_fds, log_fd, err_w, devnull,
                  clean=True)
    except BaseException:
        os.close(err_r)
        raise
    finally:
        os.close(err_w)  # ours closed: the pipe ends when the child execs
    return pid, err_r, bool(flags & CLONE_INTO_CGROUP)


def finish(pid: int, err_r: int, into_cgroup: bool) -> dict[str, Any]:
    """Wait for the child's exec; its answer."""
    try:
        failure = exec_failure(err_r)
    finally:
        os.close(err_r)
    reply: dict[str, Any] = {"pid": pid, "into_cgroup": into_cgroup}
    if failure is not None:
        reply["error"] = failure
    return reply


def start_batch(batch: list[dict[str, Any]], fds: list[int],
                devnull: int) -> list[dict[str, Any]]:
    """Clone every child of the batch before waiting for any exec: they join their groups
    and exec side by side (on several cores; on cgroup v1 their migrations share one
    grace period of the kernel's threadgroup lock instead of waiting for one each)."""
    begun: list[tuple[int, int, bool] | str] = []
    at = 0
    for req in batch:
        n = 1 + bool(req["has_cgroup_fd"]) + req["njoin"]
        mine, at = fds[at:at + n], at + n
        if len(mine) < n:
            begun.append("spawner: descriptors missing from the request")
            continue
        cgroup_fd = mine[1] if req["has_cgroup_fd"] else -1
        try:
            begun.append(begin(req, mine[0], cgroup_fd, mine[n - req["njoin"]:], devnull))
        except OSError as exc:
            begun.append(f"spawner: clone: {exc.strerror}")
    return [{"pid": None, "error": b} if isinstance(b, str) else finish(*b) for b in begun]


def receive(sock: _socket.socket) -> tuple[bytes, list[int], int]:
    """One request and its descriptors, close-on-exec (a workload gets only its dup'd
    stdio). Not ``socket.recv_fds``: Python 3.11's ignores its ``flags``."""
    fds = array.array("i")
    msg, ancdata, flags, _ = sock.recvmsg(MAX_MSG, _socket.CMSG_LEN(MAX_FDS * fds.itemsize),
                                          _socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds), flags


def serve(sock: _socket.socket, parent: int) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
    if os.getppid() != parent:
        return  # the agent died before the death signal was armed
    # Nothing the agent's terminal sends is for us (the agent closes the socket to stop
    # us); a new session rather than ignored signals, which children would inherit.
    os.setsid()
    # Once, for every child: it inherits this (see ``child``'s ``clean``).
    os.set_inheritable(sock.fileno(), False)
    prepare_exec(sock.fileno())
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    while True:
        try:
            msg, fds, flags = receive(sock)
        except InterruptedError:
            continue
        except OSError:
            return
        if not msg and not fds:
            return  # the agent closed its end
        try:
            if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC):
                reply: dict[str, Any] = {"error": "spawner: request too large"}
            else:
                req = marshal.loads(msg)  # noqa: S302 - the agent's private socketpair
                if req.get("ping"):
                    reply = {"pong": os.getpid()}
                else:
                    reply = {"results": start_batch(req["batch"], fds, devnull)}
        except Exception as exc:  # a bad request is answered, never fatal
            reply = {"error": f"spawner: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        try:
            sock.send(marshal.dumps(reply), _socket.MSG_NOSIGNAL)
        except OSError:
            return


def main() -> None:
    """``python -I -S -c 'import spawnd; spawnd.main()' FD AGENT_PID`` with this
    directory first on the path: imported, so its bytecode comes from the cache."""
    serve(_socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]))


if __name__ == "__main__":
    main()
