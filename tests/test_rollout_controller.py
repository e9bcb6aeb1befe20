"""The rollout controller against the control-plane simulator (issue 17): boards answer
through their profiles' status as the agent writes it (scripted here: the whole agent
per board is the fleet simulator's job), the controller sends waves, soaks, stops and
rolls back, resumes after a restart, and only one replica leads."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import yaml

from agent.ground.rollout.controller import Controller, rollback_name, wave_name
from agent.models.config import KubeConfig
from agent.sources.kube import objects as ko
from agent.sources.kube.api import KubeApi
from tests.conftest import REPO
from tests.helpers import mission_doc, partition
from tests.kubesim import CRD, Cluster, cluster

NS = "sortie-missions"
BOARDS = [f"board-{i:02d}" for i in range(20)]
Answer = Callable[[str, dict[str, Any]], dict[str, Any] | None]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def rt(c: Cluster, group: str, plural: str) -> Any:
    return c.server.store.types[(group, plural)]


def setup(c: Cluster, clock: Clock) -> None:
    c.kubectl("apply", "-f", str(CRD))
    c.kubectl("apply", "-f", str(REPO / "docs" / "kube" / "missionrollout-crd.yaml"))
    c.kubectl("create", "namespace", NS)
    store = c.server.store
    for i, b in enumerate(BOARDS):
        # As a board registers: what admission decides with (two boards have 4 cores).
        facts = {"hardware": {"name": "b", "arch": "x86_64", "memory_mib": 4096,
                              "cores": [{"id": k} for k in range(4 if i < 2 else 2)],
                              "reserved": {"cores": [0], "cpu_fraction": 0.2,
                                           "memory_mib": 512}},
                 "kernel": {"rt_group_sched": True, "tick_us": 4000, "future": 1},
                 "timing": {"tick_us": 4000, "latency_us": 2000, "os_isolated": False}}
        notes = {ko.ADMISSION_FACTS: json.dumps(facts)} if i != 5 else {}
        store.create(rt(c, "", "nodes"), None, {"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": b, "labels": {"fleet": "blue"},
                                  "annotations": notes}})
    renew(c, clock, BOARDS)
    base = {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
            "metadata": {"name": "base", "namespace": NS},
            "spec": {"target": {"nodeSelector": {"fleet": "blue"}},
                     **mission_doc(partition("fc", crit="A"), name="ops", generation=1)}}
    made = store.create(rt(c, "sortie.dev", "missionprofiles"), NS, base)
    made["status"] = {"boards": {b: {"state": "Flying", "mission": {
        "name": "ops", "generation": 1}} for b in BOARDS}}
    store.replace(rt(c, "sortie.dev", "missionprofiles"), NS, "base", made, "status")


def renew(c: Cluster, clock: Clock, boards: list[str]) -> None:
    leases = rt(c, "coordination.k8s.io", "leases")
    for b in boards:
        doc = ko.lease(b, None, 40, clock())
        try:
            cur = c.server.store.get(leases, "kube-node-lease", b)
        except Exception:
            c.server.store.create(leases, "kube-node-lease", doc)
            continue
        cur["spec"] = doc["spec"]
        c.server.store.replace(leases, "kube-node-lease", b, cur, None)


def rollout(c: Cluster, **spec: Any) -> None:
    doc = {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionRollout",
           "metadata": {"name": "r", "namespace": NS},
           "spec": {"nodeSelector": {"fleet": "blue"}, "waves": ["25%", "100%"],
                    "soakSeconds": 30,
                    "mission": mission_doc(partition("fc", crit="A"), partition("new"),
                                           name="ops", generation=2), **spec}}
    c.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(doc))


def boards_answer(c: Cluster, answer: Answer) -> None:
    """Every board a rollout profile targets writes its entry, as the agent does."""
    profiles = rt(c, "sortie.dev", "missionprofiles")
    for p in c.server.store.list(profiles, NS)[0]:
        names = ((p.get("spec") or {}).get("target") or {}).get("nodeNames") or []
        entries = dict((p.get("status") or {}).get("boards") or {})
        for b in names:
            e = answer(b, p)
            if e is not None:
                entries[b] = e
        if names:
            p["status"] = {**(p.get("status") or {}), "boards": entries}
            c.server.store.replace(profiles, NS, p["metadata"]["name"], p, "status")


def flying(b: str, p: dict[str, Any]) -> dict[str, Any]:
    return {"state": "Flying", "mission": {"name": p["spec"]["name"],
                                           "generation": p["spec"]["generation"]},
            "health": [], "shed": []}


def status(c: Cluster) -> dict[str, Any]:
    return c.get_json("missionrollout", "r", "-n", NS).get("status") or {}


def targets(c: Cluster, name: str) -> list[str]:
    obj = c.get_json("missionprofile", name, "-n", NS)
    return obj["spec"]["target"]["nodeNames"]


@contextlib.asynccontextmanager
async def rolling(tmp_path: Path, **spec: Any) -> AsyncIterator[tuple[Cluster, Clock, KubeApi]]:
    """The fleet in the simulator, the rollout ``r`` applied, a client for a controller."""
    clock = Clock()
    with cluster(tmp_path) as c:
        setup(c, clock)
        rollout(c, **spec)
        a = api(c)
        try:
            yield c, clock, a
        finally:
            await a.close()


async def drive(c: Cluster, ctl: Controller, clock: Clock, answer: Answer, passes: int,
                step_s: float = 10.0) -> None:
    for _ in range(passes):
        await ctl.pass_once()
        boards_answer(c, answer)
        clock.now += step_s
        renew(c, clock, BOARDS)


def api(c: Cluster) -> KubeApi:
    return KubeApi(KubeConfig(kubeconfig=str(c.kubeconfig), namespaces=[NS]))


async def test_a_healthy_rollout_reaches_every_board_wave_by_wave(tmp_path: Path) -> None:
    async with rolling(tmp_path) as (c, clock, a):
        ctl = Controller(a, NS, "ctl-1", clock)
        await ctl.pass_once()
        assert len(targets(c, wave_name("r"))) == 5  # 25% of 20
        await drive(c, ctl, clock, flying, 3)
        st = status(c)
        assert st["phase"] == "Soaking" and st["waveOf"] == "1/2", st
        assert len(targets(c, wave_name("r"))) == 5  # nothing more while soaking
        await drive(c, ctl, clock, flying, 8)
        st = status(c)
        assert st["phase"] == "Complete", st
        assert sorted(targets(c, wave_name("r"))) == BOARDS
        assert st["boards"]["applied"] == 20 and st["boards"]["failed"] == 0
        row = c.kubectl("get", "mr", "-n", NS).stdout.splitlines()[1].split()
        assert row[:3] == ["r", "Complete", "2/2"] and row[3] == "20"


async def test_a_crash_looping_first_wave_is_stopped_and_rolled_back(tmp_path: Path) -> None:
    async with rolling(tmp_path) as (c, clock, a):
        ctl = Controller(a, NS, "ctl-1", clock)
        sick: set[str] = set()

        def answer(b: str, p: dict[str, Any]) -> dict[str, Any]:
            e = flying(b, p)
            if p["metadata"]["name"] == wave_name("r") and b in sick:
                e["health"] = [{"partition": "fc", "criticality": "A", "kind": "crash-loop",
                                "severity": "error", "at": "2026-12-01T00:00:00Z"}]
            return e
        await ctl.pass_once()
        first = targets(c, wave_name("r"))
        sick.update(first[:2])
        await drive(c, ctl, clock, answer, 4)
        st = status(c)
        assert st["phase"] == "Failed" and set(st["failedBoards"]) == set(first[:2]), st
        assert "crash-loop in DAL A partition fc" in st["message"]
        # No board beyond the first wave ever got generation 2...
        assert sorted(targets(c, wave_name("r"))) == sorted(first[2:])
        # ...and the sick ones fly the mission they flew before, as a new generation.
        back = c.get_json("missionprofile", rollback_name("r", "base"), "-n", NS)
        assert sorted(back["spec"]["target"]["nodeNames"]) == sorted(first[:2])
        assert back["spec"]["generation"] == 3 and len(back["spec"]["partitions"]) == 1
        assert st["boards"]["rolledBack"] == 2 and st["boards"]["notYetSent"] == 15


async def test_a_restarted_controller_resumes_and_only_one_replica_leads(
        tmp_path: Path) -> None:
    async with rolling(tmp_path) as (c, clock, a):
        b = api(c)
        try:
            one, two = Controller(a, NS, "ctl-1", clock), Controller(b, NS, "ctl-2", clock)
            await one.pass_once()
            await two.pass_once()
            assert one.leading and not two.leading
            await drive(c, one, clock, flying, 3, step_s=1.0)
            before = status(c)
            assert before["phase"] == "Soaking"
            # ctl-1 dies; its lease expires; ctl-2 takes over from the status.
            clock.now += 20
            renew(c, clock, BOARDS)
            await drive(c, two, clock, flying, 10)
            assert two.leading and status(c)["phase"] == "Complete"
            assert before["state"]["waves"] == status(c)["state"]["waves"]
            lease = c.get_json("lease", "sortie-rollout-controller", "-n", NS)
            assert lease["spec"]["holderIdentity"] == "ctl-2"
            assert lease["spec"]["leaseTransitions"] == 1
        finally:
            await b.close()


async def test_a_rollout_for_boards_another_is_rolling_to_is_refused(tmp_path: Path) -> None:
    async with rolling(tmp_path) as (c, clock, a):
        ctl = Controller(a, NS, "ctl-1", clock)
        await ctl.pass_once()
        other = yaml.safe_load(c.kubectl("get", "mr", "r", "-n", NS, "-o", "yaml").stdout)
        other = {"apiVersion": other["apiVersion"], "kind": "MissionRollout",
                 "metadata": {"name": "r2", "namespace": NS},
                 "spec": {**other["spec"], "nodeNames": BOARDS[:3], "nodeSelector": {}}}
        c.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(other))
        await ctl.pass_once()
        st = c.get_json("missionrollout", "r2", "-n", NS)["status"]
        assert st["phase"] == "Failed" and "still in progress" in st["message"], st
        assert "r2-wave" not in c.kubectl("get", "mp", "-n", NS).stdout


def test_the_shipped_controller_rbac_is_enough_and_the_cli_runs_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from simulator.kubeapi.rbac import Authorizer

    clock = Clock()
    with cluster(tmp_path) as c:
        setup(c, clock)
        docs = [d for d in yaml.safe_load_all((REPO / "docs" / "kube" / "controller.yaml")
                                              .read_text()) if d["kind"] != "Deployment"]
        c.server.add_subject("ctl-token", Authorizer.from_manifests(
            docs, NS, "sortie-rollout-controller"))
        as_ctl = c.server.kubeconfig(tmp_path / "ctl.kubeconfig", token="ctl-token")
        rollout(c, soakSeconds=1)
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "kube", "controller",
                                 "--kubeconfig", str(as_ctl), "--namespace", NS,
                                 "--identity", "ctl-cli", "--resync", "0.3"], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for _ in range(200):
                boards_answer(c, flying)
                clock.now = time.time()
                renew(c, clock, BOARDS)
                if status(c).get("phase") == "Complete":
                    break
                time.sleep(0.1)
            assert status(c).get("phase") == "Complete", status(c)
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
        assert [e for e in c.server.log if e[2] == 403] == [], out
        events = c.get_json("events", "-n", NS, "--field-selector",
                            "involvedObject.kind=MissionRollout")["items"]
        assert {"WaveStarted", "WaveApplied", "Complete"} <= {e["reason"] for e in events}
        described = c.kubectl("describe", "mr", "r", "-n", NS).stdout
        assert "all 2 waves applied" in described



async def test_a_mission_some_boards_would_refuse_is_refused_per_board_before_wave_one(
        tmp_path: Path) -> None:
    # Core 3 exists on two boards only.
    async with rolling(tmp_path, mission=mission_doc(
            partition("fc", crit="A", cores=[3]), name="ops", generation=2)) as (c, clock, a):
        await Controller(a, NS, "ctl-1", clock).pass_once()
        st = status(c)
        assert st["phase"] == "Failed" and "on 17 of 20 boards" in st["message"], st
        refused = st["refusedBoards"]
        assert set(refused) == set(BOARDS[2:]) - {"board-05"}  # 05 publishes no facts
        assert "cpu.dedicated_cores" in refused["board-07"][0]
        assert "r-wave" not in c.kubectl("get", "mp", "-n", NS).stdout  # nothing sent
