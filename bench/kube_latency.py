"""kubectl apply -> workload running in its cgroup, through the control-plane simulator
(TLS, bearer token, loopback), and the agent's RSS with the Kubernetes source enabled.

  agent:  `sortie run` with a kube section; each apply raises the MissionProfile's
          generation and changes the workload's command; the clock runs from starting
          kubectl to the new process appearing in its partition's cgroup (polled every
          0.5 ms in /sys/fs/cgroup).
  board:  the server storing the new generation -> the process in its cgroup (the
          watch event, admission, plan, stop and start), from the simulator's own clock.
  peer:   kubectl apply alone (process start to exit) in the same run: the part of the
          figure an operator pays before the board hears anything.
  RSS:    the same agent flying the same mission from a profile file, no kube section.

Run as root on a cgroup v1 host:  .venv/bin/python -m bench.kube_latency [N]
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench._util import row, summary
from simulator.kubeapi.server import KubeApiServer
from tests.conftest import CGROUP_ROOT, REPO, purge_prefix

NODE = "bench-board"
HW = {"name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
      "reserved": {"cores": [0], "memory_mib": 512}}


def mission(gen: int) -> dict[str, Any]:
    return {"name": "bench", "generation": gen, "partitions": [{
        "name": "base", "criticality": "C", "memory_mib": 32, "pids_max": 8,
        "budget": {"quota_us": 10_000, "period_us": 100_000},
        "workloads": [{"name": "w", "command": ["/bin/sleep", str(100_000 + gen)],
                       "user": "nobody"}]}]}


def profile(gen: int) -> str:
    return yaml.safe_dump({"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                           "metadata": {"name": "bench", "namespace": "default"},
                           "spec": {"target": {"nodeName": NODE}, **mission(gen)}})


def running(prefix: str, arg: str) -> bool:
    base = CGROUP_ROOT / "cpu" / prefix / "p-base"
    for procs in base.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            try:
                if arg.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False


def start_agent(tmp: Path, prefix: str, kube: dict[str, Any] | None,
                profiles: Path) -> subprocess.Popen[bytes]:
    (tmp / "hw.yaml").write_text(yaml.safe_dump(HW))
    cfg = {"node_name": NODE, "hardware_profile": str(tmp / "hw.yaml"),
           "state_dir": str(tmp / f"state-{prefix}"), "run_dir": str(tmp / f"run-{prefix}"),
           "log_dir": str(tmp / f"logs-{prefix}"), "cgroup_prefix": prefix,
           "agent_cgroup": False, "isolate_os": False, "profile_dirs": [str(profiles)],
           "report_dir": None} | ({"kube": kube} if kube else {})
    path = tmp / f"agent-{prefix}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(path),
                             "--teardown"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def rss_mib(proc: subprocess.Popen[bytes], seconds: float = 10) -> float:
    p, peak = psutil.Process(proc.pid), 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, p.memory_info().rss)
        time.sleep(0.2)
    return peak / 2**20


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def main(n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
    tmp.chmod(0o755)
    prefix, peer_prefix = (f"sortie-bench-{uuid.uuid4().hex[:6]}" for _ in range(2))
    srv = KubeApiServer(token=f"bench-{uuid.uuid4().hex}").start()
    kc = srv.kubeconfig(tmp / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kc)}

    def kubectl(*args: str, stdin: str | None = None) -> None:
        subprocess.run(["kubectl", *args], input=stdin, text=True, env=env, check=True,
                       capture_output=True, timeout=60)

    empty = tmp / "profiles"
    empty.mkdir()
    agents: list[subprocess.Popen[bytes]] = []
    try:
        kubectl("apply", "-f", str(REPO / "docs" / "kube" / "missionprofile-crd.yaml"))
        agent = start_agent(tmp, prefix, {"kubeconfig": str(kc)}, empty)
        agents.append(agent)
        deadline = time.monotonic() + 30
        while subprocess.run(["kubectl", "get", "node", NODE], env=env, capture_output=True,
                             check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise SystemExit("the agent did not register its node in 30 s")
            time.sleep(0.2)
        total, client, reaction = [], [], []
        rt_key = ("sortie.dev", "missionprofiles")
        for gen in range(1, n + 1):
            t0 = time.perf_counter()
            proc = subprocess.Popen(["kubectl", "apply", "-f", "-"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, env=env, text=True)
            assert proc.stdin is not None
            proc.stdin.write(profile(gen))
            proc.stdin.close()
            arg, exited = str(100_000 + gen), None
            # Poll the cgroup while kubectl runs: the board may be done before kubectl exits.
            while not running(prefix, arg):
                if exited is None and proc.poll() is not None:
                    exited = time.perf_counter()
                if time.perf_counter() - t0 > 30:
                    raise SystemExit(f"generation {gen} not running after 30 s")
                time.sleep(0.0005)
            done = time.perf_counter()
            if proc.wait(30) != 0:
                raise SystemExit(f"kubectl apply failed for generation {gen}")
            exited = exited or time.perf_counter()
            client.append((exited - t0) * 1000)
            total.append((done - t0) * 1000)
            with srv.store.cond:
                written = next(c.at for c in srv.store.changes if c.gr == rt_key
                               and c.obj.get("spec", {}).get("generation") == gen)
            reaction.append((done - written) * 1000)
        rss_kube = rss_mib(agent)
        # Peer for RSS: the same mission from a file, no Kubernetes source.
        peer_profiles = tmp / "peer-profiles"
        peer_profiles.mkdir()
        (peer_profiles / "bench.yaml").write_text(yaml.safe_dump(mission(1)))
        peer = start_agent(tmp, peer_prefix, None, peer_profiles)
        agents.append(peer)
        time.sleep(3)
        rss_file = rss_mib(peer)
    finally:
        for a in agents:
            stop(a)
        srv.stop()
        srv.server_close()
        purge_prefix(prefix)
        purge_prefix(peer_prefix)
        shutil.rmtree(tmp, ignore_errors=True)
    st, sc, sr = summary(total), summary(client), summary(reaction)
    print(f"kubectl apply -> workload running in its cgroup, {n} applies "
          "(simulator over TLS, loopback)")
    print(row("  kubectl apply -> running", st))
    print(row("  peer: kubectl apply alone", sc))
    print(row("  server stored it -> running", sr))
    print(f"  ratio running/kubectl-exit p50 {st['p50'] / sc['p50']:.2f}, "
          f"p99 {st['p99'] / sc['p99']:.2f} (below 1: running before kubectl has exited)")
    print(f"  target p99 <= 5000 ms (pod start-up SLO): "
          f"{'met' if st['p99'] <= 5000 else 'MISSED'}")
    print(f"agent RSS, mission flying: with kube source {rss_kube:.1f} MiB, "
          f"peer without (file source) {rss_file:.1f} MiB, ratio {rss_kube / rss_file:.2f}; "
          f"35 MiB budget {'met' if rss_kube <= 35 else 'MISSED'}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
