"""`sortie rollout` over a real mosquitto to real boards (the engine and its MQTT link on
real cgroups, one prefix each): healthy waves reach every board; a generation that
crash-loops a DAL B partition is stopped in the first wave and that board is returned
to the mission it flew before, while the others never receive it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import MqttConfig
from agent.sources.ledger import GenerationLedger
from agent.sources.mqtt import MqttLink
from agent.sources.signing import generate
from agent.status import Origin
from tests.brokers import plain_broker
from tests.conftest import CGROUP_ROOT, REPO, needs_root_v1, purge_prefix
from tests.helpers import mission, mission_doc, partition, wait_for, workload

pytestmark = needs_root_v1
NODES = ["b0", "b1", "b2", "b3"]


def doc(generation: int, crash: bool = False) -> dict[str, Any]:
    fc = [workload("ctl")] if not crash else [workload(
        "ctl", ["/bin/false"], restart={"backoff_initial_ms": 10, "backoff_max_ms": 20,
                                        "crash_loop_restarts": 3})]
    return mission_doc(partition("fc", crit="B", workloads=fc), partition("log", crit="E"),
                       name="ops", generation=generation)


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile,
                url: str, pub: str) -> AsyncIterator[dict[str, Engine]]:
    engines: dict[str, Engine] = {}
    links: list[MqttLink] = []
    tasks: list[asyncio.Task[None]] = []
    prefixes = [f"{agent_config.cgroup_prefix}-{n}" for n in NODES]
    try:
        for n, prefix in zip(NODES, prefixes, strict=True):
            cfg = agent_config.model_copy(update={
                "node_name": n, "cgroup_prefix": prefix, "state_dir": tmp_path / n / "state",
                "run_dir": tmp_path / n / "run",
                "report_dir": Path(f"/tmp/{prefix}-report")})
            e = Engine(cfg, board, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
            await e.start()
            await e.submit(mission(*doc(1)["partitions"], name="ops"), Origin("config"))
            link = MqttLink(MqttConfig(url=url, trusted_keys={"planner": pub}), n, e,
                            GenerationLedger(cfg.state_dir))
            engines[n] = e
            links.append(link)
            tasks.append(asyncio.get_running_loop().create_task(link.run_forever()))
            tasks.append(asyncio.get_running_loop().create_task(e.account_forever()))
        await wait_for(lambda: all(ln.connected for ln in links), 15)
        yield engines
    finally:
        for ln in links:
            await ln.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for e in engines.values():
            await e.shutdown(teardown=True)
        for prefix in prefixes:
            purge_prefix(prefix)


async def rollout_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "agent.cli", "rollout", *args], cwd=REPO,
        capture_output=True, text=True, timeout=120, check=False)


async def test_rollout_over_mqtt_in_waves(tmp_path: Path, agent_config: AgentConfig,
                                          board: HardwareProfile) -> None:
    keys = tmp_path / "keys"
    generate(keys, "planner")
    pub = (keys / "planner.pub").read_text().strip()
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump(doc(1)))
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(doc(2)))
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(doc(3, crash=True)))
    with plain_broker(tmp_path) as broker:
        async with fleet(tmp_path, agent_config, board, broker.url, pub) as engines:
            common = ["--nodes", ",".join(NODES), "--waves", "25%,100%", "--soak", "1s",
                      "--key", str(keys / "planner.key"), "--broker", broker.url,
                      "--timeout", "60"]
            ok = await rollout_cli(str(tmp_path / "v2.yaml"), *common)
            assert ok.returncode == 0, ok.stdout + ok.stderr
            assert "wave 1/2 [" in ok.stdout and "wave 2/2 [####" in ok.stdout, ok.stdout
            assert all(e.mission is not None and e.mission.generation == 2
                       for e in engines.values())

            bad = await rollout_cli(str(tmp_path / "bad.yaml"), *common, "-o", "json",
                                    "--on-failure", "rollback",
                                    "--rollback-to", str(tmp_path / "v2.yaml"))
            assert bad.returncode == 1, bad.stdout + bad.stderr
            summary = json.loads(bad.stdout)
            assert summary["phase"] == "Failed", summary
            (first,) = [b for b, v in summary["boards"].items() if v["verdict"] != "not-sent"]
            assert "DAL B partition fc" in summary["boards"][first]["why"], summary
            assert {v["verdict"] for b, v in summary["boards"].items() if b != first} == \
                {"not-sent"}
            # The failed board flies generation 2's mission again, as generation 4; the
            # others never left generation 2.
            await wait_for(lambda: engines[first].mission is not None
                           and engines[first].mission.generation == 4, 15)
            assert engines[first].mission.partitions == engines["b0" if first != "b0"
                                                                else "b1"].mission.partitions
            assert {e.mission.generation for n, e in engines.items() if n != first} == {2}
