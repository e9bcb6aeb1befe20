"""The simulator: the real engine on a simulated board, deterministic, faults, degraded
modes, and the CPU model's budget invariant."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ProfileError
from agent.models import HardwareProfile, MissionProfile, load_file
from agent.policy.admission import admit
from agent.policy.degraded import ORDER, degraded_board, fit
from agent.status import Origin
from simulator import scenario
from simulator.cpu import BANDWIDTH_SLICE_US, TICK_US, SimBoard
from simulator.run import run
from simulator.workloads import Demand, PatternSpec
from tests.conftest import REPO
from tests.helpers import mission, partition

ORIGIN = Origin("config")

SCENARIOS = REPO / "simulator" / "scenarios"
RPI4 = REPO / "hwprofiles" / "raspberry-pi-4.yaml"


def sim(name: str, hw: Path = RPI4):
    board = load_file(HardwareProfile, hw)
    sc, m = scenario.load(SCENARIOS / f"{name}.yaml", board)
    return run(sc, m, board)


def kinds(r, prefix: str) -> list[tuple[float, str, str, str]]:
    return [e for e in r.trace if e[1].startswith(prefix)]


def test_same_seed_gives_the_same_trace() -> None:
    a, b = sim("demo"), sim("demo")
    assert a.trace == b.trace and a.partitions == b.partitions
    assert len(a.trace) > 5


def test_the_seed_matters(tmp_path: Path) -> None:
    doc = yaml.safe_load((SCENARIOS / "demo.yaml").read_text())
    doc["seed"] = 99
    doc["mission"] = str(REPO / "schedules" / "demo.yaml")
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(doc))
    board = load_file(HardwareProfile, RPI4)
    sc, m = scenario.load(tmp_path / "other.yaml", board)
    assert run(sc, m, board).partitions["analytics"] != sim("demo").partitions["analytics"]


def test_budgets_hold_and_the_miner_is_flagged() -> None:
    r = sim("demo")
    p = r.partitions
    assert p["flight-control"]["deadline_misses"] == 0 and p["flight-control"]["jobs"] == 3000
    assert abs(p["flight-control"]["used"] - 0.20) < 0.005
    (flag,) = [e for e in kinds(r, "health.budget-saturation") if "analytics" in e[2]]
    assert 10 < flag[0] <= 17  # runaway from 10 s, flagged after 5 accounting periods
    assert r.speedup > 10


def test_core_loss_sheds_best_effort_first_and_restores_it() -> None:
    r = sim("core-loss")
    (shed,) = kinds(r, "degraded.shed")
    (back,) = kinds(r, "degraded.restored")
    assert shed[2] == "partition/analytics" and 10 <= shed[0] <= 11.5
    assert back[2] == "partition/analytics" and 20 <= back[0] <= 21.5
    assert r.partitions["flight-control"]["deadline_misses"] == 0
    assert not any(r.partitions[p]["shed"] for p in r.partitions)  # restored by the end


def test_agent_restart_adopts_and_power_loss_recovers_the_previous_state() -> None:
    r = sim("agent-faults")
    adopted = kinds(r, "workload.adopted")
    assert len(adopted) == 6  # all three, after each of the two restarts
    assert {e[3] for e in adopted[:3]} == {e[3] for e in adopted[3:]}  # same pids
    (rec,) = kinds(r, "state.recovered")
    assert rec[0] == 20.0 and "previous copy" in rec[3]
    jump = kinds(r, "sim.clock-jump")[0]
    assert jump[0] == 15.0
    assert r.partitions["flight-control"]["jobs"] == 3000  # nothing was restarted


def test_workload_faults_are_seen_by_the_health_monitor() -> None:
    r = sim("workload-faults")
    assert any("analytics" in e[2] for e in kinds(r, "health.crash-loop"))
    assert kinds(r, "partition.stopped")
    assert any("fusion" in e[2] and "code 3" in e[3] for e in kinds(r, "health.crash"))
    assert any("slam" in e[2] and "SIGKILL" in e[3] for e in kinds(r, "health.crash"))
    assert any("hung" in e[3] for e in kinds(r, "health.deadline-miss"))


def test_link_loss_holds_pushes_and_the_mission_flies_on() -> None:
    r = sim("link-loss")
    applied = [e for e in kinds(r, "mission.applied")]
    assert [e[0] for e in applied] == [20.0]  # generation 2 only once the link is back
    assert "generation 2" in applied[0][3]
    (push,) = kinds(r, "sim.push")
    assert push[0] == 12.0 and "held by the broker" in push[3]
    # budget 20 % until 20 s, then 10 %: two thirds at 20 %, one third at 10 %
    assert abs(r.partitions["analytics"]["used"] - (20 * 0.2 + 10 * 0.1) / 30) < 0.01
    assert r.partitions["flight-control"]["deadline_misses"] == 0


def test_api_server_loss_flies_on_and_relists_to_the_latest() -> None:
    """While the API server is away the board flies what it has; on return it relists
    and sees the cluster as it is then: generation 4, never the 3 in between."""
    r = sim("api-server-loss")
    applied = [(e[0], e[3]) for e in kinds(r, "mission.applied")]
    assert [t for t, _ in applied] == [4.0, 20.0], applied
    assert "generation 2" in applied[0][1] and "generation 4" in applied[1][1]
    assert not any("generation 3" in m for _, m in applied)
    assert [e[0] for e in kinds(r, "sim.api-server-up")] == [20.0]
    # 20 % for 4 s, 10 % until 20 s, then 5 %
    expect = (4 * 0.2 + 16 * 0.1 + 10 * 0.05) / 30
    assert abs(r.partitions["analytics"]["used"] - expect) < 0.01
    assert r.partitions["flight-control"]["deadline_misses"] == 0


def test_a_profile_deleted_while_the_api_server_is_away_is_withdrawn_on_return(
        tmp_path: Path) -> None:
    gen2 = str(SCENARIOS / "missions" / "demo-gen2.yaml")
    path = write(tmp_path, duration_s=12, faults=[
        {"at_s": 4, "kind": "link-loss", "link": "api-server", "for_s": 6}], pushes=[
        {"at_s": 2, "via": "kube", "mission": gen2},
        {"at_s": 6, "via": "kube", "delete": "demo"}])
    board = load_file(HardwareProfile, RPI4)
    sc, m = scenario.load(path, board)
    r = run(sc, m, board)
    assert [e[0] for e in kinds(r, "mission.applied")] == [2.0]
    (gone,) = kinds(r, "mission.withdrawn")
    assert gone[0] == 10.0, gone
    removed = {e[2] for e in kinds(r, "partition.removed")}
    assert removed >= {"partition/flight-control", "partition/analytics"}


def test_the_simulated_cluster_flies_the_newest_profile_as_a_board_does(
        tmp_path: Path) -> None:
    """The simulator decides with the Kubernetes source's own rule (the most recently
    created profile flies), not with a copy of it (it had picked the highest generation)."""
    gen2 = SCENARIOS / "missions" / "demo-gen2.yaml"
    other = yaml.safe_load(gen2.read_text())
    other.update(name="other", generation=1)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    path = write(tmp_path, duration_s=8, faults=[], pushes=[
        {"at_s": 2, "via": "kube", "mission": str(gen2)},
        {"at_s": 5, "via": "kube", "mission": str(tmp_path / "other.yaml")}])
    board = load_file(HardwareProfile, RPI4)
    sc, m = scenario.load(path, board)
    r = run(sc, m, board)
    applied = [(e[0], e[2]) for e in kinds(r, "mission.applied")]
    assert applied == [(2.0, "mission/demo"), (5.0, "mission/other")], applied


def test_simulated_pushes_go_through_the_boards_mqtt_handler_and_its_ledger(
        tmp_path: Path) -> None:
    """Signed, verified, answered and replay-checked by the real MqttLink: the same push
    again is a duplicate, an older generation after a newer one is refused."""
    m = SCENARIOS / "missions"
    path = write(tmp_path, duration_s=8, faults=[], pushes=[
        {"at_s": 2, "mission": str(m / "demo-gen3.yaml")},
        {"at_s": 3, "mission": str(m / "demo-gen3.yaml")},
        {"at_s": 4, "mission": str(m / "demo-gen2.yaml")}])
    board = load_file(HardwareProfile, RPI4)
    sc, mission = scenario.load(path, board)
    r = run(sc, mission, board)
    acks = [(e[0], e[3]) for e in kinds(r, "sim.ack")]
    assert [t for t, _ in acks] == [2.0, 3.0, 4.0], acks
    assert acks[0][1].startswith("applied: demo generation 3")
    assert acks[1][1].startswith("duplicate: demo generation 3")
    assert acks[2][1].startswith("rejected: demo generation 2")
    assert "older than the accepted 3" in acks[2][1]
    assert [e[0] for e in kinds(r, "mission.applied")] == [2.0]


def write(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load((SCENARIOS / "demo.yaml").read_text())
    doc["mission"] = str(REPO / "schedules" / "demo.yaml")
    doc.update(changes)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("changes,where,reason", [
    ({"faults": [{"at_s": 1, "kind": "meteor"}]}, "faults[0].kind", "Input should be"),
    ({"faults": [{"at_s": -1, "kind": "agent-restart"}]}, "faults[0].at_s", "greater than"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"faults": [{"at_s": 1, "kind": "core-offline", "cores": [9]}]}, "faults[0].cores",
     "do not exist"),
    ({"faults": [{"at_s": 1, "kind": "workload-hang", "workload": "x/y"}]},
     "faults[0].workload", "not a workload"),
    ({"faults": [{"at_s": 99, "kind": "agent-restart"}]}, "faults[0].at_s", "after the end"),
    ({"workloads": {"nope/none": {"pattern": "runaway"}}}, "workloads.nope/none",
     "no workload"),
    ({"pushes": [{"at_s": 1, "mission": "/no/such.yaml"}]}, "pushes[0].mission",
     "cannot read"),
    ({"pushes": [{"at_s": 1, "delete": "demo"}]}, "pushes[0].delete", "via: kube"),
    ({"pushes": [{"at_s": 1, "via": "kube"}]}, "pushes[0].mission", "either a mission"),
    ({"faults": [{"at_s": 1, "kind": "link-loss", "link": "wifi"}]}, "faults[0].link",
     "Input should be"),
])
def test_bad_scenarios_name_the_field(tmp_path: Path, changes, where, reason) -> None:
    board = load_file(HardwareProfile, RPI4)
    with pytest.raises(ProfileError) as exc:
        scenario.load(write(tmp_path, **changes), board)
    got = {v.path: v.reason for v in exc.value.violations}
    assert where in got and reason in got[where], got


# -- degraded modes: properties ------------------------------------------------------
BOARD4 = HardwareProfile.model_validate({
    "name": "b4", "arch": "aarch64", "cores": [{"id": i} for i in range(4)],
    "memory_mib": 8192, "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512}})


@st.composite
def degraded_cases(draw: st.DrawFn) -> tuple[MissionProfile, dict[int, float]]:
    parts = []
    for i in range(draw(st.integers(1, 6))):
        crit = draw(st.sampled_from("ABCDE"))
        dedicated = draw(st.booleans()) and i == 0
        parts.append(partition(f"p{i}", crit=crit, cores=[1] if dedicated else None,
                               quota=draw(st.integers(5, 60)) * 1000, memory=64))
    m = mission(*parts)
    capacity = {c: draw(st.sampled_from([0.0, 0.6, 1.0])) for c in range(4)}
    return m, capacity


@settings(max_examples=300, deadline=None)
@given(degraded_cases())
def test_shedding_follows_criticality_and_keeps_what_fits(
        case: tuple[MissionProfile, dict[int, float]]) -> None:
    m, capacity = case
    if admit(m, BOARD4):
        return  # only missions that fit the healthy board
    kept, shed, _ = fit(m, BOARD4, capacity)
    now = degraded_board(BOARD4, capacity)
    derate = {c: f for c, f in capacity.items() if 0 < f < 1}
    if kept.partitions:
        assert admit(kept, now, None, derate) == []
    crit = {p.name: ORDER[p.criticality] for p in m.partitions}
    kept_names = {p.name for p in kept.partitions}
    # never a higher-criticality partition shed while a lower one keeps running
    for s in shed:
        assert all(crit[s] <= crit[k] for k in kept_names), (shed, kept_names)
    # DAL A partitions are never shed while capacity suffices for them
    a_only = mission(*[p.model_dump() for p in m.partitions if p.criticality == "A"]) \
        if any(p.criticality == "A" for p in m.partitions) else None
    if a_only is not None and not admit(a_only, now, None, derate):
        assert all(m.partition(s).criticality != "A" for s in shed)


# -- the CPU model: usage per period stays within the budget -------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 90), st.sampled_from([10, 50, 100]),
                          st.sampled_from(["runaway", "bursts", "periodic"])),
                min_size=1, max_size=4),
       st.integers(0, 1000))
def test_usage_per_period_stays_within_the_budget(groups, seed) -> None:
    board = SimBoard(BOARD4, Path("/sim"), seed=seed)
    fs = board.fs
    fs.write(Path("/sim/cgroup.subtree_control"), "+cpu +cpuset +memory +pids")
    tracked: list = []
    for i, (pct, period_ms, pattern) in enumerate(groups):
        d = Path(f"/sim/g{i}")
        fs.mkdir(d)
        quota = max(1000, pct * period_ms * 10)  # the kernel's 1 ms minimum
        fs.write(d / "cpu.max", f"{quota} {period_ms * 1000}")
        t = board.spawn(Demand(PatternSpec(pattern=pattern, period_ms=7, work_ms=5),
                               board.rng, 0.0, None), {})
        fs.write(d / "cgroup.procs", str(t.pid))
        tracked.append((fs.group(d).sim, quota))
    for step in range(1, 2001):
        board.now_us = (step - 1) * 1000.0
        board.step()
        for i, (stt, quota) in enumerate(tracked):
            # Inside one period a group may use more than its quota by what the kernel
            # lets through: a slice pulled to the core in an earlier period, and the
            # overrun until the next tick (each group's periods have their own phase).
            # (Both per core the group ran on: runtime is pulled per core.)
            cores = max(1, len(stt.local))
            assert stt.used_this <= quota + (BANDWIDTH_SLICE_US + TICK_US) * cores + 1e-6, \
                (i, stt.used_this, quota)
            # Over its periods it never gets more than the quota: the overrun is a debt
            # paid from the next refill.
            assert stt.usage_us <= (stt.nr_periods + 1) * quota + TICK_US * cores + 1e-6, \
                (i, stt.usage_us, stt.nr_periods, quota)
        total = sum(stt.usage_us for stt, _ in tracked)
        assert total <= board.now_us * len(BOARD4.cores) + 1e-6


# -- the CPU model against what Linux 6.18 measured on this machine ---------------------
def _spinning_groups(quotas: list[int], offsets_us: list[float], seconds: float,
                     seed: int = 0, cpus: str = "0") -> list:
    """Groups with one spinning task each on ``cpus``; cpu.max written at the offsets
    (the period timers' phases). Returns each group's model state after ``seconds``."""
    board = SimBoard(BOARD4, Path("/sim"), seed=seed)
    fs = board.fs
    fs.write(Path("/sim/cgroup.subtree_control"), "+cpu +cpuset +memory +pids")
    groups = []
    for i, (quota, offset) in enumerate(zip(quotas, offsets_us, strict=True)):
        d = Path(f"/sim/g{i}")
        fs.mkdir(d)
        fs.write(d / "cpuset.cpus", cpus)
        board.now_us = offset
        fs.write(d / "cpu.max", f"{quota} 100000")
        groups.append(fs.group(d).sim)
    for i in range(len(quotas)):
        t = board.spawn(Demand(PatternSpec(pattern="runaway"), board.rng, 0.0, None), {})
        fs.write(Path(f"/sim/g{i}/cgroup.procs"), str(t.pid))
    for step in range(int(seconds * 1000)):
        board.now_us = 30_000.0 + step * 1000.0
        board.step()
    return groups


@pytest.mark.parametrize("offset_ms", [0, 3, 6, 9, 13, 22])
def test_two_groups_filling_one_core_alternate_their_throttles(offset_ms: int) -> None:
    """Measured (bench/sim_faithfulness.py, ftrace): two spinning groups at 50 % each on
    one core take 4 ms turns at the tick, each uses exactly half the core, each is
    throttled in about half its periods and loses no time to it (throttled_usec ~0),
    whatever the phase of their period timers."""
    a, b = _spinning_groups([50_000, 50_000], [0.0, offset_ms * 1000.0], 4.0)
    for g in (a, b):
        assert abs(g.usage_us / 4e6 - 0.5) < 0.005
        assert 0.4 <= g.nr_throttled / g.nr_periods <= 0.6, (g.nr_throttled, g.nr_periods)
        assert g.throttled_us < 0.01 * g.usage_us


def test_a_lone_group_over_quota_is_throttled_every_period_for_the_rest_of_it() -> None:
    """Measured: a spinner under 10 ms / 100 ms is throttled in every period, ~90 ms
    each time (the tick lets it overrun by up to 4 ms, paid from the next refill)."""
    (g,) = _spinning_groups([10_000], [0.0], 3.0, cpus="1")
    assert abs(g.usage_us / 3e6 - 0.10) < 0.005
    assert g.nr_throttled >= g.nr_periods - 1
    assert 0.85 < g.throttled_us / (g.nr_throttled * 100_000) < 0.95


@pytest.mark.parametrize("name", ["thermal", "workload-faults"])
def test_the_fast_paths_change_nothing(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Repeated mid-tick slices and the one-task-per-core path are shortcuts: the same
    scenario run without them gives the same trace and the same usage figures."""
    fast = sim(name)
    monkeypatch.setattr(SimBoard, "_repeat", lambda self, *a: False)
    monkeypatch.setattr(SimBoard, "_serve_one", lambda self, core, item, now, tick, free,
                        given: self._serve(core, [item], [], now, tick, free, given))
    plain = sim(name)
    assert fast.trace == plain.trace
    assert fast.usage == plain.usage and fast.partitions == plain.partitions


def test_giving_up_the_partition_root_shows_in_what_the_engine_holds(tmp_path: Path) -> None:
    """On the simulated cgroup v2 board the prefix starts as a partition root and an
    exclusive dedicated core is one too. A new generation whose pool needs the OS's
    core makes the agent give the root up (cgroup.layout): the exclusive partition,
    unchanged and not re-applied, must then read as not exclusive, not as before."""
    import asyncio

    from agent.engine.state import StoredMission
    from simulator.clock import VirtualTimeLoop
    from simulator.run import _Sim
    from simulator.scenario import Scenario

    parts = [partition("fc", cores=[1], quota=50_000, crit="A"),
             partition("a", quota=90_000)]
    first = mission(*parts)
    second = mission(*parts, partition("b", quota=150_000), generation=2)
    sc = Scenario.model_validate({"name": "t", "mission": "m.yaml", "duration_s": 1})
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)

    async def go() -> None:
        sim = _Sim(sc, first, BOARD4, tmp_path)
        await sim.engine.start(StoredMission(first, ORIGIN))
        try:
            assert sim.backend.partitioned and sim.engine.limits["fc"].exclusive
            assert sim.engine.limits["a"].cpus == {2, 3}, "the pool leaves the OS core"
            decision = await sim.engine.submit(second, ORIGIN)
            assert decision.outcome == "applied", decision
            assert not sim.backend.partitioned
            assert sim.engine.events.of_kind("cgroup.layout")
            assert sim.engine.limits["b"].cpus == {0, 2, 3}
            assert not sim.engine.limits["fc"].exclusive
        finally:
            await sim.engine.shutdown(teardown=True)
    try:
        loop.run_until_complete(go())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
