"""Agent RSS and CPU with 50 workloads over 60 s idle, and cold start; each against a
peer measured in the same run.

Peers: an idle interpreter with the agent's imports loaded (the floor any Python agent
pays), measured the same way over the same window; for cold start, the time that
interpreter takes just to import the agent. The agent's spawner (a process of its own)
is reported beside it, and the two together as PSS (shared pages counted once).
Run as root on a cgroup v1 host:  .venv/bin/python -m bench.idle_footprint [SECONDS]
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import yaml

from tests.conftest import purge_prefix

REPO = Path(__file__).resolve().parent.parent
N_PARTITIONS, PER_PARTITION = 5, 10
PEER_CODE = "import agent.cli, agent.daemon, agent.engine.engine, time; time.sleep(3600)"


def mission() -> dict:
    parts = []
    for i in range(N_PARTITIONS):
        parts.append({
            "name": f"p{i}", "criticality": "C",
            "cpu": {"dedicated_cores": [1]} if i == 0 else {},
            "budget": {"quota_us": 10_000, "period_us": 100_000},
            "memory_mib": 64, "pids_max": 32,
            "workloads": [{"name": f"w{j}", "command": ["/bin/sleep", "3600"],
                           "user": "nobody"} for j in range(PER_PARTITION)]})
    return {"name": "idle", "generation": 1, "partitions": parts}


def status(cfg: Path) -> dict | None:
    r = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(cfg),
                        "-o", "json"], capture_output=True, text=True, cwd=REPO, check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def wait_running(cfg: Path, n: int, timeout_s: float = 30) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = status(cfg)
        if st and sum(w.get("state") == "running" for p in st["partitions"]
                      for w in p["workloads"]) == n:
            return st
        time.sleep(0.2)
    raise SystemExit(f"agent did not run {n} workloads within {timeout_s} s")


def demo_cold_start(tmp: Path) -> float:
    """Cold start of the embedded demo mission in a prefix of its own."""
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    cfg = tmp / "demo.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp / "demo-state"), "run_dir": str(tmp / "demo-run"),
        "log_dir": str(tmp / "demo-logs"), "cgroup_prefix": prefix,
        "report_dir": str(tmp / "demo-report"),
        "profile_dirs": [str(REPO / "schedules" / "demo.yaml")]}))
    p = subprocess.Popen([sys.executable, "-m", "agent.cli", "--log-level", "warning", "run",
                          "--config", str(cfg), "--teardown"], cwd=REPO)
    try:
        return float(wait_running(cfg, 3)["ready_after_s"])
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)
        purge_prefix(prefix)


def rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in kB: what is shared is counted once across processes."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, val = line.partition(":")
            if val.strip().endswith("kB"):
                out[key] = int(val.split()[0])
    return out


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def main(seconds: float) -> None:
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
    tmp.chmod(0o755)
    (tmp / "profiles").mkdir()
    (tmp / "profiles" / "idle.yaml").write_text(yaml.safe_dump(mission()))
    cfg = tmp / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp / "state"), "run_dir": str(tmp / "run"),
        "log_dir": str(tmp / "logs"), "cgroup_prefix": prefix, "isolate_os": False,
        "report_dir": str(tmp / "report"),
        "profile_dirs": [str(tmp / "profiles")]}))
    n = N_PARTITIONS * PER_PARTITION
    cmd = [sys.executable, "-m", "agent.cli", "--log-level", "warning", "run", "--config",
           str(cfg)]
    procs: list[subprocess.Popen[bytes]] = []
    # First, alone: with exclusive dedicated cores an agent's prefix owns the board's CPUs
    # (v1 cpu_exclusive), so a second agent could not claim them while the first runs.
    demo_ready = demo_cold_start(tmp)
    try:
        agent = subprocess.Popen(cmd, cwd=REPO)
        procs.append(agent)
        fresh = wait_running(cfg, n)["ready_after_s"]
        agent.send_signal(signal.SIGKILL)
        agent.wait()
        agent = subprocess.Popen([*cmd, "--teardown"], cwd=REPO)
        procs.append(agent)
        adopted = wait_running(cfg, n)["ready_after_s"]
        imports = []
        for _ in range(5):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", "import agent.cli, agent.daemon"], check=True,
                           cwd=REPO)
            imports.append(time.perf_counter() - t)
        peer = subprocess.Popen([sys.executable, "-c", PEER_CODE], cwd=REPO)
        procs.append(peer)
        time.sleep(2)
        a, p = psutil.Process(agent.pid), psutil.Process(peer.pid)
        spawners = [c for c in a.children() if "spawnd" in " ".join(c.cmdline())]
        a0, p0, t0 = cpu_s(a), cpu_s(p), time.monotonic()
        rss_a, rss_p, rss_s = [], [], []
        while time.monotonic() - t0 < seconds:
            rss_a.append(a.memory_info().rss)
            rss_p.append(p.memory_info().rss)
            rss_s.append(sum(s.memory_info().rss for s in spawners))
            time.sleep(1)
        pss_a, pss_s = rollup(a.pid), [rollup(s.pid) for s in spawners]
        wall = time.monotonic() - t0
        cpu_a, cpu_p = (cpu_s(a) - a0) / wall, (cpu_s(p) - p0) / wall
        mib = 1 << 20
        print(f"idle footprint with {n} workloads over {wall:.0f} s")
        print(f"  agent RSS max {max(rss_a) / mib:6.1f} MiB   CPU {cpu_a * 100:6.3f} % of a core")
        print(f"  peer  RSS max {max(rss_p) / mib:6.1f} MiB   CPU {cpu_p * 100:6.3f} % of a core"
              "  (idle interpreter with the agent's imports)")
        print(f"  ratio RSS agent/peer {max(rss_a) / max(rss_p):.2f}")
        if spawners:
            sp = pss_s[0]
            print(f"  spawner RSS max {max(rss_s) / mib:6.1f} MiB   PSS {sp['Pss'] / 1024:.1f} MiB "
                  f"(anonymous {sp['Pss_Anon'] / 1024:.1f})")
        print(f"  agent PSS {pss_a['Pss'] / 1024:.1f} MiB (anonymous "
              f"{pss_a['Pss_Anon'] / 1024:.1f}, files {pss_a['Pss_File'] / 1024:.1f}); "
              "agent + spawner PSS "
              f"{(pss_a['Pss'] + sum(x['Pss'] for x in pss_s)) / 1024:.1f} MiB")
        print(f"  target RSS <= 35 MiB: {'met' if max(rss_a) <= 35 * mib else 'MISSED'}; "
              f"CPU <= 0.5 %: {'met' if cpu_a <= 0.005 else 'MISSED'}")
        print("cold start (process start -> first reconcile done)")
        print(f"  demo mission (3 workloads), fresh: {demo_ready * 1000:6.0f} ms")
        print(f"  fresh, starting {n} workloads: {fresh * 1000:6.0f} ms")
        print(f"  restart, adopting {n} workloads: {adopted * 1000:6.0f} ms")
        print(f"  peer: interpreter + agent imports only: {min(imports) * 1000:6.0f} ms (min of 5)")
        print(f"  target <= 500 ms: demo {'met' if demo_ready <= 0.5 else 'MISSED'}, "
              f"50 fresh {'met' if fresh <= 0.5 else 'MISSED'}, "
              f"50 adopted {'met' if adopted <= 0.5 else 'MISSED'}")
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()
                pr.wait()
        purge_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
