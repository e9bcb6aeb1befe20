"""Signed profile envelopes: Ed25519 over the exact payload bytes and the header.

Wire format (one JSON object, ASCII)::

    {"v": 1, "kid": KEY_ID, "node": NODE, "name": MISSION, "generation": N,
     "iat": UNIX_S, "exp": UNIX_S, "payload": BASE64(profile bytes), "sig": BASE64}

The signature covers ``sortie-envelope-v1`` + the header fields in a fixed order + the
payload bytes, so no field can be changed or moved between envelopes. Verification
(size, envelope shape, key, signature, node, freshness) happens before the profile in
the payload is parsed at all; the caller then checks the generation against what it
has accepted before, and that the profile says the same name and generation.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from agent.errors import AgentError

VERSION = 1
DOMAIN = b"sortie-envelope-v1"
MAX_CLOCK_SKEW_S = 300
DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_TTL_S = 86_400
"""An envelope may be valid for a day at most: a captured push cannot be replayed for
years (the replay ledger is the second line, and it can be lost with the disk)."""
# The signed header joins its fields with newlines: names that cannot hold one (or any
# other separator) keep that encoding unambiguous.
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
MAX_INT = 2**63 - 1


class EnvelopeError(AgentError):
    """An envelope is refused; ``reason`` is safe to send back to the planner."""

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class Envelope:
    kid: str
    node: str
    name: str
    generation: int
    iat: int
    exp: int
    payload: bytes
    sig: bytes


def signed_bytes(kid: str, node: str, name: str, generation: int, iat: int, exp: int,
                 payload: bytes) -> bytes:
    header = f"{VERSION}\n{kid}\n{node}\n{name}\n{generation}\n{iat}\n{exp}\n".encode()
    return DOMAIN + b"\n" + header + payload


def seal(key: Ed25519PrivateKey, kid: str, node: str, name: str, generation: int,
         payload: bytes, ttl_s: int = 600, now: float | None = None) -> bytes:
    """A signed envelope for ``payload`` (the profile file's exact bytes)."""
    iat = int(now if now is not None else time.time())
    exp = iat + ttl_s
    sig = key.sign(signed_bytes(kid, node, name, generation, iat, exp, payload))
    doc = {"v": VERSION, "kid": kid, "node": node, "name": name, "generation": generation,
           "iat": iat, "exp": exp, "payload": base64.b64encode(payload).decode(),
           "sig": base64.b64encode(sig).decode()}
    return json.dumps(doc, separators=(",", ":")).encode()


def _field(doc: Mapping[str, object], name: str, kind: type) -> object:
    value = doc.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise EnvelopeError(f"missing or not a {kind.__name__}", name)
    if isinstance(value, int) and not 0 <= value <= MAX_INT:
        raise EnvelopeError("out of range", name)
    return value


def _name(doc: Mapping[str, object], name: str, pattern: re.Pattern[str]) -> str:
    value = str(_field(doc, name, str))
    if not pattern.match(value):
        raise EnvelopeError(f"not a valid name (must match {pattern.pattern})", name)
    return value


def parse(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> Envelope:
    """The envelope's fields, checked for shape only (nothing is trusted yet)."""
    if len(data) > max_bytes:
        raise EnvelopeError(f"{len(data)} bytes is over the {max_bytes} byte limit")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad UTF-8, bad JSON and integers past Python's digit limit.
        raise EnvelopeError(f"not a JSON envelope ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise EnvelopeError("not a JSON object")
    v = doc.get("v")
    if type(v) is not int or v != VERSION:
        raise EnvelopeError(f"unsupported envelope version {str(v)[:20]!r}", "v")
    try:
        payload = base64.b64decode(str(_field(doc, "payload", str)), validate=True)
        sig = base64.b64decode(str(_field(doc, "sig", str)), validate=True)
    except ValueError:  # binascii.Error, and non-ASCII text
        raise EnvelopeError("not valid base64", "payload/sig") from None
    return Envelope(kid=_name(doc, "kid", KEY_ID), node=_name(doc, "node", NAME),
                    name=_name(doc, "name", NAME),
                    generation=int(_field(doc, "generation", int)),  # type: ignore[call-overload]
                    iat=int(_field(doc, "iat", int)),  # type: ignore[call-overload]
                    exp=int(_field(doc, "exp", int)),  # type: ignore[call-overload]
                    payload=payload, sig=sig)


def is_revoked(kid: str, key: Ed25519PublicKey | None, revoked: set[str]) -> bool:
    """Revocation names a key id or the public key itself (base64): the same key under
    another id is revoked too."""
    return kid in revoked or (key is not None and public_text(key) in revoked)


def verify(env: Envelope, trusted: Mapping[str, Ed25519PublicKey], revoked: set[str],
           node: str, now: float | None = None, max_ttl_s: int = DEFAULT_MAX_TTL_S) -> None:
    """Raise EnvelopeError unless a trusted, unrevoked key signed it for this node, now."""
    key = trusted.get(env.kid)
    if is_revoked(env.kid, key, revoked):
        raise EnvelopeError(f"key {env.kid!r} is revoked", "kid")
    if key is None:
        raise EnvelopeError(f"key {env.kid!r} is not trusted by this board", "kid")
    try:
        key.verify(env.sig, signed_bytes(env.kid, env.node, env.name, env.generation,
                                         env.iat, env.exp, env.payload))
    except InvalidSignature:
        raise EnvelopeError("bad signature", "sig") from None
    if env.node != node:
        raise EnvelopeError(f"envelope is for node {env.node!r}, this is {node!r}", "node")
    t = time.time() if now is None else now
    if env.iat > t + MAX_CLOCK_SKEW_S:
        raise EnvelopeError("issued in the future (clock skew?)", "iat")
    if env.exp <= t:
        raise EnvelopeError(f"expired {int(t - env.exp)} s ago", "exp")
    if env.exp - env.iat > max_ttl_s:
        raise EnvelopeError(f"valid for {env.exp - env.iat} s, longer than this board "
                            f"accepts ({max_ttl_s} s)", "exp")


# -- keys ----------------------------------------------------------------------------
def generate(directory: Path, kid: str) -> tuple[Path, Path]:
    """Write KID.key (private, 0600) and KID.pub (public) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    priv = directory / f"{kid}.key"
    pub = directory / f"{kid}.pub"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    priv.touch(mode=0o600, exist_ok=False)
    priv.write_bytes(pem)
    pub.write_text(public_text(key.public_key()) + "\n")
    return priv, pub


def public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_public(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:  # binascii.Error is one
        raise AgentError(f"not an Ed25519 public key (base64 of 32 bytes): {exc}") from exc


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AgentError(f"{path}: cannot load the signing key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise AgentError(f"{path}: not an Ed25519 key")
    return key
