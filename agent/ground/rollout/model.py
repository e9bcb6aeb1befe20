"""A MissionRollout's spec: one mission, the boards it goes to, the waves, the soak and
the gate. Ground side only (the controller and `sortie rollout`); the CRD is generated
from it. Field names follow Kubernetes conventions (camelCase), as a Kubernetes object's
do; the mission inside keeps the mission profile's own names."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from agent.models._base import DOCS, Frozen
from agent.models.mission import Criticality, MissionProfile

WaveStep = str
"""``N%`` of the boards, or ``N`` boards, reached by the end of a wave (cumulative)."""


class Camel(Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=DOCS,
                              populate_by_name=True, alias_generator=to_camel)


class Gate(Camel):
    """What every board of a wave must show before the next wave starts."""

    max_criticality: Criticality = "B"
    """A health action in a partition of this DAL or a higher one (A is the highest)
    fails the board: with B, a DAL A or B partition's crash, overrun or deadline miss."""
    allow_shed: bool = False
    """Whether a board that sheds a partition (degraded: capacity lost) still passes."""
    apply_timeout_seconds: int = Field(300, gt=0, le=86_400)
    """A board online that has neither applied, nor refused, nor held the mission by
    then has failed. An offline board is waited for (it converges when it returns)."""
    max_failed: int = Field(0, ge=0)
    """Failed boards the rollout tolerates before it stops (on_failure)."""


class RolloutSpec(Camel):
    mission: MissionProfile
    """The mission to roll out (a mission profile, as a file or an MQTT push)."""
    node_names: list[str] = Field(default_factory=list, max_length=5000)
    """The boards, by node name."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Or: the boards whose node carries every one of these labels."""
    waves: list[WaveStep] = Field(default_factory=lambda: ["5%", "25%", "100%"],
                                  min_length=1, max_length=20)
    """Boards reached by the end of each wave, cumulative: ``N%`` or a count; the last
    reaches every board."""
    soak_seconds: int = Field(120, ge=0, le=7 * 86_400)
    """How long every board of a wave flies the mission, gate passing, before the next."""
    gate: Gate = Field(default_factory=Gate)
    on_failure: Literal["pause", "rollback"] = "rollback"
    """A wave that fails the gate: pause (nothing more is sent), or roll the wave's
    failed boards back to the mission they flew before, then pause."""

    @model_validator(mode="after")
    def _boards_named_once(self) -> RolloutSpec:
        if bool(self.node_names) == bool(self.node_selector):
            raise ValueError("name the boards by nodeNames or by nodeSelector (one of them)")
        return self
