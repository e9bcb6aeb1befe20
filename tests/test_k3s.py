"""Opt-in: the same scenarios against a real k3s (or any Kubernetes API server).

    .venv/bin/pytest tests/test_k3s.py --k3s-kubeconfig ~/.kube/config

With the admin kubeconfig given, the test applies the CRD and docs/kube/rbac.yaml for a
board named ``sortie-e2e-<random>``, and the board itself runs with that ServiceAccount's
token only (RBAC exactly as documented). It registers as a tainted node, flies a
MissionProfile from ``sortie-missions``, writes status, ignores a profile in another
namespace (it cannot even list it), and everything it made is deleted at the end. A real
API server validates the spec against the CRD's schema: an unknown field is refused by
kubectl's strict field validation, pruned without it, and a bad value refused, naming
the field."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
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
from tests.helpers import mission_doc, partition, wait_for
from tests.kubesim import CRD

pytestmark = needs_root_v1


@pytest.fixture
def k3s(request: pytest.FixtureRequest) -> Path:
    path = request.config.getoption("--k3s-kubeconfig")
    if not path:
        pytest.skip("needs --k3s-kubeconfig PATH (a real cluster)")
    return Path(path)


def kubectl(kc: Path, *args: str, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("kubectl") or "kubectl"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, "KUBECONFIG": str(kc)}, timeout=60, check=check)


NS = "sortie-missions"


def profile(name: str, node: str, generation: int, ns: str = NS, **part: Any) -> str:
    return yaml.safe_dump({"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                           "metadata": {"name": name, "namespace": ns},
                           "spec": {"target": {"nodeName": node},
                                    **mission_doc(partition("p", **part), name=name,
                                                  generation=generation)}})


def board_credentials(admin: Path, node: str, out: Path) -> Path:
    """docs/kube/rbac.yaml for this board, and a kubeconfig with its token alone."""
    rbac = (REPO / "docs" / "kube" / "rbac.yaml").read_text().replace("BOARD", node)
    kubectl(admin, "apply", "-f", "-", stdin=rbac)
    token = kubectl(admin, "create", "token", f"sortie-board-{node}", "-n", NS).stdout.strip()
    view = json.loads(kubectl(admin, "config", "view", "--raw", "--minify", "-o",
                              "json").stdout)
    cluster = view["clusters"][0]["cluster"]
    out.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "board",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": node, "user": {"token": token}}],
        "contexts": [{"name": "board", "context": {"cluster": "c", "user": node,
                                                   "namespace": NS}}]}))
    out.chmod(0o600)
    return out


def forget_board(admin: Path, node: str) -> None:
    rbac = (REPO / "docs" / "kube" / "rbac.yaml").read_text().replace("BOARD", node)
    # Everything the manifest made but the shared namespace and the shared Role.
    docs = [d for d in yaml.safe_load_all(rbac) if d["kind"] != "Namespace"
            and d["metadata"]["name"] != "sortie-board"]
    kubectl(admin, "delete", "--ignore-not-found", "-f", "-",
            stdin=yaml.safe_dump_all(docs), check=False)


async def test_real_cluster_apply_status_reject_delete(
        k3s: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    node = f"sortie-e2e-{uuid.uuid4().hex[:6]}"
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    sandbox = f"sortie-e2e-sandbox-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(kubectl, k3s, "apply", "-f", str(CRD))
    await asyncio.to_thread(kubectl, k3s, "wait", "--for=condition=Established",
                            "crd/missionprofiles.sortie.dev", "--timeout=30s")
    creds = await asyncio.to_thread(board_credentials, k3s, node,
                                    agent_config.state_dir.parent / "board.kubeconfig")
    engine = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                    StateStore(agent_config.state_dir))
    await engine.start()
    src = KubeSource(KubeConfig(kubeconfig=creds, status_period_s=1, lease_renew_s=2), node,
                     engine)
    task = asyncio.get_running_loop().create_task(src.run_forever())
    try:
        # The board's token: its namespace only.
        can = await asyncio.to_thread(kubectl, creds, "auth", "can-i", "list",
                                      "missionprofiles.sortie.dev", "-n", "default",
                                      check=False)
        assert can.stdout.strip() == "no"
        await wait_for(lambda: src.connected and src.count.lease_renewals, 30)
        ready = await asyncio.to_thread(kubectl, k3s, "get", "node", node, "-o",
                                        "jsonpath={.status.conditions[0].status}")
        assert ready.stdout == "True"
        await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                stdin=profile(name, node, 1))
        await wait_for(lambda: engine.mission is not None and engine.mission.name == name, 30)
        await wait_for(lambda: kubectl(k3s, "get", "mp", name, "-n", NS, "-o",
                                       "jsonpath={.status.state}").stdout == "Flying", 30, 0.5)
        refused = await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                          stdin=profile(name, node, 2, quota=-5), check=False)
        assert refused.returncode != 0 and "quota_us" in refused.stderr
        odd = yaml.safe_load(profile(name, node, 2))
        odd["spec"]["partitions"][0]["surprise"] = 1
        strict = await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                         stdin=yaml.safe_dump(odd), check=False)
        assert strict.returncode != 0
        assert 'unknown field "spec.partitions[0].surprise"' in strict.stderr, strict.stderr
        # A profile in another namespace, aimed at every Linux board: never seen.
        await asyncio.to_thread(kubectl, k3s, "create", "namespace", sandbox)
        rogue = yaml.safe_load(profile("rogue", node, 99, ns=sandbox))
        rogue["spec"]["target"] = {"nodeSelector": {"kubernetes.io/os": "linux"}}
        await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-", stdin=yaml.safe_dump(rogue))
        await asyncio.sleep(3)
        assert engine.mission is not None and engine.mission.name == name
        await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                stdin=profile(name, node, 3, cores=[7]))
        await wait_for(lambda: kubectl(k3s, "get", "mp", name, "-n", NS, "-o",
                                       "jsonpath={.status.state}").stdout == "Rejected", 30,
                       0.5)
        assert engine.mission.generation == 1
        await asyncio.to_thread(kubectl, k3s, "delete", "mp", name, "-n", NS)
        await wait_for(lambda: engine.mission is None, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
        await engine.shutdown(teardown=True)
        kubectl(k3s, "delete", "mp", name, "-n", NS, "--ignore-not-found", check=False)
        kubectl(k3s, "delete", "namespace", sandbox, "--ignore-not-found", "--wait=false",
                check=False)
        forget_board(k3s, node)
        kubectl(k3s, "delete", "node", node, "--ignore-not-found", check=False)
        kubectl(k3s, "delete", "lease", node, "-n", "kube-node-lease", "--ignore-not-found",
                check=False)
