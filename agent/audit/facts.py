"""What the audit found on the machine, as plain data: gathered by ``gather``, judged by
``rules`` (pure), so the rules are tested without a machine to break."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from agent.cgroups.features import KernelFeatures
from agent.errors import Violation
from agent.models import AgentConfig, MissionProfile

PathKind = Literal["dir", "file", "socket", "other"]
PathRole = Literal["config", "hardware", "profiles", "state", "run", "socket", "reports",
                   "logs", "secret", "certificate", "kubeconfig", "metrics"]


@dataclass(frozen=True)
class Ancestor:
    path: str
    uid: int
    mode: int


@dataclass(frozen=True)
class PathFact:
    path: str
    role: PathRole
    exists: bool
    kind: PathKind | None = None
    uid: int | None = None
    mode: int | None = None
    ancestors: tuple[Ancestor, ...] = ()
    required: bool = False
    """The config names it: missing is a failure (a secret, a certificate)."""


@dataclass(frozen=True)
class Listener:
    proto: Literal["tcp", "tcp6", "udp", "udp6"]
    address: str
    port: int
    pid: int | None
    process: str | None


@dataclass(frozen=True)
class AgentFact:
    running: bool
    pid: int | None = None
    watchdog_usec: str | None = None
    """WATCHDOG_USEC in the agent's environment (None: not under a systemd watchdog)."""
    notify_socket: bool = False


@dataclass(frozen=True)
class ProcFact:
    """One running workload's process, as the kernel sees it (/proc/PID/status)."""

    partition: str
    workload: str
    pid: int
    container: bool
    euid: int
    cap_eff: int
    seccomp: int
    """0 off, 1 strict, 2 filter."""
    no_new_privs: bool


@dataclass(frozen=True)
class KernelFact:
    cgroup_version: str | None
    cgroup_error: str | None
    features: KernelFeatures | None
    cmdline: str
    rt_runtime_us: int | None
    """kernel.sched_rt_runtime_us (-1: RT tasks are never throttled)."""
    swap_kib: int
    clock_synced: bool | None
    """The kernel's NTP state (adjtimex): None when it cannot be read."""


@dataclass(frozen=True)
class KubeProbe:
    list_error: tuple[int, str] | None
    """The board's MissionProfile list as the agent makes it: (code, message), or None
    when it worked (code 0: unreachable)."""
    needed: dict[str, bool] = field(default_factory=dict)
    """Access the board needs -> granted."""
    excess: dict[str, bool] = field(default_factory=dict)
    """Access a board never needs -> granted."""
    review_error: str | None = None


@dataclass(frozen=True)
class SlotFact:
    """The board's root slots and its updater."""

    booted: str | None
    """The slot this system runs from (``sortie.slot=``), None when not an A/B board."""
    root_readonly: bool | None
    """How ``/`` is mounted (None: not found in the mount table)."""
    rauc: dict[str, dict[str, str]] | None
    """/etc/rauc/system.conf by section, None when absent."""
    rauc_error: str | None = None
    """Why system.conf could not be read."""
    keyring: PathFact | None = None
    """The keyring system.conf names."""


@dataclass(frozen=True)
class Facts:
    config: AgentConfig
    config_path: str | None
    """The config file read (None: the built-in defaults)."""
    paths: list[PathFact]
    listeners: list[Listener]
    agent: AgentFact
    kernel: KernelFact
    mission: MissionProfile | None
    mission_source: str
    admission: list[Violation]
    procs: list[ProcFact]
    kube: KubeProbe | None
    slots: SlotFact | None = None
