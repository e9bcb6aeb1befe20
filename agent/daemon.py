"""``sortie run``: wire the engine to its sources, the local API and the accounting
tick, and run them as named tasks in one TaskGroup until a signal arrives."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.api.server import serve
from agent.cgroups import make_backend
from agent.engine.engine import Engine
from agent.engine.holds import SOURCES
from agent.engine.locking import WriterLock
from agent.engine.state import StateStore, StoredMission
from agent.errors import AgentError
from agent.events import Event, EventLog
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.models.loading import validate
from agent.runtime import procs
from agent.sources import files
from agent.status import FileChoice, FilesStatus, to_json
from agent.systemd import Notifier

log = logging.getLogger("sortie.daemon")


@dataclass
class RunOptions:
    profile_paths: list[Path]
    teardown: bool = False
    host_checks: bool = True


def socket_path(config: AgentConfig) -> Path:
    return config.run_dir / "sortie.sock"


def _files_status(opts: RunOptions, result: files.Scan) -> FilesStatus:
    c = result.chosen
    return FilesStatus([str(p) for p in opts.profile_paths],
                       None if c is None else FileChoice(c.mission.name, c.mission.generation,
                                                         c.origin.path or ""),
                       [e.source for e in result.errors])


async def _load_files(engine: Engine, opts: RunOptions, wanted: str | None,
                      result: files.Scan | None = None) -> None:
    if result is None:
        result = files.scan(opts.profile_paths, wanted)
    scanned = _files_status(opts, result)
    engine.sources.files = lambda: scanned
    for err in result.errors:
        engine.events.emit("profile.invalid", err.source,
                           "; ".join(map(str, err.violations)), "error")
    if result.chosen is not None:
        await engine.submit(result.chosen.mission, result.chosen.origin)


STATUS_EVENTS = ("mission.", "degraded.", "state.")
"""Events after which systemd's STATUS= line is rewritten."""


async def write_metrics(engine: Engine, config: AgentConfig) -> None:
    """node_exporter's textfile, every accounting period. A directory that cannot be
    written is an event (once per cause, and once when it works again), never a stop."""
    assert config.metrics is not None
    from agent.metrics import AgentProcess, TextfileWriter, families, render
    writer = TextfileWriter(config.metrics.textfile_dir)
    failing: str | None = None
    try:
        while True:
            try:
                writer.write(render(families(engine.snapshot(), config.node_name,
                                             AgentProcess.now())))
                if failing is not None:
                    engine.events.emit("metrics.written", "metrics",
                                       f"{writer.path} is written again")
                    failing = None
            except AgentError as exc:
                if str(exc) != failing:
                    engine.events.emit("metrics.unwritable", "metrics",
                                       f"{exc}; retrying every accounting period", "warning")
                    failing = str(exc)
            except Exception as exc:  # a bug of ours: counted, never the agent's end
                if repr(exc) != failing:
                    engine.events.internal_error("metrics", "writing the metrics", exc)
                    failing = repr(exc)
            await asyncio.sleep(config.accounting_period_ms / 1000)
    finally:
        try:
            writer.remove()
        except AgentError as exc:
            log.warning("%s", exc)


async def pet(notifier: Notifier, lock: WriterLock, interval_s: float) -> None:
    """Pet systemd's watchdog from the event loop itself, so a blocked loop stops the
    petting; and not while a change has held the engine's lock for a whole watchdog
    period (a hung reconcile): systemd then restarts the agent, which adopts the
    mission (KillMode=process leaves the workloads flying)."""
    while True:
        await asyncio.sleep(interval_s / 2)
        if lock.busy_for() < interval_s:
            notifier.watchdog()


def service_status(engine: Engine) -> str:
    """The one line `systemctl status sortie` shows."""
    f = engine.flying()
    if f is None:
        return "no mission"
    return (f"flying {f.name} generation {f.generation}"
            + (f"; degraded, shed {', '.join(f.shed)}" if f.shed else ""))


def handlers(engine: Engine) -> dict[str, Any]:
    async def status(_: dict[str, Any]) -> dict[str, Any]:
        return {"status": to_json(engine.snapshot())}

    async def plan(req: dict[str, Any]) -> dict[str, Any]:
        mission = validate(MissionProfile, req.get("mission"), "request.mission")
        return engine.preview(mission).to_dict()

    async def mode(req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("mode")
        if not isinstance(name, str):
            raise ValueError("mode: expected a schedule name")
        return {"mode": await engine.switch_mode(name)}

    async def hold(req: dict[str, Any]) -> dict[str, Any]:
        reason = req.get("reason")
        if not isinstance(reason, str) or not reason.strip() or len(reason) > 256:
            raise ValueError("reason: expected why the board holds (1-256 characters)")
        changed = await engine.hold("operator", reason.strip())
        return {"held": engine.held_by(), "changed": changed}

    async def release(req: dict[str, Any]) -> dict[str, Any]:
        source = req.get("source", "operator")
        if source not in SOURCES:
            raise ValueError(f"source: expected one of {', '.join(SOURCES)}")
        changed = await engine.release(source)
        p = engine.pending
        return {"held": engine.held_by(), "changed": changed,
                "pending": None if p is None else
                (f"{p.mission.name} generation {p.mission.generation}" if p.mission
                 else f"withdrawal by {p.source}")}

    return {"status": status, "plan": plan, "mode": mode, "hold": hold, "release": release}


async def run(config: AgentConfig, board: HardwareProfile, opts: RunOptions) -> None:
    backend = make_backend(config.cgroup_root, config.cgroup_prefix, config.cgroup_version)
    events = EventLog()
    engine = Engine(config, board, backend, StateStore(config.state_dir), events,
                    host_checks=opts.host_checks)
    first_scan = files.scan(opts.profile_paths, config.mission)
    initial = first_scan.chosen
    await engine.start(StoredMission(initial.mission, initial.origin) if initial else None)
    if config.agent_cgroup:
        backend.move_self(engine.platform.ops.helpers())
    await _load_files(engine, opts, config.mission, first_scan)
    link = None
    if config.mqtt is not None:
        # Imported only when configured: aiomqtt, paho and cryptography cost ~10 MiB.
        from agent.sources.ledger import GenerationLedger
        from agent.sources.mqtt import MqttLink
        link = MqttLink(config.mqtt, config.node_name, engine,
                        GenerationLedger(config.state_dir))
        engine.sources.mqtt = link.status
    kube = None
    if config.kube is not None:
        # Imported only when configured: lightkube and httpx cost several MiB.
        from agent.sources.kube.source import KubeSource
        kube = KubeSource(config.kube, config.node_name, engine)
        engine.sources.kube = kube.status
    # From process start (not from this function): what a watchdog or a boot waits for.
    ready_s = procs.age_s(os.getpid()) or 0.0
    engine.ready_after_s = ready_s
    events.emit("agent.ready", "agent", f"first reconcile done {ready_s * 1000:.0f} ms "
                f"after start; cgroup {backend.version}, board {board.name}")
    notifier = Notifier()
    notifier.ready(service_status(engine))
    # What start-up built (modules, models, the mission) lives as long as the agent:
    # out of the collector's sight, a full collection scans what is made after it, not
    # the ~40 MiB of imports (5.8 ms -> 0.00 ms, docs/benchmarks.md).
    gc.freeze()

    def on_event(ev: Event) -> None:
        if ev.kind.startswith(STATUS_EVENTS):
            notifier.status(service_status(engine))
    events.subscribe(on_event)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    rescan: asyncio.Event = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, rescan.set)

    async def on_files_changed() -> None:
        try:
            await _load_files(engine, opts, config.mission)
        except Exception as exc:  # never the end of the files task (and of the agent)
            events.internal_error("files", "applying changed profile files", exc)

    async def telemetry() -> None:
        while True:
            await asyncio.sleep(config.accounting_period_ms / 1000)
            if link is not None:
                link.publish_telemetry()

    async def on_hup() -> None:
        while True:
            await rescan.wait()
            rescan.clear()
            await on_files_changed()

    try:
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[Any]] = [
                tg.create_task(serve(socket_path(config), handlers(engine)), name="api"),
                tg.create_task(files.watch(opts.profile_paths, on_files_changed), name="files"),
                tg.create_task(engine.account_forever(), name="accounting"),
                tg.create_task(on_hup(), name="sighup"),
            ]
            if link is not None:
                tasks += [tg.create_task(link.run_forever(), name="mqtt"),
                          tg.create_task(telemetry(), name="telemetry")]
            if kube is not None:
                tasks.append(tg.create_task(kube.run_forever(), name="kube"))
            if config.metrics is not None:
                tasks.append(tg.create_task(write_metrics(engine, config), name="metrics"))
            if notifier.watchdog_s is not None:
                tasks.append(tg.create_task(pet(notifier, engine.lock, notifier.watchdog_s),
                                            name="watchdog"))
            stopper: asyncio.Task[Any] = tg.create_task(stop.wait(), name="stop")
            # A "forever" task that ends is a failure: escalate instead of limping on.
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            if link is not None:
                await link.close()  # the retained status says offline while we can
            for t in tasks:
                t.cancel()
            for t in done:
                if t is not stopper:
                    exc = t.exception()
                    raise AgentError(f"task {t.get_name()} ended unexpectedly: {exc}") from exc
    finally:
        notifier.stopping()
        if kube is not None:
            await kube.close()  # after its tasks ended: they use the client
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
        await engine.shutdown(opts.teardown or config.stop_workloads_on_exit)
        notifier.close()
        events.emit("agent.stopped", "agent",
                    "workloads stopped, cgroups removed" if opts.teardown
                    or config.stop_workloads_on_exit else "workloads left running")
