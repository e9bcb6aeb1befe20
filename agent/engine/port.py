"""What the desired-state sources (files, MQTT, Kubernetes) may do with the engine, and
all they may see of it: submit, withdraw, what flies, a typed status, the event stream,
the board and the clocks. Sources hold an ``EnginePort``, never the engine."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agent.errors import Violation
from agent.policy.planning import Action, describe

if TYPE_CHECKING:
    from agent.engine.platform import Platform
    from agent.events import EventLog
    from agent.models import HardwareProfile, MissionProfile
    from agent.status import Flying, Origin, Status

Outcome = Literal["applied", "unchanged", "rejected", "failed", "held", "superseded"]


@dataclass(frozen=True)
class Decision:
    """The engine's answer to a submit or a withdraw. ``held``: admitted, waiting for a
    hold to end (``reason``); ``later`` then gives the final answer (applied, failed,
    rejected on a board that changed meanwhile, or superseded by a newer change)."""

    outcome: Outcome
    mission: str
    generation: int
    violations: list[Violation] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    reason: str = ""
    later: asyncio.Future[Decision] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "mission": self.mission, "generation": self.generation,
            "violations": [{"path": v.path, "reason": v.reason} for v in self.violations],
            "errors": self.errors, "actions": self.actions, "reason": self.reason,
        }


@dataclass(frozen=True)
class Preview:
    """What a submit would do: refusals, or the actions and the partitions it sheds."""

    violations: list[Violation]
    actions: list[Action]
    shed: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The local API's answer to ``plan`` (and ``sortie plan``'s offline answer)."""
        return {"violations": [{"path": v.path, "reason": v.reason}
                               for v in self.violations],
                "actions": [describe(a) for a in self.actions], "shed": self.shed}


class EnginePort(Protocol):
    @property
    def board(self) -> HardwareProfile: ...
    @property
    def platform(self) -> Platform:
        """Clocks and process operations (virtual in the simulator)."""
    @property
    def events(self) -> EventLog: ...

    async def submit(self, mission: MissionProfile, origin: Origin) -> Decision: ...
    async def withdraw(self, source: str, why: str) -> Decision | None: ...
    async def hold(self, source: str, reason: str) -> bool: ...
    async def release(self, source: str) -> bool: ...
    def admission_facts(self) -> dict[str, Any]:
        """What admission decides with here (hardware, kernel, timing): a rollout's dry
        run checks a mission against it before sending."""
    def flying(self) -> Flying | None: ...
    def snapshot(self) -> Status: ...
