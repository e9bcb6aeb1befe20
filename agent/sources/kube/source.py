"""The Kubernetes source: MissionProfiles aimed at the board listed and watched into the
engine, their status and Events written back; the node itself is ``node.py``. Four tasks,
each surviving API errors with jittered backoff: ``sync`` (list, then watch; relist on
410), ``node``, ``status`` (status subresource, optimistic concurrency), ``events``. With
the cluster gone the engine flies on; when it returns, the relist converges. Errors no
retry can cure (no CRD, no RBAC, bad credentials) are said once as an event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from agent.engine.port import Decision, EnginePort
from agent.errors import ProfileError, Violation
from agent.events import Event
from agent.models.config import KubeConfig
from agent.sources.kube import objects as ko
from agent.sources.kube.api import KubeApi, KubeError
from agent.sources.kube.names import KIND
from agent.sources.kube.node import Counters, NodeKeeper
from agent.sources.kube.watching import ProfileCache, backoff_s
from agent.status import KubeStatus

log = logging.getLogger("sortie.kube")
Obj = dict[str, Any]

FORWARDED = ("health.", "degraded.", "workload.crash-loop", "mission.failed",
             "windows.degraded", "action.failed")
"""Engine events that become Kubernetes Events on the flying MissionProfile."""
HEALTH_KEPT = 20


@dataclass
class Verdict:
    """What the board decided about one MissionProfile, to be written to its status."""

    uid: str
    generation: int
    state: str
    """Flying, Rejected, Failed or Superseded."""
    admitted: tuple[bool, str, str]
    applied: tuple[bool, str, str]
    mission: Obj | None = None
    dirty: bool = True


def _why(violations: list[Violation]) -> str:
    return "; ".join(str(v) for v in violations)


class KubeSource:
    def __init__(self, cfg: KubeConfig, node_name: str, engine: EnginePort,
                 api: KubeApi | None = None) -> None:
        self.cfg, self.node_name, self.engine = cfg, node_name, engine
        self.api = api or KubeApi(cfg)
        self.cache = ProfileCache()
        self.labels = ko.node_labels(node_name, engine.board, cfg.node_labels)
        self.handled: dict[str, tuple[str, int]] = {}
        """Per object, the (uid, metadata.generation) last decided: status-only changes
        (our own writes among them) decide nothing again."""
        self.verdicts: dict[str, Verdict] = {}
        self.connected = False
        self.count = Counters()
        self.last_error: str | None = None
        self.outbox: deque[tuple[str, str, str, bool]] = deque(maxlen=200)
        """Events waiting to be sent (kept while the cluster is away)."""
        self._wake_status = asyncio.Event()
        self._wake_events = asyncio.Event()
        self._lock = asyncio.Lock()
        self._attempt = 0
        """Failed connection attempts in a row (the watch resets it on every event)."""
        self._told: str | None = None  # the misconfiguration said last (once, not per retry)
        self._ignored: set[tuple[str, str, int]] = set()
        """Out-of-scope profiles already reported (key, uid, generation)."""
        self.node = NodeKeeper(cfg, node_name, engine, self.api, self.count)
        self.health_seen: deque[Obj] = deque(maxlen=HEALTH_KEPT)
        """Health actions since the flying generation applied, in ``status.boards.NODE``:
        what a rollout's gate reads."""
        engine.events.subscribe(self._on_engine_event)

    # -- tasks -------------------------------------------------------------------------
    async def run_forever(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sync_forever(), name="kube-sync")
            tg.create_task(self.node.forever(self._failed), name="kube-node")
            tg.create_task(self.node.holds_forever(self._failed), name="kube-hold")
            tg.create_task(self._status_forever(), name="kube-status")
            tg.create_task(self._events_forever(), name="kube-events")

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.api.close()

    def _failed(self, what: str, exc: KubeError) -> None:
        self.count.errors += 1
        self.last_error = f"{what}: {exc}"
        why = ko.diagnose(what, exc.code, exc.message)
        if why is not None and why != self._told:
            self._told = why
            self.engine.events.emit("kube.misconfigured", "kube", why, "error")
        if what != "list/watch":
            return  # "connected" is the watch's state; the other tasks retry on their own
        if self.connected:
            self.engine.events.emit("kube.disconnected", "kube", f"{what}: {exc}", "warning")
        self.connected = False

    async def _sync_forever(self) -> None:
        """List, then watch from the last resourceVersion. A watch that breaks is resumed
        at once from where it was; 410 Gone, a failed resume or a failed list lead to a
        (re)list after a jittered backoff (410: at once)."""
        need_list = True
        self._attempt = 0
        while True:
            try:
                if need_list:
                    items, rv = await self.api.list_profiles()
                    self.count.lists += 1
                    self.cache.reset(items, rv)
                    self._told = None
                    if not self.connected:
                        self.engine.events.emit("kube.connected", "kube",
                                                f"listed {len(items)} MissionProfile(s) at "
                                                f"resourceVersion {rv}")
                    self.connected, need_list, self._attempt = True, False, 0
                    await self._reconcile_contained()
                    self._wake_events.set()
                await self._watch()
            except KubeError as exc:
                if exc.code == 410:
                    self.count.gone += 1  # history compacted: relist at once
                    need_list = True
                    continue
                if not need_list and self._attempt == 0:
                    self.count.errors += 1
                    self.last_error = f"watch: {exc}"
                    self._attempt = 1  # resume the broken watch once, at once
                    continue
                self._failed("list/watch", exc)
                need_list = True
                await asyncio.sleep(backoff_s(self._attempt, self.cfg.backoff_max_s,
                                              exc.retry_after_s))
                self._attempt += 1

    async def _watch(self) -> None:
        """Watch from the cache's resourceVersion until an error; a silent stream (no
        event, no bookmark, not even the server's timeout) is a stall: re-watch."""
        while True:
            stream = self.api.watch_profiles(self.cache.resource_version,
                                             self.cfg.watch_timeout_s)
            try:
                while True:
                    async with asyncio.timeout(2 * self.cfg.watch_timeout_s):
                        etype, obj = await anext(stream)
                    self._attempt = 0
                    try:
                        changed = self.cache.apply(etype, obj)
                    except Exception as exc:  # an object of a shape no server sends
                        self.engine.events.internal_error("kube", f"reading a {etype} "
                                                          "event", exc)
                        continue
                    if changed:
                        await self._reconcile_contained()
            except TimeoutError:
                self.count.stalls += 1
            except StopAsyncIteration:
                pass
            finally:
                with contextlib.suppress(Exception):
                    await stream.aclose()

    # -- deciding ----------------------------------------------------------------------
    def _in_scope(self, obj: Obj) -> bool:
        ns = obj["metadata"].get("namespace")
        if ns in self.cfg.namespaces:
            return True
        meta = obj["metadata"]
        ident = (ko.key(obj), meta.get("uid", ""), int(meta.get("generation", 0)))
        if ident not in self._ignored:
            self._ignored.add(ident)
            self.engine.events.emit("kube.out-of-scope", f"missionprofile/{ko.key(obj)}",
                                    f"namespace {ns!r} is not one this board reads "
                                    f"({', '.join(self.cfg.namespaces)}): ignored", "warning")
        return False

    async def _reconcile_contained(self) -> None:
        """Decide, with any bug of ours met on the way contained: an object must never
        end the sync task (and with it the agent)."""
        try:
            await self._reconcile()
        except (KubeError, asyncio.CancelledError):
            raise
        except Exception as exc:
            self.engine.events.internal_error("kube", "deciding on MissionProfiles", exc)

    async def _reconcile(self) -> None:
        async with self._lock:
            mine = [o for o in self.cache.objects.values()
                    if ko.targets(o, self.node_name, self.labels) and self._in_scope(o)]
            chosen = ko.choose(mine)
            for o in mine:
                if o is not chosen:
                    self._supersede(o, chosen)
            keys = {ko.key(o) for o in mine}
            for k in [k for k in self.verdicts if k not in keys]:
                del self.verdicts[k]  # deleted or aimed elsewhere: nothing to write
            flying = self.engine.flying()
            origin = flying.origin if flying else None
            if origin is not None and origin.source == "kube" and origin.uid not in {
                    o["metadata"].get("uid") for o in mine}:
                # Its object is gone (or aims elsewhere): withdraw it before anything
                # else flies, so a profile re-created under the same name starts afresh
                # instead of being refused as an older generation.
                await self.engine.withdraw("kube", f"MissionProfile {origin.object} "
                                           "was deleted or no longer targets this board")
                self.handled.clear()
            if chosen is not None:
                await self._decide(chosen)

    def _supersede(self, obj: Obj, chosen: Obj | None) -> None:
        meta = obj["metadata"]
        ident = (meta.get("uid", ""), int(meta.get("generation", 0)))
        k = ko.key(obj)
        old = self.verdicts.get(k)
        if old is not None and old.state == "Superseded" and (old.uid, old.generation) == ident:
            return
        msg = f"this board flies {ko.key(chosen)} (created later)" if chosen else ""
        self.verdicts[k] = Verdict(ident[0], ident[1], "Superseded",
                                   (False, "Superseded", msg), (False, "Superseded", msg))
        self.handled.pop(k, None)
        self._wake_status.set()

    async def _decide(self, obj: Obj) -> None:
        k, meta = ko.key(obj), obj["metadata"]
        ident = (meta.get("uid", ""), int(meta.get("generation", 0)))
        if self.handled.get(k) == ident:
            return
        self.handled[k] = ident
        try:
            mission = ko.mission_of(obj)
        except ProfileError as exc:
            why = _why(exc.violations)
            self._verdict(obj, "Rejected", (False, "InvalidSpec", why), (False, "NotAdmitted",
                                                                         "nothing applied"))
            self._send(k, "Rejected", f"invalid spec: {why}", True)
            return
        root = [] if self.cfg.allow_root_workloads else ko.root_workloads(mission)
        if root:
            why = _why(root)
            self._verdict(obj, "Rejected", (False, "RootNotAllowed", why),
                          (False, "NotAdmitted", "nothing applied"))
            self._send(k, "Rejected", why, True)
            return
        decision = await self.engine.submit(mission, ko.origin(obj))
        self.count.decisions[decision.outcome] = self.count.decisions.get(decision.outcome,
                                                                          0) + 1
        self._record(obj, decision)

    def _record(self, obj: Obj, d: Decision) -> None:
        k = ko.key(obj)
        ref = {"name": d.mission, "generation": d.generation}
        if d.outcome == "rejected":
            why = _why(d.violations)
            self._verdict(obj, "Rejected", (False, "DoesNotFit", why),
                          (False, "NotAdmitted", "nothing applied; the board flies "
                           + self._flying_text()), ref)
            self._send(k, "Rejected", f"generation {d.generation}: {why}", True)
        elif d.outcome == "held":
            self._verdict(obj, "Held", (True, "Fits", "admitted; waiting for the hold to end"),
                          (False, "Held", d.reason), ref)
            self._send(k, "Held", f"generation {d.generation} waits: {d.reason}", False)
            if d.later is not None:
                meta = obj["metadata"]
                ident = (meta.get("uid", ""), int(meta.get("generation", 0)))
                d.later.add_done_callback(lambda f: self._decided_later(obj, ident, f))
        elif d.outcome == "superseded":
            self._verdict(obj, "Superseded", (True, "Fits", "admitted"),
                          (False, "Superseded", d.reason), ref)
        elif d.outcome == "failed":
            self._verdict(obj, "Failed", (True, "Fits", "admitted"),
                          (False, "ApplyFailed", "; ".join(d.errors)), ref)
            self._send(k, "ApplyFailed", f"generation {d.generation}: " + "; ".join(d.errors),
                       True)
        else:
            self._verdict(obj, "Flying", (True, "Fits", "the board can fly it"),
                          (True, "Applied", f"generation {d.generation} flying"), ref)
            if d.outcome == "applied":
                self.health_seen.clear()
                self._send(k, "Applied", f"generation {d.generation} applied on "
                           f"{self.node_name}: {len(d.actions)} action(s)", False)

    def _decided_later(self, obj: Obj, ident: tuple[str, int],
                       fut: asyncio.Future[Decision]) -> None:
        """A held generation's final answer, unless the object has moved on since."""
        if fut.cancelled() or self.handled.get(ko.key(obj)) != ident:
            return
        try:
            self._record(obj, fut.result())
        except Exception as exc:  # a bug of ours must not vanish in a callback
            self.engine.events.internal_error("kube", "recording a held decision", exc)

    def _verdict(self, obj: Obj, state: str, admitted: tuple[bool, str, str],
                 applied: tuple[bool, str, str], mission: Obj | None = None) -> None:
        meta = obj["metadata"]
        self.verdicts[ko.key(obj)] = Verdict(meta.get("uid", ""), int(meta.get("generation", 0)),
                                             state, admitted, applied, mission)
        self._wake_status.set()

    def _flying_text(self) -> str:
        m = self.engine.flying()
        return "nothing" if m is None else f"{m.name} generation {m.generation}"

    # -- status ------------------------------------------------------------------------
    def _status_doc(self, v: Verdict, previous: Obj) -> Obj:
        now = self.engine.platform.wall()
        prev = previous.get("conditions") or []
        conds = [ko.condition("Admitted", *v.admitted, now, prev),
                 ko.condition("Applied", *v.applied, now, prev)]
        flying = self.engine.flying()
        shed = list(flying.shed) if flying and v.state == "Flying" else []
        conds.append(ko.condition("Degraded", bool(shed),
                                  "CapacityLost" if shed else "FullCapacity",
                                  f"shed partitions {shed}" if shed else
                                  "every admitted partition flies", now, prev))
        doc: Obj = {"state": v.state, "observedGeneration": v.generation,
                    "node": self.node_name, "conditions": conds,
                    "mission": v.mission, "updated": ko.timestamp(now)}
        if v.state == "Flying":
            doc["partitions"] = ko.usage_status(self.engine.snapshot())
        boards = dict(previous.get("boards") or {})
        boards[self.node_name] = self._board_entry(v, now, shed)
        doc["boards"] = boards
        return doc

    def _board_entry(self, v: Verdict, now: float, shed: list[str]) -> Obj:
        """This board's own entry, ``status.boards.NODE``: the truth a rollout reads."""
        entry: Obj = {"state": v.state, "observedGeneration": v.generation,
                      "updated": ko.timestamp(now)}
        if v.mission is not None:
            entry["mission"] = v.mission  # name and generation it decided
        if v.state != "Flying":  # why: the refusal's reasons, or what holds it
            entry["message"] = (v.admitted if not v.admitted[0] else v.applied)[2][:512]
        else:
            entry |= {"shed": shed, "health": list(self.health_seen)}
        return entry

    async def _write_status(self, k: str, v: Verdict) -> None:
        ns, name = k.split("/", 1)
        cached = self.cache.objects.get(k)
        target = ((cached or {}).get("spec") or {}).get("target") or {}
        if cached is not None and not target.get("nodeName"):
            await self._write_board_entry(ns, name, v)
            return
        # The watch's copy first (its resourceVersion is usually current: our own last
        # write came back as an event); read it only when the server says otherwise.
        cur = cached if cached is not None and cached["metadata"].get("uid") == v.uid \
            else None
        for _ in range(5):
            if cur is None:
                cur = await self.api.get(KIND, name, ns or None)
                if cur is None or cur["metadata"].get("uid") != v.uid:
                    return
            body = dict(cur)
            body["status"] = self._status_doc(v, cur.get("status") or {})
            try:
                await self.api.replace(body, status=True)
            except KubeError as exc:
                if exc.code == 409:
                    self.count.conflicts += 1  # someone wrote in between: read again
                    cur = None
                    continue
                raise
            self.count.status_writes += 1
            v.dirty = False
            return

    async def _write_board_entry(self, ns: str, name: str, v: Verdict) -> None:
        """A profile several boards fly: a merge patch of this board's entry alone (no
        read, no conflict with the others, however many), then the top level as the
        aggregate of every entry the answer shows. Boards racing on the aggregate
        converge: each write recomputes it from a newer object."""
        cached = self.cache.objects.get(f"{ns}/{name}")
        if cached is None or cached["metadata"].get("uid") != v.uid:
            return
        now = self.engine.platform.wall()
        flying = self.engine.flying()
        shed = list(flying.shed) if flying and v.state == "Flying" else []
        got = await self.api.merge_patch(KIND, name, {"status": {"boards": {
            self.node_name: self._board_entry(v, now, shed)}}}, ns or None, status=True)
        self.count.status_writes += 1
        v.dirty = False
        status = got.get("status") or {}
        agg = ko.aggregate(status.get("boards") or {}, v.generation, now,
                           status.get("conditions") or [])
        if any(status.get(key) != value for key, value in agg.items() if key != "updated"):
            await self.api.merge_patch(KIND, name, {"status": agg}, ns or None, status=True)
            self.count.status_writes += 1

    async def _status_forever(self) -> None:
        attempt = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.status_period_s):
                    await self._wake_status.wait()
            self._wake_status.clear()
            try:
                for k, v in list(self.verdicts.items()):
                    if v.dirty or v.state == "Flying":
                        await self._write_status(k, v)
                attempt = 0
            except KubeError as exc:
                self._failed("status", exc)
                await asyncio.sleep(backoff_s(attempt, self.cfg.backoff_max_s,
                                              exc.retry_after_s))
                attempt += 1

    # -- events ------------------------------------------------------------------------
    def _send(self, k: str, reason: str, message: str, warning: bool) -> None:
        if len(self.outbox) == self.outbox.maxlen:
            self.count.events_dropped += 1
        self.outbox.append((k, reason, message, warning))
        self._wake_events.set()

    def _on_engine_event(self, ev: Event) -> None:
        if not ev.kind.startswith(FORWARDED):
            return
        flying = self.engine.flying()
        if flying is None or flying.origin.source != "kube" or flying.origin.object is None:
            return
        if ev.kind.startswith("health.") and ev.partition is not None:
            part = self.engine.snapshot().partition(ev.partition)
            self.health_seen.append({"partition": ev.partition, "kind": ev.kind[7:],
                                     "criticality": part.criticality if part else None,
                                     "severity": ev.severity,
                                     "at": ko.timestamp(ev.at)})
            self._wake_status.set()
        reason = "".join(p.capitalize() for p in ev.kind.replace(".", "-").split("-"))
        self._send(flying.origin.object, reason,
                   f"{ev.subject}: {ev.message}", ev.severity != "info")

    async def _events_forever(self) -> None:
        attempt = 0
        while True:
            await self._wake_events.wait()
            self._wake_events.clear()
            while self.outbox:
                k, reason, message, warning = self.outbox[0]
                obj = self.cache.objects.get(k)
                if obj is None:
                    self.outbox.popleft()  # its object is gone: nothing to attach it to
                    continue
                try:
                    await self.api.create(ko.event(obj, self.node_name, reason, message,
                                                   warning, self.engine.platform.wall()))
                except KubeError as exc:
                    if exc.code in (0, 429) or exc.code >= 500:
                        self._failed("events", exc)
                        await asyncio.sleep(backoff_s(attempt, self.cfg.backoff_max_s,
                                                      exc.retry_after_s))
                        attempt += 1
                        continue
                    log.warning("event %s for %s refused: %s", reason, k, exc)
                self.outbox.popleft()
                self.count.events_sent += 1
                attempt = 0

    def status(self) -> KubeStatus:
        counters = {k: v for k, v in vars(self.count).items() if isinstance(v, int)}
        counters.update({f"decisions_{k}": v for k, v in self.count.decisions.items()})
        return KubeStatus(
            server=str(self.api.single.cluster.server), node=self.node_name,
            connected=self.connected, resource_version=self.cache.resource_version,
            profiles_seen=len(self.cache.objects),
            targeting_this_board=sorted(self.verdicts), counters=counters,
            last_error=self.last_error)
