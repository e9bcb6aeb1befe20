"""Opt-in: the same scenarios against a real k3s (or any Kubernetes API server).

    .venv/bin/pytest tests/test_k3s.py --k3s-kubeconfig ~/.kube/config

The board registers as a node named ``sortie-e2e-<random>`` (tainted, so nothing else
lands on it), applies the CRD if missing, and deletes its node and profiles at the end.
A real API server validates the spec against the CRD's schema, so an invalid spec is
refused by kubectl itself, naming the field."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cgroups.v1 import V1Backend
from agent.kube.source import KubeSource
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import KubeConfig
from agent.reconciling import Engine
from agent.store import StateStore
from tests.conftest import CGROUP_ROOT, needs_root_v1
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


def profile(name: str, node: str, generation: int, **part: Any) -> str:
    return yaml.safe_dump({"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                           "metadata": {"name": name, "namespace": "default"},
                           "spec": {"target": {"nodeName": node},
                                    **mission_doc(partition("p", **part), name=name,
                                                  generation=generation)}})


async def test_real_cluster_apply_status_reject_delete(
        k3s: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    node = f"sortie-e2e-{uuid.uuid4().hex[:6]}"
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    await asyncio.to_thread(kubectl, k3s, "apply", "-f", str(CRD))
    engine = Engine(agent_config, board, V1Backend(CGROUP_ROOT, agent_config.cgroup_prefix),
                    StateStore(agent_config.state_dir))
    await engine.start()
    src = KubeSource(KubeConfig(kubeconfig=k3s, status_period_s=1, lease_renew_s=2), node,
                     engine)
    task = asyncio.get_running_loop().create_task(src.run_forever())
    try:
        await wait_for(lambda: src.connected and src.count.lease_renewals, 30)
        ready = await asyncio.to_thread(kubectl, k3s, "get", "node", node, "-o",
                                        "jsonpath={.status.conditions[0].status}")
        assert ready.stdout == "True"
        await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                stdin=profile(name, node, 1))
        await wait_for(lambda: engine.mission is not None and engine.mission.name == name, 30)
        await wait_for(lambda: kubectl(k3s, "get", "mp", name, "-o",
                                       "jsonpath={.status.state}").stdout == "Flying", 30, 0.5)
        refused = await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                          stdin=profile(name, node, 2, quota=-5), check=False)
        assert refused.returncode != 0 and "quota_us" in refused.stderr
        await asyncio.to_thread(kubectl, k3s, "apply", "-f", "-",
                                stdin=profile(name, node, 3, cores=[7]))
        await wait_for(lambda: kubectl(k3s, "get", "mp", name, "-o", "jsonpath={.status."
                                       "state}").stdout == "Rejected", 30, 0.5)
        assert engine.mission.generation == 1
        await asyncio.to_thread(kubectl, k3s, "delete", "mp", name)
        await wait_for(lambda: engine.mission is None, 30)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await src.close()
        await engine.shutdown(teardown=True)
        kubectl(k3s, "delete", "mp", name, "--ignore-not-found", check=False)
        kubectl(k3s, "delete", "node", node, "--ignore-not-found", check=False)
        kubectl(k3s, "delete", "lease", node, "-n", "kube-node-lease", "--ignore-not-found",
                check=False)
