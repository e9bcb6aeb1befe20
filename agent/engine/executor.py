"""The one writer: every change to cgroups and processes under the agent's prefix is made
here (partitions, workloads, the RT reserve, the OS's placement, the timekeeper, report
sockets). The engine decides what and calls it under its lock; nothing else writes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import Any

from agent.cgroups import CgroupBackend, PartitionLimits
from agent.cgroups.features import KernelFeatures
from agent.engine.observing import FoundPartition, FoundWorkload
from agent.engine.platform import Platform, Runner, Windows
from agent.errors import AgentError, CgroupError
from agent.events import EventLog
from agent.health.monitor import HealthMonitor
from agent.health.reports import ReportHub
from agent.models import AgentConfig, HardwareProfile, MissionProfile, Workload
from agent.policy.planning import (
    Action,
    DesiredPartition,
    EnsurePartition,
    ObservedPartition,
    ObservedWorkload,
    RemovePartition,
    RestartWorkload,
    StartWorkload,
    StopWorkload,
    plan,
)
from agent.runtime.identity import resolve_identity
from agent.runtime.stopping import terminate_group
from agent.runtime.supervisor import WorkloadRunner
from agent.timing.sched import SchedPolicy, workload_hash

log = logging.getLogger("sortie.execute")

# Grace for groups nobody manages any more (their spec is unknown).
ORPHAN_GRACE_S = 5.0
RT_GROW_TRIES, RT_GROW_WAIT_S = 150, 0.02


def _pop(index: dict[str, dict[str, Any]], partition: str, workload: str) -> Any:
    """Remove one entry of a per-partition index, dropping emptied partitions."""
    inner = index.get(partition)
    if inner is None:
        return None
    item = inner.pop(workload, None)
    if not inner:
        del index[partition]
    return item


def rt_reserve_us(desired: dict[str, DesiredPartition]) -> int:
    """RT runtime per 1 s the prefix must hold: the sum of its partitions' ratios."""
    ratio = sum(d.limits.rt_runtime_us / d.limits.rt_period_us for d in desired.values()
                if d.limits.rt_runtime_us)
    # Round up, plus 1 us: the kernel compares fixed-point ratios.
    return 0 if ratio == 0 else min(1_000_000, int(ratio * 1_000_000) + 1)


class Executor:
    """What runs (limits, runners, orphans) and the only code that changes it."""

    def __init__(self, config: AgentConfig, board: HardwareProfile, backend: CgroupBackend,
                 events: EventLog, platform: Platform, windows: Windows,
                 monitor: HealthMonitor, removed: Callable[[str], None]) -> None:
        self.config, self.board, self.backend = config, board, backend
        self.events, self.platform, self.windows, self.monitor = (events, platform, windows,
                                                                  monitor)
        self.features = KernelFeatures()
        self.limits: dict[str, PartitionLimits] = {}
        # Indexed by partition, so one change touches only its partitions' entries.
        self.runners: dict[str, dict[str, Runner]] = {}
        self.orphans: dict[str, dict[str, FoundWorkload]] = {}
        """Workload groups found at start that no runner manages (yet)."""
        self.reports: ReportHub | None = None
        self._desired: dict[str, DesiredPartition] = {}
        self._rt_reserved = 0
        """RT runtime per second the prefix holds now (grown before, shrunk after)."""
        self._os_isolated = False
        self._launches: set[asyncio.Future[None]] = set()
        self._removed = removed
        """Told of every partition group removed (accounting forgets its counters)."""

    # -- what runs -----------------------------------------------------------------------
    def remember(self, found: dict[str, FoundPartition]) -> None:
        """Record what exists (at start): limits, and workload groups as orphans."""
        for p, fp in found.items():
            if fp.limits is not None:
                self.limits[p] = fp.limits
            for w, fw in fp.workloads.items():
                self.orphans.setdefault(p, {})[w] = fw

    def adoptable(self, desired: dict[str, DesiredPartition]) -> set[tuple[str, str]]:
        """Orphans running exactly the desired spec: adopted, not restarted."""
        out = set()
        for p, found in self.orphans.items():
            want = desired.get(p)
            for w, fw in found.items():
                spec = want.workloads.get(w) if want else None
                if want is not None and spec is not None and fw.main_pid is not None \
                        and fw.spec_hash == workload_hash(spec, want.sched(w)):
                    out.add((p, w))
        return out

    def adopt_matching(self, desired: dict[str, DesiredPartition]) -> None:
        for p, w in sorted(self.adoptable(desired)):
            want = desired[p]
            fw = self.orphans[p].pop(w)
            assert fw.main_pid is not None  # adoptable checked
            runner = self._runner(p, want.workloads[w], want.sched(w))
            runner.adopt(fw.main_pid)
            self.runners.setdefault(p, {})[w] = runner
            if not self.orphans[p]:
                del self.orphans[p]

    def observed(self, scope: set[str] | None = None,
                 adopted: AbstractSet[tuple[str, str]] = frozenset()
                 ) -> dict[str, ObservedPartition]:
        """What runs, for the partitions in ``scope`` (all when None); ``adopted``
        orphans count as running their spec (a preview of the adoption)."""
        names = self.limits.keys() | self.runners.keys() | self.orphans.keys()
        out: dict[str, ObservedPartition] = {}
        for p in names if scope is None else names & scope:
            wl = {w: ObservedWorkload(r.spec_hash) for w, r in self.runners.get(p, {}).items()}
            for w, fw in self.orphans.get(p, {}).items():
                # An orphan's process is replaced, never trusted to match: it has no runner.
                wl[w] = ObservedWorkload(fw.spec_hash if (p, w) in adopted
                                         else None if fw.main_pid is None
                                         else f"orphan:{fw.spec_hash}")
            out[p] = ObservedPartition(self.limits.get(p), wl)
        return out

    def all_runners(self) -> list[Runner]:
        return [r for ws in self.runners.values() for r in ws.values()]

    # -- actions -------------------------------------------------------------------------
    async def execute(self, actions: list[Action],
                      desired: dict[str, DesiredPartition]) -> list[str]:
        """Run actions phase by phase; stops inside a phase run concurrently."""
        # Starts a cancelled converge left in flight land first: their processes are
        # the runners' before anything plans on them (or tears their groups down).
        await asyncio.gather(*self._launches)
        self._desired = desired
        errors: list[str] = []
        rt_after = rt_reserve_us(desired)
        if self.features.rt_group_sched and rt_after > self._rt_reserved:
            # Grow the prefix's RT reserve before partitions claim it, shrink it after.
            await self._grow_rt(rt_after)
        self._place()
        phases: dict[int, list[Action]] = {}
        for a in actions:
            phases.setdefault(a.phase, []).append(a)
        for phase in sorted(phases):
            starts = [a for a in phases[phase] if isinstance(a, StartWorkload |
                                                             RestartWorkload)]
            rest = [a for a in phases[phase] if a not in starts]
            results = await asyncio.gather(*(self._do(a) for a in rest),
                                           return_exceptions=True)
            done = list(zip(rest, results, strict=True))
            if starts:
                done += list(zip(starts, await self._start_all(starts), strict=True))
            for a, r in done:
                if isinstance(r, AgentError | OSError):
                    errors.append(f"{type(a).__name__} {a.partition}: {r}")
                    self.events.emit("action.failed", f"partition/{a.partition}", str(r),
                                     "error", partition=a.partition)
                elif isinstance(r, BaseException):
                    raise r
        if self.features.rt_group_sched and rt_after < self._rt_reserved:
            try:
                self.backend.reserve_rt(rt_after)
                self._rt_reserved = rt_after
            except AgentError as exc:
                # A removed group keeps its RT share until the kernel frees it; the
                # next apply shrinks the reserve again.
                log.info("RT reserve stays at %d us for now: %s", self._rt_reserved, exc)
        self._isolate_os()
        self._retain_reports()
        return errors

    async def _grow_rt(self, runtime_us: int) -> None:
        """A group removed a moment ago keeps its RT share until the kernel has freed it
        (after an RCU grace period): the reserve may be refused (EINVAL) for that long."""
        for attempt in range(RT_GROW_TRIES):
            try:
                self.backend.reserve_rt(runtime_us)
            except CgroupError as exc:
                if exc.errno != errno.EINVAL or attempt == RT_GROW_TRIES - 1:
                    raise
                await asyncio.sleep(RT_GROW_WAIT_S)
                continue
            self._rt_reserved = runtime_us
            return

    def _place(self) -> None:
        """Give the desired partitions every core they name (see CgroupBackend.place)."""
        cpus = frozenset(c for d in self._desired.values() for c in d.limits.cpus)
        if not self.backend.place(cpus):
            return
        if self.config.agent_cgroup:
            self.backend.move_self(self.platform.ops.helpers())
        present = set(self.backend.partitions())
        for p in [p for p in self.limits if p in present]:
            self.limits[p] = self.backend.read_limits(p)  # exclusive ones are not now
        reserved = sorted(cpus & frozenset(self.board.reserved.cores))
        self.events.emit("cgroup.layout", "agent",
                         f"the shared pool needs reserved core(s) {reserved}: the agent's "
                         "cgroup is no longer a cpuset partition root, so exclusive "
                         "dedicated cores are kept by placement only", "warning")

    def _isolate_os(self) -> None:
        """Keep the OS off exclusive dedicated cores (if the config asks for it)."""
        exclusive = any(d.limits.exclusive for d in self._desired.values())
        if not (exclusive and self.config.isolate_os):
            if self._os_isolated:
                self.backend.release_os()
                self._os_isolated = False
            return
        moved = self.backend.isolate_os(frozenset(self.board.reserved.cores))
        if not self._os_isolated:
            how = ("the kernel confines everything outside the agent's cpuset partition"
                   if self.backend.partitioned
                   else f"{moved} OS process(es) confined")
            self.events.emit("os.isolated", "agent",
                             f"{how} to cores {sorted(self.board.reserved.cores)}")
        self._os_isolated = True

    async def _do(self, action: Action) -> None:
        match action:
            case EnsurePartition(partition=p, limits=want):
                if p not in self.limits:
                    # A new group's error counters start at zero: count from there, so
                    # an OOM before the first accounting tick is not missed.
                    self.monitor.counters[p] = {"oom_kill": 0, "pids_max": 0}
                got = self.backend.apply_partition(p, want)
                self.limits[p] = got
                if got != want:
                    self.events.emit("partition.adjusted", f"partition/{p}",
                                     f"kernel holds {got}, asked {want}", "warning",
                                     partition=p)
            case RemovePartition(partition=p):
                self.backend.remove_partition(p)
                self.limits.pop(p, None)
                self._removed(p)
                self.events.emit("partition.removed", f"partition/{p}", "removed",
                                 partition=p)
            case StopWorkload(partition=p, workload=w, remove_group=rm):
                await self._stop(p, w)
                if rm:
                    self.backend.remove_workload(p, w)
            case StartWorkload() | RestartWorkload():
                raise AssertionError("starts go to _start_all, side by side")

    async def _start_all(self, actions: list[StartWorkload | RestartWorkload]
                         ) -> list[BaseException | None]:
        """Start the workloads side by side: every group made, then one launch for all
        (the spawner clones each before waiting for any exec). Per action: the error
        that kept its group from being made, else None (a failed launch is the
        runner's to back off from, as for any start)."""
        # An orphan group may hold stale processes; a changed spec stops the old one.
        stopped = await asyncio.gather(*(self._stop(a.partition, a.spec.name)
                                         for a in actions), return_exceptions=True)
        errors: list[BaseException | None] = []
        runners: list[Runner] = []
        for a, stop_error in zip(actions, stopped, strict=True):
            try:
                if isinstance(stop_error, BaseException):
                    raise stop_error
                runners.append(self._runner_for(a.partition, a.spec))
                errors.append(None)
            except (AgentError, OSError) as exc:
                errors.append(exc)
        async def launch() -> None:
            started = await self.platform.ops.launch_many(
                self.backend, [r.first_launch() for r in runners])
            for runner, got in zip(runners, started, strict=True):
                runner.began(got)
        # Once asked for, the processes exist: a converge cancelled meanwhile (the agent
        # stopping) must still hand each to its runner, or nothing would watch or stop it.
        task = asyncio.ensure_future(launch())
        self._launches.add(task)  # held: a shielded task must not be collected
        task.add_done_callback(self._launches.discard)
        await asyncio.shield(task)
        return errors

    def _runner_for(self, partition: str, spec: Workload) -> Runner:
        """The workload's group and its runner, not started yet."""
        self.backend.create_workload(partition, spec.name)
        want = self._desired.get(partition)
        runner = self._runner(partition, spec, want.sched(spec.name) if want else None)
        self.runners.setdefault(partition, {})[spec.name] = runner
        return runner

    async def _stop(self, partition: str, workload: str) -> None:
        runner = _pop(self.runners, partition, workload)
        if runner is not None:
            await runner.stop()
            return
        if _pop(self.orphans, partition, workload) is not None:
            await terminate_group(self.backend, partition, workload, ORPHAN_GRACE_S,
                                  self.platform.ops.kill)

    # -- health actions (the engine orders them under its lock) ---------------------------
    async def restart(self, partition: str, workload: str | None, why: str) -> None:
        """Restart one workload, or every workload of the partition (None)."""
        runners = self.runners.get(partition, {})
        chosen = list(runners.values()) if workload is None else \
            [runners[workload]] if workload in runners else []
        await asyncio.gather(*(r.restart(why) for r in chosen))

    async def stop_partition(self, partition: str) -> None:
        for r in list(self.runners.get(partition, {}).values()):
            await r.stop()

    # -- workloads' runners and report sockets ------------------------------------------
    def _runner(self, partition: str, spec: Workload, sched: SchedPolicy | None) -> Runner:
        return WorkloadRunner(partition, spec, self.backend, self.config.log_dir, self.events,
                              sched, self._report_path(partition, spec), self.platform.ops)

    def open_reports(self) -> None:
        path = self.config.report_dir
        if path is None or self.reports is not None:
            return
        try:
            self.reports = ReportHub(path, self.backend.prefix, self.monitor.on_job)
        except OSError as exc:
            self.events.emit("reports.unavailable", str(path), exc.strerror or str(exc),
                             "warning")

    def close_reports(self) -> None:
        if self.reports is not None:
            self.reports.close()
            self.reports = None

    def _report_path(self, partition: str, spec: Workload) -> str | None:
        """The workload's own report socket (host workloads: a container would not see
        the path)."""
        if self.reports is None or spec.image is not None:
            return None
        try:
            who = resolve_identity(spec.user, spec.group)
            return self.reports.open(partition, spec.name, who.uid, who.gid)
        except (LookupError, OSError) as exc:
            # The start reports a missing user itself; the workload runs without reports.
            self.events.emit("reports.unavailable", f"workload/{partition}/{spec.name}",
                             str(exc), "warning", partition=partition, workload=spec.name)
            return None

    def _retain_reports(self) -> None:
        if self.reports is not None:
            self.reports.retain({(p, w) for p, ws in self.runners.items() for w in ws})

    # -- the timekeeper ------------------------------------------------------------------
    async def start_windows(self, mission: MissionProfile) -> None:
        mode = self.windows.mode
        if mode not in {s.name for s in mission.schedules}:
            mode = None
        self._stop_stray_timekeeper()
        await self.windows.start(mission, mode)
        pidfile = self.config.run_dir / "timekeeper.pid"
        if self.windows.pid is not None:
            self.config.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            pidfile.write_text(str(self.windows.pid))
        else:
            pidfile.unlink(missing_ok=True)

    def _stop_stray_timekeeper(self) -> None:
        """A timekeeper left by a previous agent keeps enforcing until we replace it."""
        pidfile = self.config.run_dir / "timekeeper.pid"
        try:
            pid = int(pidfile.read_text())
        except (OSError, ValueError):
            return
        if pid != self.windows.pid and \
                "agent.timing.timekeeper" in self.platform.processes.cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                self.platform.ops.kill(pid, signal.SIGTERM)
        pidfile.unlink(missing_ok=True)

    # -- leaving -------------------------------------------------------------------------
    def detach(self) -> None:
        """The agent goes; the workloads and the timekeeper fly on (adopted next start)."""
        self.close_reports()
        for r in self.all_runners():
            r.detach()
        self.windows.detach()

    async def teardown(self) -> None:
        """Stop everything and remove every group under the prefix."""
        self.close_reports()
        await self.windows.stop()
        (self.config.run_dir / "timekeeper.pid").unlink(missing_ok=True)
        await self.execute(plan({}, self.observed()), {})
        self.backend.release_os()
        self.backend.remove_base(self.platform.ops.helpers())
