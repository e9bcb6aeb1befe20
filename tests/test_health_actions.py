"""The health monitor decides, the engine carries out: typed actions, one at a time,
under the engine's lock, each an event."""

from __future__ import annotations

import asyncio

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.health.table import ErrorKind, HealthOrder
from agent.models import AgentConfig, HardwareProfile
from agent.status import Origin
from tests.conftest import CGROUP_ROOT, needs_root_v1
from tests.helpers import mission, partition, wait_for, workload

ORIGIN = Origin("config")

pytestmark = needs_root_v1


async def test_three_errors_at_once_are_carried_out_one_by_one_under_the_lock(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    e = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
               StateStore(agent_config.state_dir))
    await e.start()
    m = mission(dict(partition("a", quota=10_000), health={"crash": "restart-partition"}),
                dict(partition("b", quota=10_000), health={"budget-saturation":
                                                           "stop-partition"}),
                dict(partition("c", quota=10_000), health={"deadline-miss":
                                                           "restart-workload"}))
    assert (await e.submit(m, ORIGIN)).outcome == "applied"
    trace: list[tuple[str, str, bool]] = []
    real = e.orders.act

    async def traced(o: HealthOrder) -> None:
        trace.append(("start", o.kind.value, e.lock.locked()))
        await real(o)
        await asyncio.sleep(0.05)  # long enough for an overlap to show
        trace.append(("end", o.kind.value, e.lock.locked()))

    e.orders.act = traced  # type: ignore[method-assign]
    try:
        pids = {p: e.runners[p]["w"].pid for p in "abc"}
        e.monitor.report(ErrorKind.CRASH, "a", "w", "exited with code 1")
        e.monitor.report(ErrorKind.BUDGET_SATURATION, "b", None, "used its whole budget")
        e.monitor.report(ErrorKind.DEADLINE_MISS, "c", "w", "job took 12 ms of 10")
        # an apply asked for meanwhile waits its turn too
        change = asyncio.create_task(e.submit(m.model_copy(update={"generation": 2}), ORIGIN))
        await e.settle_health()
        await change
        kinds = ["crash", "budget-saturation", "deadline-miss"]
        assert trace == [x for k in kinds for x in (("start", k, True), ("end", k, True))]
        for k in kinds:
            (ev,) = e.events.of_kind(f"health.{k}")
            assert "->" in ev.message
        assert e.events.of_kind("partition.stopped")[0].subject == "partition/b"
        assert e.runners["b"]["w"].pid is None
        for p in "ac":  # restarted by the actions, inside them: new processes already
            assert e.runners[p]["w"].restarts == 1 and e.runners[p]["w"].pid != pids[p]
    finally:
        e.orders.act = real  # type: ignore[method-assign]
        await e.shutdown(teardown=True)


async def test_failing_health_checks_restart_through_the_monitor_under_the_lock(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    e = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
               StateStore(agent_config.state_dir))
    await e.start()
    locked: list[bool] = []
    real = e.orders.act

    async def traced(o: HealthOrder) -> None:
        locked.append(e.lock.locked())
        await real(o)

    e.orders.act = traced  # type: ignore[method-assign]
    check = {"command": ["/bin/false"], "interval_ms": 20, "timeout_ms": 500,
             "failure_threshold": 2}
    try:
        m = mission(partition("p", quota=10_000, workloads=[
            workload("w", health_check=check, stop_grace_ms=200)]))
        assert (await e.submit(m, ORIGIN)).outcome == "applied"
        first = e.runners["p"]["w"].pid
        await wait_for(lambda: e.runners["p"]["w"].restarts >= 1
                       and e.runners["p"]["w"].pid not in (None, first), 10)
        (verdict, *_) = e.events.of_kind("health.health-check")
        assert verdict.message.endswith("-> restart-workload")
        assert locked and all(locked)
    finally:
        e.orders.act = real  # type: ignore[method-assign]
        await e.shutdown(teardown=True)
