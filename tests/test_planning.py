"""plan(desired, observed): table tests, safe order, and work bounded by the change."""

from __future__ import annotations

from agent.models import HardwareProfile
from agent.policy.planning import (
    EnsurePartition,
    ObservedPartition,
    ObservedWorkload,
    RemovePartition,
    RestartWorkload,
    StartWorkload,
    StopWorkload,
    changed_partitions,
    desired_state,
    plan,
)
from tests.helpers import mission, partition, workload


def observed_from(desired: dict) -> dict[str, ObservedPartition]:
    return {p: ObservedPartition(d.limits, {w: ObservedWorkload(s.spec_hash())
                                            for w, s in d.workloads.items()})
            for p, d in desired.items()}


def kinds(actions: list) -> list[tuple[str, str]]:
    return [(type(a).__name__, a.partition) for a in actions]


def test_fresh_board_creates_limits_before_processes(board: HardwareProfile) -> None:
    d = desired_state(mission(partition("a"), partition("b", cores=[1])), board, "0")
    acts = plan(d, {})
    assert kinds(acts) == [("EnsurePartition", "a"), ("EnsurePartition", "b"),
                           ("StartWorkload", "a"), ("StartWorkload", "b")]
    assert acts[1].limits.cpus == {1} and acts[0].limits.cpus == {0}


def test_converged_state_plans_nothing(board: HardwareProfile) -> None:
    d = desired_state(mission(partition("a"), partition("b")), board, "0")
    assert plan(d, observed_from(d)) == []


def test_removed_partition_stops_processes_before_removing_the_group(
        board: HardwareProfile) -> None:
    old = desired_state(mission(partition("a"), partition("b")), board, "0")
    new = desired_state(mission(partition("a")), board, "0")
    acts = plan(new, observed_from(old))
    assert acts == [StopWorkload("b", "w", remove_group=True), RemovePartition("b")]


def test_budget_change_updates_limits_without_restart(board: HardwareProfile) -> None:
    old = desired_state(mission(partition("a", quota=20_000)), board, "0")
    new = desired_state(mission(partition("a", quota=30_000)), board, "0")
    acts = plan(new, observed_from(old))
    assert len(acts) == 1 and isinstance(acts[0], EnsurePartition)
    assert acts[0].limits.quota_us == 30_000


def test_changed_command_restarts_only_that_workload(board: HardwareProfile) -> None:
    old = desired_state(mission(partition("a", workloads=[workload("x"), workload("y")])),
                        board, "0")
    new = desired_state(mission(partition("a", workloads=[
        workload("x"), workload("y", command=["/bin/sleep", "99"])])), board, "0")
    acts = plan(new, observed_from(old))
    assert [type(a) for a in acts] == [RestartWorkload] and acts[0].spec.name == "y"


def test_unmanaged_group_gets_started(board: HardwareProfile) -> None:
    d = desired_state(mission(partition("a")), board, "0")
    obs = {"a": ObservedPartition(d["a"].limits, {"w": ObservedWorkload(None)})}
    assert [type(a) for a in plan(d, obs)] == [StartWorkload]


def test_cores_given_up_before_they_are_claimed(board: HardwareProfile) -> None:
    """Moving core 1 from 'z' to 'a': z shrinks in an earlier phase than a grows."""
    rpi = HardwareProfile.model_validate({**board.model_dump(), "cores": [
        {"id": i} for i in range(4)]})
    old = desired_state(mission(partition("a", cores=[2]), partition("z", cores=[1, 3])),
                        rpi, "0")
    new = desired_state(mission(partition("a", cores=[1, 2]), partition("z", cores=[3])),
                        rpi, "0")
    acts = plan(new, observed_from(old))
    assert [a.partition for a in acts if isinstance(a, EnsurePartition)] == ["z", "a"]


def test_one_change_among_many_plans_only_that_partition(board: HardwareProfile) -> None:
    big = HardwareProfile.model_validate({**board.model_dump(), "max_pids": 10 ** 6,
                                          "memory_mib": 10 ** 6})
    parts = [partition(f"p{i}", quota=1000, memory=1, pids=2) for i in range(500)]
    old = desired_state(mission(*parts), big, "0")
    parts[250] = partition("p250", quota=2000, memory=1, pids=2)
    new = desired_state(mission(*parts), big, "0")
    scope = changed_partitions(old, new)
    assert scope == {"p250"}
    acts = plan(new, observed_from(old), scope)
    assert kinds(acts) == [("EnsurePartition", "p250")]
