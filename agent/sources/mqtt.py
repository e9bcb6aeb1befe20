"""MQTT source and telemetry: signed profiles in, acks, status, telemetry and events out.

Topics (``ROOT`` is ``sortie/v1`` by default; see docs/mqtt.md):
  ROOT/NODE/profiles   in   signed envelopes (QoS 1)
  ROOT/NODE/acks       out  one answer per push: applied / duplicate / rejected + reasons;
                           a held push is answered twice: held, then how it ended
  ROOT/NODE/status     out  retained; the last will sets it to {"online": false}
  ROOT/NODE/telemetry  out  per partition, every accounting period
  ROOT/NODE/events     out  every agent event (backlog kept while the broker is away)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections import deque
from typing import TYPE_CHECKING, Any

import aiomqtt

from agent.errors import ProfileError, StoreError, Violation
from agent.events import Event
from agent.models import MissionProfile
from agent.models.config import MqttConfig
from agent.models.loading import load_text
from agent.sources.ledger import GenerationLedger
from agent.sources.mqtt_wire import (
    CLIENT_LOG,
    client_args,
    counting_queue,
    digest,
    payload_bytes,
    topics,
)
from agent.sources.signing import EnvelopeError, is_revoked, load_public, parse, verify
from agent.status import LastPush, MqttStatus, Origin, Status, to_json

if TYPE_CHECKING:
    from agent.engine.port import Decision, EnginePort

log = logging.getLogger("sortie.mqtt")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
REFUSED_EVENTS_PER_S = 10
MAX_INFLIGHT = 20
"""Publishes awaiting their PUBACK at once (paho's default in-flight window)."""


class MqttLink:
    def __init__(self, cfg: MqttConfig, node: str, engine: EnginePort,
                 ledger: GenerationLedger) -> None:
        self.cfg = cfg
        self.node = node
        self.engine = engine
        self.ledger = ledger
        self.t = topics(cfg.topic_root, node)
        self.trusted = {kid: load_public(pub) for kid, pub in cfg.trusted_keys.items()}
        self.revoked = set(cfg.revoked_keys)
        self.client: aiomqtt.Client | None = None
        self.backlog: deque[dict[str, Any]] = deque(maxlen=cfg.backlog_events)
        self.connected = False
        self.last_push: LastPush | None = None
        self.pushes = {"applied": 0, "duplicate": 0, "rejected": 0, "held": 0,
                       "superseded": 0}
        self.internal_errors = 0
        self._dropped = [0]
        size = max(1000, cfg.backlog_events)
        self._outbox: deque[tuple[str, dict[str, Any], bool]] = deque(maxlen=size)
        self._outbox_high = size // 2
        """Pushes are taken only while the outbox is below this (room for their answers)."""
        self._wake_sender = asyncio.Event()
        self._room = asyncio.Event()
        self.publish_dropped = 0
        self._refused_window = [0.0, 0]
        self._refused_quiet = 0
        engine.events.subscribe(self._on_event)
        if cfg.insecure_lab_mode:
            log.warning("!!! mqtt.insecure_lab_mode is ON: UNSIGNED profiles are accepted. "
                        "Never fly a board like this. !!!")
        revoked = self.revoked_origin()
        if revoked is not None:
            # The board keeps flying (grounding a flight-critical partition is not for a
            # key list to decide), but says so in status and events until a trusted
            # planner pushes a new generation.
            engine.events.emit("mqtt.origin-revoked", "mqtt", revoked, "error")

    # -- pushes ----------------------------------------------------------------------
    async def handle(self, data: bytes) -> dict[str, Any]:
        """Answer one push. Never raises: bad input is a refusal with its reason, and a
        bug of ours is logged with its traceback, counted, and answered as one."""
        ref: dict[str, Any] = {"envelope": digest(data), "digest": digest(data)}
        try:
            return await self._handle(data, ref)
        except EnvelopeError as exc:
            self._refused(str(exc))
            return self._ack("rejected", ref, [Violation(f"envelope.{exc.field}"
                                                         if exc.field else "envelope",
                                                         exc.reason)])
        except ProfileError as exc:
            self._refused(str(exc))
            return self._ack("rejected", ref, exc.violations)
        except Exception as exc:
            self.internal_errors += 1
            self.engine.events.internal_error("mqtt", f"handling push {ref['envelope']}", exc)
            return self._ack("rejected", ref, [Violation(
                "", f"internal error on the board ({type(exc).__name__}, logged)")])

    def _refused(self, why: str) -> None:
        """An event per refused push, at most REFUSED_EVENTS_PER_S a second: a flood of
        junk must not become a flood of events, log lines and publishes (each push still
        gets its ack; the count of those left out is in the next event)."""
        now = self.engine.platform.monotonic()
        if now - self._refused_window[0] >= 1.0:
            self._refused_window = [now, 0]
        self._refused_window[1] += 1
        if self._refused_window[1] > REFUSED_EVENTS_PER_S:
            self._refused_quiet += 1
            return
        more = f" (+{self._refused_quiet} more refused, not shown)" if self._refused_quiet else ""
        self._refused_quiet = 0
        self.engine.events.emit("mqtt.push-refused", "mqtt", why + more, "warning")

    async def _handle(self, data: bytes, ref: dict[str, Any]) -> dict[str, Any]:
        if len(data) > self.cfg.max_payload_bytes:
            raise EnvelopeError(f"{len(data)} bytes is over the "
                                f"{self.cfg.max_payload_bytes} byte limit")
        try:
            env = parse(data, self.cfg.max_payload_bytes)
        except EnvelopeError:
            if not self.cfg.insecure_lab_mode:
                raise
            env = None
        if env is None:
            mission = load_text(MissionProfile, data, "mqtt (unsigned)")
            d = digest(data)
            ref.update(name=mission.name, generation=mission.generation, kid=None, digest=d)
            origin = Origin("mqtt", kid=None, signed=False, generation=mission.generation)
            verdict = self.ledger.check(mission.name, mission.generation, d)
        else:
            # Signature, key, node and freshness; then the replay ledger; only then is
            # the profile itself parsed.
            verify(env, self.trusted, self.revoked, self.node,
                   now=self.engine.platform.wall(), max_ttl_s=self.cfg.max_envelope_ttl_s)
            d = digest(env.payload)
            ref.update(name=env.name, generation=env.generation, kid=env.kid, digest=d)
            origin = Origin("mqtt", kid=env.kid, signed=True, generation=env.generation,
                            digest=d)
            verdict = self.ledger.check(env.name, env.generation, d, env.iat)
        if verdict.duplicate:
            return self._ack("duplicate", ref, [])
        if not verdict.fresh:
            return self._ack("rejected", ref, [Violation("generation", verdict.reason)])
        if env is not None:
            mission = load_text(MissionProfile, env.payload, f"mqtt:{env.kid}")
            if (mission.name, mission.generation) != (env.name, env.generation):
                raise EnvelopeError(f"profile says {mission.name!r} generation "
                                    f"{mission.generation}, the envelope {env.name!r} "
                                    f"generation {env.generation}", "payload")
        decision = await self.engine.submit(mission, origin)
        if decision.outcome == "held" and decision.later is not None:
            # Answered twice: held now, and how it ended once the hold ends.
            answer = dict(ref)
            decision.later.add_done_callback(
                lambda f: self._answer_later(f, mission, d, answer))
            return self._ack("held", ref, [], reason=decision.reason)
        return self._answer(decision, mission, d, ref)

    def _answer(self, decision: Decision, mission: MissionProfile, d: str,
                ref: dict[str, Any]) -> dict[str, Any]:
        if decision.outcome in ("rejected", "superseded"):
            return self._ack(decision.outcome, ref, decision.violations,
                             reason=decision.reason)
        errors = list(decision.errors)
        try:
            self.ledger.record(mission.name, mission.generation, d)
        except StoreError as exc:
            # Applied and flying; the ledger holds it in memory until a restart.
            errors.append(str(exc))
            self.engine.events.emit("ledger.unsaved", "mqtt", str(exc), "error")
        return self._ack("applied", ref, [], errors=errors)

    def _answer_later(self, fut: asyncio.Future[Decision], mission: MissionProfile, d: str,
                      ref: dict[str, Any]) -> None:
        if fut.cancelled():
            return
        try:
            self._send(self.t["acks"], self._answer(fut.result(), mission, d, ref))
        except Exception as exc:  # a bug of ours must not vanish in a callback
            self.internal_errors += 1
            self.engine.events.internal_error("mqtt", "answering a held push", exc)

    def revoked_origin(self) -> str | None:
        """Why the flying mission's signer is no longer trusted, if it came over MQTT."""
        flying = self.engine.flying()
        origin = flying.origin if flying else None
        kid = origin.kid if origin else None
        if origin is None or origin.source != "mqtt" or not origin.signed or kid is None:
            return None
        key = self.trusted.get(str(kid))
        if is_revoked(str(kid), key, self.revoked):
            return f"the flying mission was signed by key {kid!r}, revoked since"
        if key is None:
            return f"the flying mission was signed by key {kid!r}, no longer trusted"
        return None

    def _ack(self, outcome: str, ref: dict[str, Any], reasons: list[Violation],
             errors: list[str] | None = None, reason: str = "") -> dict[str, Any]:
        self.pushes[outcome] += 1
        now = self.engine.platform.wall()
        self.last_push = LastPush(outcome, str(ref["envelope"]), now, ref.get("name"),
                                  ref.get("generation"), ref.get("kid"))
        ack = {"outcome": outcome, "ref": ref, "node": self.node, "at": now,
               "reasons": [{"path": v.path, "reason": v.reason} for v in reasons],
               "errors": errors or []}
        if reason:
            ack["reason"] = reason  # held: why; superseded: by what
        return ack

    # -- outgoing --------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        msg = ev.to_dict()
        if not self.connected or self.client is None:
            self.backlog.append(msg)
            return
        self._send(self.t["events"], msg)
        if ev.kind.startswith(("mission.applied", "mission.failed", "degraded.",
                               "mode.switched", "partition.stopped")):
            self._publish_status()

    def _send(self, topic: str, obj: dict[str, Any], retain: bool = False) -> None:
        """Queue a message for the one sender task: a burst of pushes costs a bounded
        outbox, not a task (and its memory) per message."""
        if self.client is None:
            return
        if len(self._outbox) == self._outbox.maxlen:
            self.publish_dropped += 1
        self._outbox.append((topic, obj, retain))
        self._wake_sender.set()

    async def _sender(self, client: aiomqtt.Client) -> None:
        """Publish the outbox with at most MAX_INFLIGHT messages awaiting their PUBACK."""
        inflight: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake_sender.wait()
                self._wake_sender.clear()
                while self._outbox:
                    while len(inflight) >= MAX_INFLIGHT:
                        done, inflight = await asyncio.wait(
                            inflight, return_when=asyncio.FIRST_COMPLETED)
                        if any(t.exception() is not None for t in done):
                            return  # the connection broke: the rest waits for the next
                    topic, obj, retain = self._outbox.popleft()
                    if len(self._outbox) < self._outbox_high:
                        self._room.set()
                    inflight.add(asyncio.get_running_loop().create_task(
                        self._publish(client, topic, obj, retain)))
        finally:
            for t in inflight:
                t.cancel()

    async def _publish(self, client: aiomqtt.Client, topic: str, obj: dict[str, Any],
                       retain: bool) -> None:
        try:
            await client.publish(topic, json.dumps(obj, default=str), qos=1, retain=retain)
        except aiomqtt.MqttError as exc:
            log.info("publish to %s failed: %s", topic, exc)
            if topic == self.t["events"]:
                self.backlog.append(obj)
            raise

    async def _wait_for_room(self) -> None:
        """Backpressure: a push is taken only when its answer has room in the outbox, so
        every push handled is answered (a flood then fills the bounded incoming queue,
        whose overflow is counted as dropped)."""
        while len(self._outbox) >= self._outbox_high:
            self._room.clear()
            await self._room.wait()

    def status_message(self, s: Status) -> dict[str, Any]:
        return {"online": True, "node": self.node, "board": s.board,
                "mission": to_json(s.mission), "degraded": to_json(s.degraded),
                "partitions": [{"name": p.name, "criticality": p.criticality, "cpus": p.cpus,
                                "quota_us": p.quota_us, "period_us": p.period_us,
                                "workloads": [{"name": w.name, "state": w.state}
                                              for w in p.workloads]}
                               for p in s.partitions], "at": self.engine.platform.wall()}

    def _publish_status(self, s: Status | None = None) -> None:
        self._send(self.t["status"], self.status_message(s or self.engine.snapshot()),
                   retain=True)

    def publish_telemetry(self) -> None:
        if not self.connected:
            return
        s = self.engine.snapshot()
        usage = {p.name: to_json(p.usage) for p in s.partitions if p.usage is not None}
        timing = {f"{p.name}/{w.name}": to_json(w.timing) for p in s.partitions
                  for w in p.workloads if w.timing is not None}
        self._send(self.t["telemetry"], {"node": self.node, "at": self.engine.platform.wall(),
                                         "partitions": usage, "timing": timing})
        self._publish_status(s)

    # -- connection ------------------------------------------------------------------
    async def run_forever(self) -> None:
        """Connect, serve, and reconnect with jittered exponential backoff."""
        will = aiomqtt.Will(self.t["status"], json.dumps({"online": False, "node": self.node}),
                            qos=1, retain=True)
        delay = BACKOFF_MIN_S
        while True:
            try:
                args = client_args(self.cfg, self.node, will)
                args.update(queue_type=counting_queue(self._dropped, self.cfg.max_queued_bytes),
                            logger=CLIENT_LOG)
                async with aiomqtt.Client(**args) as client:
                    self.client, self.connected, delay = client, True, BACKOFF_MIN_S
                    # A plain task, not a TaskGroup: the group would wrap the MqttError
                    # that ends a connection and the reconnect below would not see it.
                    sender = asyncio.get_running_loop().create_task(
                        self._sender(client), name="mqtt-sender")
                    self.engine.events.emit("mqtt.connected", "mqtt", self.cfg.url)
                    await client.subscribe(self.t["profiles"], qos=1)
                    self._publish_status()
                    while self.backlog:
                        self._send(self.t["events"], self.backlog.popleft())
                    try:
                        async for message in client.messages:
                            await self._wait_for_room()
                            ack = await self.handle(payload_bytes(message.payload))
                            self._send(self.t["acks"], ack)
                    finally:
                        sender.cancel()
                        await asyncio.gather(sender, return_exceptions=True)
            except aiomqtt.MqttError as exc:
                if self.connected:
                    self.engine.events.emit("mqtt.disconnected", "mqtt", str(exc), "warning")
                self.connected, self.client = False, None
                # Jitter spreads a fleet's reconnects after a broker restart.
                wait = delay * (0.5 + random.random())  # noqa: S311 - jitter, not crypto
                await asyncio.sleep(wait)
                delay = min(BACKOFF_MAX_S, delay * 2)
            finally:
                self.connected, self.client = False, None

    async def close(self) -> None:
        """Flush what is queued (for a second at most), then say goodbye (retained
        offline status)."""
        clock = self.engine.platform.monotonic
        deadline = clock() + 1.0
        while self.connected and self._outbox and clock() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # a bounded wait at shutdown: polling is the simple way
        if self.connected and self.client is not None:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                await asyncio.wait_for(self.client.publish(
                    self.t["status"], json.dumps({"online": False, "node": self.node}),
                    qos=1, retain=True), 2.0)

    def status(self) -> MqttStatus:
        return MqttStatus(
            url=self.cfg.url, connected=self.connected, backlog=len(self.backlog),
            pushes=dict(self.pushes), internal_errors=self.internal_errors,
            dropped=self._dropped[0], publish_dropped=self.publish_dropped,
            last_push=self.last_push, insecure_lab_mode=self.cfg.insecure_lab_mode,
            flying_revoked=self.revoked_origin(), ledger_unsaved=self.ledger.unsaved,
            ledger_not_before=self.ledger.not_before or None)
