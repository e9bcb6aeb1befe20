"""Fuzz surfaces: every input boundary of the agent as a function of bytes that must end
in an answer or a refusal of the boundary's own kind, never in another exception.

Used by tests/test_fuzz.py (hypothesis, a bounded number per surface in the fast suite)
and bench/fuzz.py (atheris, coverage-guided, many more). A *failure* is any exception a
surface lets out that is not its documented refusal, or an answer of the wrong shape.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.engine.platform import Platform
from agent.engine.port import Decision
from agent.engine.state import StateStore, encode
from agent.errors import ProfileError
from agent.events import EventLog
from agent.health.reports import parse as parse_report
from agent.images.store import ImageError, ImageStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile, load_text
from agent.models.config import MqttConfig
from agent.sources.kube import objects as ko
from agent.sources.kube.watching import ProfileCache
from agent.sources.ledger import GenerationLedger
from agent.sources.signing import public_text, seal
from agent.status import (
    CgroupStatus,
    DegradedStatus,
    Flying,
    MissionStatus,
    Origin,
    SourcesStatus,
    Status,
    WindowsStatus,
)
from tests.test_models import GOOD

NODE = "fuzz-board"
BOARD = HardwareProfile.model_validate({
    "name": NODE, "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})
KEY = Ed25519PrivateKey.generate()


class Refused(Exception):
    """Not raised by the agent: marks the refusals a surface may answer with."""


@dataclass
class FakeEngine:
    """What the sources see of the engine, without cgroups: a submit that flies every
    admitted mission at once. Lets the MQTT and Kubernetes sources run at fuzzing speed."""

    board: HardwareProfile
    events: EventLog = field(default_factory=EventLog)
    platform: Platform = field(default_factory=Platform)
    mission: MissionProfile | None = None
    origin: Origin | None = None

    async def submit(self, mission: MissionProfile, origin: Origin) -> Decision:
        self.mission, self.origin = mission, origin
        return Decision("applied", mission.name, mission.generation)

    async def withdraw(self, source: str, why: str) -> Decision | None:
        self.mission, self.origin = None, None
        return None

    def flying(self) -> Flying | None:
        if self.mission is None or self.origin is None:
            return None
        return Flying(self.mission.name, self.mission.generation, self.origin)

    def snapshot(self) -> Status:
        m = self.flying()
        return Status(self.board.name, CgroupStatus("v2", "fuzz"),
                      None if m is None else MissionStatus(m.name, m.generation, m.origin),
                      None, WindowsStatus(None, False, None, {}), None, {},
                      SourcesStatus(), DegradedStatus({}, None, []), [], [])


@dataclass
class Surface:
    name: str
    run: Callable[[bytes], None]
    refusals: tuple[type[BaseException], ...] = ()


class Rig:
    """One of each boundary, built once, fed many inputs."""

    def __init__(self, root: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="sortie-fuzz-",
                                         dir=str(root) if root else _fast_tmp()))
        self.loop = asyncio.new_event_loop()
        self.engine = FakeEngine(BOARD)
        from agent.sources.mqtt import MqttLink

        async def make() -> MqttLink:
            return MqttLink(MqttConfig(url="mqtt://127.0.0.1:1",
                                       trusted_keys={"planner": public_text(KEY.public_key())}),
                            NODE, self.engine,  # type: ignore[arg-type]
                            GenerationLedger(self.tmp / "ledger"))
        self.link = self.loop.run_until_complete(make())
        self.images = ImageStore(self.tmp / "images", max_import_bytes=16 << 20)
        self.cache = ProfileCache()

    def close(self) -> None:
        self.loop.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # -- surfaces --------------------------------------------------------------------------
    def _ack(self, data: bytes) -> None:
        bugs = self.link.internal_errors
        ack = self.loop.run_until_complete(self.link.handle(data))
        if ack.get("outcome") not in ("applied", "duplicate", "rejected"):
            raise AssertionError(f"not an answer: {ack!r}")
        if ack["outcome"] == "rejected" and not ack["reasons"]:
            raise AssertionError("a refusal without a reason")
        if self.link.internal_errors != bugs:
            raise AssertionError("the push reached an internal error (traceback logged)")

    def mqtt_unsigned(self, data: bytes) -> None:
        self._ack(data)

    def mqtt_signed(self, data: bytes) -> None:
        gen = 1 + sum(self.link.pushes.values())  # always fresh: the profile is reached
        self._ack(seal(KEY, "planner", NODE, "m", gen, data))

    def profile_file(self, data: bytes) -> None:
        path = self.tmp / "profile.yaml"
        path.write_bytes(data)
        from agent.models import load_file
        load_file(MissionProfile, path)

    def hardware(self, data: bytes) -> None:
        load_text(HardwareProfile, data, "hw.yaml")

    def config(self, data: bytes) -> None:
        load_text(AgentConfig, data, "agent.yaml")

    def local_api(self, data: bytes) -> None:
        from agent.api.protocol import decode
        try:
            req = decode(data)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        from agent.models.loading import validate
        if req.get("op") == "plan":
            validate(MissionProfile, req.get("mission"), "request.mission")

    def report(self, data: bytes) -> None:
        got = parse_report(data)
        if got is not None and (got[0] < 0 or got[1] <= 0
                                or (got[2] is not None and got[2] < 0)):
            raise AssertionError(f"accepted a nonsense report {got}")

    def oci_tar(self, data: bytes) -> None:
        path = self.tmp / "image.tar"
        path.write_bytes(data)
        self.images.import_path(path)

    def oci_index(self, data: bytes) -> None:
        layout = self.tmp / "layout"
        shutil.rmtree(layout, ignore_errors=True)
        layout.mkdir()
        (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (layout / "index.json").write_bytes(data)
        self.images.import_path(layout)

    def kube_object(self, data: bytes) -> None:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            raise Refused("not JSON") from None
        if not isinstance(obj, dict):
            raise Refused("not an object")
        for etype in ("ADDED", "MODIFIED", "BOOKMARK", "DELETED"):
            self.cache.apply(etype, obj)
        ko.targets(obj, NODE, {})
        ko.mission_of(obj)

    def state_file(self, data: bytes) -> None:
        d = self.tmp / "state"
        d.mkdir(exist_ok=True)
        (d / "last-known-good.json").write_bytes(data)
        StateStore(d).load()

    def state_payload(self, data: bytes) -> None:
        """A well-formed, checksummed state file whose payload is the fuzz input."""
        try:
            payload = json.loads(data)
        except (ValueError, RecursionError):
            raise Refused("not JSON") from None
        if not isinstance(payload, dict):
            raise Refused("not an object")
        d = self.tmp / "state"
        d.mkdir(exist_ok=True)
        (d / "last-known-good.json").write_bytes(encode(payload))
        StateStore(d).load()

    def ledger_file(self, data: bytes) -> None:
        d = self.tmp / "ledger-fuzz"
        d.mkdir(exist_ok=True)
        (d / "generations.json").write_bytes(data)
        (d / "generations.json.prev").unlink(missing_ok=True)
        GenerationLedger(d).check("m", 1, "aa", 0)

    def surfaces(self) -> list[Surface]:
        doc = (ProfileError,)
        return [
            Surface("mqtt-unsigned", self.mqtt_unsigned),
            Surface("mqtt-signed", self.mqtt_signed),
            Surface("profile-file", self.profile_file, doc),
            Surface("hardware-profile", self.hardware, doc),
            Surface("agent-config", self.config, doc),
            Surface("local-api", self.local_api, (Refused, ProfileError)),
            Surface("report-datagram", self.report),
            Surface("oci-tar", self.oci_tar, (ImageError,)),
            Surface("oci-index", self.oci_index, (ImageError,)),
            Surface("kube-object", self.kube_object, (Refused, ProfileError)),
            Surface("state-file", self.state_file),
            Surface("state-payload", self.state_payload, (Refused,)),
            Surface("ledger-file", self.ledger_file),
        ]


def _fast_tmp() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


# -- seeds: one valid input per surface, for mutation to start from --------------------------
GOOD_PROFILE = GOOD.encode()
GOOD_HW = b"""name: b
arch: x86_64
cores: [{id: 0}, {id: 1}]
memory_mib: 1024
reserved: {cores: [0], cpu_fraction: 0.2, memory_mib: 128, pids: 64}
"""


def _tar_seed() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
                           ("index.json", b'{"schemaVersion": 2, "manifests": []}')):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def seeds() -> dict[str, list[bytes]]:
    kube = {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
            "metadata": {"name": "m", "namespace": "sortie-missions", "uid": "u",
                         "resourceVersion": "5", "generation": 1},
            "spec": {"target": {"nodeName": NODE}, "name": "m", "generation": 1,
                     "partitions": [{"name": "p", "criticality": "A", "memory_mib": 16,
                                     "budget": {"quota_us": 2000, "period_us": 10000},
                                     "workloads": [{"name": "w", "command": ["/bin/true"]}]}]}}
    signed = seal(KEY, "planner", NODE, "m", 1, GOOD_PROFILE)
    return {
        "mqtt-unsigned": [signed, b'{"v":1}'],
        "mqtt-signed": [GOOD_PROFILE],
        "profile-file": [GOOD_PROFILE],
        "hardware-profile": [GOOD_HW],
        "agent-config": [b"node_name: b\nmqtt: {url: 'mqtt://h:1883'}\n"],
        "local-api": [b'{"op": "plan", "mission": {"name": "m"}}', b'{"op": "status"}'],
        "report-datagram": [b"job 1830 10000"],
        "oci-tar": [_tar_seed()],
        "oci-index": [b'{"schemaVersion": 2, "manifests": [{"digest": "sha256:'
                      + b"0" * 64 + b'", "size": 3}]}'],
        "kube-object": [json.dumps(kube).encode()],
        "state-file": [encode({"mission": json.loads(json.dumps(
            load_text(MissionProfile, GOOD_PROFILE, "s").model_dump(mode="json"))),
            "origin": {"source": "file"}})],
        "state-payload": [b'{"mission": {"name": "m"}, "origin": {}}'],
        "ledger-file": [encode({"missions": {"m": [1, "aa"]}, "not_before": 0})],
    }
