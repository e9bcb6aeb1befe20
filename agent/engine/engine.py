"""The engine: admit a desired mission, fit it to the board, plan against what runs and
hand the plan to the executor (the one writer), all under one lock, so plans never race;
health orders take the same lock. Process exits are the runners' own business."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from agent.cgroups import CgroupBackend, PartitionLimits
from agent.cgroups.features import KernelFeatures
from agent.engine.executor import Executor
from agent.engine.holds import HoldBook, Pending, Waiting, answer, superseded
from agent.engine.locking import WriterLock
from agent.engine.observing import FoundWorkload, observe
from agent.engine.orders import HealthOrders
from agent.engine.platform import Platform, Runner
from agent.engine.port import Decision, Outcome, Preview
from agent.engine.preflight import host_violations
from agent.engine.sampling import Sampler
from agent.engine.snapshot import SourceProbes, build_status
from agent.engine.state import StateStore, StoredMission, load_announced
from agent.errors import AgentError, StoreError, Violation
from agent.events import Event, EventLog
from agent.health import table as hm
from agent.health.monitor import HealthMonitor
from agent.health.reports import ReportHub
from agent.models import AgentConfig, HardwareProfile, MissionProfile, Partition
from agent.policy.accounting import Usage
from agent.policy.admission import admit, generation_violations
from agent.policy.deadlines import TimingEnv, analyse
from agent.policy.degraded import capacity_cause, derating, fit
from agent.policy.planning import (
    Action,
    DesiredPartition,
    changed_partitions,
    describe,
    desired_state,
    plan,
)
from agent.runtime.containers import ContainerOps
from agent.status import Flying, Origin, Status

if TYPE_CHECKING:
    from pathlib import Path

    from agent.images.store import ImageStore

log = logging.getLogger("sortie.reconcile")


def _image_store(state_dir: Path) -> ImageStore:
    from agent.images.store import store_for
    return store_for(state_dir)


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
        self.errors: list[str] = []
        self.bounds: dict[tuple[str, str], int | None] = {}
        """Each timed workload's response bound, as proven for the board as it is now."""
        self.lock = WriterLock(self.platform.monotonic)
        self._mems = ""
        self.capacity: dict[int, float] = {c: 1.0 for c in board.core_ids}
        self.memory_mib: int | None = None
        self.shed: list[str] = []
        """Partitions shed because the board lost capacity (degraded mode)."""
        self.windows = self.platform.make_windows(backend, self.events,
                                                  sorted(board.reserved.cores))
        self.monitor = HealthMonitor(self.events, self.platform.monotonic, self._table,
                                     lambda p: p in self.runners, self.order,
                                     config.saturation_periods)
        self.sampler = Sampler(backend, self.monitor, self.windows, self.platform.monotonic,
                               config.log_max_bytes)
        self.executor = Executor(config, board, backend, self.events, self.platform,
                                 self.windows, self.monitor, self.sampler.forget)
        self.orders = HealthOrders(self.lock.held, self.executor, self.events,
                                   self._switch_mode)
        self.sources = SourceProbes()
        """Status of each desired-state source (files, mqtt, kube), shown in status."""
        self.ready_after_s: float | None = None
        self.holds = HoldBook(config.state_dir)
        self.waiting = Waiting()
        """The change that waits while the board holds."""
        self._resuming: asyncio.Task[None] | None = None
        self.events.subscribe(self._on_event)

    # What runs, as the executor (its only writer) holds it.
    @property
    def limits(self) -> dict[str, PartitionLimits]:
        return self.executor.limits

    @property
    def runners(self) -> dict[str, dict[str, Runner]]:
        return self.executor.runners

    @property
    def orphans(self) -> dict[str, dict[str, FoundWorkload]]:
        return self.executor.orphans

    @property
    def reports(self) -> ReportHub | None:
        return self.executor.reports

    @property
    def features(self) -> KernelFeatures:
        return self.executor.features

    @property
    def usage(self) -> dict[str, Usage]:
        return self.sampler.usage

    def all_runners(self) -> list[Runner]:
        return self.executor.all_runners()

    # -- start-up ----------------------------------------------------------------
    async def start(self, initial: StoredMission | None = None) -> None:
        """Adopt what runs, then fly the last-known-good mission (or ``initial``)."""
        self.backend.ensure_base(frozenset(self.board.reserved.cores))
        self._mems = self.backend.board_mems()
        self.executor.features = self.backend.features()
        self.executor.open_reports()
        self.platform.ops.prepare()
        found = observe(self.backend, self.platform.processes)
        distrusted = self.holds.load(self.platform.wall())
        if distrusted is not None:
            self.events.emit("holds.corrupt", "hold/state", f"{distrusted}; holding "
                             "changes until `sortie release`", "error")
        elif self.holds.holds:
            self.events.emit("board.held", "hold/state", self.holds.reason() or "",
                             "warning")
        stored = load_announced(self.store, self.events)
        base = stored or initial
        if base is None:
            self.executor.remember(found)
            if found:
                self.events.emit("agent.safe-mode", "agent", "no mission known; leaving "
                                 f"{len(found)} existing partition(s) untouched", "warning")
            return
        violations = admit(base.mission, self.board, self.features, timing=self.timing_env())
        if violations:
            self.events.emit("state.unfit", f"mission/{base.mission.name}",
                             "; ".join(map(str, violations)), "error")
            self.executor.remember(found)
            return
        async with self.lock.held():
            self.capacity = self._read_capacity()
            flying, desired = self._fit(base.mission)
            self.executor.remember(found)
            self.executor.adopt_matching(desired)
            self.mission, self.origin, self.desired = base.mission, base.origin, desired
            await self._execute(plan(desired, self.executor.observed()))
            await self.executor.start_windows(flying)
            if stored is None:
                self._persist(base)

    # -- desired-state changes ---------------------------------------------------
    def check(self, mission: MissionProfile) -> list[Violation]:
        found = admit(mission, self.board, self.features, timing=self.timing_env())
        if self.host_checks:
            uses_images = any(w.image for p in mission.partitions for w in p.workloads)
            found += host_violations(mission, self.images if uses_images else None)
        return found + generation_violations(mission, self.mission)

    def admission_facts(self) -> dict[str, Any]:
        return {"hardware": self.board.model_dump(mode="json"),
                "kernel": asdict(self.features), "timing": asdict(self.timing_env())}

    def timing_env(self) -> TimingEnv:
        """What the deadline bounds assume on this board (docs/determinism.md)."""
        return TimingEnv(self.features.tick_us, self.config.latency_allowance_us,
                         self.config.isolate_os)

    async def submit(self, mission: MissionProfile, origin: Origin) -> Decision:
        """Admit and apply; a rejected mission changes nothing. While the board holds,
        an admitted mission waits (``held``; its ``later`` gives the final answer)."""
        async with self.lock.held():
            violations = self.check(mission)
            if violations:
                return self._rejected(mission, violations)
            if mission == self.mission:
                return Decision("unchanged", mission.name, mission.generation)
            held = self.held_by()
            if held is not None:
                return self._defer(origin.source, mission, origin, "", held)
            return await self._apply(mission, origin)

    def _rejected(self, mission: MissionProfile, violations: list[Violation]) -> Decision:
        self.events.emit("mission.rejected", f"mission/{mission.name}",
                         f"generation {mission.generation}: "
                         + "; ".join(map(str, violations)), "error")
        return Decision("rejected", mission.name, mission.generation, violations)

    async def _apply(self, mission: MissionProfile, origin: Origin) -> Decision:
        """Fly an admitted mission; the caller holds the lock."""
        self.mission, self.origin = mission, origin
        actions, errors = await self._converge(mission, always=True)
        # Saved once applied: "last known good" is what ran, and the fsync stays off
        # the path from change to running workload.
        self._persist(StoredMission(mission, origin))
        outcome: Outcome = "failed" if errors else "applied"
        self.events.emit(f"mission.{outcome}", f"mission/{mission.name}",
                         f"generation {mission.generation}: {len(actions)} action(s)"
                         + (f", {len(errors)} error(s)" if errors else ""),
                         "error" if errors else "info")
        return Decision(outcome, mission.name, mission.generation, [], errors,
                        [describe(a) for a in actions])

    async def withdraw(self, source: str, why: str) -> Decision | None:
        """Stop flying the mission if ``source`` gave it (its object was deleted): every
        partition goes, and the state says so; a change of that source still waiting
        goes too. None when the mission is not that source's. While the board holds,
        the withdrawal waits as any change does."""
        async with self.lock.held():
            self.waiting.drop(source, f"withdrawn: {why}")
            if self.mission is None or self.origin is None or self.origin.source != source:
                return None
            held = self.held_by()
            if held is not None:
                return self._defer(source, None, None, why, held)
            return await self._withdraw(source, why)

    async def _withdraw(self, source: str, why: str) -> Decision:
        assert self.mission is not None
        name, gen = self.mission.name, self.mission.generation
        await self.windows.stop()
        self.monitor.rearm(set(self.desired))
        self.mission, self.origin, self.desired, self.shed = None, None, {}, []
        actions = plan({}, self.executor.observed())
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

    # -- holds -------------------------------------------------------------------------
    @property
    def pending(self) -> Pending | None:
        """The change that waits while the board holds, if one does."""
        return self.waiting.change

    def held_by(self) -> str | None:
        """Why a change to the flying mission would wait now, None if it would not."""
        why = self.holds.reason()
        mode = self.windows.mode
        if why is None and self.mission is not None and mode in self.mission.holds:
            why = f"mission {self.mission.name!r} holds changes in mode {mode!r}"
        return why

    def _defer(self, source: str, mission: MissionProfile | None, origin: Origin | None,
               why: str, held: str) -> Decision:
        """Keep an admitted change as the one that waits (the newest wins)."""
        fut, again = self.waiting.put(source, mission, origin, why, self.platform.wall())
        flown = self.mission
        name, gen = ((mission.name, mission.generation) if mission is not None else
                     (flown.name, flown.generation) if flown is not None else ("", 0))
        if not again:
            what = f"generation {gen}" if mission is not None else f"withdrawal ({why})"
            self.events.emit("mission.held", f"mission/{name}", f"{what} waits: {held}",
                             "warning")
        return Decision("held", name, gen, reason=held, later=fut)

    async def hold(self, source: str, reason: str) -> bool:
        """Hold changes for ``source`` (an operator, the node annotation)."""
        async with self.lock.held():
            if not self.holds.set(source, reason, self.platform.wall()):
                return False
            self.events.emit("board.held", f"hold/{source}", reason, "warning")
            self._save_holds("the hold is in force until the agent restarts")
            return True

    async def release(self, source: str) -> bool:
        """End ``source``'s hold; a change waiting applies at the next safe point."""
        async with self.lock.held():
            if not self.holds.clear(source):
                return False
            self.events.emit("board.released", f"hold/{source}",
                             "still " + held if (held := self.held_by()) else
                             "changes apply again")
            self._save_holds("released now; a restart would hold again")
        self._resume_soon(at_boundary=False)
        return True

    def _save_holds(self, meaning: str) -> None:
        try:
            self.holds.save()
        except StoreError as exc:
            self.events.emit("state.unsaved", "hold/state", f"{exc}: {meaning}", "error")

    def _on_event(self, ev: Event) -> None:
        if ev.kind == "mode.switched":
            self._resume_soon(at_boundary=True)  # said at a major-frame boundary

    def _resume_soon(self, at_boundary: bool = False) -> None:
        if self.waiting.change is not None and (self._resuming is None
                                                or self._resuming.done()):
            self._resuming = asyncio.get_running_loop().create_task(
                self._resume(at_boundary), name="resume-held-change")

    async def _resume(self, at_boundary: bool) -> None:
        """Apply the pending change once nothing holds it, at a major-frame boundary
        (a mode switch is one; a release waits for the next)."""
        if not at_boundary:
            await asyncio.sleep(self.windows.until_boundary_s())
        async with self.lock.held():
            if self.waiting.change is None or self.held_by() is not None:
                return
            p = self.waiting.take()
            assert p is not None
            self.events.emit("mission.released",
                             f"mission/{p.mission.name if p.mission else ''}",
                             f"{p.source}'s change waited {self.platform.wall() - p.since:.1f} s")
            if p.mission is not None and p.origin is not None:
                violations = self.check(p.mission)  # the board may have changed
                d = self._rejected(p.mission, violations) if violations else \
                    await self._apply(p.mission, p.origin)
            elif self.origin is not None and self.origin.source == p.source:
                d = await self._withdraw(p.source, p.why)
            else:
                d = superseded(p, "the mission it withdrew no longer flies")
            answer(p, d)

    # -- capacity and degraded modes -----------------------------------------------
    def _read_capacity(self) -> dict[int, float]:
        now = self.platform.capacity()
        return {c: now.get(c, 0.0) for c in self.board.core_ids} if now else self.capacity

    def _target(self, mission: MissionProfile) -> tuple[
            MissionProfile, list[str], list[Violation], dict[str, DesiredPartition]]:
        """What flying ``mission`` means on the board now (pure): the part that fits
        its capacity, the partitions shed and why, and their desired cgroup state."""
        kept, shed, why = fit(mission, self.board, self.capacity, self.features,
                              self.memory_mib, self.timing_env())
        return kept, shed, why, desired_state(kept, self.board, self._mems)

    def _fit(self, mission: MissionProfile) -> tuple[MissionProfile,
                                                    dict[str, DesiredPartition]]:
        """``_target``, with an event for every partition shed or restored."""
        kept, shed, why, desired = self._target(mission)
        self.bounds = {(b.partition, b.workload): b.response_bound_us for b in
                       analyse(kept, self.board, self.timing_env(), derating(self.capacity))}
        cause = capacity_cause(self.capacity, self.memory_mib)
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
        async with self.lock.held():
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
        self.executor.adopt_matching(desired)
        actions = plan(desired, self.executor.observed(scope), scope)
        # Windows pause while partitions change: frozen tasks cannot be stopped.
        await self.windows.stop()
        self.monitor.rearm(set(self.desired) | set(desired) if scope is None else scope)
        self.desired = desired
        errors = await self._execute(actions)
        await self.executor.start_windows(flying)
        return actions, errors

    def _scope(self, desired: dict[str, DesiredPartition]) -> set[str] | None:
        """The partitions a change to ``desired`` touches. From nothing desired (safe
        mode, a withdrawal) everything is reconciled, as flying a mission at start does:
        groups no mission names are removed."""
        return None if not self.desired else changed_partitions(self.desired, desired)

    async def switch_mode(self, mode: str) -> str:
        """Switch the window schedule at the next major-frame boundary."""
        async with self.lock.held():
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
        """Take a health monitor's decided action (carried out under the lock)."""
        self.orders.order(o)

    async def settle_health(self) -> None:
        await self.orders.settle()

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
        observed = self.executor.observed(scope, adopted=self.executor.adoptable(desired))
        return Preview([], plan(desired, observed, scope), shed)

    def inspect(self) -> None:
        """Read what runs, changing nothing (``sortie plan`` with no agent running): the
        engine then stands where a freshly started agent without a mission stands."""
        self._mems = self.backend.board_mems()
        self.executor.features = self.backend.features()
        self.capacity, self.memory_mib = self._read_capacity(), self.platform.memory_mib()
        self.executor.remember(observe(self.backend, self.platform.processes))

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

    async def _execute(self, actions: list[Action]) -> list[str]:
        """Hand the actions to the one writer; the caller holds the lock."""
        self.errors = await self.executor.execute(actions, self.desired)
        return self.errors

    async def shutdown(self, teardown: bool) -> None:
        """Leave workloads running (default), or stop them and remove every cgroup."""
        await self.settle_health()  # they take the lock: wait before holding it
        if self._resuming is not None:
            self._resuming.cancel()
        if (p := self.waiting.take()) is not None:
            answer(p, superseded(p, "the agent stopped"))
        async with self.lock.held():
            if not teardown:
                self.executor.detach()
                return
            self.desired = {}
            await self.executor.teardown()
            self.events.emit("agent.teardown", "agent", "all partitions removed")

    # -- accounting --------------------------------------------------------------
    def sample(self) -> None:
        """Turn cgroup counters into per-partition usage since the last sample."""
        self.sampler.sample(self.desired, self.limits, self.all_runners())

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
