"""The one interface both cgroup versions implement, and the values it moves."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from agent.cgroups.features import KernelFeatures
from agent.errors import CgroupError

AGENT_GROUP = "agent"
PARTITION_PREFIX = "p-"
WORKLOAD_PREFIX = "w-"


def partition_dir(partition: str) -> str:
    # Prefixed so no name can collide with the agent's group or a kernel interface file.
    return PARTITION_PREFIX + partition


def workload_dir(workload: str) -> str:
    return WORKLOAD_PREFIX + workload


@dataclass(frozen=True)
class PartitionLimits:
    """Everything the kernel enforces for one partition, in kernel units."""

    cpus: frozenset[int]
    mems: str
    quota_us: int
    period_us: int
    burst_us: int
    memory_bytes: int
    pids_max: int
    rt_runtime_us: int = 0
    """RT group budget per ``rt_period_us`` on each core (v1 only; 0 = no RT tasks)."""
    rt_period_us: int = 1_000_000
    exclusive: bool = False
    """Dedicated cores held exclusively (v1 ``cpuset.cpu_exclusive``)."""
    weight: int = 100
    """CFS weight against the other groups on shared cores, on the v2 ``cpu.weight`` scale
    (1-10000; v1 ``cpu.shares`` = weight x 1024 / 100). 0: the idle class (``cpu.idle``),
    which runs only when no other group wants the core."""


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU counters of one cgroup at one instant."""

    usage_ns: int
    nr_periods: int
    nr_throttled: int
    throttled_ns: int


@dataclass(frozen=True)
class ResourceUse:
    """Memory and tasks a partition holds at one instant (its workloads included)."""

    memory_bytes: int
    """Charged memory (v1 ``memory.usage_in_bytes``, v2 ``memory.current``)."""
    pids: int
    """Tasks (threads) in the group (``pids.current``)."""


class CgroupBackend(Protocol):
    """Manages the agent's subtree of cgroups: partitions, their workloads, the agent."""

    version: Literal["v1", "v2"]
    prefix: str
    partitioned: bool
    """v2: the prefix is a cpuset partition root (the kernel itself confines everything
    outside it to the other cores). Always False on v1."""

    def ensure_base(self, agent_cpus: frozenset[int]) -> None:
        """Create the prefix and the agent's own cgroup, and move the agent into it."""
        ...

    def features(self) -> KernelFeatures:
        """What this kernel and hierarchy can enforce (probed, not assumed)."""
        ...

    def reserve_rt(self, runtime_us: int) -> None:
        """RT runtime per second the prefix holds for its partitions (their sum)."""
        ...

    def isolate_os(self, cores: frozenset[int]) -> int:
        """Confine the OS's own processes to ``cores`` (kept off dedicated cores).

        Returns how many processes were moved; kernel threads that cannot move stay."""
        ...

    def release_os(self) -> None:
        """Undo ``isolate_os``: give the OS's processes every core again."""
        ...

    def move_self(self, also: Sequence[int] = ()) -> None:
        """Move the calling process, and ``also`` (its spawner: processes of the agent),
        into the agent's own cgroup."""
        ...

    def place(self, cpus: frozenset[int]) -> bool:
        """Make sure partitions can run on ``cpus`` (every core the desired partitions
        name). True if the layout had to change for it."""
        ...

    def remove_base(self, also: Sequence[int] = ()) -> None:
        """Remove the agent's cgroup and the prefix (both must be empty): the calling
        process and ``also`` leave it for the root first."""
        ...

    def board_mems(self) -> str:
        """Memory nodes available to partitions (``cpuset.mems`` of the parent)."""
        ...

    def partitions(self) -> list[str]:
        """Names of partitions that exist under the prefix."""
        ...

    def workloads(self, partition: str) -> list[str]:
        """Names of workload groups inside a partition."""
        ...

    def apply_partition(self, partition: str, limits: PartitionLimits) -> PartitionLimits:
        """Create or update a partition; returns the limits read back from the kernel."""
        ...

    def read_limits(self, partition: str) -> PartitionLimits:
        """Limits currently in force for an existing partition."""
        ...

    def remove_partition(self, partition: str) -> None:
        """Remove an empty partition and its (empty) workload groups."""
        ...

    def create_workload(self, partition: str, workload: str) -> None:
        """Create the leaf group a workload's processes live in."""
        ...

    def remove_workload(self, partition: str, workload: str) -> None:
        """Remove an empty workload group."""
        ...

    def procs(self, partition: str, workload: str) -> list[int]:
        """PIDs in a workload's group."""
        ...

    def open_join_fds(self, partition: str, workload: str) -> list[int]:
        """Open ``cgroup.procs`` of every hierarchy for a child to write ``0`` into.

        The caller closes the descriptors. A process that writes ``0`` to each joins
        the workload's group before it execs, so the workload never runs outside it.
        """
        ...

    def open_group_fd(self, partition: str, workload: str) -> int | None:
        """The workload group's directory, for a child born inside it
        (``CLONE_INTO_CGROUP``, cgroup v2); None where a process can only join after
        birth (v1). The caller closes it."""
        ...

    def freeze(self, partition: str, workload: str | None, frozen: bool) -> None:
        """Freeze or thaw a partition (or one workload) and wait until done (blocking:
        for callers off the event loop; the agent awaits ``freeze_awaited``)."""
        ...

    def freeze_write(self, partition: str, workload: str | None, frozen: bool) -> None:
        """Ask the kernel to freeze or thaw; returns at once."""
        ...

    def freeze_reached(self, partition: str, workload: str | None, frozen: bool) -> bool:
        """True once the group is (un)frozen as asked."""
        ...

    def window_files(self, partition: str) -> dict[str, str | None]:
        """For the timekeeper: the freeze file, its two values, and the usage counter."""
        ...

    def counters(self, partition: str) -> dict[str, int]:
        """Cumulative error counters: ``oom_kill`` and ``pids_max`` (fork refusals)."""
        ...

    def cpu_sample(self, partition: str) -> CpuSample:
        """Cumulative CPU counters of a partition."""
        ...

    def resource_use(self, partition: str) -> ResourceUse:
        """Memory and tasks the partition holds now."""
        ...


FREEZE_TIMEOUT_S = 2.0
FREEZE_POLL_S = 0.0005


async def freeze_awaited(backend: CgroupBackend, partition: str, workload: str | None,
                         frozen: bool, timeout_s: float = FREEZE_TIMEOUT_S) -> None:
    """Freeze or thaw and wait for the kernel without blocking the event loop (a freeze
    can take milliseconds while tasks reach a safe point; the loop keeps turning)."""
    backend.freeze_write(partition, workload, frozen)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not backend.freeze_reached(partition, workload, frozen):
        if loop.time() > deadline:
            want = "frozen" if frozen else "thawed"
            raise CgroupError(f"{partition}/{workload or ''}", f"did not get {want} in "
                              f"{timeout_s} s")
        await asyncio.sleep(FREEZE_POLL_S)
