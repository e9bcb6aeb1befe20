"""What time windows cost: the agent's and the timekeeper's CPU while a 100 ms major
frame with three windows runs (30 edges a second), against the same agent flying the
same mission without windows, measured in the same run.

Run as root on a cgroup v1 host:  .venv/bin/python -m bench.window_overhead [SECONDS]
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

from bench.idle_footprint import cpu_s, wait_running
from tests.conftest import purge_prefix

REPO = Path(__file__).resolve().parent.parent
SLEEP = ["/bin/sleep", "3600"]


def mission(windows: bool) -> dict:
    parts = [{"name": n, "criticality": "C", "budget": {"quota_us": 30_000,
                                                        "period_us": 100_000},
              "memory_mib": 32, "workloads": [{"name": "w", "command": SLEEP}]}
             for n in "abc"]
    doc: dict = {"name": "win", "generation": 1, "partitions": parts}
    if windows:
        doc["schedules"] = [{"name": "normal", "major_frame_us": 100_000, "windows": [
            {"partition": n, "offset_us": i * 30_000, "duration_us": 30_000}
            for i, n in enumerate("abc")]}]
    return doc


def measure(seconds: float, windows: bool) -> tuple[float, float]:
    prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
    tmp.chmod(0o755)
    (tmp / "p").mkdir()
    (tmp / "p" / "m.yaml").write_text(yaml.safe_dump(mission(windows)))
    cfg = tmp / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_dir": str(tmp / "s"), "run_dir": str(tmp / "r"), "log_dir": str(tmp / "l"),
        "cgroup_prefix": prefix, "isolate_os": False, "report_dir": None,
        "profile_dirs": [str(tmp / "p")]}))
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "--log-level", "warning",
                              "run", "--config", str(cfg), "--teardown"], cwd=REPO)
    try:
        wait_running(cfg, 3)
        time.sleep(1.0)
        a = psutil.Process(agent.pid)
        kids = [c for c in a.children() if "timekeeper" in " ".join(c.cmdline())]
        a0 = cpu_s(a)
        k0 = sum(cpu_s(k) for k in kids)
        time.sleep(seconds)
        agent_cpu = (cpu_s(a) - a0) / seconds
        keeper_cpu = (sum(cpu_s(k) for k in kids) - k0) / seconds
        st = json.loads(subprocess.run([sys.executable, "-m", "agent.cli", "status",
                                        "--config", str(cfg), "-o", "json"], cwd=REPO,
                                       capture_output=True, text=True, check=True).stdout)
        if windows:
            assert st["windows"]["enforcing"], st["windows"]
        return agent_cpu, keeper_cpu
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        purge_prefix(prefix)
        shutil.rmtree(tmp, ignore_errors=True)


def main(seconds: float) -> None:
    wa, wk = measure(seconds, True)
    pa, _ = measure(seconds, False)
    print(f"CPU over {seconds:g} s, 3 partitions, 100 ms major frame (30 edges/s)")
    print(f"  with windows:    agent {wa * 100:.2f} %, timekeeper {wk * 100:.2f} % of a core")
    print(f"  peer, no windows: agent {pa * 100:.2f} %")
    total = wa + wk
    print(f"  windows cost {(total - pa) * 100:.2f} points of a core in all")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 30)
