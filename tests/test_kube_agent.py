"""The board as a Kubernetes node, end to end: the agent (real cgroups) against the
control-plane simulator, driven with the real kubectl as an operator would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import KubeConfig
from agent.sources.kube.source import KubeSource
from tests.conftest import CGROUP_ROOT, REPO, needs_root_v1
from tests.helpers import mission_doc, partition, wait_for, wait_for_sync, workload
from tests.kubesim import CRD, Cluster, board_rbac, cluster, kubectls

pytestmark = needs_root_v1

NODE = "test"


def profile(name: str, generation: int, *parts: dict[str, Any],
            target: dict[str, Any] | None = None, namespace: str = "default") -> str:
    spec = {"target": target or {"nodeName": NODE},
            **mission_doc(*(parts or (partition("p"),)), name=name, generation=generation)}
    return yaml.safe_dump({"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                           "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def cgroup_of(pid: int) -> str:
    """The process's cpu cgroup (v1: cpu is mounted alone on this machine kind)."""
    return next(line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text()
                .splitlines() if line.split(":")[1] in ("cpu", "cpu,cpuacct"))


def pids(engine: Engine) -> dict[str, int | None]:
    return {f"{p}/{w}": r.pid for p, rs in engine.runners.items() for w, r in rs.items()}


def mp_status(c: Cluster, name: str) -> dict[str, Any]:
    return c.get_json("missionprofile", name).get("status") or {}


def condition(c: Cluster, name: str, ctype: str) -> dict[str, Any] | None:
    return next((x for x in mp_status(c, name).get("conditions", []) if x["type"] == ctype),
                None)


def profiles_type(c: Cluster) -> Any:
    """The simulator's MissionProfile resource, for changes made behind kubectl's back."""
    return c.server.store.types[("sortie.dev", "missionprofiles")]


async def fly(c: Cluster, engine: Engine, doc: str) -> None:
    """kubectl apply, then wait until every workload of the mission runs."""
    await kubectl(c, "apply", "-f", "-", stdin=doc)
    await wait_for(lambda: engine.mission is not None and all(pids(engine).values()), 10)


def kube_cfg(c: Cluster, **over: Any) -> KubeConfig:
    over.setdefault("namespaces", ["default"])
    over.setdefault("kubeconfig", c.kubeconfig)
    return KubeConfig(status_period_s=0.5, lease_renew_s=0.5,
                      watch_timeout_s=5, backoff_max_s=0.5, **over)


@contextlib.asynccontextmanager
async def on_cluster(c: Cluster, cfg: AgentConfig, hw: HardwareProfile,
                teardown: bool = True, **over: Any) -> AsyncIterator[tuple[Engine, KubeSource]]:
    engine = Engine(cfg, hw, V1Backend(CGROUP_ROOT, cfg.cgroup_prefix),
                    StateStore(cfg.state_dir))
    await engine.start()
    src = KubeSource(kube_cfg(c, **over), NODE, engine)
    engine.sources.kube = src.status
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(src.run_forever()), loop.create_task(engine.account_forever())]
    try:
        await wait_for(lambda: src.connected and src.count.lease_renewals, 15)
        yield engine, src
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await src.close()
        await engine.shutdown(teardown=teardown)


async def kubectl(c: Cluster, *args: str, stdin: str | None = None,
                  check: bool = True) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(c.kubectl, *args, stdin=stdin, check=check)


@pytest.mark.parametrize(("label", "kubectl_bin"), kubectls(), ids=[k[0] for k in kubectls()])
async def test_kubectl_apply_flies_the_mission_and_the_cluster_sees_the_board(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile, label: str,
        kubectl_bin: str) -> None:
    with cluster(tmp_path, kubectl_bin) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, _src):
            # The node: Ready, labelled, tainted, with capacity and a lease.
            nodes = (await kubectl(c, "get", "nodes", "-L",
                                   "kubernetes.io/arch,sortie.dev/board")).stdout.splitlines()
            row = nodes[1].split()
            assert row[:2] == [NODE, "Ready"] and row[-2:] == ["amd64", "test-board"]
            node = c.get_json("node", NODE)
            assert {"key": "sortie.dev/board", "value": "true", "effect": "NoSchedule"} \
                in node["spec"]["taints"]
            assert node["status"]["capacity"]["cpu"] == "2"
            assert node["status"]["allocatable"]["cpu"] == "1"
            assert node["status"]["nodeInfo"]["architecture"] == "amd64"
            # What a rollout's dry run admits against (docs/fleet.md).
            facts = json.loads(node["metadata"]["annotations"]["sortie.dev/admission"])
            assert HardwareProfile.model_validate(facts["hardware"]) == board
            assert facts["kernel"]["tick_us"] == engine.features.tick_us
            lease = c.get_json("lease", NODE, "-n", "kube-node-lease")
            assert lease["spec"]["holderIdentity"] == NODE
            assert lease["spec"]["leaseDurationSeconds"] == 40
            first_renewal = lease["spec"]["renewTime"]
            await wait_for(lambda: c.get_json("lease", NODE, "-n", "kube-node-lease")
                           ["spec"]["renewTime"] != first_renewal, 5, 0.2)

            # kubectl apply -> the workload runs in its partition's cgroup.
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "survey", 1, partition("nav", workloads=[workload("w")]),
                partition("log", quota=10_000)))
            await wait_for(lambda: engine.mission is not None
                           and all(pids(engine).values()) and len(pids(engine)) == 2, 10)
            pid = engine.runners["nav"]["w"].pid
            assert pid is not None
            assert cgroup_of(pid).endswith(f"{agent_config.cgroup_prefix}/p-nav")
            await wait_for(lambda: (mp_status(c, "survey").get("partitions") or {})
                           .get("nav", {}).get("usedPercent") is not None, 10, 0.2)
            table = (await kubectl(c, "get", "missionprofiles")).stdout.splitlines()
            assert table[1].split()[:5] == ["survey", "Flying", "1", "True", "True"]
            st = mp_status(c, "survey")
            assert st["observedGeneration"] == 1 and st["node"] == NODE
            assert st["partitions"]["nav"]["budgetPercent"] == 20.0
            described = (await kubectl(c, "describe", "missionprofile", "survey")).stdout
            assert "generation 1 applied on test" in described
            assert "Degraded" in described and "FullCapacity" in described

            # kubectl delete -> the mission leaves the board.
            await kubectl(c, "delete", "missionprofile", "survey")
            await wait_for(lambda: engine.mission is None and not engine.runners, 10)
            assert not (CGROUP_ROOT / "cpu" / agent_config.cgroup_prefix / "p-nav").exists()
            assert engine.events.of_kind("mission.withdrawn")
            await wait_for(lambda: "no mission" in c.get_json("node", NODE)["status"]
                           ["conditions"][0]["message"], 10, 0.2)


async def test_a_profile_that_is_invalid_or_does_not_fit_is_refused_and_nothing_changes(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, _):
            await fly(c, engine, profile("m", 1, partition("p")))
            before = pids(engine)
            # Does not fit: a core the board does not have, and too much of the pool.
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "m", 2, partition("p", cores=[7]), partition("q", quota=190_000)))
            await wait_for(lambda: (condition(c, "m", "Admitted") or {}).get("status")
                           == "False", 10, 0.2)
            adm = condition(c, "m", "Admitted")
            assert adm is not None and adm["reason"] == "DoesNotFit"
            assert "partitions[0].cpu.dedicated_cores" in adm["message"] \
                or "dedicated_cores" in adm["message"], adm
            assert "q" in adm["message"]
            assert mp_status(c, "m")["observedGeneration"] == 2
            assert engine.mission is not None and engine.mission.generation == 1
            assert pids(engine) == before, "nothing applied, nothing restarted"
            events = c.get_json("events", "--field-selector", "involvedObject.name=m")["items"]
            assert any(e["reason"] == "Rejected" and e["type"] == "Warning" for e in events)
            # Invalid for the API server (as a real one answers): kubectl's strict field
            # validation names the unknown field; without it the field is pruned and the
            # schema refuses the value. Nothing reaches the board.
            bad = yaml.safe_load(profile("m", 3, partition("p")))
            bad["spec"]["partitions"][0]["budget"]["quota_us"] = -5
            bad["spec"]["partitions"][0]["surprise"] = 1
            strict = await kubectl(c, "apply", "-f", "-", stdin=yaml.safe_dump(bad),
                                   check=False)
            assert strict.returncode != 0
            assert 'unknown field "spec.partitions[0].surprise"' in strict.stderr
            loose = await kubectl(c, "apply", "--validate=false", "-f", "-",
                                  stdin=yaml.safe_dump(bad), check=False)
            assert loose.returncode != 0
            assert "spec.partitions[0].budget.quota_us" in loose.stderr, loose.stderr
            assert "greater than 0" in loose.stderr
            # Valid for the schema, invalid for the board (health keys are an enum the
            # structural schema cannot carry): the board names the field.
            odd = yaml.safe_load(profile("m", 3, partition("p")))
            odd["spec"]["partitions"][0]["health"] = {"bogus": "log"}
            await kubectl(c, "apply", "-f", "-", stdin=yaml.safe_dump(odd))
            await wait_for(lambda: (condition(c, "m", "Admitted") or {}).get("reason")
                           == "InvalidSpec", 10, 0.2)
            msg = condition(c, "m", "Admitted")["message"]  # type: ignore[index]
            assert "partitions[0].health.bogus" in msg, msg
            assert engine.mission.generation == 1 and pids(engine) == before


async def test_the_board_flies_on_without_the_cluster_and_converges_when_it_returns(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, src):
            await fly(c, engine, profile("a", 1, partition("pa")))
            flying = pids(engine)
            c.server.stop()
            await wait_for(lambda: not src.connected, 10)
            await asyncio.sleep(2)
            assert engine.mission is not None and engine.mission.name == "a"
            assert pids(engine) == flying and all(Path(f"/proc/{p}").exists()
                                                  for p in flying.values())
            # While the board is away: "a" is deleted, "b" is created for it.
            store = c.server.store
            store.delete(profiles_type(c), "default", "a")
            store.create(profiles_type(c), "default",
                         yaml.safe_load(profile("b", 1, partition("pb"))))
            c.server.restart()
            await wait_for(lambda: engine.mission is not None and engine.mission.name == "b"
                           and "pb" in engine.runners and "pa" not in engine.runners, 20)
            assert not (CGROUP_ROOT / "cpu" / agent_config.cgroup_prefix / "p-pa").exists()
            assert src.count.lists >= 2


async def test_a_restarted_board_does_not_replay_a_profile_deleted_while_it_was_down(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board, teardown=False) as (engine, _):
            await fly(c, engine, profile("a", 1, partition("pa")))
        await kubectl(c, "delete", "missionprofile", "a")
        # The agent comes back: it flies its last-known-good "a" until the list says
        # "a" is gone, then withdraws it; a third start flies nothing.
        async with on_cluster(c, agent_config, board) as (engine, _):
            await wait_for(lambda: engine.mission is None and not engine.runners, 10)
            assert engine.events.of_kind("mission.withdrawn")
        again = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                       StateStore(agent_config.state_dir))
        await again.start()
        assert again.mission is None and not again.events.of_kind("state.corrupt")
        await again.shutdown(teardown=True)


# Connections cut mid-request (resets, stalls, cancelled watches) can leave an httpx
# transport for the garbage collector to close; that warning is not this test's subject.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_api_errors_are_retried_and_the_mission_is_untouched(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path, history=20) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, src):
            await fly(c, engine, profile("m", 1, partition("p")))
            flying = pids(engine)
            lost: list[str] = []

            async def watchdog() -> None:
                while True:
                    if engine.mission is None or pids(engine) != flying:
                        lost.append("mission disturbed")
                    await asyncio.sleep(0.05)
            guard = asyncio.get_running_loop().create_task(watchdog())
            f = c.server.faults
            f.fail(409, count=2, path="m/status")         # someone else wrote the status
            await wait_for(lambda: src.count.conflicts >= 2, 10)
            f.garbage_lines = 1                            # a malformed watch line
            await kubectl(c, "label", "missionprofile", "m", "touch=1")
            await wait_for(lambda: src.count.errors >= 1, 10)
            f.fail(500, count=3, path="missionprofiles")   # server errors on relist
            f.fail(429, retry_after=1, path="missionprofiles")
            f.fail(0, path="missionprofiles")             # a connection reset
            f.drops += 1                                   # cut the watch
            await wait_for(lambda: src.connected and not f.fail_codes, 20)
            gone = src.count.gone
            c.server.store.compact()                       # history gone: 410 on resume
            f.drops += 1
            await wait_for(lambda: src.count.gone > gone, 10)
            f.stall_until = time.monotonic() + 30          # a silent watch
            await asyncio.sleep(1)
            guard.cancel()
            assert not lost, lost
            # Through all that, the next generation still lands.
            f.stall_until = 0
            await kubectl(c, "apply", "-f", "-", stdin=profile("m", 2, partition("p",
                                                                                  quota=30_000)))
            await wait_for(lambda: engine.mission is not None
                           and engine.mission.generation == 2, 15)


async def test_profiles_aimed_by_label_and_the_newest_one_flies(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board, node_labels={"fleet": "blue"}) \
                as (engine, _):
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "other", 1, partition("x"), target={"nodeSelector": {"fleet": "red"}}))
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "first", 1, partition("p1"), target={"nodeSelector": {"fleet": "blue"}}))
            await wait_for(lambda: engine.mission is not None
                           and engine.mission.name == "first", 10)
            await asyncio.sleep(1.1)  # creation timestamps have one-second resolution
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "second", 1, partition("p2"), target={"nodeSelector": {"fleet": "blue"}}))
            await wait_for(lambda: engine.mission is not None
                           and engine.mission.name == "second", 10)
            await wait_for(lambda: mp_status(c, "first").get("state") == "Superseded", 10, 0.2)
            assert mp_status(c, "other") == {}, "a profile for other boards is not touched"


def test_sortie_run_joins_the_cluster(tmp_path: Path, prefix: str) -> None:
    """The whole path: `sortie run` with a kube section, kubectl apply, `sortie status`."""
    with cluster(tmp_path) as c:
        c.kubectl("apply", "-f", str(CRD))
        hw = tmp_path / "hw.yaml"
        hw.write_text(yaml.safe_dump({
            "name": "test-board", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}],
            "memory_mib": 4096, "reserved": {"cores": [0], "memory_mib": 512}}))
        cfg = tmp_path / "agent.yaml"
        cfg.write_text(yaml.safe_dump({
            "node_name": NODE, "hardware_profile": str(hw), "state_dir": str(tmp_path / "s"),
            "run_dir": str(tmp_path / "r"), "log_dir": f"/tmp/{prefix}-logs",
            "cgroup_prefix": prefix, "agent_cgroup": False, "isolate_os": False,
            "profile_dirs": [str(tmp_path / "profiles")], "report_dir": None,
            "kube": {"kubeconfig": str(c.kubeconfig), "status_period_s": 1,
                     "namespaces": ["default"],
                     "lease_renew_s": 1}}))
        err = tmp_path / "agent.err"
        with err.open("wb") as sink:
            agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                                      str(cfg), "--teardown"], cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=sink)
        try:
            wait_for_sync(lambda: c.kubectl("get", "node", NODE, check=False).returncode == 0,
                          20, 0.2)
            c.kubectl("apply", "-f", "-", stdin=profile("m", 1, partition("p")))
            wait_for_sync(lambda: (mp_status(c, "m").get("state") == "Flying"), 20, 0.2)
            out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config",
                                  str(cfg), "-o", "json"], capture_output=True, text=True,
                                 cwd=REPO, timeout=30, check=True)
            st = json.loads(out.stdout)
            assert st["sources"]["kube"]["connected"] is True
            assert st["mission"]["origin"]["source"] == "kube"
            pid = st["partitions"][0]["workloads"][0]["pid"]
            assert cgroup_of(pid).endswith(f"{prefix}/p-p")
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(30)
            finally:
                if agent.poll() is None:
                    os.kill(agent.pid, signal.SIGKILL)
        assert agent.returncode == 0, err.read_text()


async def test_health_actions_become_events_and_odd_metadata_is_tolerated(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, _):
            doc = yaml.safe_load(profile("m", 1, partition("p", crit="C", workloads=[
                workload("crasher", ["/bin/false"],
                         restart={"backoff_initial_ms": 10, "backoff_max_ms": 20,
                                  "crash_loop_restarts": 3})])))
            # Fields a newer server (or another controller) may add to metadata.
            doc["metadata"]["managedFields"] = [{"manager": "x", "operation": "Apply"}]
            doc["metadata"]["futureField"] = {"nested": [1, 2]}
            store = c.server.store
            store.create(profiles_type(c), "default", doc)
            await wait_for(lambda: engine.mission is not None, 10)

            def reasons() -> set[str]:
                items = c.get_json("events", "--field-selector",
                                   "involvedObject.name=m")["items"]
                return {e["reason"] for e in items}
            got = await wait_for(lambda: {"WorkloadCrashLoop", "HealthCrashLoop"}
                                 & reasons() and reasons(), 15, 0.3)
            assert "Applied" in got, got
            # DAL C: a crash loop stops the partition (health table), said as an Event.
            assert any(r.startswith("Health") for r in got), got
            # ...and in the board's own status, what a rollout's gate reads.
            seen = await wait_for(lambda: (mp_status(c, "m").get("boards") or {}).get(
                NODE, {}).get("health"), 10, 0.2)
            assert {"partition": "p", "criticality": "C"}.items() <= seen[0].items(), seen
            assert any(h["kind"] == "crash-loop" for h in seen), seen


async def test_a_profile_recreated_under_the_same_name_starts_afresh(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, src):
            await kubectl(c, "apply", "-f", "-", stdin=profile("a", 3, partition("p3")))
            await wait_for(lambda: engine.mission is not None
                           and engine.mission.generation == 3, 10)
            c.server.stop()
            await wait_for(lambda: not src.connected, 10)
            store = c.server.store
            rt = profiles_type(c)
            store.delete(rt, "default", "a")
            store.create(rt, "default", yaml.safe_load(profile("a", 1, partition("p1"))))
            c.server.restart()
            # A new object (new uid) under the old name: not an older generation of the
            # old one, so the board withdraws the old and flies the new.
            await wait_for(lambda: engine.mission is not None
                           and engine.mission.generation == 1 and "p1" in engine.runners
                           and "p3" not in engine.runners, 20)
            await wait_for(lambda: mp_status(c, "a").get("state") == "Flying", 10, 0.2)


@pytest.mark.parametrize("namespaces", [["default"], ["default", "ops"]],
                         ids=["one-namespace", "cluster-wide"])
async def test_profiles_outside_the_boards_namespaces_are_ignored(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile,
        namespaces: list[str]) -> None:
    """A sandbox namespace cannot take the board over with a broad nodeSelector. One
    namespace is watched alone (the board never sees the rest); with several the watch is
    cluster-wide and what is out of scope is ignored with an event."""
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        await kubectl(c, "create", "namespace", "sandbox")
        async with on_cluster(c, agent_config, board, namespaces=namespaces) as (engine, src):
            await fly(c, engine, profile("ops", 1, partition("p")))
            flying = pids(engine)
            rogue = yaml.safe_load(profile("rogue", 9, partition("x"),
                                           target={"nodeSelector": {"kubernetes.io/os":
                                                                    "linux"}}))
            rogue["metadata"]["namespace"] = "sandbox"
            await kubectl(c, "apply", "-f", "-", stdin=yaml.safe_dump(rogue))
            if len(namespaces) > 1:
                await wait_for(lambda: engine.events.of_kind("kube.out-of-scope"), 10)
                ev = engine.events.of_kind("kube.out-of-scope")[0]
                assert "sandbox/rogue" in ev.subject and "'sandbox'" in ev.message
            else:
                await asyncio.sleep(1.5)
                assert all(o["metadata"]["namespace"] == "default"
                           for o in src.cache.objects.values())
            assert engine.mission is not None and engine.mission.name == "ops"
            assert pids(engine) == flying
            assert "status" not in c.get_json("missionprofile", "rogue", "-n", "sandbox")


async def test_a_held_board_reports_held_and_flies_the_new_generation_on_release(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, _s):
            await fly(c, engine, profile("m", 1, partition("p")))
            await engine.hold("operator", "landing checklist")
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "m", 2, partition("p"), partition("q", quota=10_000)))
            await wait_for(lambda: mp_status(c, "m").get("state") == "Held", 10, 0.2)
            applied = condition(c, "m", "Applied")
            assert applied is not None and applied["reason"] == "Held"
            assert "landing checklist" in applied["message"]
            board_entry = mp_status(c, "m")["boards"][NODE]
            assert board_entry["state"] == "Held"
            assert board_entry["mission"] == {"name": "m", "generation": 2}
            assert "landing checklist" in board_entry["message"]
            table = (await kubectl(c, "get", "missionprofiles")).stdout.splitlines()
            assert table[1].split()[:3] == ["m", "Held", "2"]
            assert engine.mission is not None and engine.mission.generation == 1
            await engine.release("operator")
            await wait_for(lambda: mp_status(c, "m").get("state") == "Flying"
                           and mp_status(c, "m").get("observedGeneration") == 2, 10, 0.2)
            assert engine.mission.generation == 2 and set(engine.runners) == {"p", "q"}
            described = (await kubectl(c, "describe", "missionprofile", "m")).stdout
            assert "Held" in described and "generation 2 applied" in described


async def test_an_operator_holds_the_board_with_a_node_annotation(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, _s):
            await fly(c, engine, profile("m", 1, partition("p")))
            await kubectl(c, "annotate", "node", NODE, "sortie.dev/hold=rollout paused by ops")
            await wait_for(lambda: engine.held_by() is not None, 10)
            assert "rollout paused by ops" in (engine.held_by() or "")
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "m", 2, partition("p"), partition("q", quota=10_000)))
            await wait_for(lambda: mp_status(c, "m").get("state") == "Held", 10, 0.2)
            assert engine.mission is not None and engine.mission.generation == 1
            await kubectl(c, "annotate", "node", NODE, "sortie.dev/hold-")
            await wait_for(lambda: mp_status(c, "m").get("state") == "Flying"
                           and mp_status(c, "m").get("observedGeneration") == 2, 10, 0.2)
            assert engine.mission.generation == 2 and engine.held_by() is None


async def test_boards_flying_one_profile_keep_their_own_entries_and_an_aggregate(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    from tests.conftest import purge_prefix
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        second = agent_config.model_copy(update={
            "node_name": "test-2", "cgroup_prefix": f"{agent_config.cgroup_prefix}-2",
            "state_dir": tmp_path / "b2" / "state", "run_dir": tmp_path / "b2" / "run",
            "report_dir": Path(f"/tmp/{agent_config.cgroup_prefix}-2-report")})
        e2 = Engine(second, board, V1Backend(CGROUP_ROOT, second.cgroup_prefix),
                    StateStore(second.state_dir))
        await e2.start()
        src2 = KubeSource(kube_cfg(c), "test-2", e2)
        t2 = asyncio.get_running_loop().create_task(src2.run_forever())
        try:
            async with on_cluster(c, agent_config, board) as (engine, _s):
                await kubectl(c, "apply", "-f", "-", stdin=profile(
                    "fleet", 1, partition("p"),
                    target={"nodeSelector": {"sortie.dev/board": "test-board"}}))
                await wait_for(lambda: set(mp_status(c, "fleet").get("boards") or {})
                               == {NODE, "test-2"}, 15, 0.2)
                await wait_for(lambda: mp_status(c, "fleet").get("boardsByState")
                               == {"Flying": 2}, 15, 0.2)
                st = mp_status(c, "fleet")
                assert st["state"] == "Flying"
                applied = next(x for x in st["conditions"] if x["type"] == "Applied")
                assert applied["status"] == "True" and "2 of 2 boards" in applied["message"]
                assert engine.mission is not None and e2.mission is not None
                table = (await kubectl(c, "get", "missionprofiles")).stdout.splitlines()
                assert table[1].split()[:5] == ["fleet", "Flying", "1", "True", "True"]
                # No board read-modify-wrote the other's entry: no conflicts at all.
                assert src2.count.conflicts == 0 and _s.count.conflicts == 0
        finally:
            t2.cancel()
            await asyncio.gather(t2, return_exceptions=True)
            await src2.close()
            await e2.shutdown(teardown=True)
            purge_prefix(second.cgroup_prefix)


async def test_root_workloads_from_kubernetes_need_the_switch(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    as_root = profile("m", 1, partition("p", workloads=[workload("w", user="root")]))
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        async with on_cluster(c, agent_config, board) as (engine, _s):
            await kubectl(c, "apply", "-f", "-", stdin=as_root)
            await wait_for(lambda: (condition(c, "m", "Admitted") or {}).get("reason")
                           == "RootNotAllowed", 10, 0.2)
            msg = condition(c, "m", "Admitted")["message"]  # type: ignore[index]
            assert "spec.partitions[0].workloads[0].user" in msg
            assert engine.mission is None
        async with on_cluster(c, agent_config, board, allow_root_workloads=True) as (
                engine, _s):
            await wait_for(lambda: engine.mission is not None and all(pids(engine).values()),
                           10)


async def test_a_missing_crd_is_named_once_with_the_command_that_mends_it(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:  # the CRD is not installed
        engine = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                        StateStore(agent_config.state_dir))
        await engine.start()
        src = KubeSource(kube_cfg(c), NODE, engine)
        task = asyncio.get_running_loop().create_task(src.run_forever())
        try:
            await wait_for(lambda: src.count.errors >= 3, 15)  # it keeps retrying...
            (told,) = engine.events.of_kind("kube.misconfigured")  # ...and says it once
            assert "MissionProfile CRD is not installed" in told.message
            assert "kubectl apply -f docs/kube/missionprofile-crd.yaml" in told.message
            await kubectl(c, "apply", "-f", str(CRD))
            await wait_for(lambda: src.connected, 15)
            assert engine.events.of_kind("kube.connected")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await src.close()
            await engine.shutdown(teardown=True)


async def test_the_shipped_rbac_is_what_a_board_needs_and_no_more(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    with cluster(tmp_path) as c:
        await kubectl(c, "apply", "-f", str(CRD))
        await kubectl(c, "create", "namespace", "sortie-missions")
        c.server.add_subject("board-token", board_rbac(NODE))
        as_board = c.server.kubeconfig(tmp_path / "board.kubeconfig", token="board-token")
        async with on_cluster(c, agent_config, board, kubeconfig=as_board,
                              namespaces=["sortie-missions"]) as (engine, src):
            await kubectl(c, "apply", "-f", "-", stdin=profile(
                "survey", 1, partition("nav", workloads=[workload("w")]),
                namespace="sortie-missions"))
            await wait_for(lambda: engine.mission is not None and all(pids(engine).values()),
                           10)
            await wait_for(lambda: (c.get_json("missionprofile", "survey", "-n",
                                               "sortie-missions").get("status") or {})
                           .get("partitions", {}).get("nav", {}).get("usedPercent")
                           is not None, 10, 0.2)
            await wait_for(lambda: src.count.events_sent > 0, 10)
            assert src.count.errors == 0
            assert [e for e in c.server.log if e[2] == 403] == []
        # kubectl auth can-i (a SelfSubjectAccessReview) as the board: what it must not do.
        board_kubectl = Cluster(c.server, as_board, c.kubectl_bin)
        for verb, what, ns, allowed in (
                ("watch", "missionprofiles.sortie.dev", "sortie-missions", "yes"),
                ("patch", "missionprofiles.sortie.dev --subresource=status", "sortie-missions",
                 "yes"),
                ("update", "missionprofiles.sortie.dev", "sortie-missions", "no"),
                ("list", "missionprofiles.sortie.dev", "default", "no"),
                ("get", "secrets", "sortie-missions", "no"),
                ("create", "pods", "sortie-missions", "no"),
                ("patch", "nodes/other-board", "", "no"),
                ("patch", f"nodes/{NODE}", "", "yes"),
                ("watch", f"nodes/{NODE}", "", "yes"),
                ("watch", "nodes", "", "no"),
                ("list", "nodes", "", "no")):
            args = ["auth", "can-i", verb, *what.split()] + (["-n", ns] if ns else [])
            got = board_kubectl.kubectl(*args, check=False).stdout.strip()
            assert got == allowed, (args, got)
        # ...and the server holds it to that: another board's node is forbidden.
        denied = board_kubectl.kubectl("patch", "node", "other-board", "-p", "{}",
                                       check=False)
        assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr


def test_what_no_retry_cures_is_said_in_words() -> None:
    from agent.sources.kube.objects import diagnose
    assert "rbac.yaml" in (diagnose("node", 403, "nodes is forbidden") or "")
    assert "credentials" in (diagnose("list/watch", 401, "Unauthorized") or "")
    assert diagnose("list/watch", 0, "connection refused") is None  # an outage passes
    assert diagnose("list/watch", 503, "unavailable") is None
