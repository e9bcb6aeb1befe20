"""MQTT source and telemetry: signed profiles in, acks, status, telemetry and events out.

Topics (``ROOT`` is ``sortie/v1`` by default; see docs/mqtt.md):
  ROOT/NODE/profiles   in   signed envelopes (QoS 1)
  ROOT/NODE/acks       out  one answer per push: applied / duplicate / rejected + reasons
  ROOT/NODE/status     out  retained; the last will sets it to {"online": false}
  ROOT/NODE/telemetry  out  per partition, every accounting period
  ROOT/NODE/events     out  every agent event (backlog kept while the broker is away)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import socket
import ssl
import time
from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import aiomqtt

from agent.errors import AgentError, ProfileError, Violation
from agent.events import Event
from agent.ledger import GenerationLedger
from agent.models import MissionProfile
from agent.models.config import MqttConfig
from agent.models.loading import load_text
from agent.signing import EnvelopeError, load_public, parse, verify

if TYPE_CHECKING:
    from agent.reconciling import Engine

log = logging.getLogger("sortie.mqtt")

BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 30.0
# Nagle's algorithm holds small packets (an MQTT PUBLISH is tiny) up to ~40 ms waiting
# for the previous ACK; a control link wants them on the wire at once.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def topics(root: str, node: str) -> dict[str, str]:
    base = f"{root}/{node}"
    return {k: f"{base}/{k}" for k in ("profiles", "acks", "status", "telemetry", "events")}


def client_args(cfg: MqttConfig, node: str, will: aiomqtt.Will | None) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments for this config (TLS, credentials, last will)."""
    url = urlparse(cfg.url)
    tls = url.scheme == "mqtts"
    args: dict[str, Any] = {
        "hostname": url.hostname, "port": url.port or (8883 if tls else 1883),
        "identifier": f"sortie-{node}", "keepalive": cfg.keepalive_s, "will": will,
        "socket_options": NODELAY, "timeout": 10.0,
    }
    if cfg.username:
        args["username"] = cfg.username
        if cfg.password_file is not None:
            try:
                args["password"] = cfg.password_file.read_text().strip()
            except OSError as exc:
                raise AgentError(f"mqtt.password_file {cfg.password_file}: "
                                 f"{exc.strerror}") from exc
    if tls:
        ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
        if cfg.cert_file is not None:
            ctx.load_cert_chain(str(cfg.cert_file),
                                str(cfg.key_file) if cfg.key_file else None)
        args["tls_context"] = ctx
    return args


def payload_bytes(payload: object) -> bytes:
    """An MQTT message payload as bytes (aiomqtt hands bytes, str or numbers)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


class MqttLink:
    def __init__(self, cfg: MqttConfig, node: str, engine: Engine,
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
        self.last_push: dict[str, Any] | None = None
        self.pushes = {"applied": 0, "duplicate": 0, "rejected": 0}
        self._pending: set[asyncio.Task[None]] = set()
        engine.events.subscribe(self._on_event)
        if cfg.insecure_lab_mode:
            log.warning("!!! mqtt.insecure_lab_mode is ON: UNSIGNED profiles are accepted. "
                        "Never fly a board like this. !!!")

    # -- pushes ----------------------------------------------------------------------
    def verify_push(self, data: bytes) -> tuple[MissionProfile, dict[str, Any], str]:
        """Check a push and parse its profile; EnvelopeError / ProfileError say why not."""
        if len(data) > self.cfg.max_payload_bytes:
            raise EnvelopeError(f"{len(data)} bytes is over the "
                                f"{self.cfg.max_payload_bytes} byte limit")
        try:
            env = parse(data, self.cfg.max_payload_bytes)
        except EnvelopeError:
            if not self.cfg.insecure_lab_mode:
                raise
            mission = load_text(MissionProfile, data, "mqtt (unsigned)")
            return mission, {"source": "mqtt", "kid": None, "signed": False,
                             "generation": mission.generation}, digest(data)
        verify(env, self.trusted, self.revoked, self.node)
        d = digest(env.payload)
        mission = load_text(MissionProfile, env.payload, f"mqtt:{env.kid}")
        if (mission.name, mission.generation) != (env.name, env.generation):
            raise EnvelopeError(f"profile says {mission.name!r} generation "
                                f"{mission.generation}, the envelope {env.name!r} "
                                f"generation {env.generation}", "payload")
        return mission, {"source": "mqtt", "kid": env.kid, "signed": True,
                         "generation": env.generation, "digest": d}, d

    async def handle(self, data: bytes) -> dict[str, Any]:
        """Answer one push (never raises for bad input)."""
        ref: dict[str, Any] = {"digest": digest(data)}
        try:
            mission, origin, d = self.verify_push(data)
            ref = {"name": mission.name, "generation": mission.generation,
                   "kid": origin.get("kid"), "digest": d}
            verdict = self.ledger.check(mission.name, mission.generation, d)
            if verdict.duplicate:
                return self._ack("duplicate", ref, [])
            if not verdict.fresh:
                return self._ack("rejected", ref, [Violation("generation", verdict.reason)])
            decision = await self.engine.submit(mission, origin)
            if decision.outcome == "rejected":
                return self._ack("rejected", ref, decision.violations)
            self.ledger.record(mission.name, mission.generation, d)
            return self._ack("applied", ref, [], errors=decision.errors)
        except EnvelopeError as exc:
            self.engine.events.emit("mqtt.push-refused", "mqtt", str(exc), "warning")
            return self._ack("rejected", ref, [Violation(f"envelope.{exc.field}"
                                                         if exc.field else "envelope",
                                                         exc.reason)])
        except ProfileError as exc:
            self.engine.events.emit("mqtt.push-refused", "mqtt", str(exc), "warning")
            return self._ack("rejected", ref, exc.violations)

    def _ack(self, outcome: str, ref: dict[str, Any], reasons: list[Violation],
             errors: list[str] | None = None) -> dict[str, Any]:
        self.pushes[outcome] += 1
        self.last_push = {"outcome": outcome, **ref, "at": time.time()}
        return {"outcome": outcome, "ref": ref, "node": self.node, "at": time.time(),
                "reasons": [{"path": v.path, "reason": v.reason} for v in reasons],
                "errors": errors or []}

    # -- outgoing --------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        msg = ev.to_dict()
        if not self.connected or self.client is None:
            self.backlog.append(msg)
            return
        self._send(self.t["events"], msg)
        if ev.kind.startswith(("mission.applied", "mission.failed", "degraded.",
                               "mode.switched", "partition.stopped")):
            self._send(self.t["status"], self.status_message(), retain=True)

    def _send(self, topic: str, obj: dict[str, Any], retain: bool = False) -> None:
        client = self.client
        if client is None:
            return

        async def go() -> None:
            try:
                await client.publish(topic, json.dumps(obj, default=str), qos=1,
                                     retain=retain)
            except aiomqtt.MqttError as exc:
                log.info("publish to %s failed: %s", topic, exc)
                if topic == self.t["events"]:
                    self.backlog.append(obj)

        task = asyncio.get_running_loop().create_task(go(), name=f"publish {topic}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def status_message(self) -> dict[str, Any]:
        s = self.engine.status()
        return {"online": True, "node": self.node, "board": s["board"],
                "mission": s["mission"], "degraded": s.get("degraded"),
                "partitions": [{k: p[k] for k in ("name", "criticality", "cpus", "quota_us",
                                                  "period_us") if k in p}
                               | {"workloads": [{"name": w["name"], "state": w["state"]}
                                                for w in p["workloads"]]}
                               for p in s["partitions"]], "at": time.time()}

    def publish_telemetry(self) -> None:
        if not self.connected:
            return
        usage = {p: u.to_dict() for p, u in self.engine.usage.items()}
        self._send(self.t["telemetry"], {"node": self.node, "at": time.time(),
                                         "partitions": usage})
        self._send(self.t["status"], self.status_message(), retain=True)

    # -- connection ------------------------------------------------------------------
    async def run_forever(self) -> None:
        """Connect, serve, and reconnect with jittered exponential backoff."""
        will = aiomqtt.Will(self.t["status"], json.dumps({"online": False, "node": self.node}),
                            qos=1, retain=True)
        delay = BACKOFF_MIN_S
        while True:
            try:
                async with aiomqtt.Client(**client_args(self.cfg, self.node, will)) as client:
                    self.client, self.connected, delay = client, True, BACKOFF_MIN_S
                    self.engine.events.emit("mqtt.connected", "mqtt", self.cfg.url)
                    await client.subscribe(self.t["profiles"], qos=1)
                    self._send(self.t["status"], self.status_message(), retain=True)
                    while self.backlog:
                        self._send(self.t["events"], self.backlog.popleft())
                    async for message in client.messages:
                        ack = await self.handle(payload_bytes(message.payload))
                        self._send(self.t["acks"], ack)
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
        """Say goodbye (retained offline status) and flush what is in flight."""
        if self.connected and self.client is not None:
            with contextlib.suppress(aiomqtt.MqttError, asyncio.TimeoutError):
                await asyncio.wait_for(self.client.publish(
                    self.t["status"], json.dumps({"online": False, "node": self.node}),
                    qos=1, retain=True), 2.0)
        for t in list(self._pending):
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await asyncio.wait_for(t, 1.0)

    def status(self) -> dict[str, Any]:
        return {"url": self.cfg.url, "connected": self.connected,
                "backlog": len(self.backlog), "pushes": self.pushes,
                "last_push": self.last_push, "insecure_lab_mode": self.cfg.insecure_lab_mode}
