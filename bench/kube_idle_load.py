"""The API load of one idle board (issue 17: what a fleet costs the control plane), counted
in the control-plane simulator's request log.

  board:  the agent's Kubernetes source (node, lease, hold watch, profile watch, status,
          Events) flying a one-board MissionProfile, default periods (lease every 10 s,
          status every 10 s, watches of 60 s), nothing changing.
  peer:   a kubelet's heartbeat alone, in the same run and the same server: one lease
          write every 10 s through the same client (what the issue compares with: a
          lease renewal every 10 s and a node status every 5 minutes).

Prints requests per minute by verb and resource for each. Run as root on a cgroup v1
host:  .venv/bin/python -m bench.kube_idle_load [SECONDS]
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

import yaml

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile
from agent.models.config import KubeConfig
from agent.sources.kube import objects as ko
from agent.sources.kube.api import KubeApi
from agent.sources.kube.source import KubeSource
from simulator.kubeapi.server import KubeApiServer
from tests.conftest import CGROUP_ROOT, REPO, purge_prefix

HW = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "memory_mib": 512}})


def kind_of(path: str) -> str:
    p = path.split("?", 1)[0]
    watch = "watch " if "watch=true" in path else ""
    m = re.search(r"/(leases|nodes|missionprofiles|events)(/[^/]+)?(/status)?$", p)
    if m is None:
        return watch + p
    return watch + m.group(1) + ("/status" if m.group(3) else "")


async def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="kube-idle-"))
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    srv = KubeApiServer(token="bench").start()
    kc = srv.kubeconfig(tmp / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kc)}
    subprocess.run(["kubectl", "apply", "-f", str(REPO / "docs/kube/missionprofile-crd.yaml")],
                   env=env, check=True, capture_output=True)
    doc = {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
           "metadata": {"name": "idle", "namespace": "default"},
           "spec": {"target": {"nodeName": "board"}, "name": "idle", "generation": 1,
                    "partitions": [{"name": "p", "criticality": "C", "memory_mib": 32, "budget": {
                        "quota_us": 10_000, "period_us": 100_000}, "workloads": [{
                            "name": "w", "command": ["/bin/sleep", "1000"],
                            "user": "nobody"}]}]}}
    r = subprocess.run(["kubectl", "apply", "-f", "-"], input=yaml.safe_dump(doc), text=True,
                       env=env, capture_output=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"kubectl apply: {r.stderr}")
    cfg = AgentConfig(node_name="board", state_dir=tmp / "state", run_dir=tmp / "run",
                      log_dir=Path(f"/tmp/{prefix}-logs"), cgroup_prefix=prefix,
                      agent_cgroup=False, isolate_os=False, report_dir=None)
    engine = Engine(cfg, HW, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
    await engine.start()
    src = KubeSource(KubeConfig(kubeconfig=str(kc), namespaces=["default"]), "board", engine)
    peer_api = KubeApi(KubeConfig(kubeconfig=str(kc), namespaces=["default"]))
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(src.run_forever()), loop.create_task(engine.account_forever())]

    async def heartbeat() -> None:
        lease = await peer_api.create(ko.lease("peer", None, 40, engine.platform.wall()))
        while True:
            await asyncio.sleep(10)
            lease["spec"]["renewTime"] = ko.micro_time(engine.platform.wall())
            lease = await peer_api.replace(lease)
    tasks.append(loop.create_task(heartbeat()))
    try:
        await asyncio.sleep(15)  # registered, listed, flying, first status written
        assert engine.mission is not None, "the board did not fly the profile"
        start = len(srv.log)
        await asyncio.sleep(seconds)
        window = srv.log[start:]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await src.close()
        await peer_api.close()
        await engine.shutdown(teardown=True)
        purge_prefix(prefix)
        srv.stop()
    per_min = 60 / seconds
    if "-v" in sys.argv:
        print(Counter(f"{m} {p.split('?')[0]}" for m, p, _ in window))
    board = Counter(f"{m} {kind_of(p)}" for m, p, _ in window if "/leases/peer" not in p)
    peer = Counter(f"{m} {kind_of(p)}" for m, p, _ in window if "/leases/peer" in p)
    print(f"idle API load over {seconds:.0f} s, requests per minute (control-plane simulator)")
    print(f"  board (the agent's Kubernetes source): {sum(board.values()) * per_min:6.1f}")
    for k, v in sorted(board.items()):
        print(f"      {k:<40} {v * per_min:6.1f}")
    print(f"  peer (a kubelet's lease heartbeat):    {sum(peer.values()) * per_min:6.1f}")
    print(f"  ratio board / peer: {sum(board.values()) / max(1, sum(peer.values())):.2f}")


if __name__ == "__main__":
    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0))
