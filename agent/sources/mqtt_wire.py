"""What both ends of the MQTT link speak: topics, the client's connection arguments
(MQTT 5, TLS, maximum packet size), a bounded incoming queue, payloads and digests. The
board's link and the ground's ``sortie push``/``watch`` share it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import ssl
from typing import Any
from urllib.parse import urlparse

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import AgentError
from agent.models.config import MqttConfig

# Nagle's algorithm holds small packets (an MQTT PUBLISH is tiny) up to ~40 ms waiting
# for the previous ACK; a control link wants them on the wire at once.
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
PACKET_OVERHEAD = 1024
"""Fixed header, topic and properties of a PUBLISH around its payload."""


def topics(root: str, node: str) -> dict[str, str]:
    base = f"{root}/{node}"
    return {k: f"{base}/{k}" for k in ("profiles", "acks", "status", "telemetry", "events")}


def client_args(cfg: MqttConfig, node: str, will: aiomqtt.Will | None) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments for this config (TLS, credentials, last will)."""
    url = urlparse(cfg.url)
    tls = url.scheme == "mqtts"
    # MQTT 5 lets the client announce the largest packet it takes: the broker drops a
    # larger message instead of sending it, so a 13 MB push never reaches our memory.
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = cfg.max_payload_bytes + PACKET_OVERHEAD
    args: dict[str, Any] = {
        "hostname": url.hostname, "port": url.port or (8883 if tls else 1883),
        "identifier": f"sortie-{node}", "keepalive": cfg.keepalive_s, "will": will,
        "socket_options": NODELAY, "timeout": 10.0,
        "protocol": aiomqtt.ProtocolVersion.V5, "properties": props,
        "max_queued_incoming_messages": cfg.max_queued_messages,
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


def counting_queue(dropped: list[int], max_bytes: int) -> type[asyncio.Queue[aiomqtt.Message]]:
    """aiomqtt's incoming queue, bounded in messages and in payload bytes (a burst of
    large pushes must not become hundreds of MiB), counting what a flood made it drop."""

    class CountingQueue(asyncio.Queue[aiomqtt.Message]):
        queued_bytes = 0

        def put_nowait(self, item: aiomqtt.Message) -> None:
            size = len(payload_bytes(item.payload))
            if self.queued_bytes + size > max_bytes and not self.empty():
                dropped[0] += 1
                raise asyncio.QueueFull
            try:
                super().put_nowait(item)
            except asyncio.QueueFull:
                dropped[0] += 1
                raise
            self.queued_bytes += size

        def get_nowait(self) -> aiomqtt.Message:
            item = super().get_nowait()
            self.queued_bytes -= len(payload_bytes(item.payload))
            return item

    return CountingQueue


# aiomqtt warns once per dropped message and per pending publish: a flood of junk would
# become a flood of log lines. The link counts both in its status instead.
CLIENT_LOG = logging.getLogger("sortie.mqtt.client")
CLIENT_LOG.setLevel(logging.ERROR)


def payload_bytes(payload: object) -> bytes:
    """An MQTT message payload as bytes (aiomqtt hands bytes, str or numbers)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return b"" if payload is None else str(payload).encode()


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]
