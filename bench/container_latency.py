"""Desired-state change -> container running in its cgroup, against plain `runc run` of
the same bundle by hand, in the same run; and the budget accuracy of a containerised
saturating load.

Agent: a mission that adds a partition with one busybox container; the clock stops at
the agent's workload.started (runc start returned: the container's process runs in the
workload's cgroup). Peer: `runc run --detach` of a bundle made from the same image and
the same generated config. Run as root:  .venv/bin/python -m bench.container_latency [N]
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.runtime.containers import oci_config
from agent.runtime.ops import Launch
from agent.status import Origin
from bench._util import row, summary
from tests.conftest import CGROUP_ROOT, purge_prefix
from tests.images import busybox_layout

ORIGIN = Origin("config")

BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})


def mission(gen: int, image: str, extra: str | None, quota: int = 20_000,
            command: list[str] | None = None) -> MissionProfile:
    parts = [{"name": "base", "criticality": "C", "memory_mib": 32, "pids_max": 8,
              "budget": {"quota_us": 10_000, "period_us": 100_000},
              "workloads": [{"name": "w", "command": ["/bin/sleep", "3600"]}]}]
    if extra:
        parts.append({"name": extra, "criticality": "E", "memory_mib": 64, "pids_max": 16,
                      "cpu": {"dedicated_cores": [1]},
                      "budget": {"quota_us": quota, "period_us": 100_000},
                      "workloads": [{"name": "c", "image": image, "stop_grace_ms": 100,
                                     "command": command or ["/bin/sleep", "3600"]}]})
    return MissionProfile.model_validate({"name": "bench", "generation": gen,
                                          "partitions": parts})


async def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
    tmp.chmod(0o755)
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    cfg = AgentConfig(state_dir=tmp / "state", run_dir=tmp / "run", log_dir=tmp / "logs",
                      cgroup_prefix=prefix, agent_cgroup=False, isolate_os=False,
                      report_dir=None)
    engine = Engine(cfg, BOARD, V1Backend(CGROUP_ROOT, prefix), StateStore(cfg.state_dir))
    assert engine.images is not None
    image = busybox_layout(tmp / "layout")
    engine.images.import_path(tmp / "layout")
    rootfs = engine.images.rootfs(image)
    started: dict[str, float] = {}
    engine.events.subscribe(lambda ev: started.__setitem__(ev.subject, ev.at)
                            if ev.kind == "workload.started" else None)
    agent, peer = [], []
    shares: dict[int, float] = {}
    try:
        await engine.start()
        gen = 1
        await engine.submit(mission(gen, image, None), ORIGIN)
        # the peer's bundle: the same rootfs and the same generated config
        bundle = tmp / "peer-bundle"
        bundle.mkdir()
        req = Launch("peer", "c", ["/bin/sleep", "3600"], "nobody", None, "/", {},
                     tmp / "peer.log")
        (bundle / "config.json").write_text(json.dumps(
            oci_config(req, rootfs, f"/{prefix}/peer")))
        for i in range(n):
            gen += 1
            t0 = time.time()
            d = await engine.submit(mission(gen, image, f"new{i}"), ORIGIN)
            assert d.outcome == "applied", d
            agent.append((started[f"workload/new{i}/c"] - t0) * 1000)
            gen += 1
            await engine.submit(mission(gen, image, None), ORIGIN)
            cid = f"peer-{i}"
            t1 = time.perf_counter()
            subprocess.run(["runc", "--root", str(tmp / "peer-runc"), "run", "--detach",
                            "--bundle", str(bundle), cid], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            peer.append((time.perf_counter() - t1) * 1000)
            subprocess.run(["runc", "--root", str(tmp / "peer-runc"), "delete", "--force",
                            cid], check=False, capture_output=True)
        for pct in (20, 50):
            gen += 1
            await engine.submit(mission(gen, image, f"spin{pct}", pct * 1000,
                                        ["/bin/sh", "-c", "while :; do :; done"]), ORIGIN)
            await asyncio.sleep(1.0)
            engine.sample()
            await asyncio.sleep(4.0)
            engine.sample()
            shares[pct] = engine.usage[f"spin{pct}"].share
            gen += 1
            await engine.submit(mission(gen, image, None), ORIGIN)
    finally:
        await engine.shutdown(teardown=True)
        purge_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)
    a, p = summary(agent), summary(peer)
    print(f"change -> container running in its cgroup, {n} starts each, interleaved")
    print(row("sortie: admit+plan+cgroups+runc", a))
    print(row("peer: plain runc run --detach", p))
    print(f"ratio sortie/peer: p50 {a['p50'] / p['p50']:.2f}  p99 {a['p99'] / p['p99']:.2f}"
          f"  (target <= 1.5: {'met' if a['p50'] / p['p50'] <= 1.5 else 'MISSED'})")
    for pct, share in shares.items():
        print(f"containerised saturating load at {pct} %: {share * 100:.2f} % "
              f"(error {abs(share * 100 - pct):.2f} pt)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100))
