"""The proof against the kernel: an admitted timed workload, a 16-thread miner on the
same core, and every measured response within the bound admission gave."""

from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from dataclasses import replace

import pytest

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.policy.deadlines import analyse
from agent.status import Origin
from tests.conftest import CGROUP_ROOT, needs_root_v1
from tests.helpers import mission, partition, wait_for

pytestmark = needs_root_v1

PERIOD_US, SPIN_US, WCET_US = 10_000, 1_500, 2_000
# A periodic task: released every period on the monotonic clock, spins its CPU time,
# reports release -> completion. A late job does not move the next release.
def periodic(period_us: int, spin_us: int) -> str:
    return f"""
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = os.environ["SORTIE_REPORT_SOCKET"]
period, spin = {period_us} / 1e6, {spin_us} / 1e6
release = time.monotonic() + period
while True:
    time.sleep(max(0.0, release - time.monotonic()))
    t0 = time.thread_time()
    while time.thread_time() - t0 < spin:
        pass
    s.sendto(f"job {{int((time.monotonic() - release) * 1e6)}} {period_us}".encode(), path)
    release += period
"""


TASK = periodic(PERIOD_US, SPIN_US)


class LatencyWitness:
    """cyclictest at the top RT priority on core 1 for the whole measurement.

    The bounds hold while interrupts and scheduling latency stay within the allowance
    (docs/determinism.md). This machine is a VM on a non-preemptible kernel: its host
    sometimes takes the vCPU away, or a kernel path holds it, for several ms, more on
    some days than others. Whatever delays the task this way also delays the witness
    (it wakes every 0.5 ms, so a hole is at most one interval longer than it measures),
    while a fault of the analysis (the miner winning the core) does not; its own cost
    (~10 us per wake-up) is of the kind the allowance covers."""

    INTERVAL_US = 500

    def __enter__(self) -> LatencyWitness:
        self.proc = subprocess.Popen(["cyclictest", "-m", "-q", "-p", "99", "-a", "1", "-i",
                                      str(self.INTERVAL_US)], stdout=subprocess.PIPE,
                                     text=True)
        return self

    def stop(self) -> int:
        """The worst latency it saw, us."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        return int(re.search(r"Max:\s+(\d+)", out).group(1))  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@pytest.mark.skipif(shutil.which("stress-ng") is None or shutil.which("cyclictest") is None,
                    reason="needs stress-ng and cyclictest")
@pytest.mark.timeout(90)
async def test_measured_responses_stay_within_the_admitted_bound(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    loop = {"name": "loop", "command": ["/usr/bin/python3", "-c", TASK],
            "timing": {"period_us": PERIOD_US, "wcet_us": WCET_US}, "stop_grace_ms": 200}
    miner = {"name": "miner", "command": ["/usr/bin/stress-ng", "--cpu", "16", "--quiet",
                                   "--temp-path", "/tmp"],
             "stop_grace_ms": 200}
    # Both in the pool, which the placement narrows to core 1 (the OS keeps core 0):
    # the miner shares the flight-critical core. rt: 8.5 ms of 10 ms, never exhausted
    # while latency stays below 2.25 ms (two jobs of WCET + latency in one RT period).
    m = mission(dict(partition("fc", crit="A", quota=1_000, workloads=[loop]),
                     budget={"mode": "rt", "quota_us": 1_000, "period_us": 100_000,
                             "rt": {"runtime_us": 8_500, "period_us": 10_000}}),
                partition("mine", crit="E", quota=5_000, workloads=[miner]))
    e = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
               StateStore(agent_config.state_dir))
    await e.start()
    try:
        (bound,) = analyse(m, board, e.timing_env())
        assert bound.proven, bound
        with LatencyWitness() as witness:
            d = await e.submit(m, Origin("config"))
            assert d.outcome == "applied", d
            assert e.limits["fc"].cpus == e.limits["mine"].cpus == frozenset({1})
            await asyncio.sleep(1.5)  # stress-ng's 16 workers up
            e.sample()
            await wait_for(lambda: (s := e.monitor.jobs.get(("fc", "loop")))
                           and s.jobs >= 500, 30)
            e.sample()
            latency = witness.stop()
        # The bound at the latency this run had, where it exceeded the configured one.
        env = e.timing_env()
        seen_env = replace(env, latency_us=max(env.latency_us,
                                               latency + LatencyWitness.INTERVAL_US))
        (at_seen,) = analyse(m, board, seen_env)
        stats, miner_use = e.monitor.jobs[("fc", "loop")], e.usage["mine"]
        print(f"jobs {stats.jobs}, worst {stats.max_response_us} us, bound "
              f"{bound.response_bound_us} us ({at_seen.response_bound_us} us at this run's "
              f"latency, witness max {latency} us), misses {stats.misses}; miner used "
              f"{miner_use.share:.3f} of a core, throttled {miner_use.throttled_periods}/"
              f"{miner_use.periods}")
        seen = (stats.jobs, stats.misses, stats.max_response_us, bound.response_bound_us,
                latency, at_seen.response_bound_us, miner_use)
        assert miner_use.share > 0.04 and miner_use.throttled_periods > 0, seen  # it competed
        if at_seen.response_bound_us is None:
            pytest.skip(f"the platform's latency this run (witness {latency} us) leaves no "
                        f"bound to check: {at_seen.why}")
        assert stats.max_response_us <= at_seen.response_bound_us, seen  # type: ignore[operator]
        if latency + LatencyWitness.INTERVAL_US <= env.latency_us:
            assert stats.misses == 0, seen  # the platform kept its promise: so must we
    finally:
        await e.shutdown(teardown=True)


async def test_timed_rt_workloads_run_at_deadline_monotonic_priorities(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    import os

    def timed(name: str, deadline: int) -> dict[str, object]:
        return {"name": name, "command": ["/bin/sleep", "3600"], "stop_grace_ms": 200,
                "timing": {"period_us": 20_000, "wcet_us": 500, "deadline_us": deadline}}
    m = mission(dict(partition("fc", crit="A", cores=[1], workloads=[
        timed("slow", 20_000), timed("fast", 5_000), timed("mid", 10_000)]),
        budget={"mode": "rt", "quota_us": 1_000, "period_us": 100_000,
                "rt": {"runtime_us": 8_000, "period_us": 10_000, "priority": 40}}))
    cfg = agent_config.model_copy(update={"latency_allowance_us": 100})  # not measured here
    e = Engine(cfg, board, V1Backend(CGROUP_ROOT, cfg.cgroup_prefix), StateStore(cfg.state_dir))
    await e.start()
    try:
        d = await e.submit(m, Origin("config"))
        assert d.outcome == "applied", d
        prio = {w: os.sched_getparam(e.runners["fc"][w].pid or 0).sched_priority  # type: ignore[arg-type]
                for w in ("fast", "mid", "slow")}
        assert prio == {"fast": 42, "mid": 41, "slow": 40}
        assert all(os.sched_getscheduler(e.runners["fc"][w].pid or 0) == os.SCHED_FIFO
                   for w in prio)
        (fc,) = e.snapshot().partitions
        assert {w.name: w.policy for w in fc.workloads}["fast"] == "SCHED_FIFO priority 42"
    finally:
        await e.shutdown(teardown=True)


@pytest.mark.skipif(shutil.which("cyclictest") is None, reason="needs cyclictest")
@pytest.mark.timeout(60)
async def test_a_windowed_workload_meets_the_bound_of_its_frame_layout(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    from tests.helpers import SPINNER
    # Jobs every 15 ms against a 20 ms frame: releases drift through nav's window.
    task = periodic(15_000, SPIN_US)
    loop = {"name": "loop", "command": ["/usr/bin/python3", "-c", task], "stop_grace_ms": 200,
            "timing": {"period_us": 15_000, "wcet_us": WCET_US}}
    m = mission(partition("fc", crit="A", quota=35_000, workloads=[loop]),
                partition("nav", crit="B", quota=25_000, workloads=[
                    {"name": "hog", "command": SPINNER, "stop_grace_ms": 200}]))
    m = MissionProfile.model_validate({**m.model_dump(mode="json"), "schedules": [{
        "name": "frame", "major_frame_us": 20_000, "windows": [
            {"partition": "fc", "offset_us": 0, "duration_us": 14_000},
            {"partition": "nav", "offset_us": 14_000, "duration_us": 6_000}]}]})
    e = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
               StateStore(agent_config.state_dir))
    await e.start()
    try:
        (bound,) = analyse(m, board, e.timing_env())
        assert bound.proven and "time windows" in bound.method, bound
        d = await e.submit(m, Origin("config"))
        assert d.outcome == "applied", d
        await asyncio.sleep(1.0)
        with LatencyWitness() as witness:
            e.monitor.jobs.clear()
            await wait_for(lambda: (s := e.monitor.jobs.get(("fc", "loop")))
                           and s.jobs >= 200, 30)
            latency = witness.stop()
        stats = e.monitor.jobs[("fc", "loop")]
        # As above: the bound at the latency this run had, where it exceeded the allowance.
        env = e.timing_env()
        (at_seen,) = analyse(m, board, replace(env, latency_us=max(
            env.latency_us, latency + LatencyWitness.INTERVAL_US)))
        seen = (stats.jobs, stats.misses, stats.max_response_us, bound.response_bound_us,
                latency, at_seen.response_bound_us)
        print(f"windowed: jobs {stats.jobs}, worst {stats.max_response_us} us, bound "
              f"{bound.response_bound_us} us ({at_seen.response_bound_us} us at this run's "
              f"latency, witness max {latency} us), misses {stats.misses}")
        assert stats.max_response_us > 3_000, seen  # some jobs waited for their window
        if at_seen.response_bound_us is None:
            pytest.skip(f"the platform's latency this run (witness {latency} us) leaves no "
                        f"bound to check: {at_seen.why}")
        assert stats.max_response_us <= at_seen.response_bound_us, seen
        if latency + LatencyWitness.INTERVAL_US <= env.latency_us:
            assert stats.misses == 0, seen  # the platform kept its promise: so must we
    finally:
        await e.shutdown(teardown=True)
