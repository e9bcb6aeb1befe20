"""What operating a board costs the agent: Prometheus metrics (node_exporter textfile,
rewritten every accounting period) and systemd's watchdog, at idle with 50 workloads.

Four agents run side by side over the same window, each flying its own 50 sleeping
workloads under its own cgroup prefix: with metrics and the watchdog (petted every
WatchdogSec/2; the bench's datagram socket plays systemd), with each alone, and the peer
with neither. Also
the cost of one metrics write (status -> families -> text -> atomic replace) timed in
process against the status snapshot alone.
Run as root on a cgroup v1 host:  .venv/bin/python -m bench.ops_overhead [SECONDS]
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil
import yaml

from bench.idle_footprint import N_PARTITIONS, PER_PARTITION, cpu_s, wait_running
from tests.conftest import purge_prefix

REPO = Path(__file__).resolve().parent.parent
WATCHDOG_USEC = 2_000_000  # petted every second: 5x the shipped unit's rate (WatchdogSec=10)


def mission() -> dict:
    return {"name": "idle", "generation": 1, "partitions": [{
        "name": f"p{i}", "criticality": "CDE"[i % 3],
        "budget": {"quota_us": 10_000, "period_us": 100_000},
        "memory_mib": 64, "pids_max": 32,
        "workloads": [{"name": f"w{j}", "command": ["/bin/sleep", "3600"], "user": "nobody"}
                      for j in range(PER_PARTITION)]} for i in range(N_PARTITIONS)]}


def agent_dir(tmp: Path, name: str, metrics: Path | None) -> tuple[Path, str]:
    d = tmp / name
    (d / "profiles").mkdir(parents=True)
    (d / "profiles" / "idle.yaml").write_text(yaml.safe_dump(mission()))
    prefix = f"sortie-bench-{name}-{uuid.uuid4().hex[:4]}"
    cfg = {"state_dir": str(d / "state"), "run_dir": str(d / "run"),
           "log_dir": str(d / "logs"), "cgroup_prefix": prefix, "isolate_os": False,
           "agent_cgroup": False, "report_dir": str(d / "report"),
           "profile_dirs": [str(d / "profiles")]}
    if metrics is not None:
        cfg["metrics"] = {"textfile_dir": str(metrics)}
    (d / "agent.yaml").write_text(yaml.safe_dump(cfg))
    return d / "agent.yaml", prefix


def drain(sock: socket.socket, got: list[float], stop: threading.Event) -> None:
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            if sock.recv(4096) == b"WATCHDOG=1":
                got.append(time.monotonic())
        except TimeoutError:
            continue


def write_cost(cfg_path: Path, runs: int = 200) -> tuple[float, float, int]:
    """ms per metrics write and per status snapshot alone, from the running agent's
    status read back (the same shape the agent renders), and the file's size."""
    import json

    from agent.metrics import AgentProcess, TextfileWriter, families, render
    from agent.status import parse
    r = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config",
                        str(cfg_path), "-o", "json"], capture_output=True, text=True,
                       cwd=REPO, check=True)
    raw = json.loads(r.stdout)
    out = Path(tempfile.mkdtemp(prefix="sortie-bench-prom-"))
    w = TextfileWriter(out)
    full, snap = [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            st = parse(raw)
            t1 = time.perf_counter()
            w.write(render(families(st, "bench", AgentProcess.now())))
            t2 = time.perf_counter()
            snap.append(t1 - t0)
            full.append(t2 - t1)
        size = w.path.stat().st_size
    finally:
        shutil.rmtree(out)
    return statistics.median(full) * 1000, statistics.median(snap) * 1000, size


VARIANTS = (("metrics + watchdog", True, True), ("metrics only", True, False),
            ("watchdog only", False, True), ("peer (neither)", False, False))


def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-ops-"))
    tmp.chmod(0o755)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    pets: list[float] = []
    stop = threading.Event()
    drainer = threading.Thread(target=drain, args=(notify, pets, stop), daemon=True)
    drainer.start()
    n = N_PARTITIONS * PER_PARTITION
    procs: list[subprocess.Popen[bytes]] = []
    prefixes: list[str] = []
    runs: list[tuple[str, psutil.Process, Path | None]] = []
    try:
        base = [sys.executable, "-m", "agent.cli", "--log-level", "warning", "run",
                "--teardown", "--config"]
        for i, (label, metrics, watchdog) in enumerate(VARIANTS):
            textfiles = tmp / f"textfile{i}" if metrics else None
            if textfiles is not None:
                textfiles.mkdir()
            cfg, prefix = agent_dir(tmp, f"a{i}", textfiles)
            prefixes.append(prefix)
            env = dict(os.environ)
            if watchdog:
                env |= {"NOTIFY_SOCKET": str(tmp / "notify"),
                        "WATCHDOG_USEC": str(WATCHDOG_USEC)}
            proc = subprocess.Popen([*base, str(cfg)], cwd=REPO, env=env)
            procs.append(proc)
            wait_running(cfg, n)
            runs.append((label, psutil.Process(proc.pid), textfiles))
        time.sleep(3)
        cpu0 = [cpu_s(p) for _, p, _ in runs]
        t0, pets0 = time.monotonic(), len(pets)
        rss: list[list[int]] = [[] for _ in runs]
        versions: set[int] = set()
        while time.monotonic() - t0 < seconds:
            for i, (_, p, _) in enumerate(runs):
                rss[i].append(p.memory_info().rss)
            versions.add((tmp / "textfile0" / "sortie.prom").stat().st_mtime_ns)
            time.sleep(0.5)
        wall = time.monotonic() - t0
        cpu = [(cpu_s(p) - c0) / wall for (_, p, _), c0 in zip(runs, cpu0, strict=True)]
        petted = (len(pets) - pets0) / 2  # two agents pet the one socket
        ms_write, ms_parse, size = write_cost(tmp / "a0" / "agent.yaml")
        mib = 1 << 20
        peer = cpu[-1]
        print(f"idle with {n} workloads each, four agents side by side over {wall:.0f} s "
              f"(watchdog petted every {WATCHDOG_USEC / 2e6:g} s)")
        for (label, _, _), c, r in zip(runs, cpu, rss, strict=True):
            print(f"  {label:19s} CPU {c * 100:6.3f} % of a core ({(c - peer) * 100:+.3f} "
                  f"vs peer)  RSS max {max(r) / mib:5.1f} MiB "
                  f"({(max(r) - max(rss[-1])) / mib:+.1f})")
        print(f"  metrics file rewritten {len(versions)} times, {petted / wall:.2f} pets/s "
              "per agent")
        print(f"  one metrics write: {ms_write:.2f} ms (families + text + atomic replace, "
              f"{size / 1024:.1f} KiB) against {ms_parse:.2f} ms to read the same status "
              "back into the typed model (median of 200)")
        print(f"  target CPU <= 0.5 % with metrics and watchdog on: "
              f"{'met' if cpu[0] <= 0.005 else 'MISSED'}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        stop.set()
        notify.close()
        for prefix in prefixes:
            purge_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 60.0)
