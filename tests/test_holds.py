"""Holds (issue 17): a board in a critical phase, or held by an operator, defers a change
to the flying mission; the change is admitted at once, waits, and applies at the next
major-frame boundary once nothing holds it. The real engine on the simulated board
(virtual clock, no root)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from agent.engine.engine import Engine
from agent.engine.port import Decision
from agent.models import MissionProfile
from agent.policy.admission import admit
from agent.status import Origin
from simulator.run import _Sim
from tests.helpers import mission, partition, workload
from tests.simengine import BOARD4, on_sim

ORIGIN = Origin("config")
KUBE = Origin("kube", object="default/m", uid="u1")


def flight(generation: int, *, extra: bool = False, holds: list[str] | None = None,
           ) -> MissionProfile:
    """A mission with two modes (cruise, landing) of 10 ms frames; ``extra`` adds a
    partition (the change a rollout brings)."""
    parts = [partition("fc", crit="A", quota=40_000, workloads=[workload("ctl")]),
             partition("log", crit="E", quota=20_000, workloads=[workload("w")])]
    if extra:
        parts.append(partition("new", crit="D", quota=10_000, cores=[3],
                               workloads=[workload("n")]))
    frame = [{"partition": "fc", "offset_us": 0, "duration_us": 6_000},
             {"partition": "log", "offset_us": 6_000, "duration_us": 4_000}]
    doc: dict[str, Any] = mission(*parts, generation=generation).model_dump(mode="json")
    doc["schedules"] = [{"name": "cruise", "major_frame_us": 10_000, "windows": frame},
                        {"name": "landing", "major_frame_us": 10_000, "windows": frame[:1]}]
    doc["holds"] = ["landing"] if holds is None else holds
    return MissionProfile.model_validate(doc)


def pids(e: Engine) -> dict[str, int | None]:
    return {f"{r.partition}/{r.spec.name}": r.pid for r in e.all_runners()}


async def final(d: Decision, timeout_s: float = 5.0) -> Decision:
    assert d.outcome == "held" and d.later is not None, d
    async with asyncio.timeout(timeout_s):
        return await d.later


def test_an_operator_hold_defers_a_new_mission_until_released(tmp_path: Path) -> None:
    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        assert (await e.submit(flight(1), ORIGIN)).outcome == "applied"
        before = pids(e)
        assert await e.hold("operator", "maintenance window")
        d2 = await e.submit(flight(2, extra=True), ORIGIN)
        assert d2.outcome == "held" and "held by operator: maintenance window" in d2.reason
        await asyncio.sleep(1.0)  # nothing changes while held
        assert e.mission is not None and e.mission.generation == 1 and pids(e) == before
        st = e.snapshot().hold
        assert st is not None and st.pending is not None and st.pending.generation == 2
        # A newer change replaces the waiting one, which is told so.
        d3 = await e.submit(flight(3, extra=True), ORIGIN)
        assert d3.outcome == "held"
        gone = await final(d2)
        assert gone.outcome == "superseded" and "generation 3" in gone.reason
        assert await e.release("operator")
        done = await final(d3)
        assert done.outcome == "applied" and done.generation == 3
        assert e.mission.generation == 3 and set(pids(e)) == set(before) | {"new/n"}
        assert {k: v for k, v in pids(e).items() if k in before} == before  # untouched
        assert e.events.of_kind("mission.released")
        st = e.snapshot().hold
        assert st is not None and st.held is None and st.pending is None

    on_sim(tmp_path, flight(1), body)


def test_a_mission_that_does_not_fit_is_refused_at_once_even_while_held(
        tmp_path: Path) -> None:
    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        await e.submit(flight(1), ORIGIN)
        await e.hold("operator", "checks")
        bad = mission(partition("fc", cores=[9]), generation=2)
        d = await e.submit(bad, ORIGIN)
        assert d.outcome == "rejected" and d.later is None
        assert "partitions[0].cpu.dedicated_cores" in {v.path for v in d.violations}
        assert e.pending is None

    on_sim(tmp_path, flight(1), body)


def test_the_landing_mode_holds_and_the_change_applies_at_the_boundary_into_cruise(
        tmp_path: Path) -> None:
    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        await e.submit(flight(1), ORIGIN)
        assert e.windows.mode == "cruise" and e.held_by() is None
        await e.switch_mode("landing")
        await asyncio.sleep(0.05)
        assert e.windows.mode == "landing"
        d = await e.submit(flight(2, extra=True), ORIGIN)
        assert d.outcome == "held" and "mode 'landing'" in d.reason
        await asyncio.sleep(0.5)
        assert e.mission is not None and e.mission.generation == 1
        loop = asyncio.get_running_loop()
        await e.switch_mode("cruise")
        asked = loop.time()
        done = await final(d)
        assert done.outcome == "applied" and e.mission.generation == 2
        (switched,) = [ev for ev in e.events.of_kind("mode.switched")
                       if ev.subject == "schedule/cruise"]
        (released,) = e.events.of_kind("mission.released")
        # Applied at the frame boundary that switched the mode (within one frame).
        assert 0 <= released.at - switched.at < 0.010
        assert loop.time() - asked < 0.030

    on_sim(tmp_path, flight(1), body)


def test_a_release_waits_for_the_next_major_frame_boundary(tmp_path: Path) -> None:
    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        await e.submit(flight(1), ORIGIN)
        await e.hold("operator", "x")
        d = await e.submit(flight(2, extra=True), ORIGIN)
        await asyncio.sleep(0.0033)  # a third into a 10 ms frame
        loop = asyncio.get_running_loop()
        left = e.windows.until_boundary_s()
        assert 0 < left <= 0.010
        t0 = loop.time()
        await e.release("operator")
        assert (await final(d)).outcome == "applied"
        (released,) = e.events.of_kind("mission.released")
        assert released.at - t0 >= left - 1e-6

    on_sim(tmp_path, flight(1), body)


def test_a_withdrawal_waits_too_and_a_waiting_change_of_a_withdrawn_source_is_dropped(
        tmp_path: Path) -> None:
    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        await e.submit(flight(1), KUBE)
        await e.hold("kube", "annotated")
        d = await e.withdraw("kube", "MissionProfile deleted")
        assert d is not None and d.outcome == "held"
        assert e.mission is not None and e.runners  # still flying
        await e.release("kube")
        assert (await final(d)).outcome == "applied"
        assert e.mission is None and not e.runners
        # A change waiting from a source that then withdraws is not applied later.
        await e.submit(flight(5), KUBE)
        await e.hold("operator", "y")
        d6 = await e.submit(flight(6, extra=True), ORIGIN)
        await e.withdraw("config", "file removed")
        assert (await final(d6)).outcome == "superseded" and e.pending is None

    on_sim(tmp_path, flight(1), body)


def test_a_hold_survives_a_restart_and_an_untrustworthy_file_holds_until_released(
        tmp_path: Path) -> None:
    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        await e.hold("operator", "landing gear check")
        again = Engine(sim.config, BOARD4, sim.engine.backend, sim.engine.store,
                       platform=sim.engine.platform)
        again.holds.load(0.0)
        assert again.held_by() == "held by operator: landing gear check"
        path = sim.config.state_dir / "holds.json"
        doc = json.loads(path.read_text())
        doc["payload"]["holds"][0]["reason"] = "tampered"
        path.write_text(json.dumps(doc))
        third = Engine(sim.config, BOARD4, sim.engine.backend, sim.engine.store,
                       platform=sim.engine.platform)
        why = third.holds.load(0.0)
        assert why is not None and "checksum" in why
        held = third.held_by()
        assert held is not None and "sortie release" in held
        await third.release("operator")
        assert third.held_by() is None

    on_sim(tmp_path, flight(1), body)


def test_holds_must_name_modes_of_the_mission() -> None:
    m = flight(1, holds=["landing", "taxi"])
    (v,) = [v for v in admit(m, BOARD4) if v.path.startswith("holds")]
    assert v.path == "holds[1]" and "'taxi'" in v.reason
