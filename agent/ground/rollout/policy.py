"""A rollout's decisions, pure: which boards make each wave, what each board's report
says against the gate, and what the rollout does next. The controller (Kubernetes) and
``sortie rollout`` (MQTT) gather the reports and carry the steps out; both keep the
state below in their status, so a restarted one resumes where it was."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Literal

from pydantic import Field, ValidationError

from agent.cgroups.features import KernelFeatures
from agent.errors import Violation
from agent.ground.rollout.model import Camel, Gate
from agent.models import HardwareProfile, MissionProfile
from agent.policy.admission import admit
from agent.policy.deadlines import TimingEnv

RANK = {c: i for i, c in enumerate("ABCDE")}
_STEP = re.compile(r"^([1-9][0-9]{0,5})(%?)$")


def wave_counts(boards: int, waves: list[str]) -> tuple[list[int], list[Violation]]:
    """Cumulative board counts per wave; the violations name ``spec.waves[i]``. Steps
    must grow as written; where a small fleet rounds two percentages to the same count
    the waves merge (5%, 25% of 3 boards are both 1 board)."""
    out: list[int] = []
    bad: list[Violation] = []
    if boards == 0:
        return [], [Violation("spec", "the rollout names no boards (none matched)")]
    last: tuple[int, bool] | None = None
    for i, step in enumerate(waves):
        m = _STEP.match(step.strip())
        if m is None:
            bad.append(Violation(f"spec.waves[{i}]", f"{step!r}: expected N% or a count"))
            continue
        n, pct = int(m.group(1)), bool(m.group(2))
        if pct and n > 100:
            bad.append(Violation(f"spec.waves[{i}]", f"{step}: over 100%"))
            continue
        if last is not None and last[1] == pct and n <= last[0]:
            bad.append(Violation(f"spec.waves[{i}]", f"{step} is no more than the wave "
                                 f"before ({waves[i - 1]})"))
            continue
        last = (n, pct)
        count = min(max(math.ceil(boards * n / 100) if pct else n, 1), boards)
        if out and count < out[-1]:
            bad.append(Violation(f"spec.waves[{i}]", f"{step} reaches {count} board(s), "
                                 f"fewer than the wave before ({out[-1]})"))
        elif not out or count > out[-1]:
            out.append(count)
    if not bad and out[-1] != boards:
        bad.append(Violation(f"spec.waves[{len(waves) - 1}]",
                             f"the last wave reaches {out[-1]} of {boards} boards: it "
                             "must reach them all (100%)"))
    return out, bad


def order(boards: Iterable[str], salt: str) -> list[str]:
    """A fixed order that spreads waves across the fleet (not alphabetical: the first
    wave should not always be the same rack), the same for the same rollout."""
    return sorted(set(boards), key=lambda b: (hashlib.sha256(f"{salt}/{b}".encode())
                                              .hexdigest(), b))


def waves_of(boards: Iterable[str], waves: list[str],
             salt: str) -> tuple[list[list[str]], list[Violation]]:
    """The boards of each wave (new ones only), fixed once at the start."""
    ordered = order(boards, salt)
    counts, bad = wave_counts(len(ordered), waves)
    if bad:
        return [], bad
    return [ordered[a:b] for a, b in zip([0, *counts], counts, strict=False)], []


# -- a board's report against the gate ------------------------------------------------------
Verdict = Literal["applied", "held", "offline", "pending", "failed"]


@dataclass(frozen=True)
class Health:
    partition: str
    criticality: str | None
    kind: str


@dataclass(frozen=True)
class Report:
    """What the rollout knows of one board: its answer for the mission it was sent, and
    whether its node is alive."""

    state: str | None
    """Flying, Held, Rejected, Failed, Superseded; None: no answer yet."""
    generation: int | None
    """The generation of what it sent the board it answers about."""
    message: str = ""
    health: tuple[Health, ...] = ()
    """Health actions since it applied."""
    shed: tuple[str, ...] = ()
    online: bool = True
    waited_s: float = 0.0
    """Since the board was sent the mission."""


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    why: str = ""


def judge(r: Report, want_generation: int, gate: Gate) -> Judged:
    if r.generation == want_generation and r.state == "Flying":
        worst = [h for h in r.health if h.criticality is not None
                 and RANK.get(h.criticality, 9) <= RANK[gate.max_criticality]]
        if worst:
            h = worst[0]
            return Judged("failed", f"health action {h.kind} in DAL {h.criticality} "
                          f"partition {h.partition}")
        if r.shed and not gate.allow_shed:
            return Judged("failed", f"shed partitions {list(r.shed)}")
        return Judged("applied")
    if r.generation == want_generation and r.state == "Held":
        return Judged("held", r.message)
    if r.generation == want_generation and r.state in ("Rejected", "Failed", "Superseded"):
        return Judged("failed", f"{r.state}: {r.message}" if r.message else r.state)
    if not r.online:
        return Judged("offline")
    if r.waited_s > gate.apply_timeout_seconds:
        return Judged("failed", f"no answer within {gate.apply_timeout_seconds} s")
    return Judged("pending")


# -- the rollout's next step ---------------------------------------------------------------
Phase = Literal["Progressing", "Soaking", "Paused", "Complete", "Failed"]


class _StateDoc(Camel):
    waves: list[list[str]] = Field(min_length=1)
    wave: int = Field(ge=0)
    phase: Phase
    soak_since: float | None = None
    failed: dict[str, str] = Field(default_factory=dict)
    rolled_back: list[str] = Field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class State:
    """What the rollout keeps (in its status): restart-safe."""

    waves: tuple[tuple[str, ...], ...]
    wave: int = 0
    """The wave in flight (index); every board of waves[0..wave] has been sent it."""
    phase: Phase = "Progressing"
    soak_since: float | None = None
    failed: Mapping[str, str] = field(default_factory=dict)
    rolled_back: tuple[str, ...] = ()
    message: str = ""

    def to_dict(self) -> dict[str, object]:
        """As kept in the rollout's status (camelCase, as the object's fields)."""
        return {"waves": [list(w) for w in self.waves], "wave": self.wave,
                "phase": self.phase, "soakSince": self.soak_since,
                "failed": dict(self.failed), "rolledBack": list(self.rolled_back),
                "message": self.message}

    @classmethod
    def from_dict(cls, d: object) -> State:
        """Back from a status the controller wrote; ValueError says why it is not one."""
        try:
            doc = _StateDoc.model_validate(d)
        except ValidationError as exc:
            raise ValueError(f"not a rollout state: {exc.errors()[0]['msg']}") from None
        if doc.wave >= len(doc.waves):
            raise ValueError(f"not a rollout state: wave {doc.wave} of {len(doc.waves)}")
        return cls(tuple(tuple(w) for w in doc.waves), doc.wave, doc.phase,
                   doc.soak_since, doc.failed, tuple(doc.rolled_back), doc.message)

    def sent(self) -> list[str]:
        """Boards that have been sent the mission (minus those rolled back)."""
        back = set(self.rolled_back)
        return [b for w in self.waves[: self.wave + 1] for b in w if b not in back]


@dataclass(frozen=True)
class Step:
    state: State
    roll_back: tuple[str, ...] = ()
    """Boards to return to the mission they flew before."""


def advance(s: State, judged: Mapping[str, Judged], gate: Gate, soak_s: float,
            on_failure: str, now: float) -> Step:
    """The rollout's next state, from the verdicts on the boards of the current wave
    (and of earlier waves: a board that fails later still counts)."""
    if s.phase in ("Complete", "Failed", "Paused"):
        return Step(s)
    failed = {b: j.why for b, j in judged.items() if j.verdict == "failed"}
    all_failed = {**s.failed, **failed}
    if len(all_failed) > gate.max_failed:
        why = "; ".join(f"{b}: {w}" for b, w in sorted(failed.items())[:5])
        if on_failure == "rollback":
            back = tuple(sorted(set(failed) - set(s.rolled_back)))
            return Step(replace(s, phase="Failed", failed=all_failed,
                                rolled_back=(*s.rolled_back, *back),
                                message=f"wave {s.wave + 1} failed the gate ({why}); "
                                        f"rolled back {len(back)} board(s)"), back)
        return Step(replace(s, phase="Paused", failed=all_failed,
                            message=f"wave {s.wave + 1} failed the gate ({why}); paused"))
    current = [b for b in s.waves[s.wave] if b not in all_failed]
    waiting = [b for b in current if judged.get(b, Judged("pending")).verdict == "pending"]
    if waiting:
        return Step(replace(s, phase="Progressing", soak_since=None, failed=all_failed,
                            message=f"wave {s.wave + 1}: {len(waiting)} board(s) to answer"))
    if s.soak_since is None:
        return Step(replace(s, phase="Soaking", soak_since=now, failed=all_failed,
                            message=f"wave {s.wave + 1} applied; soaking {soak_s:g} s"))
    if now - s.soak_since < soak_s:
        return Step(replace(s, failed=all_failed))
    if s.wave + 1 == len(s.waves):
        return Step(replace(s, phase="Complete", failed=all_failed,
                            message=f"all {len(s.waves)} waves applied"))
    return Step(replace(s, wave=s.wave + 1, phase="Progressing", soak_since=None,
                        failed=all_failed, message=f"wave {s.wave + 2} of {len(s.waves)} "
                        f"started: {len(s.waves[s.wave + 1])} board(s)"))


def tally(judged: Mapping[str, Judged], s: State) -> dict[str, int]:
    """Boards per verdict over every board sent so far (status columns)."""
    out = {"applied": 0, "held": 0, "offline": 0, "pending": 0, "failed": 0}
    for b in s.sent():
        out[judged.get(b, Judged("pending")).verdict] += 1
    out["rolledBack"] = len(s.rolled_back)
    out["notYetSent"] = sum(len(w) for w in s.waves[s.wave + 1:])
    return out


# -- the dry run before the first wave -------------------------------------------------------
def dry_run(mission: MissionProfile, facts: Mapping[str, str | None]
            ) -> tuple[dict[str, list[str]], list[str]]:
    """Admission of ``mission`` on every board from the facts its node publishes
    (``sortie.dev/admission``): the refusals per board, and the boards that could not be
    checked (no facts, or facts this version cannot read)."""
    refused: dict[str, list[str]] = {}
    unchecked: list[str] = []
    known_k = {f.name for f in fields(KernelFeatures)}
    known_t = {f.name for f in fields(TimingEnv)}
    for board, text in sorted(facts.items()):
        try:
            doc = json.loads(text or "")
            hw = HardwareProfile.model_validate(doc["hardware"])
            kernel = KernelFeatures(**{k: v for k, v in doc["kernel"].items() if k in known_k})
            timing = TimingEnv(**{k: v for k, v in doc["timing"].items() if k in known_t})
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
            unchecked.append(board)
            continue
        why = admit(mission, hw, kernel, timing=timing)
        if why:
            refused[board] = [str(v) for v in why]
    return refused, unchecked
