"""An in-memory cgroup v2 filesystem with the kernel's rules, for the agent's v2 backend.

It implements the ``CgroupFs`` protocol, so ``V2Backend`` drives it unmodified. Rules
kept from the kernel (Documentation/admin-guide/cgroup-v2.rst, kernel/sched/core.c):
interface files appear on mkdir; controllers must be enabled in the parent's
``cgroup.subtree_control`` before their files exist in a child; ``cpu.max`` quota >= 1 ms,
period 1 ms..1 s; burst <= quota; rmdir of a populated or non-empty group is EBUSY;
writing an unknown file is ENOENT; bad values are EINVAL.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.cgroups.fs import parse_cpu_list
from agent.errors import CgroupError

_CONTROLLER_FILES = {
    "cpu": {"cpu.max": "max 100000\n", "cpu.max.burst": "0\n", "cpu.weight": "100\n",
            "cpu.idle": "0\n"},
    "cpuset": {"cpuset.cpus": "\n", "cpuset.mems": "\n", "cpuset.cpus.effective": "\n",
               "cpuset.mems.effective": "\n", "cpuset.cpus.partition": "member\n"},
    "memory": {"memory.max": "max\n", "memory.current": "0\n"},
    "pids": {"pids.max": "max\n", "pids.current": "0\n"},
}
_CORE_FILES = {
    "cgroup.procs": "", "cgroup.subtree_control": "\n", "cgroup.freeze": "0\n",
    "cgroup.events": "populated 0\nfrozen 0\n",
    "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\n"
                "nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n",
}


@dataclass
class _Group:
    files: dict[str, str]
    children: dict[str, _Group] = field(default_factory=dict)
    controllers: list[str] = field(default_factory=list)
    parent: _Group | None = None
    path: str = ""
    sim: Any = None
    """State a CPU model keeps per group (see simulator.cpu)."""


def _err(path: Path, msg: str, code: int, value: str | None = None) -> CgroupError:
    return CgroupError(str(path), msg, value, code)


class FakeCgroup2Fs:
    """A cgroup2 mount rooted at ``root`` (any path; nothing touches the disk)."""

    def __init__(self, root: Path, cpus: str = "0-3", mems: str = "0",
                 controllers: tuple[str, ...] = ("cpuset", "cpu", "io", "memory", "pids")) -> None:
        self.root = root
        files = dict(_CORE_FILES)
        files["cgroup.controllers"] = " ".join(controllers) + "\n"
        for c in controllers:
            files.update(_CONTROLLER_FILES.get(c, {}))
        files["cpuset.cpus.effective"] = cpus + "\n"
        files["cpuset.mems.effective"] = mems + "\n"
        self.top = _Group(files, controllers=list(controllers), path="")
        self.writes: list[tuple[str, str]] = []
        """Every accepted write, in order (tests check ordering rules with it)."""

    # -- lookup -------------------------------------------------------------------
    def _group(self, path: Path) -> _Group | None:
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return None
        g = self.top
        for part in rel.parts:
            g2 = g.children.get(part)
            if g2 is None:
                return None
            g = g2
        return g

    def _file(self, path: Path) -> tuple[_Group, str]:
        g = self._group(path.parent)
        if g is None or path.name not in g.files:
            raise _err(path, "no such file", errno.ENOENT)
        return g, path.name

    # -- CgroupFs -----------------------------------------------------------------
    def mkdir(self, path: Path) -> None:
        parent = self._group(path.parent)
        if parent is None:
            raise _err(path, "cannot create: parent missing", errno.ENOENT)
        if path.name in parent.children:
            return
        enabled = parent.files["cgroup.subtree_control"].split()
        files = dict(_CORE_FILES)
        files["cgroup.controllers"] = " ".join(enabled) + "\n"
        for c in enabled:
            files.update(_CONTROLLER_FILES.get(c, {}))
        child = _Group(files, controllers=enabled, parent=parent,
                       path=f"{parent.path}/{path.name}")
        parent.children[path.name] = child
        self.on_mkdir(child)

    def rmdir(self, path: Path) -> None:
        parent = self._group(path.parent)
        g = self._group(path)
        if parent is None or g is None:
            return
        if g.children or g.files["cgroup.procs"].split():
            raise _err(path, "cannot remove: Device or resource busy", errno.EBUSY)
        del parent.children[path.name]
        self.on_rmdir(g)

    def read(self, path: Path) -> str:
        g, name = self._file(path)
        if name == "cpuset.cpus.effective" and g is not self.top:
            return g.files["cpuset.cpus"] or self.top.files["cpuset.cpus.effective"]
        return g.files[name]

    def exists(self, path: Path) -> bool:
        if self._group(path) is not None:
            return True
        g = self._group(path.parent)
        return g is not None and path.name in g.files

    def subdirs(self, path: Path) -> list[str]:
        g = self._group(path)
        return sorted(g.children) if g else []

    def write(self, path: Path, value: str) -> None:
        g, name = self._file(path)
        v = value.strip()
        check = getattr(self, "_w_" + name.replace(".", "_"), None)
        if check is not None:
            check(path, g, v)
        else:
            g.files[name] = v + "\n"
        self.writes.append((str(path.relative_to(self.root)), v))

    # -- hooks for a CPU model ------------------------------------------------------
    def on_mkdir(self, group: _Group) -> None:
        """Called for every new group."""

    def on_rmdir(self, group: _Group) -> None:
        """Called when a group goes away."""

    def group(self, path: Path) -> _Group | None:
        return self._group(path)

    # -- kernel rules per file ----------------------------------------------------
    def _w_cgroup_subtree_control(self, path: Path, g: _Group, v: str) -> None:
        enabled = g.files["cgroup.subtree_control"].split()
        for tok in v.split():
            op, ctrl = tok[0], tok[1:]
            if op not in "+-" or ctrl not in g.controllers:
                raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
            if op == "+" and ctrl not in enabled:
                enabled.append(ctrl)
            elif op == "-" and ctrl in enabled:
                enabled.remove(ctrl)
        g.files["cgroup.subtree_control"] = " ".join(enabled) + "\n"

    def _w_cpu_max(self, path: Path, g: _Group, v: str) -> None:
        quota, _, period = v.partition(" ")
        try:
            p = int(period) if period else int(g.files["cpu.max"].split()[1])
            q = -1 if quota == "max" else int(quota)
        except ValueError:
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v) from None
        burst = int(g.files.get("cpu.max.burst", "0"))
        if not 1000 <= p <= 1_000_000 or (q != -1 and (q < 1000 or burst > q)):
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        g.files["cpu.max"] = f"{quota} {p}\n"

    def _w_cpu_max_burst(self, path: Path, g: _Group, v: str) -> None:
        quota = g.files["cpu.max"].split()[0]
        if not v.isdigit() or (quota != "max" and int(v) > int(quota)):
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        g.files["cpu.max.burst"] = v + "\n"

    def _w_cpu_weight(self, path: Path, g: _Group, v: str) -> None:
        # Linux: sched_group_set_shares refuses an idle group; 1..10000 otherwise.
        if not v.isdigit() or not 1 <= int(v) <= 10_000 or g.files["cpu.idle"] == "1\n":
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        g.files["cpu.weight"] = v + "\n"

    def _w_cpu_idle(self, path: Path, g: _Group, v: str) -> None:
        if v not in ("0", "1"):
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        if v == "0" and g.files["cpu.idle"] == "1\n":
            g.files["cpu.weight"] = "100\n"  # leaving the idle class resets the weight
        g.files["cpu.idle"] = v + "\n"

    def _w_cpuset_cpus(self, path: Path, g: _Group, v: str) -> None:
        try:
            cpus = parse_cpu_list(v)
        except ValueError:
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v) from None
        board = parse_cpu_list(self.top.files["cpuset.cpus.effective"])
        if not cpus <= board:
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        g.files["cpuset.cpus"] = v + "\n"

    def _w_cpuset_cpus_partition(self, path: Path, g: _Group, v: str) -> None:
        # Linux 6.1: a partition root needs a partition-root parent (the top is one), its
        # own cpus, and the top (kernel threads) keeps at least one CPU. The write
        # succeeds either way; the file says why a partition is invalid.
        if v not in ("root", "member"):
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        parent = g.parent or self.top
        cpus = parse_cpu_list(g.files.get("cpuset.cpus", "").strip() or "")
        if v == "root":
            if parent is not self.top and \
                    parent.files.get("cpuset.cpus.partition", "").strip() != "root":
                v = "root invalid (Parent is not a partition root)"
            elif not cpus:
                v = "root invalid (cpuset.cpus is empty)"
            elif parent is self.top and cpus >= parse_cpu_list(
                    self.top.files["cpuset.cpus.effective"]):
                v = "root invalid (Parent unable to distribute cpu downstream)"
        g.files["cpuset.cpus.partition"] = v + "\n"
        # Child partition roots follow their parent: invalid under a member, valid again
        # under a root.
        for child in g.children.values():
            state = child.files.get("cpuset.cpus.partition", "").strip()
            stale = state.startswith("root invalid (Parent") if v == "root" \
                else state == "root"
            if stale:
                self._w_cpuset_cpus_partition(path, child, "root")

    def _w_cgroup_freeze(self, path: Path, g: _Group, v: str) -> None:
        if v not in ("0", "1"):
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        g.files["cgroup.freeze"] = v + "\n"
        populated = "1" if g.files["cgroup.procs"].split() else "0"
        g.files["cgroup.events"] = f"populated {populated}\nfrozen {v}\n"

    def _w_memory_max(self, path: Path, g: _Group, v: str) -> None:
        if v != "max" and not v.isdigit():
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        # The kernel rounds down to whole pages.
        g.files["memory.max"] = (v if v == "max" else str(int(v) // 4096 * 4096)) + "\n"

    def _w_pids_max(self, path: Path, g: _Group, v: str) -> None:
        if v != "max" and not (v.isdigit() and int(v) >= 0):
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        g.files["pids.max"] = v + "\n"

    def _w_cgroup_procs(self, path: Path, g: _Group, v: str) -> None:
        if not v.isdigit():
            raise _err(path, "kernel refused write: Invalid argument", errno.EINVAL, v)
        for other in self._all(self.top):
            pids = other.files["cgroup.procs"].split()
            if v in pids:
                pids.remove(v)
                other.files["cgroup.procs"] = "".join(p + "\n" for p in pids)
        g.files["cgroup.procs"] += v + "\n"

    def _all(self, g: _Group) -> list[_Group]:
        out = [g]
        for c in g.children.values():
            out += self._all(c)
        return out
