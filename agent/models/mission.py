"""Mission profile: the unit of desired state, whichever source delivers it."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from agent.models._base import Frozen, Name

Criticality = Literal["A", "B", "C", "D", "E"]
"""DO-178C design assurance level: A is flight-critical, E has no safety effect."""


class RtBudget(Frozen):
    """SCHED_FIFO budget: the partition's RT tasks run at most ``runtime_us`` per
    ``period_us`` on each of its cores (v1 ``cpu.rt_runtime_us``; RT group scheduling)."""

    runtime_us: int = Field(gt=0)
    """RT run time per period on each core, microseconds."""
    period_us: int = Field(gt=0)
    """RT period, microseconds."""
    priority: int = Field(default=50, ge=1, le=99)
    """SCHED_FIFO priority of the partition's workloads."""


class DeadlineBudget(Frozen):
    """SCHED_DEADLINE reservation for a single-task partition (kernel admission control)."""

    runtime_us: int = Field(gt=0)
    """Guaranteed CPU time per period, microseconds."""
    deadline_us: int = Field(gt=0)
    """Relative deadline of each job, microseconds (runtime <= deadline <= period)."""
    period_us: int = Field(gt=0)
    """Period of the reservation, microseconds."""


BudgetMode = Literal["cfs", "rt", "deadline"]


class Budget(Frozen):
    """CPU time a partition may use.

    Every mode keeps the CFS cap (``quota_us`` per ``period_us``) for the partition's
    ordinary (SCHED_OTHER) threads; ``rt`` and ``deadline`` add a real-time reservation
    for its workloads, counted on top of the cap at admission."""

    mode: BudgetMode = "cfs"
    """How the budget is guaranteed: ``cfs`` bandwidth, ``rt`` (SCHED_FIFO in an RT
    group budget) or ``deadline`` (SCHED_DEADLINE, single task)."""
    quota_us: int = Field(gt=0)
    """CFS: CPU time per period across all the partition's cores, microseconds."""
    period_us: int = Field(gt=0)
    """CFS: length of one period, microseconds."""
    burst_us: int = Field(default=0, ge=0)
    """CFS: unused quota that may carry over into a later period, microseconds."""
    rt: RtBudget | None = None
    """Required in ``rt`` mode."""
    deadline: DeadlineBudget | None = None
    """Required in ``deadline`` mode."""

    @property
    def cfs_utilisation(self) -> float:
        """Fraction of one core the CFS cap grants."""
        return self.quota_us / self.period_us

    def utilisation(self, n_cores: int = 1) -> float:
        """Fraction of one core this budget can consume on ``n_cores`` cores (worst case)."""
        extra = 0.0
        if self.mode == "rt" and self.rt is not None:
            extra = self.rt.runtime_us / self.rt.period_us * n_cores
        elif self.mode == "deadline" and self.deadline is not None:
            extra = self.deadline.runtime_us / self.deadline.period_us
        return self.cfs_utilisation + extra


class CpuPlacement(Frozen):
    """Which cores a partition runs on."""

    dedicated_cores: list[int] = Field(default_factory=list)
    """Cores owned by this partition alone; empty means the shared pool."""
    exclusive: bool = True
    """For dedicated cores: an exclusive cpuset, and the OS's own processes moved off
    them (the agent config's ``isolate_os``); ``false`` only keeps other partitions off."""


class RestartPolicy(Frozen):
    """What happens when a workload's process exits."""

    policy: Literal["always", "on-failure", "never"] = "always"
    """``always`` restarts on any exit, ``on-failure`` only on non-zero or a signal."""
    backoff_initial_ms: int = Field(default=100, ge=0)
    """Delay before the first restart, milliseconds; doubles at each restart."""
    backoff_max_ms: int = Field(default=30_000, ge=0)
    """Upper bound for the restart delay, milliseconds."""
    crash_loop_restarts: int = Field(default=5, ge=1)
    """This many restarts inside ``crash_loop_window_s`` make a crash loop."""
    crash_loop_window_s: float = Field(default=60.0, gt=0)
    """Sliding window for crash-loop detection, seconds."""


class HealthCheck(Frozen):
    """A command run inside the workload's cgroup; a non-zero exit is a failure."""

    command: list[str] = Field(min_length=1)
    """argv of the check; ``command[0]`` is an absolute path or found on PATH."""
    interval_ms: int = Field(default=5_000, gt=0)
    """Time between checks, milliseconds."""
    timeout_ms: int = Field(default=1_000, gt=0)
    """A check running longer than this fails, milliseconds."""
    failure_threshold: int = Field(default=3, ge=1)
    """Consecutive failures after which the workload is restarted."""


class Timing(Frozen):
    """A workload's timing requirement: one job per period (or, sporadic, at most one per
    ``period_us``), each needing at most ``wcet_us`` of CPU and due ``deadline_us`` after
    its release. Admission proves the deadline or refuses the mission."""

    period_us: int = Field(gt=0)
    """Period of the jobs, or the minimum time between two releases, microseconds."""
    wcet_us: int = Field(gt=0)
    """Worst-case execution time of one job (single-threaded), microseconds: the figure
    a timing analysis or a measurement gives."""
    deadline_us: int | None = Field(default=None, gt=0)
    """Relative deadline, microseconds; at most the period (default: the period)."""

    @property
    def deadline(self) -> int:
        return self.deadline_us if self.deadline_us is not None else self.period_us


Capability = Literal[
    "CAP_AUDIT_CONTROL", "CAP_AUDIT_READ", "CAP_AUDIT_WRITE", "CAP_BLOCK_SUSPEND",
    "CAP_BPF", "CAP_CHECKPOINT_RESTORE", "CAP_CHOWN", "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_KILL", "CAP_LEASE", "CAP_LINUX_IMMUTABLE", "CAP_MAC_ADMIN", "CAP_MAC_OVERRIDE",
    "CAP_MKNOD", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST",
    "CAP_NET_RAW", "CAP_PERFMON", "CAP_SETFCAP", "CAP_SETGID", "CAP_SETPCAP",
    "CAP_SETUID", "CAP_SYSLOG", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE", "CAP_SYS_NICE", "CAP_SYS_PACCT", "CAP_SYS_PTRACE", "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_WAKE_ALARM"]


class Workload(Frozen):
    """A process that lives in its partition's cgroup for its whole life."""

    name: Name
    """Unique inside its partition."""
    command: list[str] = Field(min_length=1)
    """argv; ``command[0]`` is an absolute path or found on the agent's PATH."""
    user: str | int = "nobody"
    """User name or uid the process runs as (least privilege by default)."""
    group: str | int | None = None
    """Group name or gid; default is the user's primary group."""
    working_dir: str = "/"
    """Working directory of the process."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment; nothing of the agent's environment leaks in except PATH."""
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    """Restart policy."""
    health_check: HealthCheck | None = None
    """Optional liveness check."""
    stop_grace_ms: int = Field(default=5_000, ge=0)
    """Time between SIGTERM and SIGKILL when stopping, milliseconds."""
    image: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")
    """Run as an OCI container (runc) from this image: the manifest digest of an image
    imported with ``sortie image import``. ``None``: a process on the host."""
    capabilities: list[Capability] = Field(default_factory=list)
    """Containers: the only capabilities the process keeps (default: none)."""
    network: Literal["none", "host"] = "none"
    """Containers: ``none`` (own empty network namespace) or the host's network."""
    timing: Timing | None = None
    """Periodic timing requirement; admission proves its deadline (docs/determinism.md).
    ``None``: the partition's budget is the only guarantee."""

    def spec_hash(self) -> str:
        """Digest of everything that needs a restart when it changes."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


HealthErrorKind = Literal["crash", "crash-loop", "budget-saturation", "deadline-miss", "oom",
                          "pids-exhausted", "window-overrun", "wcet-overrun", "health-check"]
HealthActionName = Annotated[str, StringConstraints(
    pattern=r"^(ignore|log|restart-workload|restart-partition|stop-partition"
            r"|switch-mode:[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$")]
"""``ignore``, ``log``, ``restart-workload``, ``restart-partition``, ``stop-partition`` or
``switch-mode:NAME``."""


class Partition(Frozen):
    """A cgroup with a criticality, a CPU placement and budget, limits and workloads."""

    name: Name
    """Unique in the mission; the cgroup directory name."""
    criticality: Criticality
    """Design assurance level, A (flight-critical) to E (best effort)."""
    cpu: CpuPlacement = Field(default_factory=CpuPlacement)
    """Dedicated cores or the shared pool."""
    budget: Budget
    """CPU budget per period."""
    memory_mib: int = Field(gt=0)
    """Memory limit, MiB (``memory.max`` / ``memory.limit_in_bytes``)."""
    pids_max: int = Field(default=64, gt=0)
    """Maximum number of processes and threads."""
    workloads: list[Workload] = Field(min_length=1)
    """Processes of this partition."""
    health: dict[HealthErrorKind, HealthActionName] = Field(default_factory=dict)
    """Health-monitor table: error -> action; unset errors take the defaults of the
    partition's criticality (see docs/determinism.md)."""


class Window(Frozen):
    """A time slice of the major frame in which a partition may run."""

    partition: Name
    """Partition that owns the window."""
    offset_us: int = Field(ge=0)
    """Start of the window from the start of the major frame, microseconds."""
    duration_us: int = Field(gt=0)
    """Length of the window, microseconds."""


class Schedule(Frozen):
    """Windows over one major frame (ARINC 653 style); one per mode."""

    name: Name
    """Mode name, e.g. ``cruise`` or ``degraded``."""
    major_frame_us: int = Field(gt=0)
    """Length of the major frame, microseconds."""
    windows: list[Window] = Field(default_factory=list)
    """Windows of the partitions scheduled in this mode."""


class MissionProfile(Frozen):
    """Desired state for one board."""

    name: Name
    """Mission name."""
    generation: int = Field(ge=0)
    """Monotonic version of this mission; a lower one never replaces a higher one."""
    board: Name | None = None
    """Hardware profile name this mission is built for; ``None`` fits any board."""
    description: str = ""
    """Free text for people."""
    partitions: list[Partition] = Field(min_length=1)
    """Partitions of the mission."""
    schedules: list[Schedule] = Field(default_factory=list)
    """Time-window schedules (modes); empty means budgets only, no windows."""
    initial_schedule: Name | None = None
    """Schedule active at start; default is the first one."""
    holds: list[Name] = Field(default_factory=list, max_length=64)
    """Modes (schedule names) in which this mission, while it flies, holds changes: a
    new mission (or a withdrawal) arriving in take-off or landing waits, reported
    ``held``, and applies at the first major-frame boundary in a mode not listed."""

    def partition(self, name: str) -> Partition | None:
        return next((p for p in self.partitions if p.name == name), None)
