"""``sortie plan`` is the engine's own dry run of a submit: the same degraded fit, scope
and adoption. Unprivileged: the engine runs on the simulator's kernel-like cgroup2 tree."""

from __future__ import annotations

from pathlib import Path

from agent.engine.state import StoredMission
from agent.policy.planning import describe
from agent.status import Origin
from simulator.run import _Sim
from tests.helpers import mission, partition, workload
from tests.simengine import on_sim

ORIGIN = Origin("config")


def test_plan_on_a_degraded_board_is_what_submit_then_does(tmp_path: Path) -> None:
    fc = partition("fc", cores=[1], quota=50_000, crit="A", workloads=[workload("ctl")])
    first = mission(fc, partition("be", quota=150_000, crit="E", workloads=[workload("w")]))
    second = mission(partition("fc", cores=[1], quota=50_000, crit="A",
                               workloads=[workload("ctl"), workload("log")]),
                     partition("be", quota=150_000, crit="E", workloads=[workload("w")]),
                     partition("be2", quota=120_000, crit="E", workloads=[workload("x")]),
                     generation=2)

    async def body(sim: _Sim) -> None:
        await sim.engine.start(StoredMission(first, ORIGIN))
        for core in (2, 3):
            sim.board.set_capacity(core, 0.0)  # the shared pool's cores go offline
        await sim.engine.check_capacity()
        assert sim.engine.shed == ["be"]
        preview = sim.engine.preview(second)
        planned = [describe(a) for a in preview.actions]
        assert preview.shed == ["be", "be2"] and not preview.violations
        # shed: neither is created (the old preview planned both)
        assert not any(" be" in a or "be2" in a for a in planned), planned
        assert any("log" in a for a in planned)
        decision = await sim.engine.submit(second, ORIGIN)
        assert decision.outcome == "applied" and decision.actions == planned
        assert sim.engine.shed == ["be", "be2"]

    on_sim(tmp_path, first, body)


def test_plan_adopts_orphans_running_the_desired_spec_as_submit_does(tmp_path: Path) -> None:
    first = mission(partition("a", quota=20_000, workloads=[workload("keep"),
                                                            workload("change")]),
                    partition("old", quota=20_000, workloads=[workload("z")]))
    second = mission(partition("a", quota=20_000, workloads=[
        workload("keep"), workload("change", command=["/bin/sleep", "99"])]), generation=2)

    async def body(sim: _Sim) -> None:
        await sim.engine.start(StoredMission(first, ORIGIN))
        kept = sim.engine.runners["a"]["keep"].pid
        # The agent dies and comes back without its state: the groups are orphans now.
        await sim.engine.shutdown(teardown=False)
        for f in sim.config.state_dir.glob("*"):
            f.unlink()
        sim.engine = sim._engine()
        await sim.engine.start()
        assert sim.engine.events.of_kind("agent.safe-mode")
        assert set(sim.engine.orphans) == {"a", "old"}
        preview = sim.engine.preview(second)
        planned = [describe(a) for a in preview.actions]
        assert not any("keep" in a for a in planned), planned  # adopted, not restarted
        assert any("change" in a for a in planned)
        assert any("remove partition old" in a.lower() for a in planned), planned
        decision = await sim.engine.submit(second, ORIGIN)
        assert decision.outcome == "applied" and decision.actions == planned
        assert sim.engine.runners["a"]["keep"].pid == kept and "old" not in sim.engine.limits

    on_sim(tmp_path, first, body)
