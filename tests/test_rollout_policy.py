"""A rollout's pure decisions (issue 17): the waves, each board's report against the gate,
and the next step, driven through whole rollouts of simulated answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.ground.rollout.model import Gate, RolloutSpec
from agent.ground.rollout.policy import (
    Health,
    Judged,
    Report,
    State,
    advance,
    judge,
    order,
    tally,
    wave_counts,
    waves_of,
)
from tests.helpers import mission, partition

GATE = Gate()
BOARDS = [f"b{i:03d}" for i in range(500)]


def test_waves_by_percent_or_count_reach_every_board() -> None:
    assert wave_counts(500, ["5%", "25%", "100%"]) == ([25, 125, 500], [])
    assert wave_counts(10, ["5%", "100%"]) == ([1, 10], [])  # at least one board
    assert wave_counts(10, ["2", "5", "10"]) == ([2, 5, 10], [])
    assert wave_counts(3, ["5%", "25%", "100%"]) == ([1, 3], [])  # merged when rounded
    assert wave_counts(3, ["5", "100%"]) == ([3], [])


@pytest.mark.parametrize(("waves", "path", "words"), [
    (["5%", "50%"], "spec.waves[1]", "must reach them all"),
    (["50%", "50%", "100%"], "spec.waves[1]", "no more than the wave before"),
    (["60", "50%", "100%"], "spec.waves[1]", "fewer than the wave before"),
    (["0", "100%"], "spec.waves[0]", "expected N% or a count"),
    (["150%"], "spec.waves[0]", "over 100%"),
    (["ten"], "spec.waves[0]", "expected N% or a count"),
])
def test_waves_that_cannot_work_are_named(waves: list[str], path: str, words: str) -> None:
    _, bad = wave_counts(100, waves)
    assert bad and bad[0].path == path and words in bad[0].reason, bad


def test_a_rollout_that_names_no_boards_is_refused() -> None:
    assert wave_counts(0, ["100%"])[1][0].reason.startswith("the rollout names no boards")
    with pytest.raises(ValidationError, match="nodeNames or by nodeSelector"):
        RolloutSpec.model_validate({"mission": mission(partition("p")).model_dump()})


@given(n=st.integers(1, 300), salt=st.text(max_size=8))
def test_every_board_is_in_exactly_one_wave(n: int, salt: str) -> None:
    waves, bad = waves_of(BOARDS[:n], ["5%", "25%", "100%"], salt)
    assert not bad
    flat = [b for w in waves for b in w]
    assert sorted(flat) == BOARDS[:n] and len(flat) == len(set(flat))


def test_the_order_is_fixed_per_rollout_and_not_alphabetical() -> None:
    assert order(BOARDS, "r1") == order(reversed(BOARDS), "r1")
    assert order(BOARDS, "r1") != order(BOARDS, "r2")
    assert order(BOARDS, "r1")[:25] != BOARDS[:25]


def flying(gen: int = 2, **kw: object) -> Report:
    return Report("Flying", gen, **kw)  # type: ignore[arg-type]


def test_a_board_report_against_the_gate() -> None:
    assert judge(flying(), 2, GATE) == Judged("applied")
    assert judge(flying(1), 2, GATE).verdict == "pending"  # still the old generation
    hit = judge(flying(health=(Health("nav", "B", "crash-loop"),)), 2, GATE)
    assert hit.verdict == "failed" and "crash-loop in DAL B partition nav" in hit.why
    low = flying(health=(Health("log", "D", "crash"),))
    assert judge(low, 2, GATE).verdict == "applied"  # below the gate's criticality
    assert judge(low, 2, Gate(max_criticality="D")).verdict == "failed"
    assert judge(flying(shed=("log",)), 2, GATE).verdict == "failed"
    assert judge(flying(shed=("log",)), 2, Gate(allow_shed=True)).verdict == "applied"
    assert judge(Report("Held", 2, "landing"), 2, GATE) == Judged("held", "landing")
    assert judge(Report("Rejected", 2, "cores [9]"), 2, GATE).why == "Rejected: cores [9]"
    assert judge(Report(None, None, online=False), 2, GATE).verdict == "offline"
    late = judge(Report(None, None, waited_s=301), 2, GATE)
    assert late.verdict == "failed" and "300 s" in late.why


def run(judge_board: dict[str, Judged], waves: list[list[str]], gate: Gate = GATE,
        on_failure: str = "rollback", steps: int = 50) -> tuple[State, list[str], list[int]]:
    """Drive a rollout: every board sent answers as ``judge_board`` says (default
    applied). Returns the final state, the boards rolled back, and how many boards had
    been sent the mission at each step."""
    s = State(tuple(tuple(w) for w in waves))
    back: list[str] = []
    sent: list[int] = []
    for t in range(steps):
        judged = {b: judge_board.get(b, Judged("applied")) for b in s.sent()}
        step = advance(s, judged, gate, soak_s=10, on_failure=on_failure, now=t * 5.0)
        s = step.state
        back += step.roll_back
        sent.append(len(s.sent()))
    return s, back, sent


def test_a_healthy_rollout_goes_wave_by_wave_soaking_each() -> None:
    waves, _ = waves_of(BOARDS, ["5%", "25%", "100%"], "r")
    s, back, sent = run({}, waves)
    assert s.phase == "Complete" and not back and s.message == "all 3 waves applied"
    assert sorted(set(sent)) == [25, 125, 500]
    # Each wave soaked (10 s at 5 s steps) before the next began.
    assert sent.count(25) >= 2 and sent.count(125) >= 2


def test_a_crash_looping_board_in_the_first_wave_stops_the_rollout_there() -> None:
    waves, _ = waves_of(BOARDS, ["5%", "25%", "100%"], "r")
    bad = {b: Judged("failed", "health action crash-loop in DAL A partition fc")
           for b in waves[0][:3]}
    s, back, sent = run(bad, waves)
    assert s.phase == "Failed" and sorted(back) == sorted(waves[0][:3])
    assert max(sent) <= 25, "the bad generation reached boards beyond the first wave"
    assert set(s.failed) == set(waves[0][:3]) and "rolled back 3" in s.message
    assert s.sent() == [b for b in waves[0] if b not in back]


def test_pause_sends_nothing_more_and_rolls_nothing_back() -> None:
    waves, _ = waves_of(BOARDS[:20], ["50%", "100%"], "r")
    s, back, sent = run({waves[0][0]: Judged("failed", "Rejected")}, waves,
                        on_failure="pause")
    assert s.phase == "Paused" and not back and max(sent) == 10


def test_held_and_offline_boards_do_not_block_and_are_counted() -> None:
    waves, _ = waves_of(BOARDS[:20], ["50%", "100%"], "r")
    answers = {waves[0][0]: Judged("held", "landing"), waves[1][0]: Judged("offline")}
    s, _, _ = run(answers, waves)
    assert s.phase == "Complete"
    counts = tally({b: answers.get(b, Judged("applied")) for b in s.sent()}, s)
    assert counts == {"applied": 18, "held": 1, "offline": 1, "pending": 0, "failed": 0,
                      "rolledBack": 0, "notYetSent": 0}


def test_a_pending_board_holds_the_wave_and_tolerated_failures_do_not_stop_it() -> None:
    waves, _ = waves_of(BOARDS[:20], ["50%", "100%"], "r")
    s, _, sent = run({waves[0][1]: Judged("pending")}, waves)
    assert s.phase == "Progressing" and max(sent) == 10
    s, back, _ = run({waves[0][1]: Judged("failed", "x")}, waves, gate=Gate(max_failed=1))
    assert s.phase == "Complete" and not back and list(s.failed) == [waves[0][1]]


def test_the_state_survives_the_status_round_trip() -> None:
    waves, _ = waves_of(BOARDS[:20], ["50%", "100%"], "r")
    s = advance(State(tuple(map(tuple, waves))), {}, GATE, 10, "rollback", 3.0).state
    assert State.from_dict(s.to_dict()) == s
    for broken in ({}, {"waves": [["a"]], "wave": 3, "phase": "Progressing"},
                   {"waves": [["a"]], "wave": 0, "phase": "Dancing"}):
        with pytest.raises(ValueError, match="not a rollout state"):
            State.from_dict(broken)
