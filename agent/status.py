"""The board's status: one typed snapshot, the contract between the engine and everyone
who shows or forwards it (local API and CLI, MQTT status and telemetry, Kubernetes
status). Frozen dataclasses: cheap to build on every accounting period; the JSON Schema
(``sortie schema status``) and the CLI's reading of the API's answer come from pydantic,
loaded only when asked (``schema``, ``parse``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from agent.events import Event
from agent.policy.accounting import Usage

SourceKind = Literal["file", "mqtt", "kube", "scenario", "config"]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where the flying mission came from; kept with it in the state file."""

    source: SourceKind
    path: str | None = None
    """file: the profile file."""
    object: str | None = None
    """kube: NAMESPACE/NAME of the MissionProfile."""
    uid: str | None = None
    resource_version: str | None = None
    object_generation: int | None = None
    kid: str | None = None
    """mqtt: the signing key's id (None: an unsigned lab push)."""
    signed: bool | None = None
    generation: int | None = None
    digest: str | None = None
    """mqtt: sha256 of the signed payload."""
    admitted_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: Any) -> Origin:
        """Read a stored origin (a state file is input: unknown or mistyped fields are
        dropped, an unknown source becomes "config"). Reads the camelCase keys that
        earlier versions wrote too."""
        if not isinstance(d, dict):
            return cls("config")
        legacy = {"resourceVersion": "resource_version",
                  "objectGeneration": "object_generation"}
        raw: dict[str, Any] = {legacy.get(k, k): v for k, v in d.items()
                               if isinstance(k, str)}
        source = raw.get("source")
        kinds: tuple[str, ...] = ("file", "mqtt", "kube", "scenario", "config")
        out: dict[str, Any] = {"source": source if source in kinds else "config"}
        for name, typ in _ORIGIN_TYPES.items():
            v = raw.get(name)
            if isinstance(v, typ) and not (typ is not bool and isinstance(v, bool)):
                out[name] = v
        if "admitted_at" in out:
            out["admitted_at"] = float(out["admitted_at"])  # JSON may hold an int
        return cls(**out)


_ORIGIN_TYPES: dict[str, type | tuple[type, ...]] = {
    "path": str, "object": str, "uid": str, "resource_version": str,
    "object_generation": int, "kid": str, "signed": bool, "generation": int,
    "digest": str, "admitted_at": (int, float)}


@dataclass(frozen=True, slots=True)
class Flying:
    """What flies now, cheap to ask for (sources ask on every event)."""

    name: str
    generation: int
    origin: Origin
    shed: tuple[str, ...] = ()
    """Partitions shed because the board lost capacity (degraded mode)."""


@dataclass(frozen=True, slots=True)
class JobFigures:
    jobs: int
    misses: int
    max_response_us: int
    p99_response_us: int = 0
    response_sum_us: int = 0
    response_buckets: tuple[tuple[int, int], ...] = ()
    """(le_us, jobs that responded within it), cumulative, as Prometheus histograms."""


@dataclass(frozen=True, slots=True)
class PartitionHealth:
    saturated: bool
    stopped: bool
    """Stopped by the health monitor; a new mission generation starts it again."""
    counters: dict[str, int]
    jobs: dict[str, JobFigures]
    actions: dict[str, dict[str, int]] = field(default_factory=dict)
    """Health verdicts so far: error kind -> action taken -> count."""


@dataclass(frozen=True, slots=True)
class PartitionTotals:
    """Cumulative figures of the partition's cgroup since it was made (counters restart
    with a new group), and what it holds now."""

    cpu_used_s: float
    periods: int
    throttled_periods: int
    throttled_s: float
    memory_bytes: int | None
    pids: int | None


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    consecutive_failures: int
    last: str | None


@dataclass(frozen=True, slots=True)
class TimingStatus:
    """A timed workload: what it declared, what admission proved, what was measured."""

    period_us: int
    wcet_us: int
    deadline_us: int
    response_bound_us: int | None
    """The bound admission proved on the board as it is now (None: none)."""
    jobs: int = 0
    misses: int = 0
    worst_us: int = 0
    p99_us: int = 0


WorkloadState = Literal["running", "backoff", "crash-loop", "stopping", "stopped",
                        "failed", "orphan"]


@dataclass(frozen=True, slots=True)
class WorkloadStatus:
    name: str
    state: WorkloadState
    pid: int | None = None
    adopted: bool = False
    restarts: int = 0
    last_exit: str | None = None
    last_error: str | None = None
    spec_hash: str | None = None
    image: str | None = None
    log: str | None = None
    health: ProbeStatus | None = None
    policy: str | None = None
    """Scheduling policy and priority it runs with (SCHED_FIFO 50, SCHED_OTHER, ...)."""
    timing: TimingStatus | None = None


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    name: str
    criticality: str | None
    desired: bool
    """In the flying mission (False: found, not yet removed)."""
    cpus: list[int] | None
    quota_us: int | None
    period_us: int | None
    burst_us: int | None
    memory_bytes: int | None
    pids_max: int | None
    weight: int | None
    """CFS weight against other groups on shared cores (0: the idle class)."""
    usage: Usage | None
    health: PartitionHealth
    workloads: list[WorkloadStatus]
    totals: PartitionTotals | None = None


@dataclass(frozen=True, slots=True)
class Jitter:
    p50: float
    p99: float
    max: float


@dataclass(frozen=True, slots=True)
class WindowFigures:
    windows: int
    start_jitter_us: Jitter
    cpu_inside_s: float
    cpu_outside_s: float


@dataclass(frozen=True, slots=True)
class WindowsStatus:
    mode: str | None
    enforcing: bool
    realtime: str | None
    partitions: dict[str, WindowFigures]


@dataclass(frozen=True, slots=True)
class ReportsStatus:
    directory: str
    sockets: int
    accepted: int
    rejected: int
    throttled: int
    internal_errors: int


@dataclass(frozen=True, slots=True)
class FileChoice:
    name: str
    generation: int
    path: str


@dataclass(frozen=True, slots=True)
class FilesStatus:
    paths: list[str]
    chosen: FileChoice | None
    """The profile file the last scan chose."""
    invalid: list[str]
    """Files the last scan refused (each is an event with its reasons)."""


@dataclass(frozen=True, slots=True)
class LastPush:
    outcome: str
    envelope: str
    at: float
    name: str | None = None
    generation: int | None = None
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class MqttStatus:
    url: str
    connected: bool
    backlog: int
    pushes: dict[str, int]
    internal_errors: int
    dropped: int
    publish_dropped: int
    last_push: LastPush | None
    insecure_lab_mode: bool
    flying_revoked: str | None
    ledger_unsaved: str | None
    """Why the replay ledger could not be saved (held in memory until a restart)."""
    ledger_not_before: float | None


@dataclass(frozen=True, slots=True)
class KubeStatus:
    server: str
    node: str
    connected: bool
    resource_version: str | None
    profiles_seen: int
    targeting_this_board: list[str]
    counters: dict[str, int]
    last_error: str | None


@dataclass(frozen=True, slots=True)
class SourcesStatus:
    files: FilesStatus | None = None
    mqtt: MqttStatus | None = None
    kube: KubeStatus | None = None


@dataclass(frozen=True, slots=True)
class MissionStatus:
    name: str
    generation: int
    origin: Origin


@dataclass(frozen=True, slots=True)
class CgroupStatus:
    version: str
    prefix: str
    placement: str = ""
    """How a workload's process gets into its group (the spawner, born in it or joining
    before exec; or the agent forking itself, and why)."""


@dataclass(frozen=True, slots=True)
class DegradedStatus:
    capacity: dict[int, float]
    """Capacity per core now (1 full, 0 offline)."""
    memory_mib: int | None
    shed: list[str]


@dataclass(frozen=True, slots=True)
class HoldEntry:
    source: str
    """operator (``sortie hold``), kube (the node annotation), state (holds.json
    could not be trusted)."""
    reason: str
    since: float


@dataclass(frozen=True, slots=True)
class PendingChange:
    """The change that waits for the hold to end (the newest one received)."""

    source: str
    mission: str | None
    """None: the source withdrew the flying mission."""
    generation: int | None
    since: float


@dataclass(frozen=True, slots=True)
class HoldStatus:
    held: str | None
    """Why a change would wait now (an operator's hold, or the mode), None if not."""
    holds: list[HoldEntry]
    pending: PendingChange | None


@dataclass(frozen=True, slots=True)
class TimingAssumptions:
    """What the deadline bounds assume on this board (docs/determinism.md)."""

    kernel: str
    """Kernel release."""
    tick_us: int
    latency_allowance_us: int
    os_isolated: bool


@dataclass(frozen=True, slots=True)
class Status:
    board: str
    cgroup: CgroupStatus
    mission: MissionStatus | None
    ready_after_s: float | None
    windows: WindowsStatus
    reports: ReportsStatus | None
    internal_errors: dict[str, int]
    sources: SourcesStatus
    degraded: DegradedStatus
    partitions: list[PartitionStatus]
    errors: list[str]
    events: list[Event] = field(default_factory=list)
    timing: TimingAssumptions | None = None
    hold: HoldStatus | None = None

    def partition(self, name: str) -> PartitionStatus | None:
        return next((p for p in self.partitions if p.name == name), None)


def to_json(value: Any) -> Any:
    """A status (or any part of it) as JSON-ready data; an origin drops its empty fields
    as it does in the state file."""
    if isinstance(value, Origin):
        return value.to_dict()
    if hasattr(value, "__dataclass_fields__"):
        return {k: to_json(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def parse(data: object) -> Status:
    """The local API's answer back into a Status (the CLI). Raises pydantic's
    ValidationError when the agent speaks another version of this contract."""
    from pydantic import TypeAdapter
    return TypeAdapter(Status).validate_python(data)


def schema() -> dict[str, Any]:
    from pydantic import TypeAdapter
    return TypeAdapter(Status).json_schema()
