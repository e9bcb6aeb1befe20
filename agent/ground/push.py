"""The planner's side of MQTT: push a signed profile and wait for the board's answer;
watch a board's status, telemetry and events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt

from agent.errors import AgentError
from agent.models import MissionProfile
from agent.models.config import MqttConfig
from agent.models.loading import load_text
from agent.sources.mqtt_wire import client_args, digest, payload_bytes, topics
from agent.sources.signing import load_private, seal


def broker_config(url: str, username: str | None, password_file: Path | None,
                  ca_file: Path | None, cert_file: Path | None, key_file: Path | None,
                  topic_root: str = "sortie/v1") -> MqttConfig:
    return MqttConfig(url=url, username=username, password_file=password_file,
                      ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                      topic_root=topic_root)


async def push(profile: Path, node: str, key: Path, kid: str, cfg: MqttConfig,
               timeout_s: float, ttl_s: int = 600) -> dict[str, Any] | None:
    """Publish a signed profile; the board's ack, or None when none came in time."""
    data = profile.read_bytes()
    mission = load_text(MissionProfile, data, str(profile))  # refuse typos before sending
    envelope = seal(load_private(key), kid, node, mission.name, mission.generation, data,
                    ttl_s)
    t = topics(cfg.topic_root, node)
    # A refusal before the profile was reached (key, signature) names the envelope.
    want = {("digest", digest(data)), ("envelope", digest(envelope))}
    try:
        async with aiomqtt.Client(**client_args(cfg, f"planner-{kid}", None)) as client:
            await client.subscribe(t["acks"], qos=1)
            await client.publish(t["profiles"], envelope, qos=1)
            async with asyncio.timeout(timeout_s):
                async for msg in client.messages:
                    try:
                        ack = json.loads(payload_bytes(msg.payload))
                        ref = ack.get("ref") or {}
                        mine = any(ref.get(k) == v for k, v in want)
                    except (ValueError, RecursionError, AttributeError):
                        continue  # not an ack of ours
                    if mine:
                        return dict(ack)
    except TimeoutError:
        return None
    except aiomqtt.MqttError as exc:
        raise AgentError(f"broker {cfg.url}: {exc}") from exc
    return None


async def watch(node: str, cfg: MqttConfig, show: Callable[[str, Any], None],
                seconds: float | None = None) -> None:
    t = topics(cfg.topic_root, node)
    try:
        async with aiomqtt.Client(**client_args(cfg, f"watch-{node}", None)) as client:
            for k in ("status", "telemetry", "events", "acks"):
                await client.subscribe(t[k], qos=1)
            async with asyncio.timeout(seconds):
                async for msg in client.messages:
                    kind = str(msg.topic).rsplit("/", 1)[-1]
                    try:
                        show(kind, json.loads(payload_bytes(msg.payload)))
                    except (ValueError, TypeError):
                        show(kind, {"raw": repr(msg.payload)[:200]})
    except TimeoutError:
        return
    except aiomqtt.MqttError as exc:
        raise AgentError(f"broker {cfg.url}: {exc}") from exc
