"""Admission: table tests for each rule and property tests for the invariants."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.models import HardwareProfile, MissionProfile
from agent.policy.admission import admit
from agent.policy.placement import partition_cores, placement_pool, shared_pool
from tests.helpers import mission, partition, workload


def paths(m: MissionProfile, board: HardwareProfile) -> dict[str, str]:
    return {v.path: v.reason for v in admit(m, board)}


def test_demo_like_mission_is_admitted(board: HardwareProfile) -> None:
    m = mission(partition("fc", cores=[1], quota=50_000, crit="A"),
                partition("fusion", quota=30_000), partition("hog", quota=20_000, crit="E"))
    assert admit(m, board) == []


TABLE = [
    ("quota below 1 ms", [partition("a", quota=500, period=10_000)],
     "partitions[0].budget.quota_us", "below the kernel minimum"),
    ("period above 1 s", [partition("a", quota=2_000, period=2_000_000)],
     "partitions[0].budget.period_us", "above the kernel maximum"),
    ("period below 1 ms", [partition("a", quota=1_000, period=500)],
     "partitions[0].budget.period_us", "below the kernel minimum"),
    ("core the board lacks", [partition("a", cores=[7])],
     "partitions[0].cpu.dedicated_cores", "does not exist"),
    ("reserved core", [partition("a", cores=[0])],
     "partitions[0].cpu.dedicated_cores", "reserved for the OS"),
    ("core dedicated twice", [partition("a", cores=[1]), partition("b", cores=[1])],
     "partitions[1].cpu.dedicated_cores", "already dedicated to partition 'a'"),
    ("budget above its cores", [partition("a", cores=[1], quota=150_000)],
     "partitions[0].budget.quota_us", "exceeds the 1.000 CPU"),
    ("pool over-committed", [partition("fc", cores=[1]), partition("a", quota=50_000),
                             partition("b", quota=40_000)],
     "partitions", "offers 0.800 CPU after the OS reserve; budgets ask 0.900"),
    ("memory over-committed", [partition("a", memory=4000)], "partitions", "memory limits"),
    ("pids over-committed", [partition("a", pids=40_000)], "partitions", "pids limits"),
    ("duplicate partition", [partition("a"), partition("a")], "partitions[1].name", "duplicate"),
    ("duplicate workload", [partition("a", workloads=[workload("x"), workload("x")])],
     "partitions[0].workloads[1].name", "duplicate workload"),
    ("fewer pids than workloads", [partition("a", pids=1, workloads=[workload("x"),
                                                                      workload("y")])],
     "partitions[0].pids_max", "fewer than"),
]


@pytest.mark.parametrize("name,parts,path,reason", TABLE, ids=[t[0] for t in TABLE])
def test_rule(board: HardwareProfile, name: str, parts: list, path: str, reason: str) -> None:
    got = paths(mission(*parts), board)
    assert path in got, got
    assert reason in got[path]


def test_every_violation_is_reported(board: HardwareProfile) -> None:
    m = mission(partition("a", quota=500, period=2_000_000, cores=[9]),
                partition("b", memory=9000))
    got = paths(m, board)
    assert {"partitions[0].budget.quota_us", "partitions[0].budget.period_us",
            "partitions[0].cpu.dedicated_cores", "partitions"} <= got.keys()


def test_board_mismatch(board: HardwareProfile) -> None:
    assert "board" in paths(mission(partition("a"), board="raspberry-pi-4"), board)


def test_shared_pool_when_everything_is_dedicated(rpi4: HardwareProfile) -> None:
    m = mission(partition("a", cores=[1, 2, 3], quota=10_000), partition("b"))
    assert shared_pool(m, rpi4) == {0}
    assert admit(m, rpi4) == []


def windows(*wins: tuple[str, int, int], frame: int = 100_000) -> dict:
    return {"schedules": [{"name": "cruise", "major_frame_us": frame, "windows": [
        {"partition": p, "offset_us": o, "duration_us": d} for p, o, d in wins]}]}


def test_windows_inside_the_frame_and_apart_on_a_core(board: HardwareProfile) -> None:
    parts = [partition("a"), partition("b"), partition("c", cores=[1])]
    ok = mission(*parts, **windows(("a", 0, 40_000), ("b", 40_000, 40_000), ("c", 0, 100_000)))
    assert admit(ok, board) == []
    overlap = mission(*parts, **windows(("a", 0, 50_000), ("b", 40_000, 40_000)))
    assert "overlaps windows[0] on cores [0]" in paths(overlap, board)["schedules[0].windows[1]"]
    late = mission(*parts, **windows(("a", 90_000, 20_000)))
    assert "after the major frame" in paths(late, board)["schedules[0].windows[0]"]
    unknown = mission(*parts, **windows(("zz", 0, 10)))
    assert "schedules[0].windows[0].partition" in paths(unknown, board)
    bad_initial = mission(*parts, initial_schedule="nope")
    assert "initial_schedule" in paths(bad_initial, board)


def test_pool_partitions_leave_the_os_cores_when_the_rest_carries_them() -> None:
    """On a 4-core board with core 0 reserved, pool partitions go to cores 2-3 while
    those carry their budgets (the OS keeps core 0), and share core 0 only when they must
    (as admission counted it) or when SCHED_DEADLINE needs the whole root domain."""
    fits = mission(partition("fc", cores=[1], quota=50_000, crit="A"),
                   partition("a", quota=90_000), partition("b", quota=100_000))
    assert admit(fits, BOARD4) == []
    assert placement_pool(fits, BOARD4) == {2, 3}
    needs_core0 = mission(partition("fc", cores=[1], quota=50_000, crit="A"),
                          partition("a", quota=120_000), partition("b", quota=100_000))
    assert admit(needs_core0, BOARD4) == []
    assert placement_pool(needs_core0, BOARD4) == {0, 2, 3}
    only_core0 = mission(partition("fc", cores=[1, 2, 3], quota=50_000, crit="A"),
                         partition("a", quota=50_000))
    assert placement_pool(only_core0, BOARD4) == {0}
    dl = mission(partition("a", quota=20_000) | {"budget": {
        "quota_us": 20_000, "period_us": 100_000, "mode": "deadline",
        "deadline": {"runtime_us": 2_000, "deadline_us": 10_000, "period_us": 10_000}}})
    assert admit(dl, BOARD4) == []
    assert placement_pool(dl, BOARD4) == {0, 1, 2, 3}


# -- properties --------------------------------------------------------------------
BOARD4 = HardwareProfile.model_validate({
    "name": "b4", "arch": "aarch64", "cores": [{"id": i} for i in range(4)],
    "memory_mib": 4096, "max_pids": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.25, "memory_mib": 512, "pids": 512}})


@st.composite
def missions(draw: st.DrawFn) -> MissionProfile:
    n = draw(st.integers(1, 5))
    parts = []
    for i in range(n):
        period = draw(st.integers(500, 1_200_000))
        quota = draw(st.integers(500, 2 * period))
        cores = draw(st.lists(st.integers(0, 4), max_size=2, unique=True))
        parts.append(partition(f"p{i}", quota=quota, period=period, cores=cores,
                               memory=draw(st.integers(1, 2000)), pids=draw(st.integers(1, 2000))))
    return mission(*parts)


def invariants_hold(m: MissionProfile, board: HardwareProfile) -> bool:
    """Independent restatement of what an admitted mission guarantees."""
    pool = shared_pool(m, board)
    load = {c: 0.0 for c in board.core_ids}
    owners: dict[int, int] = {}
    for p in m.partitions:
        b = p.budget
        if not (b.quota_us >= 1000 and 1000 <= b.period_us <= 1_000_000):
            return False
        cores = partition_cores(p, pool)
        if not cores or not cores <= board.core_ids:
            return False
        for c in p.cpu.dedicated_cores:
            owners[c] = owners.get(c, 0) + 1
            if c in board.reserved.cores:
                return False
        for c in cores:
            load[c] += b.utilisation(len(cores)) / len(cores)
    if any(k > 1 for k in owners.values()):
        return False
    shared_load = sum(p.budget.utilisation(len(pool)) for p in m.partitions
                      if not p.cpu.dedicated_cores)
    if shared_load > sum(board.core_capacity(c) for c in pool) + 1e-9:
        return False
    for p in m.partitions:
        if p.cpu.dedicated_cores and p.budget.utilisation(len(p.cpu.dedicated_cores)) > sum(
                board.core_capacity(c) for c in p.cpu.dedicated_cores) + 1e-9:
            return False
    return (sum(p.memory_mib for p in m.partitions)
            <= board.memory_mib - board.reserved.memory_mib
            and sum(p.pids_max for p in m.partitions) <= board.max_pids - board.reserved.pids)


@settings(max_examples=400, deadline=None)
@given(missions())
def test_admitted_missions_satisfy_the_invariants(m: MissionProfile) -> None:
    if not admit(m, BOARD4):
        assert invariants_hold(m, BOARD4)
    else:
        assert not invariants_hold(m, BOARD4)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.05, 1.0), min_size=2, max_size=6))
def test_over_committed_pool_is_always_rejected(shares: list[float]) -> None:
    capacity = sum(BOARD4.core_capacity(c) for c in BOARD4.core_ids)
    if sum(shares) <= capacity + 0.01:
        shares = [s * (capacity + 0.5) / sum(shares) for s in shares]
    parts = [partition(f"p{i}", quota=max(1000, int(s * 100_000)), period=100_000)
             for i, s in enumerate(shares)]
    got = paths(mission(*parts), BOARD4)
    assert "partitions" in got and "budgets ask" in got["partitions"]
