"""Run the real agent engine against a simulated board and report what happened."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cgroups.v2 import V2Backend
from agent.engine.engine import Engine
from agent.engine.platform import Platform
from agent.engine.state import StateStore, StoredMission
from agent.events import Event, EventLog
from agent.models import AgentConfig, HardwareProfile, MissionProfile, load_file
from agent.models.config import MqttConfig
from agent.sources.kube import objects as ko
from agent.sources.ledger import GenerationLedger
from agent.sources.mqtt import MqttLink
from agent.sources.signing import public_text, seal
from agent.status import Origin
from simulator.clock import VirtualTimeLoop
from simulator.cpu import SimBoard
from simulator.platform import SimOps, SimProcesses, SimWindows
from simulator.scenario import Fault, Push, Scenario

ROOT = Path("/sim/cgroup")
PREFIX = "sortie"
WALL_EPOCH = 1_800_000_000.0  # a fixed wall clock: the same seed gives the same trace


@dataclass
class SimResult:
    scenario: str
    board: str
    duration_s: float
    wall_s: float
    trace: list[tuple[float, str, str, str]]
    """(simulated time, event kind, subject, message) for every event, in order."""
    partitions: dict[str, dict[str, Any]]
    usage: dict[str, list[tuple[float, float, float]]]
    """Per partition: (time, share, budget share) at each accounting period."""
    cores: dict[int, list[list[Any]]]
    """Per core: [start_s, end_s, partition] spans of who ran."""
    marks: list[tuple[float, str]] = field(default_factory=list)
    """Faults, mode switches and sheds, for the timeline picture."""
    throttling: dict[str, list[tuple[float, int, int, float]]] = field(default_factory=dict)
    """Per partition: (time, periods, throttled periods, throttled seconds) in each
    accounting period, as the agent read them from cpu.stat."""

    @property
    def speedup(self) -> float:
        return self.duration_s / self.wall_s if self.wall_s > 0 else float("inf")


class _Sim:
    def __init__(self, sc: Scenario, mission: MissionProfile, hw: HardwareProfile,
                 workdir: Path) -> None:
        self.sc, self.mission, self.hw = sc, mission, hw
        self.board = SimBoard(hw, ROOT, seed=sc.seed, slice_us=sc.slice_ms * 1000)
        self.backend = V2Backend(ROOT, PREFIX, self.board.fs)
        self.config = AgentConfig(
            node_name="sim", state_dir=workdir / "state", run_dir=workdir / "run",
            log_dir=workdir / "logs", cgroup_root=ROOT, cgroup_prefix=PREFIX,
            cgroup_version="v2", agent_cgroup=False, isolate_os=False, report_dir=None,
            accounting_period_ms=sc.accounting_period_ms)
        self.jump = 0.0
        self.link_up = True
        self.kube_up = True
        self.cluster: dict[str, tuple[MissionProfile, str]] = {}
        """MissionProfiles in the simulated cluster: the mission and its creationTimestamp."""
        self.held: list[bytes] = []
        """Signed pushes the broker holds while the board's link is down."""
        self.jobs: dict[str, list[int]] = {}
        self.memory: int | None = None
        self.trace: list[tuple[float, str, str, str]] = []
        self.marks: list[tuple[float, str]] = []
        self.usage: dict[str, list[tuple[float, float, float]]] = {}
        self.throttling: dict[str, list[tuple[float, int, int, float]]] = {}
        self.cores: dict[int, list[list[Any]]] = {c.id: [] for c in hw.cores}
        self.ops = SimOps(self.board, dict(sc.workloads))
        self.events = EventLog(capacity=512, clock=self.wall)
        self.events.subscribe(self._on_event)
        self.engine = self._engine()
        # The board's real MQTT handler (signature, ledger, answers), fed by a planner key
        # of the simulation's own; only the broker is simulated.
        self.planner = Ed25519PrivateKey.generate()
        self.link = MqttLink(MqttConfig(url="mqtt://sim:1883", trusted_keys={
            "sim-planner": public_text(self.planner.public_key())}), "sim", self.engine,
            GenerationLedger(self.config.state_dir))
        self._tasks: list[asyncio.Task[None]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._done = asyncio.Event()
        self.failure: BaseException | None = None

    def wall(self) -> float:
        return WALL_EPOCH + asyncio.get_running_loop().time() + self.jump

    def _engine(self) -> Engine:
        loop_time = lambda: asyncio.get_running_loop().time()  # noqa: E731
        platform = Platform(monotonic=loop_time, wall=self.wall,
                            processes=SimProcesses(self.board), ops=self.ops,
                            make_windows=SimWindows, capacity=lambda: dict(self.board.capacity),
                            memory_mib=lambda: self.memory)
        engine = Engine(self.config, self.hw, self.backend, StateStore(self.config.state_dir),
                        self.events, host_checks=False, platform=platform)
        self.ops.job_sink = self._job
        return engine

    def _job(self, partition: str, workload: str, response_us: int, deadline_us: int) -> None:
        # Counted here too: an agent restart starts its own counters from zero.
        n = self.jobs.setdefault(partition, [0, 0])
        n[0] += 1
        n[1] += response_us > deadline_us
        self.engine.monitor.on_job(partition, workload, response_us, deadline_us)

    def _on_event(self, ev: Event) -> None:
        t = asyncio.get_running_loop().time()
        self.trace.append((round(t, 6), ev.kind, ev.subject, ev.message))
        if ev.kind.startswith(("degraded.", "mode.switched", "health.", "sim.")):
            self.marks.append((t, f"{ev.kind} {ev.subject.split('/')[-1]}"))

    # -- driving -------------------------------------------------------------------
    MAX_SKIP_S = 0.5

    def _tick(self) -> None:
        """CPU-model slices, then sleep until the model next has something to do (a job
        release, a period refill) or something changes (a kick). While nothing else
        could run in between, consecutive slices run here without a loop round trip."""
        loop = asyncio.get_running_loop()
        self._handle = None
        slice_s = self.board.slice_us / 1e6
        virtual = isinstance(loop, VirtualTimeLoop)
        while True:
            now = loop.time()
            self.board.now_us = round(now * 1e6, 3)  # to the ns: no float noise in "due yet?"
            try:
                wake_us = self.board.step()
            except Exception as exc:  # a model bug must end the run, not freeze the board
                self.failure = exc
                self._done.set()
                return
            self._record(now, now + slice_s)
            nxt = max(now + slice_s, min(wake_us / 1e6, now + self.MAX_SKIP_S))
            # Stay on the slice grid so runs with the same inputs take the same steps.
            nxt = round(nxt / slice_s) * slice_s if nxt > now + slice_s else now + slice_s
            quiet = loop.quiet_until() if virtual else now  # type: ignore[attr-defined]
            if nxt < quiet - 1e-12:
                loop.advance_to(nxt)  # type: ignore[attr-defined]
                continue
            self._handle = loop.call_at(nxt, self._tick)
            return

    def _kick(self) -> None:
        """A freeze, a limit or the capacity changed: run the next slice at once."""
        if self._handle is None:
            return
        loop = asyncio.get_running_loop()
        slice_s = self.board.slice_us / 1e6
        soon = (int(loop.time() / slice_s + 1e-9) + 1) * slice_s
        if self._handle.when() > soon + 1e-12:
            self._handle.cancel()
            self._handle = loop.call_at(soon, self._tick)

    def _record(self, t: float, end: float) -> None:
        for c, who in self.board.ran.items():
            spans = self.cores[c]
            if spans and spans[-1][2] == who and abs(spans[-1][1] - t) < 1e-9:
                spans[-1][1] = end
            else:
                spans.append([t, end, who])

    async def accounting(self) -> None:
        loop = asyncio.get_running_loop()
        period = self.config.accounting_period_ms / 1000
        while True:
            await asyncio.sleep(period)
            self.engine.sample()
            await self.engine.check_capacity()
            for p, u in self.engine.usage.items():
                self.usage.setdefault(p, []).append((loop.time(), u.share, u.budget_share))
                self.throttling.setdefault(p, []).append(
                    (loop.time(), u.periods, u.throttled_periods, u.throttled_s))

    async def fault(self, f: Fault) -> None:
        self.events.emit(f"sim.{f.kind}", "board", f.model_dump_json(exclude_defaults=True),
                         "warning")
        b = self.board
        match f.kind:
            case "core-offline":
                for c in f.cores:
                    b.set_capacity(c, 0.0)
            case "core-online":
                for c in f.cores:
                    b.set_capacity(c, 1.0)
            case "thermal":
                for c in f.cores:
                    b.set_capacity(c, f.factor)
            case "memory-pressure":
                self.memory = None if f.mib == 0 else self.hw.memory_mib - f.mib
            case "clock-jump":
                self.jump += f.seconds
            case "agent-restart":
                await self.restart_agent()
            case "power-loss":
                self.tear_state()
                await self.restart_agent()
            case "link-loss" if f.link == "api-server":
                self.kube_up = False
                asyncio.get_running_loop().call_at(f.at_s + f.for_s, self._relist)
            case "link-loss":
                self.link_up = False
                asyncio.get_running_loop().call_at(f.at_s + f.for_s, self._link_back)
            case "workload-crash" | "workload-hang" | "workload-runaway":
                assert f.workload is not None
                p, w = f.workload.split("/")
                runner = self.engine.runners.get(p, {}).get(w)
                task = b.tasks.get(runner.pid) if runner and runner.pid else None
                if task is None:
                    return
                if f.kind == "workload-crash":
                    b.exit(task, f.exit_code)
                elif f.kind == "workload-hang":
                    task.demand.hang()
                    b.touch()
                else:
                    task.demand.run_away()
                    b.touch()

    def _push(self, push: Push) -> None:
        """A planner pushes; the broker holds it (QoS 1) while the board's link is down."""
        if push.via == "kube":
            self._kube(push)
            return
        assert push.mission is not None
        mission = load_file(MissionProfile, push.mission)
        envelope = seal(self.planner, "sim-planner", "sim", mission.name, mission.generation,
                        push.mission.read_bytes(), now=self.wall())
        self.events.emit("sim.push", "planner", f"{mission.name} generation "
                         f"{mission.generation}" + ("" if self.link_up else
                                                    " (link down: held by the broker)"))
        if self.link_up:
            self._deliver(envelope)
        else:
            self.held.append(envelope)

    def _deliver(self, envelope: bytes) -> None:
        async def go() -> None:
            ack = await self.link.handle(envelope)
            ref = ack["ref"]
            why = "; ".join(f"{r['path']}: {r['reason']}" for r in ack["reasons"])
            self.events.emit("sim.ack", "planner", f"{ack['outcome']}: {ref.get('name')} "
                             f"generation {ref.get('generation')}" + (f" ({why})" if why
                                                                       else ""))
        self._tasks.append(asyncio.get_running_loop().create_task(go(), name="push"))

    def _link_back(self) -> None:
        self.link_up = True
        self.events.emit("sim.link-up", "board", f"{len(self.held)} held push(es) delivered")
        for m in self.held:
            self._deliver(m)
        self.held.clear()

    def _kube(self, push: Push) -> None:
        """Someone applies or deletes a MissionProfile in the cluster. The board watches
        it while the API server answers; otherwise it sees the cluster as it is when it
        relists (changes in between are never seen)."""
        if push.delete is not None:
            self.cluster.pop(push.delete, None)
            self.events.emit("sim.kube-delete", "cluster", f"MissionProfile {push.delete}")
        else:
            assert push.mission is not None
            mission = load_file(MissionProfile, push.mission)
            # An update keeps the object's creation time, as the API server does.
            created = self.cluster.get(mission.name, (mission, ko.timestamp(self.wall())))[1]
            self.cluster[mission.name] = (mission, created)
            self.events.emit("sim.kube-apply", "cluster", f"MissionProfile {mission.name} "
                             f"generation {mission.generation}")
        if self.kube_up:
            self._reconcile_kube()

    def _relist(self) -> None:
        self.kube_up = True
        self.events.emit("sim.api-server-up", "board",
                         f"relisted: {len(self.cluster)} MissionProfile(s) in the cluster")
        self._reconcile_kube()

    def _reconcile_kube(self) -> None:
        """What agent.sources.kube.source does with the cluster's objects, with its own choice
        (``objects.choose``: the most recently created profile flies); a deleted one that
        flies is withdrawn."""
        chosen = ko.choose([{"metadata": {"name": name, "namespace": "sim",
                                          "creationTimestamp": created}}
                            for name, (_, created) in self.cluster.items()])
        newest = None if chosen is None else self.cluster[chosen["metadata"]["name"]][0]

        async def go() -> None:
            flying = self.engine.flying()
            origin = flying.origin if flying else Origin("scenario")
            if origin.source == "kube" and origin.object not in {
                    f"sim/{n}" for n in self.cluster}:
                await self.engine.withdraw("kube", f"MissionProfile {origin.object} "
                                           "was deleted")
            if newest is not None and (origin.object != f"sim/{newest.name}"
                                       or origin.object_generation != newest.generation):
                await self.engine.submit(newest, Origin(
                    "kube", object=f"sim/{newest.name}", uid=f"sim-{newest.name}",
                    object_generation=newest.generation))
        self._tasks.append(asyncio.get_running_loop().create_task(go(), name="kube"))

    def _start_fault(self, f: Fault) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.fault(f), name=f"fault {f.kind}"))

    def tear_state(self) -> None:
        """Power fails while the agent rewrites its state: the temp file is torn, and
        the flash block holding the current copy is damaged too (worst case). The
        previous copy must carry the agent."""
        store = self.engine.store
        stored = store.load()
        if stored is not None:
            store.save(stored)  # the write that power cuts short (a .prev exists now)
        data = store.path.read_bytes() if store.path.exists() else b"{}"
        store.path.with_name(f".{store.path.name}.tmp").write_bytes(data[: len(data) // 3])
        store.path.write_bytes(data[: len(data) // 2])

    async def restart_agent(self) -> None:
        """The agent dies (SIGKILL) and comes back: workloads keep running meanwhile."""
        for t in self._tasks:
            if t.get_name() == "accounting":
                t.cancel()
        await self.engine.shutdown(teardown=False)
        self.engine = self._engine()
        await self.engine.start(StoredMission(self.mission, Origin("scenario")))
        self._tasks.append(asyncio.get_running_loop().create_task(self.accounting(),
                                                                  name="accounting"))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        await self.engine.start(StoredMission(self.mission, Origin("scenario")))
        self._handle = loop.call_at(loop.time(), self._tick)
        self.board.on_change = self._kick
        self._tasks += [loop.create_task(self.accounting(), name="accounting")]
        for f in sorted(self.sc.faults, key=lambda f: f.at_s):
            loop.call_at(f.at_s, self._start_fault, f)
        for push in self.sc.pushes:
            loop.call_at(push.at_s, self._push, push)
        loop.call_at(self.sc.duration_s, self._done.set)
        await self._done.wait()
        if self.failure is not None:
            raise RuntimeError("the CPU model failed") from self.failure
        self.result_partitions = self.summary()
        self.board.on_change = lambda: None
        if self._handle is not None:
            self._handle.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
            if not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        await self.engine.settle_health()

    def summary(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for p in self.mission.partitions:
            g = self.board.fs.group(ROOT / PREFIX / f"p-{p.name}")
            st = g.sim if g is not None else None
            n_jobs, misses = self.jobs.get(p.name, [0, 0])
            actions = [e[1] for e in self.trace if e[1].startswith("health.")
                       and e[2].split("/")[1] == p.name]
            out[p.name] = {
                "criticality": p.criticality,
                "budget": p.budget.utilisation(),
                "used": (st.usage_us / 1e6 / self.sc.duration_s) if st else 0.0,
                "throttled_periods": st.nr_throttled if st else 0,
                "periods": st.nr_periods if st else 0,
                "jobs": n_jobs, "deadline_misses": misses,
                "health_actions": len(actions),
                "shed": p.name in self.engine.shed,
            }
        return out


def run(sc: Scenario, mission: MissionProfile, hw: HardwareProfile) -> SimResult:
    workdir = Path(tempfile.mkdtemp(prefix="sortie-sim-"))
    loop = VirtualTimeLoop()
    started = time.perf_counter()
    try:
        asyncio.set_event_loop(loop)

        async def main() -> _Sim:
            sim = _Sim(sc, mission, hw, workdir)
            try:
                await sim.run()
            finally:
                await sim.engine.shutdown(teardown=True)
            return sim

        sim = loop.run_until_complete(main())
        wall = time.perf_counter() - started
        return SimResult(sc.name, hw.name, sc.duration_s, wall, sim.trace,
                         sim.result_partitions, sim.usage, sim.cores, sim.marks,
                         sim.throttling)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        shutil.rmtree(workdir, ignore_errors=True)
