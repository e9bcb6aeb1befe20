"""Scenario files (``simulator/scenarios/*.yaml``): a mission, demand patterns for its
workloads, and faults at given times."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from agent.errors import ProfileError, Violation
from agent.models import HardwareProfile, MissionProfile, load_file
from agent.models._base import Frozen
from simulator.workloads import PatternSpec

FaultKind = Literal["core-offline", "core-online", "thermal", "memory-pressure",
                    "clock-jump", "agent-restart", "power-loss", "workload-crash",
                    "workload-hang", "workload-runaway", "link-loss"]


class Fault(Frozen):
    """Something that happens to the board, the agent or a workload at ``at_s``."""

    at_s: float = Field(ge=0)
    """Simulated time of the fault, seconds from the start."""
    kind: FaultKind
    """What happens (see docs/simulator.md)."""
    cores: list[int] = Field(default_factory=list)
    """core-offline / core-online / thermal: the cores concerned."""
    factor: float = Field(default=0.6, gt=0, le=1)
    """thermal: the cores' capacity factor from now on (1.0 ends throttling)."""
    mib: int = Field(default=0, ge=0)
    """memory-pressure: memory the board loses (0 gives it back)."""
    seconds: float = 0.0
    """clock-jump: how far the wall clock jumps (the monotonic clock does not)."""
    workload: str | None = None
    """workload-*: ``partition/workload``."""
    exit_code: int = Field(default=1, ge=0, le=255)
    """workload-crash: the exit code."""
    for_s: float = Field(default=0.0, ge=0)
    """link-loss: how long the link stays down."""
    link: Literal["planners", "api-server"] = "planners"
    """link-loss: the planners' broker (pushes wait there and all arrive in order) or the
    Kubernetes API server (the board relists on return and sees only the latest)."""


class Push(Frozen):
    """A mission planner pushes a profile (over MQTT), or someone applies or deletes a
    MissionProfile in the cluster (``via: kube``), at ``at_s``."""

    at_s: float = Field(ge=0)
    """Simulated time of the push."""
    mission: Path | None = None
    """Profile pushed or applied, relative to the scenario file (not with ``delete``)."""
    via: Literal["mqtt", "kube"] = "mqtt"
    """How it reaches the board: the planners' broker or the Kubernetes API server."""
    delete: str | None = None
    """kube: the name of the MissionProfile deleted from the cluster."""


class Scenario(Frozen):
    name: str
    """Scenario name."""
    description: str = ""
    """What it shows."""
    mission: Path
    """Mission profile, relative to the scenario file."""
    duration_s: float = Field(gt=0, le=86_400)
    """Simulated duration, seconds."""
    seed: int = 0
    """Random seed: the same seed gives the same trace."""
    slice_ms: float = Field(default=1.0, gt=0, le=10)
    """CPU model slice."""
    accounting_period_ms: int = Field(default=1000, ge=100)
    """The agent's accounting period."""
    workloads: dict[str, PatternSpec] = Field(default_factory=dict)
    """Demand of each workload, keyed ``partition/workload``; others stay idle."""
    faults: list[Fault] = Field(default_factory=list)
    """Faults, in any order."""
    pushes: list[Push] = Field(default_factory=list)
    """Profiles planners push during the run (delivered when the link is up)."""


def pushed(sc_path: Path, push: Push) -> MissionProfile:
    assert push.mission is not None
    p = push.mission if push.mission.is_absolute() else sc_path.parent / push.mission
    return load_file(MissionProfile, p)


def load(path: Path, board: HardwareProfile) -> tuple[Scenario, MissionProfile]:
    """Load and cross-check a scenario against its mission and the board."""
    sc = load_file(Scenario, path)
    mission_path = sc.mission if sc.mission.is_absolute() else path.parent / sc.mission
    mission = load_file(MissionProfile, mission_path)
    keys = {f"{p.name}/{w.name}" for p in mission.partitions for w in p.workloads}
    found: list[Violation] = []
    for k in sc.workloads:
        if k not in keys:
            found.append(Violation(f"workloads.{k}", f"no workload {k!r} in the mission "
                                                    f"(known: {sorted(keys)})"))
    for i, f in enumerate(sc.faults):
        if f.at_s > sc.duration_s:
            found.append(Violation(f"faults[{i}].at_s", f"{f.at_s} s is after the end "
                                                       f"({sc.duration_s} s)"))
        if f.kind in ("core-offline", "core-online", "thermal"):
            if not f.cores:
                found.append(Violation(f"faults[{i}].cores", f"required for {f.kind}"))
            bad = sorted(set(f.cores) - board.core_ids)
            if bad:
                found.append(Violation(f"faults[{i}].cores",
                                       f"cores {bad} do not exist on {board.name}"))
        if f.kind.startswith("workload-") and f.workload not in keys:
            found.append(Violation(f"faults[{i}].workload",
                                   f"{f.workload!r} is not a workload of the mission"))
    for i, push in enumerate(sc.pushes):
        if push.delete is not None and push.via != "kube":
            found.append(Violation(f"pushes[{i}].delete", "only a cluster object can be "
                                   "deleted: needs via: kube"))
        if (push.mission is None) == (push.delete is None):
            found.append(Violation(f"pushes[{i}].mission",
                                   "give either a mission or (via kube) delete"))
        elif push.mission is not None:
            try:
                pushed(path, push)
            except ProfileError as exc:
                found.append(Violation(f"pushes[{i}].mission",
                                       "; ".join(str(v) for v in exc.violations)))
        if push.at_s > sc.duration_s:
            found.append(Violation(f"pushes[{i}].at_s", "after the end of the run"))
    if found:
        raise ProfileError(str(path), found)
    # Paths made absolute: the run no longer needs to know where the file was.
    absolute = [p if p.mission is None or p.mission.is_absolute()
                else p.model_copy(update={"mission": (path.parent / p.mission).resolve()})
                for p in sc.pushes]
    return sc.model_copy(update={"pushes": absolute}), mission
