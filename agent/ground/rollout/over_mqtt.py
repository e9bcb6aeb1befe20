"""The same waves over MQTT, for fleets without a cluster (``sortie rollout``): the
planner signs the mission for each board of a wave, and judges each board from what it
publishes: its acks (applied, held, rejected, superseded), its retained status (online,
the mission it flies, shed partitions, each partition's criticality) and its health
events. The decisions are ``policy.py``'s, as in the cluster."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiomqtt
import yaml

from agent.errors import AgentError
from agent.ground.rollout.model import Gate
from agent.ground.rollout.policy import Health, Judged, Report, State, advance, judge, waves_of
from agent.models import MissionProfile
from agent.models.config import MqttConfig
from agent.sources.mqtt_wire import client_args, digest, payload_bytes
from agent.sources.signing import seal

Show = Callable[[State, dict[str, Judged]], None]


@dataclass
class Board:
    """What the planner has heard from one board."""

    status: dict[str, Any] | None = None
    ack: dict[str, Any] | None = None
    health: list[Health] = field(default_factory=list)
    sent_at: float | None = None
    digests: set[str] = field(default_factory=set)
    """Of what was pushed to it (acks are matched by them)."""


@dataclass
class Plan:
    mission: MissionProfile
    data: bytes
    rollback: tuple[MissionProfile, bytes] | None
    gate: Gate
    soak_s: float
    on_failure: str


def rollback_of(previous: MissionProfile, above: int) -> tuple[MissionProfile, bytes]:
    """The previous mission as a new generation (a board never goes back to a lower
    one)."""
    m = previous.model_copy(update={"generation": max(previous.generation, above) + 1})
    return m, yaml.safe_dump(m.model_dump(mode="json"), sort_keys=False).encode()


class Planner:
    def __init__(self, cfg: MqttConfig, key: Any, kid: str, plan: Plan,
                 clock: Callable[[], float] = time.time, ttl_s: int = 600) -> None:
        self.cfg, self.key, self.kid, self.plan, self.clock = cfg, key, kid, plan, clock
        self.ttl_s = ttl_s
        self.boards: dict[str, Board] = {}
        self.published = 0
        self.received = 0

    def _topic(self, node: str, leaf: str) -> str:
        return f"{self.cfg.topic_root}/{node}/{leaf}"

    async def _push(self, client: aiomqtt.Client, node: str, m: MissionProfile,
                    data: bytes) -> None:
        env = seal(self.key, self.kid, node, m.name, m.generation, data, self.ttl_s)
        b = self.boards[node]
        b.digests |= {digest(data), digest(env)}
        b.sent_at, b.ack, b.health = self.clock(), None, []
        await client.publish(self._topic(node, "profiles"), env, qos=1)
        self.published += 1

    def _heard(self, topic: str, payload: Any) -> None:
        parts = topic.split("/")
        node, leaf = parts[-2], parts[-1]
        b = self.boards.get(node)
        if b is None:
            return
        try:
            msg = json.loads(payload_bytes(payload))
        except (ValueError, RecursionError):
            return
        if not isinstance(msg, dict):
            return
        self.received += 1
        if leaf == "status":
            b.status = msg
        elif leaf == "acks":
            ref = msg.get("ref") or {}
            if ref.get("digest") in b.digests or ref.get("envelope") in b.digests:
                b.ack = msg
        elif leaf == "events" and str(msg.get("kind", "")).startswith("health.") \
                and b.ack is not None and b.ack.get("outcome") == "applied":
            part = msg.get("partition")
            crit = next((p.get("criticality") for p in (b.status or {}).get("partitions", [])
                         if p.get("name") == part), None)
            b.health.append(Health(str(part), crit, str(msg["kind"])[7:]))

    def report(self, node: str) -> Report:
        b = self.boards[node]
        st = b.status or {}
        online = bool(st.get("online"))
        waited = self.clock() - b.sent_at if b.sent_at is not None else 0.0
        ack = b.ack or {}
        outcome = ack.get("outcome")
        gen = (ack.get("ref") or {}).get("generation")
        reasons = "; ".join(f"{r.get('path')}: {r.get('reason')}"
                            for r in ack.get("reasons") or [])
        state = {"applied": "Flying", "duplicate": "Flying", "held": "Held",
                 "rejected": "Rejected", "superseded": "Superseded"}.get(str(outcome))
        if outcome == "applied" and ack.get("errors"):
            state, reasons = "Failed", "; ".join(ack["errors"])
        shed = tuple((st.get("degraded") or {}).get("shed") or ())
        return Report(state, gen if isinstance(gen, int) else None,
                      reasons or str(ack.get("reason") or ""), tuple(b.health), shed,
                      online, waited)

    async def run(self, nodes: list[str], waves: list[str], show: Show,
                  timeout_s: float, tick_s: float = 0.5) -> tuple[State, dict[str, Judged]]:
        plan = self.plan
        wv, bad = waves_of(nodes, waves, f"{plan.mission.name}/{plan.mission.generation}")
        if bad:
            raise AgentError("; ".join(str(v).replace("spec.waves", "--waves")
                                       for v in bad))
        self.boards = {n: Board() for n in nodes}
        state = State(tuple(tuple(w) for w in wv),
                      message=f"wave 1 of {len(wv)} started: {len(wv[0])} board(s)")
        judged: dict[str, Judged] = {}
        want = plan.mission.generation
        try:
            async with aiomqtt.Client(**client_args(self.cfg, f"rollout-{self.kid}",
                                                    None)) as client:
                for leaf in ("status", "acks", "events"):
                    await client.subscribe(f"{self.cfg.topic_root}/+/{leaf}", qos=1)
                reader = asyncio.get_running_loop().create_task(self._read(client))
                try:
                    async with asyncio.timeout(timeout_s):
                        await asyncio.sleep(tick_s)  # retained statuses arrive first
                        for n in state.waves[0]:
                            await self._push(client, n, plan.mission, plan.data)
                        while state.phase in ("Progressing", "Soaking"):
                            await asyncio.sleep(tick_s)
                            judged = {n: judge(self.report(n), want, plan.gate)
                                      for n in state.sent()}
                            wave = state.wave
                            step = advance(state, judged, plan.gate, plan.soak_s,
                                           plan.on_failure, self.clock())
                            state = step.state
                            for n in step.roll_back:
                                if plan.rollback is not None:
                                    await self._push(client, n, *plan.rollback)
                            if state.wave != wave:
                                for n in state.waves[state.wave]:
                                    await self._push(client, n, plan.mission, plan.data)
                            show(state, judged)
                except TimeoutError:
                    state = replace(state, phase="Paused",
                                    message=f"stopped after {timeout_s:g} s (--timeout)")
                finally:
                    reader.cancel()
        except aiomqtt.MqttError as exc:
            raise AgentError(f"broker {self.cfg.url}: {exc}") from exc
        show(state, judged)
        return state, judged

    async def _read(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            self._heard(str(msg.topic), msg.payload)
