"""cgroup v2: one unified tree; controllers enabled top-down via ``cgroup.subtree_control``.

Processes live only in leaves (the workload groups and the agent's group), which keeps
the "no internal processes" rule without special cases.

Partition mode (preferred): the prefix is a cpuset partition root over the cores not
reserved for the OS. Exclusive partitions can then be partition roots themselves (Linux
6.1 needs every ancestor to be one), and the kernel itself keeps everything outside the
prefix (the OS, the agent) on the reserved cores. The agent then stays outside the
prefix. When the kernel refuses (another top-level cpuset overlaps, too few cores), the
prefix stays a member with the agent's group inside, and exclusive partitions are
dedicated by placement only (the engine warns: exclusive reads back False).

A partition root cannot share cores with the OS, so the shared pool loses the reserved
cores there. When the pool needs one (every other core is dedicated), the member layout
is used instead: chosen at start if a running partition already needs one, or taken
from a root prefix when a mission that needs one is applied (``place``).
"""

from __future__ import annotations

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

NEEDED = ("cpu", "cpuset", "memory", "pids")
SYSTEM_GROUP = "system"
FREEZE_TIMEOUT_S = 2.0


class V2Backend:
    version: Literal["v1", "v2"] = "v2"

    def __init__(self, root: Path, prefix: str, fs: CgroupFs | None = None) -> None:
        self.root = root
        self.prefix = prefix
        self.fs: CgroupFs = fs or RealCgroupFs()
        self.partitioned = False
        """The prefix is a cpuset partition root (see the module docstring)."""
        self.partition_state = ""
        """What the kernel said when asked to make the prefix a partition root."""
        self._board: frozenset[int] = frozenset()
        self._agent_cpus: frozenset[int] = frozenset()
        have = self.fs.read(root / "cgroup.controllers").split()
        missing = [c for c in NEEDED if c not in have]
        if missing:
            raise CgroupError(str(root / "cgroup.controllers"),
                              f"cgroup v2 controllers {missing} are not available")

    def _dir(self, *parts: str) -> Path:
        return self.root.joinpath(self.prefix, *parts)

    def _enable(self, group: Path) -> None:
        enabled = self.fs.read(group / "cgroup.subtree_control").split()
        todo = [c for c in NEEDED if c not in enabled]
        if todo:
            self.fs.write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in todo))

    # -- capabilities ------------------------------------------------------------
    def features(self) -> KernelFeatures:
        # v2 has no RT group scheduling; burst shows as cpu.max.burst in child groups.
        return KernelFeatures(
            rt_group_sched=False,
            cfs_burst=self.fs.exists(self._dir() / "cpu.max.burst"),
            sched_deadline=True,
            freezer=True,
            tick_us=kernel_tick_us(),
        )

    def reserve_rt(self, runtime_us: int) -> None:
        if runtime_us:
            raise CgroupError(str(self._dir()), "cgroup v2 has no RT group scheduling",
                              str(runtime_us))

    def isolate_os(self, cores: frozenset[int]) -> int:
        if self.partitioned:
            return 0  # the kernel already keeps everything outside the prefix on `cores`
        system = self._dir(SYSTEM_GROUP)
        self.fs.mkdir(system)
        self.fs.write(system / "cpuset.cpus", format_cpu_list(cores))
        # Kernel threads stay in the root.
        return move_procs(self.fs, self.root / "cgroup.procs", system / "cgroup.procs",
                          passes=1)

    def release_os(self) -> None:
        system = self._dir(SYSTEM_GROUP)
        if not self.fs.exists(system):
            return
        move_procs(self.fs, system / "cgroup.procs", self.root / "cgroup.procs")
        self.fs.rmdir(system)

    # -- base --------------------------------------------------------------------
    def board_mems(self) -> str:
        return self.fs.read(self.root / "cpuset.mems.effective").strip()

    def ensure_base(self, agent_cpus: frozenset[int]) -> None:
        self._enable(self.root)
        self.fs.mkdir(self._dir())
        self._enable(self._dir())
        board = parse_cpu_list(self.fs.read(self.root / "cpuset.cpus.effective"))
        self._board, self._agent_cpus = board, agent_cpus
        part = self._dir("cpuset.cpus.partition")
        agent = self._dir(AGENT_GROUP)
        if (self.fs.exists(part) and board - agent_cpus and not self.fs.exists(agent)
                and not self._in_use() & agent_cpus):
            if self.fs.read(part).strip() != "root":
                self.fs.write(self._dir("cpuset.cpus"), format_cpu_list(board - agent_cpus))
                self.fs.write(part, "root")
            self.partition_state = self.fs.read(part).strip()
            self.partitioned = self.partition_state == "root"
            if self.partitioned:
                return
            self.fs.write(part, "member")  # refused: fall back to the member layout
            self.fs.write(self._dir("cpuset.cpus"), format_cpu_list(board))
        self._member_layout()

    def _in_use(self) -> frozenset[int]:
        """Cores the partitions already under the prefix (a previous run's) ask for."""
        cpus: set[int] = set()
        for p in self.partitions():
            cpus |= parse_cpu_list(self.fs.read(self._dir(partition_dir(p), "cpuset.cpus")))
        return frozenset(cpus)

    def _member_layout(self) -> None:
        agent = self._dir(AGENT_GROUP)
        self.fs.mkdir(agent)
        self.fs.write(agent / "cpuset.cpus", format_cpu_list(self._agent_cpus))

    def place(self, cpus: frozenset[int]) -> bool:
        prefix = self._board - self._agent_cpus
        if not self.partitioned or cpus <= prefix:
            return False
        # The pool needs a reserved core: a partition root cannot share it with the OS.
        part = self._dir("cpuset.cpus.partition")
        self.fs.write(part, "member")
        self.fs.write(self._dir("cpuset.cpus"), format_cpu_list(self._board))
        self.partitioned = False
        self.partition_state = self.fs.read(part).strip()
        self._member_layout()
        return True

    def move_self(self, also: Sequence[int] = ()) -> None:
        if self.partitioned:
            return  # outside the prefix the kernel keeps the agent on the reserved cores
        for pid in (os.getpid(), *also):
            self.fs.write(self._dir(AGENT_GROUP) / "cgroup.procs", str(pid))

    def remove_base(self, also: Sequence[int] = ()) -> None:
        agent, ours = self._dir(AGENT_GROUP), {str(os.getpid()), *map(str, also)}
        if self.fs.exists(agent):
            for pid in ours & set(self.fs.read(agent / "cgroup.procs").split()):
                self.fs.write(self.root / "cgroup.procs", pid)  # leave before rmdir
            self.fs.rmdir(agent)
        self.fs.rmdir(self._dir())

    # -- partitions --------------------------------------------------------------
    def partitions(self) -> list[str]:
        return [n[2:] for n in self.fs.subdirs(self._dir()) if n.startswith("p-")]

    def workloads(self, partition: str) -> list[str]:
        return [n[2:] for n in self.fs.subdirs(self._dir(partition_dir(partition)))
                if n.startswith("w-")]

    def apply_partition(self, partition: str, limits: PartitionLimits) -> PartitionLimits:
        d = self._dir(partition_dir(partition))
        self.fs.mkdir(d)
        # v2 clamps children to the parent's effective cpus itself; no ordering dance.
        self.fs.write(d / "cpuset.mems", limits.mems)
        self.fs.write(d / "cpuset.cpus", format_cpu_list(limits.cpus))
        burst = d / "cpu.max.burst"
        has_burst = self.fs.exists(burst)
        if has_burst:
            self.fs.write(burst, "0")
        self.fs.write(d / "cpu.max", f"{limits.quota_us} {limits.period_us}")
        if has_burst and limits.burst_us:
            self.fs.write(burst, str(limits.burst_us))
        elif limits.burst_us:
            raise CgroupError(str(burst), "kernel has no CFS burst support", str(limits.burst_us))
        self.fs.write(d / "memory.max", str(limits.memory_bytes))
        self.fs.write(d / "pids.max", str(limits.pids_max))
        set_weight(self.fs, d, "cpu.weight", limits.weight)
        if limits.rt_runtime_us:
            raise CgroupError(str(d), "cgroup v2 has no RT group scheduling",
                              str(limits.rt_runtime_us))
        part = d / "cpuset.cpus.partition"
        if self.fs.exists(part):
            # The write succeeds and the kernel says "root invalid (why)" when it cannot:
            # Linux 6.1 needs every ancestor up to the top to be a partition root, which
            # this layout (the agent's OS-core groups under the prefix) does not give.
            # Read-back shows exclusive=False and the engine warns (partition.adjusted).
            self.fs.write(part, "root" if limits.exclusive else "member")
        return self.read_limits(partition)

    def read_limits(self, partition: str) -> PartitionLimits:
        d = self._dir(partition_dir(partition))
        quota, _, period = self.fs.read(d / "cpu.max").strip().partition(" ")
        burst = d / "cpu.max.burst"
        mem = self.fs.read(d / "memory.max").strip()
        pids = self.fs.read(d / "pids.max").strip()
        return PartitionLimits(
            cpus=parse_cpu_list(self.fs.read(d / "cpuset.cpus")),
            mems=self.fs.read(d / "cpuset.mems").strip(),
            quota_us=-1 if quota == "max" else int(quota),
            period_us=int(period),
            burst_us=int(self.fs.read(burst)) if self.fs.exists(burst) else 0,
            memory_bytes=-1 if mem == "max" else int(mem),
            pids_max=-1 if pids == "max" else int(pids),
            exclusive=self.fs.exists(d / "cpuset.cpus.partition")
            and self.fs.read(d / "cpuset.cpus.partition").strip() == "root",
            weight=read_weight(self.fs, d, "cpu.weight"),
        )

    def remove_partition(self, partition: str) -> None:
        for w in self.workloads(partition):
            self.remove_workload(partition, w)
        self.fs.rmdir(self._dir(partition_dir(partition)))

    # -- workloads ---------------------------------------------------------------
    def create_workload(self, partition: str, workload: str) -> None:
        self.fs.mkdir(self._dir(partition_dir(partition), workload_dir(workload)))

    def remove_workload(self, partition: str, workload: str) -> None:
        self.fs.rmdir(self._dir(partition_dir(partition), workload_dir(workload)))

    def procs(self, partition: str, workload: str) -> list[int]:
        d = self._dir(partition_dir(partition), workload_dir(workload))
        if not self.fs.exists(d):
            return []
        return parse_pids(self.fs.read(d / "cgroup.procs"))

    def open_join_fds(self, partition: str, workload: str) -> list[int]:
        path = self._dir(partition_dir(partition), workload_dir(workload), "cgroup.procs")
        try:
            return [os.open(path, os.O_WRONLY | os.O_CLOEXEC)]
        except OSError as exc:
            raise CgroupError(str(path), f"cannot open: {exc.strerror}", errno=exc.errno) from exc

    def open_group_fd(self, partition: str, workload: str) -> int | None:
        path = self._dir(partition_dir(partition), workload_dir(workload))
        try:
            return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupError(str(path), f"cannot open: {exc.strerror}", errno=exc.errno) from exc

    def _group(self, partition: str, workload: str | None) -> Path:
        parts = [partition_dir(partition)] + ([workload_dir(workload)] if workload else [])
        return self._dir(*parts)

    def freeze_write(self, partition: str, workload: str | None, frozen: bool) -> None:
        self.fs.write(self._group(partition, workload) / "cgroup.freeze",
                      "1" if frozen else "0")

    def freeze_reached(self, partition: str, workload: str | None, frozen: bool) -> bool:
        want = 1 if frozen else 0
        events = self.fs.read(self._group(partition, workload) / "cgroup.events")
        return bool(parse_keyed(events).get("frozen", want) == want)

    def freeze(self, partition: str, workload: str | None, frozen: bool) -> None:
        self.freeze_write(partition, workload, frozen)
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while not self.freeze_reached(partition, workload, frozen):
            if time.monotonic() > deadline:
                raise CgroupError(str(self._group(partition, workload) / "cgroup.freeze"),
                                  f"did not reach frozen={int(frozen)} in "
                                  f"{FREEZE_TIMEOUT_S} s")
            time.sleep(0.0005)

    def counters(self, partition: str) -> dict[str, int]:
        d = self._dir(partition_dir(partition))
        mem = d / "memory.events"
        pids = d / "pids.events"
        return {"oom_kill": parse_keyed(self.fs.read(mem)).get("oom_kill", 0)
                if self.fs.exists(mem) else 0,
                "pids_max": parse_keyed(self.fs.read(pids)).get("max", 0)
                if self.fs.exists(pids) else 0}

    def window_files(self, partition: str) -> dict[str, str | None]:
        d = self._dir(partition_dir(partition))
        return {"freeze": str(d / "cgroup.freeze"), "frozen": "1", "thawed": "0",
                "usage": str(d / "cpu.stat"), "usage_key": "usage_usec"}

    def cpu_sample(self, partition: str) -> CpuSample:
        stat = parse_keyed(self.fs.read(self._dir(partition_dir(partition)) / "cpu.stat"))
        return CpuSample(
            usage_ns=stat.get("usage_usec", 0) * 1000,
            nr_periods=stat.get("nr_periods", 0),
            nr_throttled=stat.get("nr_throttled", 0),
            throttled_ns=stat.get("throttled_usec", 0) * 1000,
        )

    def resource_use(self, partition: str) -> ResourceUse:
        d = self._dir(partition_dir(partition))
        return ResourceUse(memory_bytes=int(self.fs.read(d / "memory.current")),
                           pids=int(self.fs.read(d / "pids.current")))
