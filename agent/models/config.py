"""Agent configuration (``/etc/sortie/agent.yaml``)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from agent.models._base import Frozen, Name


def _hostname() -> str:
    return socket.gethostname().split(".")[0].lower() or "board"


class MqttConfig(Frozen):
    """The link to mission planners through an MQTT broker (docs/mqtt.md)."""

    url: str = Field(pattern=r"^mqtts?://[^/:]+(:\d+)?/?$")
    """``mqtt://host:port`` or ``mqtts://host:port`` (TLS, server certificate verified)."""
    topic_root: str = Field(default="sortie/v1", pattern=r"^[A-Za-z0-9_/-]+$")
    """Versioned topic root; this board's tree is ``ROOT/NODE/...``."""
    username: str | None = None
    """Broker user name."""
    password_file: Path | None = None
    """File holding the broker password (kept out of the config)."""
    ca_file: Path | None = None
    """CA bundle that signs the broker's certificate (default: the system's)."""
    cert_file: Path | None = None
    """Client certificate, for brokers that require one."""
    key_file: Path | None = None
    """Client certificate's private key."""
    trusted_keys: dict[str, str] = Field(default_factory=dict)
    """Planner keys: key id -> base64 Ed25519 public key (``sortie keygen`` prints it)."""
    revoked_keys: list[str] = Field(default_factory=list)
    """Key ids, or base64 public keys, refused even if listed as trusted (a public key
    is refused under any id)."""
    max_payload_bytes: int = Field(default=256 * 1024, ge=1024, le=16 << 20)
    """Larger pushes are refused before anything is parsed; the board announces it to
    the broker (MQTT 5 Maximum Packet Size), which then never delivers a larger one."""
    max_envelope_ttl_s: int = Field(default=86_400, ge=60)
    """Longest validity (exp - iat) of an envelope this board accepts."""
    max_queued_messages: int = Field(default=1000, ge=1)
    """Incoming pushes waiting to be handled; a burst beyond that is dropped (counted in
    status as ``dropped``; a planner without an answer pushes again)."""
    max_queued_bytes: int = Field(default=256 * 1024, ge=1024)
    """Payload bytes waiting to be handled, at most (one push is always taken): the
    agent's memory under a flood of pushes is bounded by this, not by the flood."""
    insecure_lab_mode: bool = False
    """Accept unsigned profiles. Never on a flying board; logged loudly at every start."""
    backlog_events: int = Field(default=1000, ge=0)
    """Events kept while the broker is unreachable, sent when it returns."""
    keepalive_s: int = Field(default=30, ge=5)
    """MQTT keepalive: how soon the broker notices the board is gone (last will)."""


class KubeConfig(Frozen):
    """The link to a Kubernetes (k3s) control plane (docs/kubernetes.md)."""

    kubeconfig: Path | None = None
    """kubeconfig file; ``None``: the in-cluster service account."""
    context: str | None = None
    """kubeconfig context; ``None``: its current context."""
    namespaces: list[Name] = Field(default_factory=lambda: ["sortie-missions"], min_length=1)
    """Namespaces whose MissionProfiles this board reads; profiles elsewhere are ignored
    (with an event). One namespace is watched alone, so the board needs rights in that
    namespace only; several mean a cluster-wide watch (and cluster-wide read rights)."""
    allow_root_workloads: bool = False
    """Fly missions from Kubernetes whose workloads run as root. Off: such a profile is
    refused (MissionProfiles are not signed; whoever may write one would own the board)."""
    node_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels on this board's Node (missions select boards by label)."""
    lease_duration_s: int = Field(default=40, ge=10)
    """Node lease duration: the cluster calls the board gone this long after the last
    renewal."""
    lease_renew_s: float = Field(default=10.0, gt=0)
    """How often the lease is renewed (a quarter of its duration, as the kubelet does)."""
    status_period_s: float = Field(default=10.0, ge=0.5)
    """How often the flying MissionProfile's status (measured usage) is refreshed."""
    watch_timeout_s: int = Field(default=60, ge=1)
    """The server ends each watch after this; the board re-watches from its last version
    and calls a watch that stays silent for twice as long stalled."""
    backoff_max_s: float = Field(default=30.0, ge=0.1)
    """Longest wait between reconnection attempts (jittered exponential backoff)."""


class MetricsConfig(Frozen):
    """Prometheus metrics through node_exporter's textfile collector (docs/operations.md)."""

    textfile_dir: Path
    """Directory node_exporter reads ``*.prom`` files from (Debian's package:
    ``/var/lib/prometheus/node-exporter``); the agent replaces ``sortie.prom`` there every
    accounting period and removes it when it stops."""

    @field_validator("textfile_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v


class AgentConfig(Frozen):
    """Where the agent finds its board, its missions and its state."""

    node_name: str = Field(default_factory=_hostname)
    """This board's name towards control planes (defaults to the host name)."""
    hardware_profile: Path | None = None
    """Hardware profile file; ``None`` detects the machine at start."""
    profile_dirs: list[Path] = Field(default_factory=lambda: [Path("/etc/sortie/profiles")])
    """Directories (or files) holding mission profiles baked into the image."""
    mission: str | None = None
    """Mission to fly when the directories hold several; ``None`` needs exactly one."""
    state_dir: Path = Path("/var/lib/sortie")
    """Last-known-good state and workload records (root only, 0700)."""
    run_dir: Path = Path("/run/sortie")
    """Runtime directory holding the local API socket (0600)."""
    log_dir: Path = Path("/var/log/sortie/workloads")
    """Per-workload stdout/stderr logs."""
    log_max_bytes: int = Field(default=1 << 20, ge=4096)
    """Size at which a workload's log is rotated (one rotated copy is kept)."""
    cgroup_root: Path = Path("/sys/fs/cgroup")
    """Mount point of the cgroup filesystem(s)."""
    cgroup_prefix: str = Field(default="sortie", pattern=r"^[a-z0-9][-a-z0-9_]*$")
    """Every cgroup the agent makes lives under this name."""
    cgroup_version: Literal["auto", "v1", "v2"] = "auto"
    """cgroup backend; ``auto`` probes the mounts."""
    agent_cgroup: bool = True
    """Move the agent itself into its reserved cgroup (on the OS cores) at start."""
    isolate_os: bool = True
    """Move the OS's own processes onto the reserved cores while a partition holds
    dedicated cores exclusively (kernel threads stay where they are)."""
    report_dir: Path | None = Path("/run/sortie-report")
    """Directory of the workloads' job-report sockets (deadline misses), one per workload,
    each owned by its workload's user; ``None`` disables reports (docs/determinism.md)."""
    latency_allowance_us: int = Field(default=2_000, ge=0, le=100_000)
    """Deadline bounds: CPU time interrupts and scheduling latency may take from each job
    (added to every declared WCET). Measure the board under load (cyclictest) and keep
    this at or above the worst latency seen; docs/determinism.md."""
    saturation_periods: int = Field(default=5, ge=1)
    """Accounting periods of full-budget use and throttling that flag a runaway."""
    accounting_period_ms: int = Field(default=1_000, ge=100)
    """How often CPU usage is sampled per partition, milliseconds."""
    mqtt: MqttConfig | None = None
    """Planner link over MQTT; ``None``: no MQTT."""
    kube: KubeConfig | None = None
    """Kubernetes control plane; ``None``: not a Kubernetes node."""
    metrics: MetricsConfig | None = None
    """Prometheus metrics for node_exporter; ``None``: none (no port is ever opened)."""
    stop_workloads_on_exit: bool = False
    """Stop every workload and remove the cgroups when the agent exits on a signal.

    Off by default: restarting or upgrading the agent must not disturb the mission."""
