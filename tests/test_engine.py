"""The engine on real cgroups v1 and real processes: what only the kernel can show
(groups and quota files, host preflight, adoption through /proc, a budget holding).
The rest of the engine's behaviour runs unprivileged: test_engine_unprivileged.py."""

from __future__ import annotations

import asyncio
import time

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.status import Origin
from tests.conftest import CGROUP_ROOT, needs_root_v1
from tests.helpers import SPINNER, mission, partition, workload

ORIGIN = Origin("config")

pytestmark = needs_root_v1


def make_engine(cfg: AgentConfig, board: HardwareProfile) -> Engine:
    backend = V1Backend(CGROUP_ROOT, cfg.cgroup_prefix)
    return Engine(cfg, board, backend, StateStore(cfg.state_dir))


def procs_of(prefix: str, p: str, w: str) -> list[int]:
    path = CGROUP_ROOT / "pids" / prefix / f"p-{p}" / f"w-{w}" / "cgroup.procs"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def pid_map(e: Engine) -> dict[str, int | None]:
    return {f"{r.partition}/{r.spec.name}": r.pid for r in e.all_runners()}


TWO = mission(partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]),
              partition("hog", crit="E", workloads=[workload("spin")]))


async def test_applies_a_mission_into_real_cgroups(agent_config: AgentConfig,
                                                   board: HardwareProfile, prefix: str) -> None:
    e = make_engine(agent_config, board)
    await e.start()
    d = await e.submit(TWO, ORIGIN)
    assert d.outcome == "applied", d
    for p, w in (("fc", "ctl"), ("hog", "spin")):
        runner = e.runners[p][w]
        assert procs_of(prefix, p, w) == [runner.pid]
    assert (CGROUP_ROOT / "cpuset" / prefix / "p-fc" / "cpuset.cpus").read_text().strip() == "1"
    assert e.store.load().mission == TWO  # type: ignore[union-attr]
    await e.shutdown(teardown=True)


async def test_rejected_mission_changes_nothing(agent_config: AgentConfig,
                                                board: HardwareProfile, prefix: str) -> None:
    e = make_engine(agent_config, board)
    await e.start()
    await e.submit(TWO, ORIGIN)
    pids = pid_map(e)
    bad = mission(partition("fc", cores=[7], quota=500),
                  partition("hog", workloads=[workload("spin", user="no-such-user"),
                                              workload("x", command=["/no/such/cmd"])]),
                  generation=2)
    d = await e.submit(bad, ORIGIN)
    assert d.outcome == "rejected"
    got = {v.path for v in d.violations}
    assert {"partitions[0].cpu.dedicated_cores", "partitions[0].budget.quota_us",
            "partitions[1].workloads[0].user", "partitions[1].workloads[1].command[0]"} <= got
    assert pid_map(e) == pids
    assert e.mission == TWO and e.store.load().mission == TWO  # type: ignore[union-attr]
    await e.shutdown(teardown=True)


async def test_live_change_touches_only_what_changed(agent_config: AgentConfig,
                                                     board: HardwareProfile, prefix: str) -> None:
    e = make_engine(agent_config, board)
    await e.start()
    await e.submit(TWO, ORIGIN)
    before = pid_map(e)
    changed = mission(partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]),
                      partition("hog", crit="E", quota=10_000, workloads=[
                          workload("spin"), workload("extra")]), generation=2)
    d = await e.submit(changed, ORIGIN)
    assert d.outcome == "applied"
    assert e.runners["fc"]["ctl"].pid == before["fc/ctl"]
    assert e.runners["hog"]["spin"].pid == before["hog/spin"]  # budget: no restart
    assert procs_of(prefix, "hog", "extra") == [e.runners["hog"]["extra"].pid]
    quota = CGROUP_ROOT / "cpu" / prefix / "p-hog" / "cpu.cfs_quota_us"
    assert quota.read_text().strip() == "10000"
    dropped = mission(partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]),
                      generation=3)
    await e.submit(dropped, ORIGIN)
    assert not (CGROUP_ROOT / "cpu" / prefix / "p-hog").exists()
    await e.shutdown(teardown=True)


async def test_restarted_engine_adopts_the_same_pids(agent_config: AgentConfig,
                                                     board: HardwareProfile, prefix: str) -> None:
    first = make_engine(agent_config, board)
    await first.start()
    await first.submit(TWO, ORIGIN)
    pids = pid_map(first)
    await first.shutdown(teardown=False)  # as after SIGKILL: processes keep running
    second = make_engine(agent_config, board)
    await second.start()
    assert pid_map(second) == pids
    assert all(r.adopted for r in second.all_runners())
    assert second.mission == TWO
    # a changed spec after restart replaces exactly that workload
    d = await second.submit(mission(
        partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]),
        partition("hog", crit="E", workloads=[workload("spin", env={"X": "1"})]),
        generation=2), ORIGIN)
    assert d.outcome == "applied"
    assert second.runners["fc"]["ctl"].pid == pids["fc/ctl"]
    assert second.runners["hog"]["spin"].pid != pids["hog/spin"]
    await second.shutdown(teardown=True)


async def test_budget_holds_a_cpu_hog(agent_config: AgentConfig, board: HardwareProfile) -> None:
    """Loose tolerance for a noisy 2-core machine; the tight number is in bench/."""
    e = make_engine(agent_config, board)
    await e.start()
    await e.submit(mission(partition("hog", quota=20_000, workloads=[
        workload("spin", command=SPINNER)])), ORIGIN)
    e.sample()
    await asyncio.sleep(1.5)
    e.sample()
    share = e.usage["hog"].share
    assert 0.15 <= share <= 0.23, share
    assert e.usage["hog"].throttled_periods > 0
    await e.shutdown(teardown=True)


async def test_start_stop_is_fast_enough_for_tests(agent_config: AgentConfig,
                                                   board: HardwareProfile) -> None:
    e = make_engine(agent_config, board)
    await e.start()
    t = time.monotonic()
    await e.submit(TWO, ORIGIN)
    await e.shutdown(teardown=True)
    assert time.monotonic() - t < 5
