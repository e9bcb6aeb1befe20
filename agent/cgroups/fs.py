"""File access for cgroup filesystems: every write checked, errors name file and value.

Backends receive a ``CgroupFs`` so the simulator can hand them a tree of its own; the
real one talks to the kernel through plain system calls.
"""

from __future__ import annotations

import errno as errno_mod
import os
from pathlib import Path
from typing import Protocol

from agent.errors import CgroupError


class CgroupFs(Protocol):
    """The few filesystem operations a cgroup backend needs."""

    def mkdir(self, path: Path) -> None: ...
    def rmdir(self, path: Path) -> None: ...
    def read(self, path: Path) -> str: ...
    def write(self, path: Path, value: str) -> None: ...
    def exists(self, path: Path) -> bool: ...
    def subdirs(self, path: Path) -> list[str]: ...


class RealCgroupFs:
    """The kernel's cgroupfs."""

    def mkdir(self, path: Path) -> None:
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            return
        except OSError as exc:
            raise CgroupError(str(path), f"cannot create: {exc.strerror}",
                              errno=exc.errno) from exc

    def rmdir(self, path: Path) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CgroupError(str(path), f"cannot remove: {exc.strerror}",
                              errno=exc.errno) from exc

    def read(self, path: Path) -> str:
        try:
            with open(path, encoding="ascii") as f:
                return f.read()
        except OSError as exc:
            raise CgroupError(str(path), f"cannot read: {exc.strerror}",
                              errno=exc.errno) from exc

    def write(self, path: Path, value: str) -> None:
        # os.write on an fd we close ourselves: the kernel reports EINVAL from write(),
        # which a buffered, unclosed file object would silently drop.
        data = value.encode("ascii")
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise CgroupError(str(path), f"cannot open for writing: {exc.strerror}",
                              value, exc.errno) from exc
        try:
            written = os.write(fd, data)
        except OSError as exc:
            raise CgroupError(str(path), f"kernel refused write: {exc.strerror}",
                              value, exc.errno) from exc
        finally:
            os.close(fd)
        if written != len(data):
            raise CgroupError(str(path), f"short write ({written} of {len(data)} bytes)",
                              value, errno_mod.EIO)

    def exists(self, path: Path) -> bool:
        return path.exists()

    def subdirs(self, path: Path) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise CgroupError(str(path), f"cannot list: {exc.strerror}",
                              errno=exc.errno) from exc


def parse_cpu_list(text: str) -> frozenset[int]:
    """Kernel cpu list (``0-2,5``) -> set of cores."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cores)


def format_cpu_list(cores: frozenset[int]) -> str:
    """Set of cores -> kernel cpu list with ranges (``0-2,5``)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(cores):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def parse_keyed(text: str) -> dict[str, int]:
    """Flat keyed file (``cpu.stat``, ``memory.events``) -> dict of integers."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, val = line.partition(" ")
        if val.strip().lstrip("-").isdigit():
            out[key] = int(val)
    return out


def parse_pids(text: str) -> list[int]:
    return [int(x) for x in text.split()]


def move_procs(fs: CgroupFs, source: Path, target: Path, passes: int = 3) -> int:
    """Move every process listed in ``source`` (a cgroup.procs file) into ``target``.

    Processes that cannot move (kernel threads) or that exit meanwhile are skipped;
    extra passes catch children forked while the first pass ran. Returns how many moved.
    """
    moved = 0
    for _ in range(passes):
        pids = parse_pids(fs.read(source))
        if not pids:
            break
        before = moved
        for pid in pids:
            try:
                fs.write(target, str(pid))
                moved += 1
            except CgroupError:
                continue
        if moved == before:
            break
    return moved
