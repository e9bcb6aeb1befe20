"""Signed pushes over a real mosquitto: envelopes, replay protection, acks, status and
telemetry seen by mosquitto_sub, TLS with passwords and ACLs, a broker that goes away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import MqttConfig
from agent.sources.ledger import GenerationLedger
from agent.sources.mqtt import MqttLink
from agent.sources.signing import EnvelopeError, generate, parse, seal, verify
from tests.brokers import plain_broker, tls_broker
from tests.conftest import CGROUP_ROOT, REPO, needs_root_v1
from tests.helpers import mission_doc, partition, wait_for, workload

NODE = "board-7"
KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
TRUSTED = {"planner": KEY.public_key()}


def profile(gen: int = 1, **kw) -> bytes:
    return yaml.safe_dump(mission_doc(partition("p", workloads=[workload("w")]),
                                      name="m", generation=gen, **kw)).encode()


# -- envelopes (pure) ----------------------------------------------------------------
def test_a_sealed_envelope_verifies() -> None:
    env = parse(seal(KEY, "planner", NODE, "m", 1, profile()))
    verify(env, TRUSTED, set(), NODE)
    assert env.payload == profile()


@pytest.mark.parametrize("mutate,field,reason", [
    (lambda d: d.replace(b'"generation":1', b'"generation":2'), "sig", "bad signature"),
    (lambda d: d.replace(b'"node":"board-7"', b'"node":"board-8"'), "sig", "bad signature"),
])
def test_tampering_breaks_the_signature(mutate, field, reason) -> None:
    env = parse(mutate(seal(KEY, "planner", NODE, "m", 1, profile())))
    with pytest.raises(EnvelopeError) as exc:
        verify(env, TRUSTED, set(), NODE)
    assert (exc.value.field, exc.value.reason) == (field, reason)


def test_keys_nodes_and_time() -> None:
    def check(data: bytes, revoked=frozenset(), node=NODE, now=None) -> str:
        with pytest.raises(EnvelopeError) as exc:
            verify(parse(data), TRUSTED, set(revoked), node, now)
        return exc.value.reason

    assert "not trusted" in check(seal(OTHER, "intruder", NODE, "m", 1, profile()))
    assert "bad signature" in check(seal(OTHER, "planner", NODE, "m", 1, profile()))
    assert "revoked" in check(seal(KEY, "planner", NODE, "m", 1, profile()), {"planner"})
    assert "for node 'board-7'" in check(seal(KEY, "planner", NODE, "m", 1, profile()),
                                         node="board-9")
    assert "expired" in check(seal(KEY, "planner", NODE, "m", 1, profile(), ttl_s=10),
                              now=time.time() + 60)
    assert "future" in check(seal(KEY, "planner", NODE, "m", 1, profile(),
                                  now=time.time() + 3600))


def test_oversized_and_deeply_nested_are_refused_before_parsing() -> None:
    with pytest.raises(EnvelopeError, match="over the 1024 byte limit"):
        parse(b"x" * 2000, max_bytes=1024)
    with pytest.raises(EnvelopeError, match="not a JSON envelope"):
        parse(b"[" * 100_000 + b"]" * 100_000, max_bytes=1 << 20)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048) | st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20).map(lambda v: json.dumps(v).encode()))
def test_any_payload_is_refused_with_a_reason_or_verified(data: bytes) -> None:
    try:
        verify(parse(data), TRUSTED, set(), NODE)
    except EnvelopeError as exc:
        assert exc.reason
    else:  # pragma: no cover - random bytes never carry a valid signature
        raise AssertionError("an unsigned payload verified")


def test_ledger_blocks_replays_across_restarts(tmp_path: Path) -> None:
    led = GenerationLedger(tmp_path)
    assert led.check("m", 3, "aa").fresh
    led.record("m", 3, "aa")
    again = GenerationLedger(tmp_path)  # after a restart
    assert again.check("m", 3, "aa").duplicate
    assert "older" in again.check("m", 2, "bb").reason
    assert "different content" in again.check("m", 3, "bb").reason
    assert again.check("m", 4, "cc").fresh


def test_keygen_writes_a_usable_pair(tmp_path: Path) -> None:
    priv, pub = generate(tmp_path, "ops")
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    from agent.sources.signing import load_private, load_public
    key = load_private(priv)
    env = parse(seal(key, "ops", NODE, "m", 1, profile()))
    verify(env, {"ops": load_public(pub.read_text())}, set(), NODE)


# -- against a real broker -------------------------------------------------------------
def sub(port: int, topic: str, count: int = 1, timeout: int = 10, extra: list[str] | None
        = None) -> list[dict]:
    out = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                          "-C", str(count), "-W", str(timeout), *(extra or [])],
                         capture_output=True, text=True, timeout=timeout + 5, check=False)
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@contextlib.asynccontextmanager
async def flying(cfg: MqttConfig, agent_config: AgentConfig, board: HardwareProfile,
                 connect_s: float = 15) -> AsyncIterator[tuple[Engine, MqttLink]]:
    """An engine on real cgroups with its MQTT link connected; torn down after."""
    engine = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                    StateStore(agent_config.state_dir))
    await engine.start()
    link = MqttLink(cfg, NODE, engine, GenerationLedger(agent_config.state_dir))
    engine.sources.mqtt = link.status
    task = asyncio.get_running_loop().create_task(link.run_forever())
    try:
        await wait_for(lambda: link.connected, connect_s)
        yield engine, link
    finally:
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.shutdown(teardown=True)


class Rig:
    def __init__(self, engine: Engine, link: MqttLink) -> None:
        self.engine, self.link = engine, link


@pytest.fixture
async def rig(tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile
              ) -> AsyncIterator[tuple[Rig, object, Path]]:
    keys = tmp_path / "keys"
    generate(keys, "planner")
    pub = (keys / "planner.pub").read_text().strip()
    with plain_broker(tmp_path) as broker:
        cfg = MqttConfig(url=broker.url, trusted_keys={"planner": pub},
                         revoked_keys=["old"])
        async with flying(cfg, agent_config, board) as (engine, link):
            yield Rig(engine, link), broker, keys


def push_cli(broker, keys: Path, path: Path, node: str = NODE, timeout: float = 10):
    return subprocess.run([sys.executable, "-m", "agent.cli", "push", str(path), "--node", node,
                           "--key", str(keys / "planner.key"), "--broker", broker.url,
                           "--timeout", str(timeout), "-o", "json"], capture_output=True,
                          text=True, cwd=REPO, timeout=timeout + 20, check=False)


@needs_root_v1
async def test_push_applies_and_standard_tools_see_the_board(rig, tmp_path: Path) -> None:
    r, broker, keys = rig
    (tmp_path / "m.yaml").write_bytes(profile(1))
    res = await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")
    assert res.returncode == 0, res.stderr
    ack = json.loads(res.stdout)
    assert ack["outcome"] == "applied" and ack["ref"]["generation"] == 1
    prefix = r.engine.backend.prefix
    procs = CGROUP_ROOT / "pids" / prefix / "p-p" / "w-w" / "cgroup.procs"
    assert procs.read_text().split() == [str(r.engine.runners["p"]["w"].pid)]
    flying = r.engine.flying()
    assert flying is not None and flying.origin.source == "mqtt"
    assert flying.origin.kid == "planner"
    (status,) = await asyncio.to_thread(sub, broker.port, f"sortie/v1/{NODE}/status")
    assert status["online"] and status["mission"]["name"] == "m"
    # the same push again (QoS 1 redelivery): answered, nothing re-applied
    again = await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")
    assert json.loads(again.stdout)["outcome"] == "duplicate"
    src = r.engine.snapshot().sources.mqtt
    assert src is not None and src.connected and src.last_push is not None
    assert src.last_push.outcome == "duplicate"
    assert src.pushes == {"applied": 1, "duplicate": 1, "rejected": 0, "held": 0,
                          "superseded": 0}


@needs_root_v1
async def test_bad_pushes_are_answered_and_change_nothing(rig, tmp_path: Path) -> None:
    r, broker, keys = rig
    (tmp_path / "m.yaml").write_bytes(profile(5))
    assert (await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")).returncode == 0
    pid = r.engine.runners["p"]["w"].pid
    acks: list[dict] = []

    async def raw(data: bytes) -> dict:
        return await r.link.handle(data)

    acks.append(await raw(b"\x00\xffrandom"))
    acks.append(await raw(b'{"v": 1, "kid": "planner", "node"'))  # truncated
    acks.append(await raw(json.dumps({"v": 1, "kid": 7}).encode()))  # wrong types
    acks.append(await raw(seal(OTHER, "planner", NODE, "m", 6, profile(6))))  # bad sig
    acks.append(await raw(seal(OTHER, "old", NODE, "m", 6, profile(6))))  # revoked
    older = profile(4)
    from agent.sources.signing import load_private
    k = load_private(keys / "planner.key")
    acks.append(await raw(seal(k, "planner", NODE, "m", 4, older)))  # lower generation
    acks.append(await raw(seal(k, "planner", "other-board", "m", 7, profile(7))))
    acks.append(await raw(seal(k, "planner", NODE, "m", 7, profile(7), ttl_s=-1)))
    acks.append(await raw(b"x" * (300 * 1024)))  # oversized
    bad_fit = yaml.safe_dump(mission_doc(partition("p", quota=500, cores=[9]), name="m",
                                         generation=8)).encode()
    acks.append(await raw(seal(k, "planner", NODE, "m", 8, bad_fit)))
    assert all(a["outcome"] == "rejected" and a["reasons"] for a in acks), acks
    paths = {r2["path"] for a in acks for r2 in a["reasons"]}
    assert {"envelope.sig", "envelope.kid", "generation", "envelope.node", "envelope.exp",
            "partitions[0].budget.quota_us"} <= paths
    assert r.engine.runners["p"]["w"].pid == pid and r.engine.mission.generation == 5


@needs_root_v1
async def test_no_answer_exits_3(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate(keys, "planner")
    (tmp_path / "m.yaml").write_bytes(profile(1))
    with plain_broker(tmp_path) as broker:
        res = await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml",
                                      "nobody-home", 1.5)
    assert res.returncode == 3 and "no answer" in res.stderr


@needs_root_v1
async def test_a_push_to_a_held_board_is_answered_held_then_applied_on_release(
        rig, tmp_path: Path) -> None:
    r, broker, keys = rig
    (tmp_path / "m.yaml").write_bytes(profile(1))
    assert (await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")).returncode == 0
    await r.engine.hold("operator", "taxiing")
    (tmp_path / "m2.yaml").write_bytes(profile(2))
    later = asyncio.get_running_loop().create_task(asyncio.to_thread(
        sub, broker.port, f"sortie/v1/{NODE}/acks", 2, 20))
    await asyncio.sleep(0.5)  # subscribed before the push
    res = await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m2.yaml")
    assert res.returncode == 4, res.stderr  # held
    ack = json.loads(res.stdout)
    assert ack["outcome"] == "held" and "taxiing" in ack["reason"]
    assert r.engine.mission.generation == 1
    await r.engine.release("operator")
    acks = await later
    assert [a["outcome"] for a in acks] == ["held", "applied"]
    assert acks[1]["ref"]["generation"] == 2 and r.engine.mission.generation == 2
    # Taken once: the same push again is a duplicate (the ledger recorded it on apply).
    again = await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m2.yaml")
    assert json.loads(again.stdout)["outcome"] == "duplicate"


@needs_root_v1
async def test_broker_loss_keeps_the_mission_and_backlogs_events(rig, tmp_path: Path) -> None:
    r, broker, keys = rig
    (tmp_path / "m.yaml").write_bytes(profile(1))
    assert (await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")).returncode == 0
    pid = r.engine.runners["p"]["w"].pid
    broker.stop()
    await wait_for(lambda: not r.link.connected, 10)
    r.engine.events.emit("test.marker", "test", "while the broker is away")
    assert r.link.backlog and r.engine.runners["p"]["w"].pid == pid
    broker.start()
    await wait_for(lambda: r.link.connected, 40)
    await wait_for(lambda: not r.link.backlog, 10)
    assert r.engine.runners["p"]["w"].pid == pid


@needs_root_v1
async def test_tls_passwords_and_acls(tmp_path: Path, agent_config: AgentConfig,
                                      board: HardwareProfile) -> None:
    keys = tmp_path / "keys"
    generate(keys, "planner")
    (tmp_path / "board.pw").write_text("s3cret-board")
    (tmp_path / "planner.pw").write_text("s3cret-planner")
    with tls_broker(tmp_path, NODE, {NODE: "s3cret-board", "planner": "s3cret-planner"}) as b:
        cfg = MqttConfig(url=b.url, username=NODE, password_file=tmp_path / "board.pw",
                         ca_file=b.ca, trusted_keys={
                             "planner": (keys / "planner.pub").read_text().strip()})
        async with flying(cfg, agent_config, board) as (engine, _link):
            (tmp_path / "m.yaml").write_bytes(profile(1))
            res = await asyncio.to_thread(subprocess.run, [
                sys.executable, "-m", "agent.cli", "push", str(tmp_path / "m.yaml"),
                "--node", NODE, "--key", str(keys / "planner.key"), "--broker", b.url,
                "--username", "planner", "--password-file", str(tmp_path / "planner.pw"),
                "--ca-file", str(b.ca), "--timeout", "10"], capture_output=True, text=True,
                cwd=REPO, timeout=40, check=False)
            assert res.returncode == 0, res.stderr
            assert engine.mission is not None and engine.origin is not None \
                and engine.origin.source == "mqtt"
            # without the password the broker turns a client away
            denied = await asyncio.to_thread(subprocess.run, [
                "mosquitto_pub", "-h", "localhost", "-p", str(b.port), "--cafile", str(b.ca),
                "-u", "planner", "-P", "wrong", "-t", "x", "-m", "y"], capture_output=True,
                timeout=20, check=False)
            assert denied.returncode != 0


@needs_root_v1
async def test_telemetry_events_and_watch(rig, tmp_path: Path) -> None:
    r, broker, keys = rig
    (tmp_path / "m.yaml").write_bytes(profile(1))
    assert (await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")).returncode == 0
    watcher = asyncio.create_task(asyncio.to_thread(subprocess.run, [
        sys.executable, "-m", "agent.cli", "watch", "--node", NODE, "--broker", broker.url,
        "--seconds", "3"], capture_output=True, text=True, cwd=REPO, timeout=30,
        check=False))
    tele = asyncio.create_task(asyncio.to_thread(sub, broker.port,
                                                 f"sortie/v1/{NODE}/telemetry"))
    await asyncio.sleep(1.0)
    r.engine.sample()
    await asyncio.sleep(0.3)
    r.engine.sample()
    r.link.publish_telemetry()
    r.engine.events.emit("test.hello", "test", "seen by mosquitto_sub")
    (t,) = await tele
    assert "p" in t["partitions"] and 0 <= t["partitions"]["p"]["share"] <= 0.21
    out = (await watcher).stdout
    assert "status     online mission m generation 1" in out
    assert "event      test.hello test: seen by mosquitto_sub" in out


@needs_root_v1
async def test_unsigned_profiles_only_in_lab_mode(tmp_path: Path, agent_config: AgentConfig,
                                                  board: HardwareProfile, caplog) -> None:
    engine = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                    StateStore(agent_config.state_dir))
    await engine.start()
    try:
        strict = MqttLink(MqttConfig(url="mqtt://127.0.0.1:1"), NODE, engine,
                          GenerationLedger(tmp_path / "a"))
        assert (await strict.handle(profile(1)))["outcome"] == "rejected"
        lab = MqttLink(MqttConfig(url="mqtt://127.0.0.1:1", insecure_lab_mode=True), NODE,
                       engine, GenerationLedger(tmp_path / "b"))
        assert "insecure_lab_mode is ON" in caplog.text
        ack = await lab.handle(profile(1))
        assert ack["outcome"] == "applied" and engine.origin is not None \
            and engine.origin.signed is False
    finally:
        await engine.shutdown(teardown=True)


@needs_root_v1
def test_sortie_run_flies_what_a_planner_pushes(tmp_path: Path, prefix: str) -> None:
    """The whole path: `sortie run` with an mqtt section, `sortie push`, `sortie status`."""
    keys = tmp_path / "keys"
    generate(keys, "planner")
    logs = Path(f"/tmp/{prefix}-logs")
    with plain_broker(tmp_path) as broker:
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(yaml.safe_dump({
            "node_name": NODE, "state_dir": str(tmp_path / "state"),
            "run_dir": str(tmp_path / "run"), "log_dir": str(logs), "cgroup_prefix": prefix,
            "agent_cgroup": False, "isolate_os": False, "accounting_period_ms": 200,
            "report_dir": None, "profile_dirs": [str(tmp_path / "none")],
            "mqtt": {"url": broker.url, "trusted_keys": {
                "planner": (keys / "planner.pub").read_text().strip()}}}))
        (tmp_path / "none").mkdir()
        agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                  str(cfg), "--teardown"], cwd=REPO,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            online = sub(broker.port, f"sortie/v1/{NODE}/status", timeout=20)
            assert online and online[0]["online"]
            (tmp_path / "m.yaml").write_bytes(profile(3))
            res = push_cli(broker, keys, tmp_path / "m.yaml")
            assert res.returncode == 0, res.stderr
            st = json.loads(subprocess.run(
                [sys.executable, "-m", "agent.cli", "status", "--config", str(cfg), "-o",
                 "json"], capture_output=True, text=True, cwd=REPO, check=True).stdout)
            assert st["mission"]["origin"]["source"] == "mqtt"
            assert st["mission"]["generation"] == 3
            assert st["sources"]["mqtt"]["connected"]
            tele = sub(broker.port, f"sortie/v1/{NODE}/telemetry", timeout=10)
            assert "p" in tele[0]["partitions"]
        finally:
            agent.terminate()
            agent.wait(timeout=30)
        offline = sub(broker.port, f"sortie/v1/{NODE}/status", timeout=5)
        assert offline and offline[0]["online"] is False
    import shutil
    shutil.rmtree(logs, ignore_errors=True)


@needs_root_v1
async def test_client_certificates_and_acls(tmp_path: Path, agent_config: AgentConfig,
                                            board: HardwareProfile) -> None:
    """A broker that requires client certificates; a board may not write another
    board's tree (the ACL drops it), while its own status gets through."""
    from tests.brokers import client_cert
    (tmp_path / "board.pw").write_text("pw-board")
    with tls_broker(tmp_path, NODE, {NODE: "pw-board", "board-8": "pw-8",
                                     "planner": "pw-p"}, require_certificate=True) as b:
        cert, key = client_cert(tmp_path, NODE)
        cfg = MqttConfig(url=b.url, username=NODE, password_file=tmp_path / "board.pw",
                         ca_file=b.ca, cert_file=cert, key_file=key)
        async with flying(cfg, agent_config, board):
            pcert, pkey = client_cert(tmp_path, "planner")
            tls = ["--cafile", str(b.ca), "--cert", str(pcert), "--key", str(pkey)]

            def planner_sub(topic: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(["mosquitto_sub", "-h", "localhost", "-p", str(b.port),
                                       *tls, "-u", "planner", "-P", "pw-p", "-t", topic,
                                       "-C", "1", "-W", "3"], capture_output=True, text=True,
                                      timeout=20, check=False)

            own = await asyncio.to_thread(planner_sub, f"sortie/v1/{NODE}/status")
            assert '"online": true' in own.stdout
            # board-7 (with its certificate) tries to speak for board-8: dropped by the ACL
            await asyncio.to_thread(subprocess.run, [
                "mosquitto_pub", "-h", "localhost", "-p", str(b.port), *tls[:2],
                "--cert", str(cert), "--key", str(key), "-u", NODE, "-P", "pw-board",
                "-q", "1", "-r", "-t", "sortie/v1/board-8/status", "-m", '{"online": true}'],
                capture_output=True, timeout=20, check=False)
            forged = await asyncio.to_thread(planner_sub, "sortie/v1/board-8/status")
            assert forged.stdout == ""
            # and without a client certificate the broker refuses the connection
            nocert = await asyncio.to_thread(subprocess.run, [
                "mosquitto_pub", "-h", "localhost", "-p", str(b.port), "--cafile", str(b.ca),
                "-u", "planner", "-P", "pw-p", "-t", "x", "-m", "y"], capture_output=True,
                timeout=20, check=False)
            assert nocert.returncode != 0
