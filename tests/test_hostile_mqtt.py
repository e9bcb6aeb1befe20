"""Hostile pushes: nothing a stranger on the broker (or a trusted planner's mistake) can
publish stops the agent or changes what flies; each push gets its answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import MqttConfig
from agent.sources.ledger import GenerationLedger
from agent.sources.mqtt import MqttLink
from agent.sources.signing import EnvelopeError, generate, parse, public_text, seal, verify
from tests.brokers import plain_broker
from tests.conftest import CGROUP_ROOT, REPO, needs_root_v1
from tests.helpers import mission_doc, partition, wait_for_sync, workload
from tests.test_mqtt import KEY, NODE, TRUSTED, profile

PUB = public_text(KEY.public_key())


def envelope(payload: bytes, **over: object) -> bytes:
    """A validly signed envelope, then fields replaced (the signature then fails)."""
    doc = json.loads(seal(KEY, "planner", NODE, "m", 1, payload))
    doc.update(over)
    return json.dumps(doc).encode()


def signed(payload: bytes, name: str = "m", gen: int = 1, **kw: object) -> bytes:
    return seal(KEY, "planner", NODE, name, gen, payload, **kw)  # type: ignore[arg-type]


HOSTILE = {
    "huge-int-sig": b'{"v":1,"sig":' + b"1" * 5000 + b"}",
    "huge-int-gen": envelope(b"x", generation=10**40),
    "deep-array": b"[" * 100_000,
    "deep-object": b'{"v":' * 50_000,
    "not-utf8": b"\xff\xfe{}",
    "wrong-types": json.dumps({"v": 1, "kid": ["a"], "node": {}, "payload": 3}).encode(),
    "kid-with-newline": envelope(b"x", kid="planner\nboard-7"),
    "empty": b"",
    "null": b"null",
}


# -- envelopes (pure) ------------------------------------------------------------------
def test_hostile_envelopes_are_refused_by_parse() -> None:
    for name, data in HOSTILE.items():
        with pytest.raises(EnvelopeError):
            parse(data)
        assert name


def test_a_century_long_envelope_is_refused() -> None:
    env = parse(signed(profile(), ttl_s=100 * 365 * 86400))
    with pytest.raises(EnvelopeError, match="longer than this board accepts") as exc:
        verify(env, TRUSTED, set(), NODE)
    assert exc.value.field == "exp"


def test_revoking_a_public_key_revokes_it_under_every_id() -> None:
    env = parse(seal(KEY, "alias", NODE, "m", 1, profile()))
    with pytest.raises(EnvelopeError, match="revoked"):
        verify(env, {"alias": KEY.public_key()}, {PUB}, NODE)


# -- the ledger --------------------------------------------------------------------------
def test_a_lost_ledger_fails_closed(tmp_path: Path) -> None:
    led = GenerationLedger(tmp_path)
    led.record("m", 7, "aa")
    for f in (led.path, led.path.with_name(led.path.name + ".prev")):
        f.write_text("{garbage")
    lost = GenerationLedger(tmp_path, clock=lambda: 1000.0)
    old = lost.check("m", 3, "bb", issued_at=999)
    assert not old.fresh and "sign it again" in old.reason
    assert lost.check("m", 3, "bb", issued_at=1002).fresh
    # the refusal survives a restart
    assert not GenerationLedger(tmp_path).check("m", 3, "bb", issued_at=999).fresh


# -- one link on real cgroups (no broker: handle() is what each message reaches) -------
@pytest.fixture
async def link(agent_config: AgentConfig, board: HardwareProfile) -> MqttLink:
    engine = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                    StateStore(agent_config.state_dir))
    await engine.start()
    cfg = MqttConfig(url="mqtt://127.0.0.1:1", trusted_keys={"planner": PUB})
    lk = MqttLink(cfg, NODE, engine, GenerationLedger(agent_config.state_dir))
    try:
        yield lk
    finally:
        await engine.shutdown(teardown=True)


@needs_root_v1
async def test_every_hostile_push_is_answered_and_changes_nothing(link: MqttLink) -> None:
    ack = await link.handle(signed(profile(1)))
    assert ack["outcome"] == "applied", ack
    pid = link.engine.runners["p"]["w"].pid
    nested = profile(2) + b"description: " + b"[" * 3000 + b"]" * 3000 + b"\n"
    cases = {**HOSTILE, "nested-profile": signed(nested, gen=2),
             "century": signed(profile(2), gen=2, ttl_s=100 * 365 * 86400),
             "huge-int-profile": signed(profile(2).replace(
                 b"generation: 2", b"generation: " + b"9" * 5000), gen=2)}
    for name, data in cases.items():
        ack = await link.handle(data)
        assert ack["outcome"] == "rejected", (name, ack)
        assert ack["reasons"] and all(r["reason"] for r in ack["reasons"]), (name, ack)
        assert ack["ref"]["envelope"], name
    assert link.engine.runners["p"]["w"].pid == pid
    assert link.engine.mission is not None and link.engine.mission.generation == 1
    assert link.internal_errors == 0


@needs_root_v1
async def test_the_ledger_is_consulted_before_the_profile_is_parsed(link: MqttLink) -> None:
    assert (await link.handle(signed(profile(1))))["outcome"] == "applied"
    ack = await link.handle(signed(b"[" * 3000, gen=1))
    assert ack["outcome"] == "rejected"
    assert ack["reasons"][0]["path"] == "generation", ack


@needs_root_v1
async def test_a_bug_behind_a_push_is_loud_but_not_fatal(link: MqttLink,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    def boom(*_: object, **__: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(link.engine, "submit", boom)
    ack = await link.handle(signed(profile(1)))
    assert ack["outcome"] == "rejected" and "internal error" in ack["reasons"][0]["reason"]
    assert link.internal_errors == 1 and link.status().internal_errors == 1
    assert "Traceback" in caplog.text


@contextlib.contextmanager
def full_tmpfs(path: Path, size: str = "256k") -> Iterator[Path]:
    path.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    with contextlib.suppress(OSError), open(path, "wb") as f:
        while True:
            f.write(b"\0" * 4096)
            f.flush()


@needs_root_v1
async def test_a_full_disk_during_the_ledger_write_is_an_answer(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with full_tmpfs(tmp_path / "disk") as disk:
        cfg = agent_config.model_copy(update={"state_dir": disk / "state"})
        engine = Engine(cfg, board, V1Backend(CGROUP_ROOT, cfg.cgroup_prefix),
                        StateStore(cfg.state_dir))
        await engine.start()
        try:
            lk = MqttLink(MqttConfig(url="mqtt://127.0.0.1:1", trusted_keys={"planner": PUB}),
                          NODE, engine, GenerationLedger(cfg.state_dir))
            fill(disk / "filler")
            ack = await lk.handle(signed(profile(1)))
            assert ack["outcome"] == "applied", ack
            assert any("replay ledger not saved" in e for e in ack["errors"]), ack
            assert lk.status().ledger_unsaved
            # the replay protection holds in memory
            assert (await lk.handle(signed(profile(1))))["outcome"] == "duplicate"
        finally:
            await engine.shutdown(teardown=True)


@needs_root_v1
async def test_a_mission_from_a_revoked_key_is_flagged_after_restart(
        agent_config: AgentConfig, board: HardwareProfile) -> None:
    backend = V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix)
    engine = Engine(agent_config, board, backend, StateStore(agent_config.state_dir))
    await engine.start()
    cfg = MqttConfig(url="mqtt://127.0.0.1:1", trusted_keys={"planner": PUB})
    lk = MqttLink(cfg, NODE, engine, GenerationLedger(agent_config.state_dir))
    assert (await lk.handle(signed(profile(1))))["outcome"] == "applied"
    await engine.shutdown(teardown=False)
    # restart with the key revoked (by its public key, under no id at all)
    again = Engine(agent_config, board, backend, StateStore(agent_config.state_dir))
    await again.start()
    try:
        revoked = cfg.model_copy(update={"revoked_keys": [PUB]})
        lk2 = MqttLink(revoked, NODE, again, GenerationLedger(agent_config.state_dir))
        assert "revoked" in (lk2.status().flying_revoked or "")
        assert any(e.kind == "mqtt.origin-revoked" for e in again.events.recent())
    finally:
        await again.shutdown(teardown=True)


# -- the planner ------------------------------------------------------------------------
@needs_root_v1
async def test_push_with_a_revoked_key_reports_the_refusal(tmp_path: Path,
                                                           agent_config: AgentConfig,
                                                           board: HardwareProfile) -> None:
    from tests.test_mqtt import flying, push_cli
    keys = tmp_path / "keys"
    generate(keys, "planner")
    with plain_broker(tmp_path) as broker:
        cfg = MqttConfig(url=broker.url, revoked_keys=["planner"], trusted_keys={
            "planner": (keys / "planner.pub").read_text().strip()})
        async with flying(cfg, agent_config, board):
            (tmp_path / "m.yaml").write_bytes(profile(1))
            res = await asyncio.to_thread(push_cli, broker, keys, tmp_path / "m.yaml")
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    ack = json.loads(res.stdout)
    assert ack["outcome"] == "rejected" and "revoked" in ack["reasons"][0]["reason"]


# -- end to end: sortie run against a real mosquitto -----------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def mpub(port: int, topic: str, data: bytes, *extra: str) -> None:
    how = ["-s"] if data else ["-n"]  # -n: a zero-length message
    subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic,
                    "-q", "1", *how, *extra], input=data, check=True, timeout=30)


@needs_root_v1
def test_sortie_run_survives_every_hostile_message(tmp_path: Path, prefix: str) -> None:
    from tests.test_cli import pids, status, try_status
    with plain_broker(tmp_path) as broker:
        logs = Path(f"/tmp/{prefix}-logs")
        cfg = {"node_name": NODE, "state_dir": str(tmp_path / "state"),
               "run_dir": str(tmp_path / "run"), "log_dir": str(logs),
               "cgroup_prefix": prefix, "agent_cgroup": False, "isolate_os": False,
               "report_dir": None, "profile_dirs": [str(tmp_path / "profiles")],
               "mqtt": {"url": broker.url, "trusted_keys": {"planner": PUB}}}
        (tmp_path / "agent.yaml").write_text(yaml.safe_dump(cfg))
        (tmp_path / "profiles").mkdir()
        (tmp_path / "profiles" / "m.yaml").write_text(yaml.safe_dump(mission_doc(
            partition("fc", crit="A", workloads=[workload("ctl")]), name="base")))
        env = {"config": str(tmp_path / "agent.yaml")}
        log = open(tmp_path / "agent.log", "a")  # noqa: SIM115 - closed below
        agents: list[subprocess.Popen[bytes]] = []

        def start() -> subprocess.Popen[bytes]:
            p = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                  env["config"]], cwd=REPO, stdout=subprocess.DEVNULL,
                                 stderr=log)
            agents.append(p)
            wait_for_sync(lambda: len(pids(try_status(env))) == 1
                          and try_status(env)["sources"]["mqtt"]["connected"], 20)
            return p

        acks = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port),
                                 "-t", f"sortie/v1/{NODE}/acks", "-q", "1"],
                                stdout=subprocess.PIPE, text=True)
        try:
            agent = start()
            before = pids(status(env))
            topic = f"sortie/v1/{NODE}/profiles"
            nested = profile(2) + b"description: " + b"[" * 3000 + b"]" * 3000 + b"\n"
            sent = [*HOSTILE.values(), signed(nested, gen=2)]
            for data in sent:
                mpub(broker.port, topic, data)
            # retained: the broker hands it to every (re)connecting agent
            mpub(broker.port, topic, HOSTILE["huge-int-sig"], "-r")
            # larger than the board announced: the broker never delivers it
            mpub(broker.port, topic, b"{" + b" " * (13 << 20) + b"}")
            wait_for_sync(lambda: status(env)["sources"]["mqtt"]["pushes"]["rejected"]
                          >= len(sent) + 1, 20)
            assert agent.poll() is None
            assert pids(status(env)) == before

            # 1,000 hostile messages: memory stays where it was
            rss0 = rss_kib(agent.pid)
            lines = b"\n".join(HOSTILE["deep-array"][:2000] + b"%d" % i for i in range(1000))
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port),
                            "-t", topic, "-q", "1", "-l"], input=lines, check=True, timeout=60)
            def seen() -> int:
                m = status(env)["sources"]["mqtt"]
                return int(m["pushes"]["rejected"] + m["dropped"])
            wait_for_sync(lambda: seen() >= len(sent) + 1001, 60)
            m = status(env)["sources"]["mqtt"]
            status_dropped = [m["dropped"]]
            assert m["publish_dropped"] == 0, m
            grown = rss_kib(agent.pid) - rss0
            print(f"RSS {rss0} KiB before 1000 hostile messages, grew {grown} KiB")
            assert grown <= 2048, grown
            assert status(env)["sources"]["mqtt"]["internal_errors"] == 0

            # hostile profile files while it flies: each refused, none stops it
            prof = tmp_path / "profiles"
            (prof / "deep.yaml").write_text("[" * 3000)
            secret = tmp_path / "shadow"
            secret.write_text("root:$y$j9T$secretsalt$hash:19000:0:99999:7:::\n")
            (prof / "shadow.yaml").symlink_to(secret)
            os.mkfifo(prof / "fifo.yaml")
            wait_for_sync(lambda: len(status(env)["sources"]["files"]["invalid"]) >= 3, 10)
            st = status(env)
            assert agent.poll() is None and pids(st) == before
            assert "secretsalt" not in json.dumps(st)
            for f in ("deep.yaml", "shadow.yaml", "fifo.yaml"):
                (prof / f).unlink()

            # restart: the retained message is delivered again and changes nothing
            agent.terminate()
            agent.wait(15)
            agent = start()
            wait_for_sync(lambda: status(env)["sources"]["mqtt"]["pushes"]["rejected"] >= 1,
                          20)
            assert agent.poll() is None and pids(status(env)) == before
        finally:
            for p in agents:  # first: nothing below may keep an agent alive
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                mpub(broker.port, f"sortie/v1/{NODE}/profiles", b"", "-r")  # clear retained
            acks.terminate()
            out = acks.communicate(timeout=10)[0]
            log.close()
            import shutil
            shutil.rmtree(logs, ignore_errors=True)
        answered = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(answered) >= len(sent) + 1002 - status_dropped[0], len(answered)
        assert all(a["outcome"] == "rejected" for a in answered)
