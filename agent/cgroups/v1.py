"""cgroup v1: one directory per controller hierarchy (cpu, cpuacct, cpuset, ...).

A process must be written into ``cgroup.procs`` of each hierarchy that should limit it;
a new cpuset group needs ``cpuset.cpus`` and ``cpuset.mems`` before any task joins.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from agent.cgroups.backend import (
    AGENT_GROUP,
    CpuSample,
    PartitionLimits,
    ResourceUse,
    partition_dir,
    workload_dir,
)
from agent.cgroups.features import KernelFeatures, kernel_tick_us
from agent.cgroups.fs import (
    CgroupFs,
    RealCgroupFs,
    format_cpu_list,
    move_procs,
    parse_cpu_list,
    parse_keyed,
    parse_pids,
)
from agent.cgroups.weights import read_weight, set_weight
from agent.errors import CgroupError

CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer")
# CPU controllers stop at the partition: its workloads share one CFS/RT budget and one
# usage counter there, and RT runtime need not be split among workload groups.
PARTITION_LEVEL = frozenset({"cpu", "cpuacct"})
SYSTEM_GROUP = "system"
# memory.limit_in_bytes reads back this for "no limit" (PAGE_COUNTER_MAX pages).
_UNLIMITED = 1 << 62
FREEZE_TIMEOUT_S = 2.0


class V1Backend:
    version: Literal["v1", "v2"] = "v1"

    def __init__(self, root: Path, prefix: str, fs: CgroupFs | None = None) -> None:
        self.prefix = prefix
        self.partitioned = False  # v1 has no partition roots
        self.fs: CgroupFs = fs or RealCgroupFs()
        self._mounts: dict[str, Path] = {}
        for c in CONTROLLERS:
            mount = root / c
            if not self.fs.exists(mount):
                raise CgroupError(str(mount), f"cgroup v1 controller {c!r} is not mounted")
            self._mounts[c] = mount
        # cpu and cpuacct are often co-mounted (cpu,cpuacct): act once per real directory.
        seen: dict[Path, str] = {}
        for c, m in self._mounts.items():
            seen.setdefault(m.resolve(), c)
        self._distinct = list(seen.values())
        self.root = root
        self._oom_cache: dict[str, tuple[int, int]] = {}

    def _foreign(self) -> list[Path]:
        """Other hierarchies (devices, blkio, name=systemd, the cgroup2 mount...) where
        an OCI runtime creates the same paths; removal cleans those too."""
        try:
            mounts = [d for d in self.root.iterdir() if d.is_dir()
                      and d.name not in CONTROLLERS and d.resolve() not in
                      {m.resolve() for m in self._mounts.values()}]
        except OSError:
            return []
        return mounts

    def _rmdir_foreign(self, *parts: str) -> None:
        for m in self._foreign():
            d = m.joinpath(self.prefix, *parts)
            if d.is_dir():
                for sub in sorted((p for p in d.rglob("*") if p.is_dir()),
                                  key=lambda p: len(p.parts), reverse=True):
                    self.fs.rmdir(sub)
                self.fs.rmdir(d)

    # -- paths -------------------------------------------------------------------
    def _dir(self, controller: str, *parts: str) -> Path:
        return self._mounts[controller].joinpath(self.prefix, *parts)

    def _dirs(self, *parts: str) -> list[tuple[str, Path]]:
        return [(c, self._dir(c, *parts)) for c in self._distinct]

    def _leaf_dirs(self, partition: str, workload: str) -> list[tuple[str, Path]]:
        """Where a workload's processes live in each hierarchy."""
        pdir, wdir = partition_dir(partition), workload_dir(workload)
        return [(c, self._dir(c, pdir) if c in PARTITION_LEVEL else self._dir(c, pdir, wdir))
                for c in self._distinct]

    # -- capabilities ------------------------------------------------------------
    def features(self) -> KernelFeatures:
        cpu = self._mounts["cpu"]
        return KernelFeatures(
            rt_group_sched=self.fs.exists(cpu / "cpu.rt_runtime_us"),
            cfs_burst=self.fs.exists(cpu / "cpu.cfs_burst_us"),
            sched_deadline=True,
            freezer=self.fs.exists(self._mounts["freezer"]),
            tick_us=kernel_tick_us(),
        )

    # -- base --------------------------------------------------------------------
    def board_mems(self) -> str:
        return self.fs.read(self._mounts["cpuset"] / "cpuset.mems").strip()

    def _board_cpus(self) -> str:
        return self.fs.read(self._mounts["cpuset"] / "cpuset.cpus").strip()

    def ensure_base(self, agent_cpus: frozenset[int]) -> None:
        for _, d in self._dirs():
            self.fs.mkdir(d)
        top = self._dir("cpuset")
        self.fs.write(top / "cpuset.mems", self.board_mems())
        try:
            self.fs.write(top / "cpuset.cpus", self._board_cpus())
        except CgroupError as exc:
            holders = self._exclusive_holders(top, parse_cpu_list(self._board_cpus()))
            if exc.errno != errno.EINVAL or not holders:
                raise
            raise CgroupError(str(top / "cpuset.cpus"), "the kernel refused the board's "
                              f"cores: {', '.join(holders)} holds some of them exclusively "
                              "(cpuset.cpu_exclusive); give them back or reserve them in "
                              "the hardware profile", self._board_cpus(), exc.errno) from exc
        for _, d in self._dirs(AGENT_GROUP):
            self.fs.mkdir(d)
        agent = self._dir("cpuset", AGENT_GROUP)
        self.fs.write(agent / "cpuset.mems", self.board_mems())
        self.fs.write(agent / "cpuset.cpus", format_cpu_list(agent_cpus))

    def _exclusive_holders(self, group: Path, cpus: frozenset[int]) -> list[str]:
        """Sibling cpusets that hold some of ``cpus`` exclusively (what makes the kernel
        refuse them to ``group`` with a bare EINVAL)."""
        parent = group.parent
        found = []
        for name in self.fs.subdirs(parent):
            d = parent / name
            if d == group:
                continue
            try:
                exclusive = self.fs.read(d / "cpuset.cpu_exclusive").strip() == "1"
                theirs = parse_cpu_list(self.fs.read(d / "cpuset.cpus"))
            except CgroupError:
                continue
            if exclusive and theirs & cpus:
                found.append(f"{d} (cpus {format_cpu_list(theirs)})")
        return found

    def place(self, cpus: frozenset[int]) -> bool:
        return False  # the prefix spans the board: any core is available

    def reserve_rt(self, runtime_us: int) -> None:
        # Groups start with 0 RT runtime, and a child's budget must fit its parent's, so
        # the prefix holds exactly the sum of its partitions' (per 1 s period).
        rt = self._dir("cpu") / "cpu.rt_runtime_us"
        if self.fs.exists(rt):
            self.fs.write(self._dir("cpu") / "cpu.rt_period_us", "1000000")
            self.fs.write(rt, str(runtime_us))

    def isolate_os(self, cores: frozenset[int]) -> int:
        root = self._mounts["cpuset"]
        system = self._dir("cpuset", SYSTEM_GROUP)
        self.fs.mkdir(system)
        self.fs.write(system / "cpuset.mems", self.board_mems())
        self.fs.write(system / "cpuset.cpus", format_cpu_list(cores))
        # Kernel threads and processes that just exited stay where they are.
        return move_procs(self.fs, root / "cgroup.procs", system / "cgroup.procs", passes=1)

    def release_os(self) -> None:
        root = self._mounts["cpuset"]
        system = self._dir("cpuset", SYSTEM_GROUP)
        if not self.fs.exists(system):
            return
        move_procs(self.fs, system / "cgroup.procs", root / "cgroup.procs")
        self.fs.rmdir(system)

    def move_self(self, also: Sequence[int] = ()) -> None:
        for _, d in self._dirs(AGENT_GROUP):
            for pid in (os.getpid(), *also):
                self.fs.write(d / "cgroup.procs", str(pid))

    def remove_base(self, also: Sequence[int] = ()) -> None:
        self._rmdir_foreign()
        ours = {str(os.getpid()), *map(str, also)}
        for c, d in self._dirs(AGENT_GROUP):
            if self.fs.exists(d):
                for pid in ours & set(self.fs.read(d / "cgroup.procs").split()):
                    self.fs.write(self._mounts[c] / "cgroup.procs", pid)  # leave first
            self.fs.rmdir(d)
        for _, d in self._dirs():
            self.fs.rmdir(d)

    # -- partitions --------------------------------------------------------------
    def partitions(self) -> list[str]:
        return [n[2:] for n in self.fs.subdirs(self._dir("cpu")) if n.startswith("p-")]

    def workloads(self, partition: str) -> list[str]:
        d = self._dir("pids", partition_dir(partition))
        return [n[2:] for n in self.fs.subdirs(d) if n.startswith("w-")]

    def apply_partition(self, partition: str, limits: PartitionLimits) -> PartitionLimits:
        pdir = partition_dir(partition)
        created = not self.fs.exists(self._dir("cpuset", pdir))
        for _, d in self._dirs(pdir):
            self.fs.mkdir(d)
        cs = self._dir("cpuset", pdir)
        cpus = format_cpu_list(limits.cpus)
        excl = cs / "cpuset.cpu_exclusive"
        if not created and self.fs.read(excl).strip() == "1":
            self.fs.write(excl, "0")  # cpus of an exclusive set cannot move while exclusive
        if created:
            self.fs.write(cs / "cpuset.mems", limits.mems)
            self.fs.write(cs / "cpuset.cpus", cpus)
        else:
            # v1 keeps every child a subset of its parent: widen, move children, narrow.
            old = parse_cpu_list(self.fs.read(cs / "cpuset.cpus"))
            self.fs.write(cs / "cpuset.cpus", format_cpu_list(old | limits.cpus))
            self.fs.write(cs / "cpuset.mems", limits.mems)
            for w in self.workloads(partition):
                wd = cs / workload_dir(w)
                self.fs.write(wd / "cpuset.mems", limits.mems)
                self.fs.write(wd / "cpuset.cpus", cpus)
            self.fs.write(cs / "cpuset.cpus", cpus)
        if limits.exclusive:
            # A child may only be exclusive under an exclusive parent.
            self.fs.write(self._dir("cpuset") / "cpuset.cpu_exclusive", "1")
            self.fs.write(excl, "1")
        cpu = self._dir("cpu", pdir)
        burst = cpu / "cpu.cfs_burst_us"
        has_burst = self.fs.exists(burst)
        if has_burst:  # burst must never exceed quota, so drop it while quota moves
            self.fs.write(burst, "0")
        self.fs.write(cpu / "cpu.cfs_period_us", str(limits.period_us))
        self.fs.write(cpu / "cpu.cfs_quota_us", str(limits.quota_us))
        if has_burst and limits.burst_us:
            self.fs.write(burst, str(limits.burst_us))
        elif limits.burst_us:
            raise CgroupError(str(burst), "kernel has no CFS burst support", str(limits.burst_us))
        set_weight(self.fs, cpu, "cpu.shares", limits.weight)
        rt = cpu / "cpu.rt_runtime_us"
        if self.fs.exists(rt):
            # The kernel wants runtime <= period after every single write, and refuses
            # runtime 0 while RT tasks run: order the two writes instead of zeroing.
            period = cpu / "cpu.rt_period_us"
            if limits.rt_runtime_us <= int(self.fs.read(period)):
                self.fs.write(rt, str(limits.rt_runtime_us))
                self.fs.write(period, str(limits.rt_period_us))
            else:
                self.fs.write(period, str(limits.rt_period_us))
                self.fs.write(rt, str(limits.rt_runtime_us))
        elif limits.rt_runtime_us:
            raise CgroupError(str(rt), "kernel has no RT group scheduling",
                              str(limits.rt_runtime_us))
        self.fs.write(self._dir("memory", pdir) / "memory.limit_in_bytes",
                      str(limits.memory_bytes))
        self.fs.write(self._dir("pids", pdir) / "pids.max", str(limits.pids_max))
        return self.read_limits(partition)

    def read_limits(self, partition: str) -> PartitionLimits:
        pdir = partition_dir(partition)
        cs, cpu = self._dir("cpuset", pdir), self._dir("cpu", pdir)
        burst = cpu / "cpu.cfs_burst_us"
        pids = self.fs.read(self._dir("pids", pdir) / "pids.max").strip()
        mem = int(self.fs.read(self._dir("memory", pdir) / "memory.limit_in_bytes"))
        rt = cpu / "cpu.rt_runtime_us"
        has_rt = self.fs.exists(rt)
        return PartitionLimits(
            cpus=parse_cpu_list(self.fs.read(cs / "cpuset.cpus")),
            mems=self.fs.read(cs / "cpuset.mems").strip(),
            quota_us=int(self.fs.read(cpu / "cpu.cfs_quota_us")),
            period_us=int(self.fs.read(cpu / "cpu.cfs_period_us")),
            burst_us=int(self.fs.read(burst)) if self.fs.exists(burst) else 0,
            memory_bytes=-1 if mem >= _UNLIMITED else mem,
            pids_max=-1 if pids == "max" else int(pids),
            rt_runtime_us=int(self.fs.read(rt)) if has_rt else 0,
            rt_period_us=int(self.fs.read(cpu / "cpu.rt_period_us")) if has_rt else 1_000_000,
            exclusive=self.fs.read(cs / "cpuset.cpu_exclusive").strip() == "1",
            weight=read_weight(self.fs, cpu, "cpu.shares"),
        )

    def remove_partition(self, partition: str) -> None:
        for w in self.workloads(partition):
            self.remove_workload(partition, w)
        self._rmdir_foreign(partition_dir(partition))
        for _, d in self._dirs(partition_dir(partition)):
            for sub in self.fs.subdirs(d):  # leaves an OCI runtime made at partition level
                self.fs.rmdir(d / sub)
            self.fs.rmdir(d)

    # -- workloads ---------------------------------------------------------------
    def create_workload(self, partition: str, workload: str) -> None:
        pdir, wdir = partition_dir(partition), workload_dir(workload)
        for c, d in self._dirs(pdir, wdir):
            if c not in PARTITION_LEVEL:
                self.fs.mkdir(d)
        parent = self._dir("cpuset", pdir)
        own = parent / wdir
        self.fs.write(own / "cpuset.mems", self.fs.read(parent / "cpuset.mems").strip())
        self.fs.write(own / "cpuset.cpus", self.fs.read(parent / "cpuset.cpus").strip())

    def remove_workload(self, partition: str, workload: str) -> None:
        for _c, d in self._dirs(partition_dir(partition), workload_dir(workload)):
            self.fs.rmdir(d)  # PARTITION_LEVEL ones exist only if runc made them
        self._rmdir_foreign(partition_dir(partition), workload_dir(workload))

    def procs(self, partition: str, workload: str) -> list[int]:
        d = self._dir("pids", partition_dir(partition), workload_dir(workload))
        if not self.fs.exists(d):
            return []
        return parse_pids(self.fs.read(d / "cgroup.procs"))

    def open_join_fds(self, partition: str, workload: str) -> list[int]:
        fds: list[int] = []
        try:
            for _, d in self._leaf_dirs(partition, workload):
                fds.append(os.open(d / "cgroup.procs", os.O_WRONLY | os.O_CLOEXEC))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            raise CgroupError(str(exc.filename), f"cannot open: {exc.strerror}",
                              errno=exc.errno) from exc
        return fds

    def open_group_fd(self, partition: str, workload: str) -> int | None:
        return None  # v1 has no CLONE_INTO_CGROUP: a child joins each hierarchy

    def _freezer_state(self, partition: str, workload: str | None) -> Path:
        parts = [partition_dir(partition)] + ([workload_dir(workload)] if workload else [])
        return self._dir("freezer", *parts) / "freezer.state"

    def freeze_write(self, partition: str, workload: str | None, frozen: bool) -> None:
        self.fs.write(self._freezer_state(partition, workload),
                      "FROZEN" if frozen else "THAWED")

    def freeze_reached(self, partition: str, workload: str | None, frozen: bool) -> bool:
        state = self.fs.read(self._freezer_state(partition, workload)).strip()
        return state == ("FROZEN" if frozen else "THAWED")

    def freeze(self, partition: str, workload: str | None, frozen: bool) -> None:
        self.freeze_write(partition, workload, frozen)
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while not self.freeze_reached(partition, workload, frozen):
            if time.monotonic() > deadline:
                raise CgroupError(str(self._freezer_state(partition, workload)),
                                  f"did not reach {'FROZEN' if frozen else 'THAWED'} in "
                                  f"{FREEZE_TIMEOUT_S} s")
            time.sleep(0.0005)

    def counters(self, partition: str) -> dict[str, int]:
        # v1 counts an OOM kill in the victim's own group only, so the leaves must be
        # added up; but the partition's memory.failcnt (its limit was hit) moves first,
        # so the leaves are read only after it did: two reads per partition otherwise.
        pdir = partition_dir(partition)
        mem = self._dir("memory", pdir)
        failcnt = int(self.fs.read(mem / "memory.failcnt"))
        cached = self._oom_cache.get(partition)
        if cached is None or cached[0] != failcnt:
            total = 0
            for g in [pdir] + [f"{pdir}/{workload_dir(w)}" for w in self.workloads(partition)]:
                oom = self._dir("memory", g) / "memory.oom_control"
                if self.fs.exists(oom):
                    total += parse_keyed(self.fs.read(oom)).get("oom_kill", 0)
            cached = self._oom_cache[partition] = (failcnt, total)
        # A refused fork is counted in the forking group (v1): the leaves again.
        pids = 0
        for g in [pdir] + [f"{pdir}/{workload_dir(w)}" for w in self.workloads(partition)]:
            events = self._dir("pids", g) / "pids.events"
            if self.fs.exists(events):
                pids += parse_keyed(self.fs.read(events)).get("max", 0)
        return {"oom_kill": cached[1], "pids_max": pids}

    def window_files(self, partition: str) -> dict[str, str | None]:
        pdir = partition_dir(partition)
        return {"freeze": str(self._dir("freezer", pdir) / "freezer.state"),
                "frozen": "FROZEN", "thawed": "THAWED",
                "usage": str(self._dir("cpuacct", pdir) / "cpuacct.usage"), "usage_key": None}

    def cpu_sample(self, partition: str) -> CpuSample:
        pdir = partition_dir(partition)
        usage = int(self.fs.read(self._dir("cpuacct", pdir) / "cpuacct.usage"))
        stat = parse_keyed(self.fs.read(self._dir("cpu", pdir) / "cpu.stat"))
        return CpuSample(
            usage_ns=usage,
            nr_periods=stat.get("nr_periods", 0),
            nr_throttled=stat.get("nr_throttled", 0),
            throttled_ns=stat.get("throttled_time", 0),
        )

    def resource_use(self, partition: str) -> ResourceUse:
        pdir = partition_dir(partition)
        return ResourceUse(
            memory_bytes=int(self.fs.read(self._dir("memory", pdir) / "memory.usage_in_bytes")),
            pids=int(self.fs.read(self._dir("pids", pdir) / "pids.current")))
