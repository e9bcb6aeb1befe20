"""The floor for placing one workload: the leanest code that does what Sortie does.

Run by ``bench.apply_latency`` as ``python -I -S bench/spawn_floor.py ROOT`` (only the
standard library, no agent, no asyncio). For each line ``PREFIX NAME`` on stdin it makes
the partition's groups in every v1 hierarchy Sortie uses, writes the same limits (core 1,
not exclusive: see below; CFS burst, quota and period; the idle class for DAL E; RT
runtime; memory; pids) and reads each back, makes the workload's leaf groups, then forks
a child that joins all six hierarchies, starts a session, redirects its output, closes
every other descriptor, drops to ``nobody``, sets no_new_privs and execs ``/bin/sleep``;
the clock stops when exec succeeded (a close-on-exec pipe reads its end), as Sortie's
``workload.started`` does. It prints the milliseconds, then stops the child and removes
the groups (not timed).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time

HIERARCHIES = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer")
PARTITION_LEVEL = ("cpu", "cpuacct")
NOBODY = 65534
_libc = ctypes.CDLL(None, use_errno=True)


def write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def place(root: str, prefix: str, name: str) -> tuple[float, list[str], int]:
    t0 = time.perf_counter()
    part = {h: f"{root}/{h}/{prefix}/p-{name}" for h in HIERARCHIES}
    for d in part.values():
        os.mkdir(d)
    cs, cpu = part["cpuset"], part["cpu"]
    # Not cpu_exclusive: the agent's own partitions share core 1 here (the agent moves
    # them off a core it dedicates; the floor would have to as well), so it does less.
    limits = {f"{cs}/cpuset.mems": "0", f"{cs}/cpuset.cpus": "1",
              f"{cpu}/cpu.cfs_burst_us": "0",
              f"{cpu}/cpu.cfs_period_us": "100000", f"{cpu}/cpu.cfs_quota_us": "20000",
              f"{cpu}/cpu.idle": "1", f"{cpu}/cpu.rt_runtime_us": "0",
              f"{part['memory']}/memory.limit_in_bytes": str(64 << 20),
              f"{part['pids']}/pids.max": "16"}
    for path, value in limits.items():
        write(path, value)
    for path, value in limits.items():
        if read(path) != value:
            raise SystemExit(f"{path} reads back {read(path)!r}, not {value!r}")
    leaves = [part[h] if h in PARTITION_LEVEL else f"{part[h]}/w-w" for h in HIERARCHIES]
    for d in leaves[len(PARTITION_LEVEL):]:
        os.mkdir(d)
    write(f"{cs}/w-w/cpuset.mems", read(f"{cs}/cpuset.mems"))
    write(f"{cs}/w-w/cpuset.cpus", read(f"{cs}/cpuset.cpus"))
    joins = [os.open(f"{d}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in leaves]
    log = os.open(f"/tmp/{prefix}-floor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND
                  | os.O_CLOEXEC, 0o640)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            for fd in joins:
                os.write(fd, b"0")
            os.setsid()
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, err_w)
            os.closerange(err_w + 1, os.sysconf("SC_OPEN_MAX"))
            os.chdir("/")
            os.setgroups([NOBODY])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            if _libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
                raise OSError(ctypes.get_errno(), "prctl")
            os.execve("/bin/sleep", ["/bin/sleep", "3600"], {"PATH": "/usr/bin:/bin"})
        except BaseException as exc:
            os.write(err_w, str(exc).encode())
        os._exit(127)
    os.close(err_w)
    failure = os.read(err_r, 1024)
    ms = (time.perf_counter() - t0) * 1000
    os.close(err_r)
    for fd in [*joins, log]:
        os.close(fd)
    if failure:
        raise SystemExit(f"floor child failed: {failure.decode()}")
    return ms, list(part.values()), pid


def clean(groups: list[str], pid: int) -> None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    for d in groups:
        if os.path.isdir(f"{d}/w-w"):
            os.rmdir(f"{d}/w-w")
    for d in groups:
        os.rmdir(d)


def main() -> None:
    root = sys.argv[1]
    for line in sys.stdin:
        prefix, name = line.split()
        ms, groups, pid = place(root, prefix, name)
        print(f"{ms:.4f}", flush=True)
        clean(groups, pid)


if __name__ == "__main__":
    main()
