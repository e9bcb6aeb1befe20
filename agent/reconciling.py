"""The reconcile engine: admit a desired mission, plan against what runs, execute.

One sequential worker (a lock) applies changes, so plans never race. Process exits are
handled by each workload's runner; the engine only acts on desired-state changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import health as hm
from agent.accounting import Usage, usage_between
from agent.admission import KernelFeatures, admit
from agent.cgroups import CgroupBackend, CpuSample, PartitionLimits
from agent.degraded import fit
from agent.errors import AgentError, StoreError, Violation
from agent.events import EventLog
from agent.models import AgentConfig, HardwareProfile, MissionProfile, Partition, Workload
from agent.monitoring import HealthMonitor
from agent.observing import FoundPartition, FoundWorkload, observe
from agent.planning import (
    Action,
    DesiredPartition,
    EnsurePartition,
    ObservedPartition,
    ObservedWorkload,
    RemovePartition,
    RestartWorkload,
    StartWorkload,
    StopWorkload,
    changed_partitions,
    describe,
    desired_state,
    plan,
    workload_hash,
)
from agent.platform import Platform, Runner
from agent.port import Decision, Outcome
from agent.preflight import host_violations
from agent.reporting import ReportHub
from agent.runtime.containers import ContainerOps
from agent.runtime.identity import resolve_identity
from agent.snapshot import SourceProbes, build_status
from agent.status import Flying, Origin, Status

if TYPE_CHECKING:
    from agent.images.store import ImageStore
from agent.runtime.logs import rotate_if_large
from agent.runtime.stopping import terminate_group
from agent.runtime.supervisor import WorkloadRunner
from agent.store import StateStore, StoredMission
from agent.timing.sched import SchedPolicy

log = logging.getLogger("sortie.reconcile")

# Grace for groups nobody manages any more (their spec is unknown).
ORPHAN_GRACE_S = 5.0

def _pop(index: dict[str, dict[str, Any]], partition: str, workload: str) -> Any:
    """Remove one entry of a per-partition index, dropping emptied partitions."""
    inner = index.get(partition)
    if inner is None:
        return None
    item = inner.pop(workload, None)
    if not inner:
        del index[partition]
    return item


def _image_store(state_dir: Path) -> ImageStore:
    from agent.images.store import store_for
    return store_for(state_dir)


def rt_reserve_us(desired: dict[str, DesiredPartition]) -> int:
    """RT runtime per 1 s the prefix must hold: the sum of its partitions' ratios."""
    ratio = sum(d.limits.rt_runtime_us / d.limits.rt_period_us for d in desired.values()
                if d.limits.rt_runtime_us)
    # Round up, plus 1 us: the kernel compares fixed-point ratios.
    return 0 if ratio == 0 else min(1_000_000, int(ratio * 1_000_000) + 1)


@dataclass(frozen=True)
class Preview:
    """What a submit would do: refusals, or the actions and the partitions it sheds."""

    violations: list[Violation]
    actions: list[Action]
    shed: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The local API's answer to ``plan`` (and ``sortie plan``'s offline answer)."""
        return {"violations": [{"path": v.path, "reason": v.reason}
                               for v in self.violations],
                "actions": [describe(a) for a in self.actions], "shed": self.shed}


def generation_violations(new: MissionProfile, current: MissionProfile | None) -> list[Violation]:
    """Never go back in time: a mission name's generation only increases. Pure."""
    if current is None or current.name != new.name:
        return []
    if new.generation < current.generation:
        return [Violation("generation", f"{new.generation} is older than the running "
                                         f"generation {current.generation}")]
    if new.generation == current.generation and new != current:
        return [Violation("generation", f"generation {new.generation} is already running with "
                                         "different content; raise the generation to change it")]
    return []


class Engine:
    """Owns the partitions and workloads under the agent's cgroup prefix."""

    def __init__(self, config: AgentConfig, board: HardwareProfile, backend: CgroupBackend,
                 store: StateStore, events: EventLog | None = None,
                 host_checks: bool = True, platform: Platform | None = None) -> None:
        self.platform = platform or Platform(ops=ContainerOps(
            lambda: _image_store(config.state_dir), config.run_dir))
        self.config = config
        self.board = board
        self.backend = backend
        self.store = store
        self.events = events or EventLog(clock=self.platform.wall)
        self.host_checks = host_checks
        self.mission: MissionProfile | None = None
        self.origin: Origin | None = None
        self.desired: dict[str, DesiredPartition] = {}
        self.limits: dict[str, PartitionLimits] = {}
        # Indexed by partition, so one change touches only its partitions' entries.
        self.runners: dict[str, dict[str, Runner]] = {}
        self.orphans: dict[str, dict[str, FoundWorkload]] = {}
        """Workload groups found at start that no runner manages (yet)."""
        self.usage: dict[str, Usage] = {}
        self.errors: list[str] = []
        self._samples: dict[str, tuple[float, CpuSample]] = {}
        self._lock = asyncio.Lock()
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._mems = ""
        self.features = KernelFeatures()
        self.capacity: dict[int, float] = {c: 1.0 for c in board.core_ids}
        self.memory_mib: int | None = None
        self.shed: list[str] = []
        """Partitions shed because the board lost capacity (degraded mode)."""
        self._rt_reserved = 0
        """RT runtime per second the prefix holds now (grown before, shrunk after)."""
        self._os_isolated = False
        self.windows = self.platform.make_windows(backend, self.events,
                                                  sorted(board.reserved.cores))
        self.monitor = HealthMonitor(self.events, self.platform.monotonic, self._table,
                                     lambda p: p in self.runners, self.order,
                                     config.saturation_periods)
        self.reports: ReportHub | None = None
        self.sources = SourceProbes()
        """Status of each desired-state source (files, mqtt, kube), shown in status."""
        self.ready_after_s: float | None = None

    # -- start-up ----------------------------------------------------------------
    async def start(self, initial: StoredMission | None = None) -> None:
        """Adopt what runs, then fly the last-known-good mission (or ``initial``)."""
        self.backend.ensure_base(frozenset(self.board.reserved.cores))
        self._mems = self.backend.board_mems()
        self.features = self.backend.features()
        self._open_reports()
        found = observe(self.backend, self.platform.processes)
        stored = self.store.load()
        if stored is None and self.store.path.exists() and self.store.withdrawn is None:
            self.events.emit("state.corrupt", str(self.store.path),
                             "no trustworthy state copy; flying the configured mission",
                             "error")
        if stored is not None:
            self.events.emit("state.recovered" if stored.recovered else "state.loaded",
                             f"mission/{stored.mission.name}",
                             f"last-known-good generation {stored.mission.generation}"
                             + (" from the previous copy: the current one was corrupt"
                                if stored.recovered else ""),
                             "warning" if stored.recovered else "info")
        base = stored or initial
        if base is None:
            self._remember(found, {})
            if found:
                self.events.emit("agent.safe-mode", "agent", "no mission known; leaving "
                                 f"{len(found)} existing partition(s) untouched", "warning")
            return
        violations = admit(base.mission, self.board, self.features)
        if violations:
            self.events.emit("state.unfit", f"mission/{base.mission.name}",
                             "; ".join(map(str, violations)), "error")
            self._remember(found, {})
            return
        async with self._lock:
            self.capacity = self._read_capacity()
            flying, desired = self._fit(base.mission)
            self._remember(found, desired)
            self.mission, self.origin, self.desired = base.mission, base.origin, desired
            await self._execute(plan(desired, self._observed()))
            await self._start_windows(flying)
            if stored is None:
                self._persist(base)

    def _remember(self, found: dict[str, FoundPartition],
                  desired: dict[str, DesiredPartition]) -> None:
        """Record what exists; adopt processes whose spec matches the desired one."""
        for p, fp in found.items():
            if fp.limits is not None:
                self.limits[p] = fp.limits
            for w, fw in fp.workloads.items():
                self.orphans.setdefault(p, {})[w] = fw
        self._adopt_matching(desired)

    def _adoptable(self, desired: dict[str, DesiredPartition]) -> set[tuple[str, str]]:
        """Orphans running exactly the desired spec: adopted, not restarted."""
        out = set()
        for p, found in self.orphans.items():
            want = desired.get(p)
            for w, fw in found.items():
                spec = want.workloads.get(w) if want else None
                if want is not None and spec is not None and fw.main_pid is not None \
                        and fw.spec_hash == workload_hash(spec, want.sched):
                    out.add((p, w))
        return out

    def _adopt_matching(self, desired: dict[str, DesiredPartition]) -> None:
        for p, w in sorted(self._adoptable(desired)):
            want = desired[p]
            fw = self.orphans[p].pop(w)
            assert fw.main_pid is not None  # _adoptable checked
            runner = self._runner(p, want.workloads[w], want.sched)
            runner.adopt(fw.main_pid)
            self.runners.setdefault(p, {})[w] = runner
            if not self.orphans[p]:
                del self.orphans[p]

    # -- desired-state changes ---------------------------------------------------
    def check(self, mission: MissionProfile) -> list[Violation]:
        found = admit(mission, self.board, self.features)
        if self.host_checks:
            uses_images = any(w.image for p in mission.partitions for w in p.workloads)
            found += host_violations(mission, self.images if uses_images else None)
        return found + generation_violations(mission, self.mission)

    async def submit(self, mission: MissionProfile, origin: Origin) -> Decision:
        """Admit and apply; a rejected mission changes nothing."""
        async with self._lock:
            subject = f"mission/{mission.name}"
            violations = self.check(mission)
            if violations:
                self.events.emit("mission.rejected", subject,
                                 f"generation {mission.generation}: "
                                 + "; ".join(map(str, violations)), "error")
                return Decision("rejected", mission.name, mission.generation, violations)
            if mission == self.mission:
                return Decision("unchanged", mission.name, mission.generation)
            self.mission, self.origin = mission, origin
            actions, errors = await self._converge(mission, always=True)
            # Saved once applied: "last known good" is what ran, and the fsync stays off
            # the path from change to running workload.
            self._persist(StoredMission(mission, origin))
            outcome: Outcome = "failed" if errors else "applied"
            self.events.emit(f"mission.{outcome}", subject,
                             f"generation {mission.generation}: {len(actions)} action(s)"
                             + (f", {len(errors)} error(s)" if errors else ""),
                             "error" if errors else "info")
            return Decision(outcome, mission.name, mission.generation, [], errors,
                            [describe(a) for a in actions])

    async def withdraw(self, source: str, why: str) -> Decision | None:
        """Stop flying the mission if ``source`` gave it (its object was deleted): every
        partition goes, and the state says so. None when the mission is not that
        source's."""
        async with self._lock:
            if self.mission is None or self.origin is None or self.origin.source != source:
                return None
            name, gen = self.mission.name, self.mission.generation
            await self.windows.stop()
            self.monitor.rearm(set(self.desired))
            self.mission, self.origin, self.desired, self.shed = None, None, {}, []
            actions = plan({}, self._observed())
            errors = await self._execute(actions)
            try:
                self.store.save_withdrawn({"source": source, "mission": name,
                                           "generation": gen, "why": why,
                                           "at": self.platform.wall()})
            except StoreError as exc:
                self.events.emit("state.unsaved", f"mission/{name}", str(exc), "error")
            self.events.emit("mission.withdrawn", f"mission/{name}",
                             f"generation {gen}: {why}; {len(actions)} action(s)"
                             + (f", {len(errors)} error(s)" if errors else ""),
                             "error" if errors else "info")
            return Decision("failed" if errors else "applied", name, gen, [], errors,
                            [describe(a) for a in actions])

    # -- capacity and degraded modes -----------------------------------------------
    def _read_capacity(self) -> dict[int, float]:
        now = self.platform.capacity()
        return {c: now.get(c, 0.0) for c in self.board.core_ids} if now else self.capacity

    def _target(self, mission: MissionProfile) -> tuple[
            MissionProfile, list[str], list[Violation], dict[str, DesiredPartition]]:
        """What flying ``mission`` means on the board now (pure): the part that fits
        its capacity, the partitions shed and why, and their desired cgroup state."""
        kept, shed, why = fit(mission, self.board, self.capacity, self.features,
                              self.memory_mib)
        return kept, shed, why, desired_state(kept, self.board, self._mems)

    def _fit(self, mission: MissionProfile) -> tuple[MissionProfile,
                                                    dict[str, DesiredPartition]]:
        """``_target``, with an event for every partition shed or restored."""
        kept, shed, why, desired = self._target(mission)
        lost = [c for c, f in sorted(self.capacity.items()) if f == 0]
        mem = f"memory {self.memory_mib} MiB" if self.memory_mib is not None else ""
        slow = {c: f for c, f in sorted(self.capacity.items()) if 0 < f < 1}
        cause = "; ".join(x for x in (f"cores offline {lost}" if lost else "",
                                      f"cores derated {slow}" if slow else "", mem) if x)
        for p in shed:
            if p not in self.shed:
                crit = next(x.criticality for x in mission.partitions if x.name == p)
                self.events.emit("degraded.shed", f"partition/{p}",
                                 f"DAL {crit} shed: {cause or 'capacity lost'}; "
                                 f"{why[0] if why else ''}", "warning")
        for p in self.shed:
            if p not in shed and mission.partition(p) is not None:
                self.events.emit("degraded.restored", f"partition/{p}",
                                 "capacity returned; partition restored")
        self.shed = shed
        return kept, desired

    async def check_capacity(self) -> None:
        """Re-fit the mission when the board's capacity changed (hotplug, throttling,
        memory pressure)."""
        now, mem = self._read_capacity(), self.platform.memory_mib()
        if now == self.capacity and mem == self.memory_mib:
            return
        async with self._lock:
            self.events.emit("board.capacity", "board", f"capacity per core now {now}"
                             + (f", memory {mem} MiB" if mem is not None else ""),
                             "warning" if any(f < 1 for f in now.values()) or mem is not None
                             else "info")
            self.capacity, self.memory_mib = now, mem
            if self.mission is None:
                return
            await self._converge(self.mission, always=False)

    async def _converge(self, mission: MissionProfile,
                        always: bool) -> tuple[list[Action], list[str]]:
        """Take partitions and workloads to ``mission``, as far as the board allows now,
        touching only what changed. The caller holds the lock. ``always``: restart the
        windows even when no partition changed (the schedules may have)."""
        flying, desired = self._fit(mission)
        scope = self._scope(desired)
        if scope is not None and not scope and not always:
            return [], []
        self._adopt_matching(desired)
        actions = plan(desired, self._observed(scope), scope)
        # Windows pause while partitions change: frozen tasks cannot be stopped.
        await self.windows.stop()
        self.monitor.rearm(set(self.desired) | set(desired) if scope is None else scope)
        self.desired = desired
        errors = await self._execute(actions)
        await self._start_windows(flying)
        return actions, errors

    def _scope(self, desired: dict[str, DesiredPartition]) -> set[str] | None:
        """The partitions a change to ``desired`` touches. From nothing desired (safe
        mode, a withdrawal) everything is reconciled, as flying a mission at start does:
        groups no mission names are removed."""
        return None if not self.desired else changed_partitions(self.desired, desired)

    def _open_reports(self) -> None:
        path = self.config.report_dir
        if path is None or self.reports is not None:
            return
        try:
            self.reports = ReportHub(path, self.backend.prefix, self.monitor.on_job)
        except OSError as exc:
            self.events.emit("reports.unavailable", str(path), exc.strerror or str(exc),
                             "warning")

    def _close_reports(self) -> None:
        if self.reports is not None:
            self.reports.close()
            self.reports = None

    async def _start_windows(self, mission: MissionProfile) -> None:
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

    async def switch_mode(self, mode: str) -> str:
        """Switch the window schedule at the next major-frame boundary."""
        async with self._lock:
            return self._switch_mode(mode)

    def _switch_mode(self, mode: str) -> str:
        if self.mission is None:
            raise AgentError("no mission is flying")
        self.windows.switch(self.mission, mode)
        self.events.emit("mode.requested", f"schedule/{mode}",
                         "switch at the next major-frame boundary")
        return mode

    # -- health actions: carried out here, under the lock, one at a time -------------
    def order(self, o: hm.HealthOrder) -> None:
        """Take a health monitor's decided action; it runs under the engine's lock, in
        the order given (the lock is fair), never beside an apply."""
        task = asyncio.get_running_loop().create_task(
            self._carry_out(o), name=f"health {o.action} {o.partition}")
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _carry_out(self, o: hm.HealthOrder) -> None:
        try:
            async with self._lock:
                await self._health_action(o)
        except (AgentError, OSError) as exc:
            self.events.emit("health.action-failed", f"partition/{o.partition}",
                             f"{o.action} for {o.kind}: {exc}", "error")
        except Exception as exc:
            self.events.internal_error("health", f"carrying out {o.action} for {o.kind}",
                                       exc)

    async def _health_action(self, o: hm.HealthOrder) -> None:
        runners = self.runners.get(o.partition, {})
        match o.action:
            case hm.RestartWorkload():
                if o.workload in runners:
                    await runners[o.workload].restart(f"health monitor: {o.kind}")
            case hm.RestartPartition():
                await asyncio.gather(*(r.restart(f"health monitor: {o.kind}")
                                       for r in list(runners.values())))
            case hm.StopPartition():
                for r in list(runners.values()):
                    await r.stop()
                self.events.emit("partition.stopped", f"partition/{o.partition}",
                                 f"stopped by the health monitor ({o.kind}); a new mission "
                                 "generation starts it again", "warning")
            case hm.SwitchMode(mode=mode):
                self._switch_mode(mode)
            case _:
                pass  # Ignore and Log never reach here: the event is their action

    async def settle_health(self) -> None:
        """Wait for health actions under way (shutdown, the simulator, tests)."""
        while self._health_tasks:
            await asyncio.gather(*self._health_tasks, return_exceptions=True)

    def preview(self, mission: MissionProfile) -> Preview:
        """What ``submit`` would do, without doing it: the same admission, degraded fit,
        scope and adoption (``_converge``'s steps, minus their effects)."""
        violations = self.check(mission)
        if violations:
            return Preview(violations, [], [])
        if mission == self.mission:
            return Preview([], [], list(self.shed))
        _, shed, _, desired = self._target(mission)
        scope = self._scope(desired)
        observed = self._observed(scope, adopted=self._adoptable(desired))
        return Preview([], plan(desired, observed, scope), shed)

    def inspect(self) -> None:
        """Read what runs, changing nothing (``sortie plan`` with no agent running): the
        engine then stands where a freshly started agent without a mission stands."""
        self._mems = self.backend.board_mems()
        self.features = self.backend.features()
        self.capacity, self.memory_mib = self._read_capacity(), self.platform.memory_mib()
        self._remember(observe(self.backend, self.platform.processes), {})

    def _persist(self, stored: StoredMission) -> None:
        origin = replace(stored.origin, admitted_at=self.platform.wall())
        try:
            self.store.save(StoredMission(stored.mission, origin))
        except StoreError as exc:
            # Flying the admitted mission beats refusing it; a reboot falls back further.
            self.events.emit("state.unsaved", f"mission/{stored.mission.name}", str(exc),
                             "error")

    # -- observe / execute -------------------------------------------------------
    @property
    def images(self) -> ImageStore | None:
        """The container image store, when this engine runs containers."""
        ops = self.platform.ops
        return ops.images if isinstance(ops, ContainerOps) else None

    def _runner(self, partition: str, spec: Workload, sched: SchedPolicy | None) -> Runner:
        return WorkloadRunner(partition, spec, self.backend, self.config.log_dir, self.events,
                              sched, self._report_path(partition, spec), self.platform.ops)

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
                             str(exc), "warning")
            return None

    def _retain_reports(self) -> None:
        if self.reports is not None:
            self.reports.retain({(p, w) for p, ws in self.runners.items() for w in ws})

    def all_runners(self) -> list[Runner]:
        return [r for ws in self.runners.values() for r in ws.values()]

    def _observed(self, scope: set[str] | None = None,
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

    async def _execute(self, actions: list[Action]) -> list[str]:
        """Run actions phase by phase; stops inside a phase run concurrently."""
        errors: list[str] = []
        rt_after = rt_reserve_us(self.desired)
        if self.features.rt_group_sched and rt_after > self._rt_reserved:
            # Grow the prefix's RT reserve before partitions claim it, shrink it after.
            self.backend.reserve_rt(rt_after)
            self._rt_reserved = rt_after
        self._place()
        phases: dict[int, list[Action]] = {}
        for a in actions:
            phases.setdefault(a.phase, []).append(a)
        for phase in sorted(phases):
            results = await asyncio.gather(*(self._do(a) for a in phases[phase]),
                                           return_exceptions=True)
            for a, r in zip(phases[phase], results, strict=True):
                if isinstance(r, AgentError | OSError):
                    errors.append(f"{type(a).__name__} {a.partition}: {r}")
                    self.events.emit("action.failed", f"partition/{a.partition}", str(r), "error")
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
        self.errors = errors
        return errors

    def _place(self) -> None:
        """Give the desired partitions every core they name (see CgroupBackend.place)."""
        cpus = frozenset(c for d in self.desired.values() for c in d.limits.cpus)
        if not self.backend.place(cpus):
            return
        if self.config.agent_cgroup:
            self.backend.move_self()
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
        exclusive = any(d.limits.exclusive for d in self.desired.values())
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
                                     f"kernel holds {got}, asked {want}", "warning")
            case RemovePartition(partition=p):
                self.backend.remove_partition(p)
                self.limits.pop(p, None)
                self._samples.pop(p, None)
                self.usage.pop(p, None)
                self.events.emit("partition.removed", f"partition/{p}", "removed")
            case StopWorkload(partition=p, workload=w, remove_group=rm):
                await self._stop(p, w)
                if rm:
                    self.backend.remove_workload(p, w)
            case StartWorkload(partition=p, spec=spec):
                await self._stop(p, spec.name)  # an orphan group may hold stale processes
                self._start(p, spec)
            case RestartWorkload(partition=p, spec=spec):
                await self._stop(p, spec.name)
                self._start(p, spec)

    def _start(self, partition: str, spec: Any) -> None:
        self.backend.create_workload(partition, spec.name)
        want = self.desired.get(partition)
        runner = self._runner(partition, spec, want.sched if want else None)
        self.runners.setdefault(partition, {})[spec.name] = runner
        runner.start()

    async def _stop(self, partition: str, workload: str) -> None:
        runner = _pop(self.runners, partition, workload)
        if runner is not None:
            await runner.stop()
            return
        if _pop(self.orphans, partition, workload) is not None:
            await terminate_group(self.backend, partition, workload, ORPHAN_GRACE_S,
                                  self.platform.ops.kill)

    async def shutdown(self, teardown: bool) -> None:
        """Leave workloads running (default), or stop them and remove every cgroup."""
        await self.settle_health()  # they take the lock: wait before holding it
        async with self._lock:
            self._close_reports()
            if not teardown:
                for r in self.all_runners():
                    r.detach()
                self.windows.detach()
                return
            await self.windows.stop()
            (self.config.run_dir / "timekeeper.pid").unlink(missing_ok=True)
            self.desired = {}
            await self._execute(plan({}, self._observed()))
            self.backend.release_os()
            self.backend.remove_base()
            self.events.emit("agent.teardown", "agent", "all partitions removed")

    # -- accounting --------------------------------------------------------------
    def sample(self) -> None:
        """Turn cgroup counters into per-partition usage since the last sample."""
        now = self.platform.monotonic()
        for p, want in self.desired.items():
            if p not in self.limits:
                continue
            try:
                cur = self.backend.cpu_sample(p)
            except AgentError as exc:
                log.warning("cannot sample %s: %s", p, exc)
                continue
            prev = self._samples.get(p)
            self._samples[p] = (now, cur)
            if prev is not None and now > prev[0]:
                lim = want.limits
                self.usage[p] = usage_between(prev[1], cur, now - prev[0],
                                              lim.quota_us / lim.period_us)
                self.monitor.on_usage(p, self.usage[p])
            try:
                self.monitor.on_counters(p, self.backend.counters(p))
            except AgentError as exc:
                log.warning("cannot read counters of %s: %s", p, exc)
            win = self.windows.stats.get(p)
            if win is not None:
                self.monitor.on_windows(p, win.outside_ns)
        self.monitor.check_silence()
        for r in self.all_runners():
            rotate_if_large(r.log_file, self.config.log_max_bytes)

    async def account_forever(self) -> None:
        period = self.config.accounting_period_ms / 1000.0
        while True:
            self.sample()
            await self.check_capacity()
            await asyncio.sleep(period)

    # -- status ------------------------------------------------------------------
    def _table(self, partition: str) -> Partition | None:
        """The flying partition's spec (its health table), for the monitor."""
        return self.mission.partition(partition) if self.mission else None

    def flying(self) -> Flying | None:
        """What flies, cheap: sources ask on every event."""
        if self.mission is None or self.origin is None:
            return None
        return Flying(self.mission.name, self.mission.generation, self.origin,
                      tuple(self.shed))

    def snapshot(self) -> Status:
        return build_status(self)
