"""Deterministic CPU budgets, measured (issue 3). Each part prints its figures, writes
them to docs/data/ and draws docs/img/; every claim has a peer from the same run.

  accuracy      saturating load at 5/10/20/50/80 % in each budget mode
  interference  cyclictest on the DAL A core with a stress-ng miner, vs no partitioning
  periodic      10 ms / 2 ms DAL A task sharing cores with the miner, 10,000 periods
  windows       100 ms major frame, three partitions, >= 1000 frames: start jitter

Run as root on a cgroup v1 host:  .venv/bin/python -m bench.determinism PART [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.models import AgentConfig, HardwareProfile, MissionProfile
from agent.status import Origin
from bench._util import pct
from tests.conftest import CGROUP_ROOT, purge_prefix

ORIGIN = Origin("config")

REPO = Path(__file__).resolve().parent.parent
DATA, IMG = REPO / "docs" / "data", REPO / "docs" / "img"
SPIN = ["/usr/bin/python3", "-c", "while True: pass"]
BOARD = HardwareProfile.model_validate({
    "name": "bench", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
    "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512}})
BUDGETS = [0.05, 0.10, 0.20, 0.50, 0.80]


class Bench:
    """One engine on a private prefix, torn down whatever happens."""

    def __init__(self, board: HardwareProfile = BOARD, **config: Any) -> None:
        self.prefix = f"sortie-bench-{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tempfile.mkdtemp(prefix="sortie-bench-"))
        self.tmp.chmod(0o755)
        cfg = AgentConfig(state_dir=self.tmp / "state", run_dir=self.tmp / "run",
                          log_dir=self.tmp / "logs", cgroup_prefix=self.prefix,
                          agent_cgroup=False, report_dir=self.tmp / "report",
                          **{"isolate_os": False, **config})
        self.engine = Engine(cfg, board, V1Backend(CGROUP_ROOT, self.prefix),
                             StateStore(cfg.state_dir))
        self.gen = 0

    async def __aenter__(self) -> Bench:
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.engine.shutdown(teardown=True)
        finally:
            purge_prefix(self.prefix)
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def fly(self, partitions: list[dict[str, Any]], **extra: Any) -> None:
        self.gen += 1
        m = MissionProfile.model_validate({"name": "bench", "generation": self.gen,
                                           "partitions": partitions, **extra})
        d = await self.engine.submit(m, ORIGIN)
        if d.outcome != "applied":
            raise SystemExit(f"mission refused: {d.to_dict()}")

    async def shares(self, seconds: float, warmup: float = 0.5) -> dict[str, float]:
        await asyncio.sleep(warmup)
        self.engine.sample()
        await asyncio.sleep(seconds)
        self.engine.sample()
        return {p: u.share for p, u in self.engine.usage.items()}


def part(name: str, crit: str = "C", cores: list[int] | None = None, quota: int = 10_000,
         period: int = 100_000, command: list[str] | None = None, user: str = "nobody",
         **budget: Any) -> dict[str, Any]:
    # /tmp as working dir: stress-ng insists on a writable one.
    return {"name": name, "criticality": crit, "cpu": {"dedicated_cores": cores or []},
            "budget": {"quota_us": quota, "period_us": period, **budget},
            "memory_mib": 64, "pids_max": 32,
            "workloads": [{"name": "w", "command": command or SPIN, "user": user,
                           "working_dir": "/tmp"}]}


def save(name: str, data: Any) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / f"{name}.json").write_text(json.dumps(data, indent=1))


# -- 1. accuracy ---------------------------------------------------------------------
async def accuracy(seconds: float) -> dict[str, Any]:
    results: dict[str, list[tuple[float, float]]] = {}
    async with Bench() as b:
        for budget in BUDGETS:
            q, pc = int(budget * 100_000), int(budget * 100)
            # A fresh partition per point: each mode starts from a new cgroup, as a new
            # mission would, instead of converting one group between modes.
            modes: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
                "cfs (dedicated core)": (part(f"cfs-core{pc}", cores=[1], quota=q), {}),
                "cfs (shared pool)": (part(f"cfs-pool{pc}", quota=q), {}),
                "rt (SCHED_FIFO)": (part(f"rt{pc}", cores=[1], quota=1_000, mode="rt",
                                         rt={"runtime_us": q, "period_us": 100_000}), {}),
                "windows (freezer)": (part(f"win{pc}", cores=[1], quota=100_000), {
                    "schedules": [{"name": "s", "major_frame_us": 100_000, "windows": [
                        {"partition": f"win{pc}", "offset_us": 0, "duration_us": q}]}]}),
                "deadline": (part(f"dl{pc}", quota=1_000, mode="deadline", deadline={
                    "runtime_us": int(budget * 10_000), "deadline_us": 10_000,
                    "period_us": 10_000}), {}),
            }
            for mode, (p, extra) in modes.items():
                await b.fly([p], **extra)
                got = (await b.shares(seconds, warmup=1.0))[p["name"]]
                results.setdefault(mode, []).append((budget, got))
    print(f"budget accuracy: saturating spinner, {seconds:g} s per point")
    print(f"{'mode':<22}" + "".join(f"{int(x * 100):>9}%" for x in BUDGETS) + "   max |err|")
    for mode, pts in results.items():
        errs = [abs(s - bud) * 100 for bud, s in pts]
        print(f"{mode:<22}" + "".join(f"{s * 100:>9.2f}%" for _, s in pts)
              + f"   {max(errs):.2f} pt")
    save("accuracy", results)
    plot_accuracy(results)
    return results


def plot_accuracy(results: dict[str, list[tuple[float, float]]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    IMG.mkdir(parents=True, exist_ok=True)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, pts in results.items():
        xs = [b * 100 for b, _ in pts]
        ax1.plot(xs, [s * 100 for _, s in pts], marker="o", label=mode)
        ax2.plot(xs, [(s - b) * 100 for b, s in pts], marker="o", label=mode)
    ax1.plot([0, 85], [0, 85], color="grey", linestyle=":", label="budget")
    ax1.set(xlabel="budget (% of a core)", ylabel="measured share (% of a core)",
            title="Measured share vs budget")
    ax2.axhspan(-1, 1, color="green", alpha=0.1, label="target +-1 pt")
    ax2.axhline(0, color="grey", linewidth=0.5)
    ax2.set(xlabel="budget (% of a core)", ylabel="measured - budget (points)",
            title="Error per mode")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / "accuracy.png", dpi=110)


# -- 2. interference -------------------------------------------------------------------
def parse_cyclictest(text: str) -> dict[str, float]:
    hist: dict[int, int] = {}
    for line in text.splitlines():
        m = re.match(r"^(\d+)\s+(\d+)", line)
        if m:
            hist[int(m.group(1))] = int(m.group(2))
    maxes = re.findall(r"# Max Latencies:\s+(\d+)", text)
    total = sum(hist.values())
    seen, p50, p99 = 0, None, None
    for us in sorted(hist):
        seen += hist[us]
        if p50 is None and seen >= 0.5 * total:
            p50 = us
        if p99 is None and seen >= 0.99 * total:
            p99 = us
    return {"samples": total, "p50_us": p50 or 0, "p99_us": p99 or 0,
            "max_us": int(maxes[0]) if maxes else max(hist or [0])}


CYCLIC = ["/usr/bin/cyclictest", "-m", "-p", "80", "-i", "1000", "-h", "20000", "-q",
          "-t", "1", "-a", "1"]


def unpartitioned_cyclictest(cyc: list[str]) -> dict[str, float]:
    """Peer: the same load without partitions; cyclictest and the miner share both cores."""
    miner = subprocess.Popen(["stress-ng", "--cpu", "2", "--quiet"], cwd="/tmp")
    try:
        return parse_cyclictest(
            subprocess.run(cyc, capture_output=True, text=True, check=True).stdout)
    finally:
        miner.terminate()
        miner.wait()


async def interference(loops: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for policy in ("fifo", "other"):
        # fifo: cyclictest at SCHED_FIFO 80; other: its measuring thread at SCHED_OTHER,
        # competing with the miner in CFS wherever they share a core.
        cyc = [*CYCLIC, f"--policy={policy}", "-l", str(loops)]
        if policy == "other":
            cyc[cyc.index("-p") + 1] = "0"
        res = {"no partitioning": unpartitioned_cyclictest(cyc)}
        log = Path(tempfile.mkdtemp(prefix="sortie-cyc-")) / "cyclic.log"
        async with Bench(isolate_os=True) as b:
            await b.fly([
                # A flight-critical loop in an RT budget on its own (exclusive) core.
                part("control", crit="A", cores=[1], quota=45_000, user="root",
                     command=["/bin/sh", "-c", f"exec {' '.join(cyc)} > {log}"],
                     mode="rt", rt={"runtime_us": 500_000, "period_us": 1_000_000,
                                    "priority": 80}),
                part("miner", crit="E", quota=20_000, command=["stress-ng", "--cpu", "2",
                                                                 "--quiet"]),
            ])
            r = b.engine.runners["control"]["w"]
            while r.pid is not None:
                await asyncio.sleep(0.5)
                b.engine.sample()
            res["sortie placement"] = parse_cyclictest(log.read_text())
            res["miner share"] = b.engine.usage["miner"].share
        shutil.rmtree(log.parent, ignore_errors=True)
        out[policy] = res
        print(f"interference: cyclictest --policy={policy} -i 1000, {loops} loops, "
              "stress-ng --cpu 2 as the miner")
        for k in ("no partitioning", "sortie placement"):
            v = res[k]
            print(f"  {k:<18} p50 {v['p50_us']:>6} us  p99 {v['p99_us']:>6} us  max "
                  f"{v['max_us']:>6} us  ({v['samples']} samples)")
        print(f"  miner share under Sortie: {res['miner share'] * 100:.2f} % (budget 20 %)")
    save("interference", out)
    return out


# -- 3. periodic task next to the miner ------------------------------------------------
PERIODIC = r"""
import os, socket, time
period, work, n = 0.010, 0.002, int(os.environ["JOBS"])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
dest = os.environ["SORTIE_REPORT_SOCKET"]
release = time.monotonic()
for _ in range(n):
    end = time.monotonic() + work
    while time.monotonic() < end:
        pass
    done = time.monotonic()
    s.sendto(f"job {int((done - release) * 1e6)} 10000".encode(), dest)
    release += period
    if release > time.monotonic():
        time.sleep(release - time.monotonic())
    else:
        release = time.monotonic()
time.sleep(3600)
"""


async def periodic(jobs: int) -> dict[str, Any]:
    async with Bench(saturation_periods=5) as b:
        task = part("control", crit="A", quota=40_000,
                    command=["/usr/bin/python3", "-c", PERIODIC])
        task["workloads"][0]["env"] = {"JOBS": str(jobs)}
        await b.fly([task, part("miner", crit="E", quota=20_000,
                                command=["stress-ng", "--cpu", "2", "--quiet"])])
        shares: list[float] = []
        t0 = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            b.engine.sample()
            if "miner" in b.engine.usage:
                shares.append(b.engine.usage["miner"].share)
            st = b.engine.monitor.jobs.get(("control", "w"))
            if st is not None and st.jobs >= jobs:
                break
            if time.monotonic() - t0 > jobs * 0.01 * 2 + 30:
                raise SystemExit("periodic task did not finish")
        st = b.engine.monitor.jobs[("control", "w")]
        flagged = [e.message for e in b.engine.events.of_kind("health.budget-saturation")
                   if e.subject == "partition/miner"]
        out = {"jobs": st.jobs, "misses": st.misses, "max_response_us": st.max_response_us,
               "miner_share_mean": sum(shares[2:]) / max(1, len(shares[2:])),
               "miner_budget": 0.2, "miner_flagged": flagged}
    print(f"periodic DAL A task (10 ms period, 2 ms work) next to a stress-ng miner "
          f"(budget 20 %): {out['jobs']} jobs, {out['misses']} deadline misses, worst "
          f"response {out['max_response_us']} us; miner share "
          f"{out['miner_share_mean'] * 100:.2f} %; flagged: {bool(flagged)}")
    save("periodic", out)
    return out


# -- 4. windows ------------------------------------------------------------------------
async def windows(frames: int) -> dict[str, Any]:
    sched = [{"name": "normal", "major_frame_us": 100_000, "windows": [
        {"partition": "a", "offset_us": 0, "duration_us": 30_000},
        {"partition": "b", "offset_us": 30_000, "duration_us": 30_000},
        {"partition": "c", "offset_us": 60_000, "duration_us": 30_000}]}]
    async with Bench() as b:
        await b.fly([part(n, quota=50_000) for n in "abc"], schedules=sched)
        await asyncio.sleep(frames * 0.1 + 0.5)
        b.engine.sample()
        st = b.engine.windows.stats
        edges = list(b.engine.windows.edges)
        out = {}
        for n in "abc":
            j = list(st[n].jitter_us)
            out[n] = {"windows": st[n].windows, "p50_us": pct(j, 50), "p99_us": pct(j, 99),
                      "max_us": max(j), "cpu_inside_s": st[n].inside_ns / 1e9,
                      "cpu_outside_s": st[n].outside_ns / 1e9}
        out["realtime"] = b.engine.windows.realtime
    print(f"windows: 100 ms major frame, three 30 ms windows, {frames} frames "
          f"(timekeeper: {out['realtime']})")
    for n in "abc":
        v = out[n]
        print(f"  {n}: {v['windows']} windows, start jitter p50 {v['p50_us']:.0f} us, p99 "
              f"{v['p99_us']:.0f} us, max {v['max_us']:.0f} us; CPU inside "
              f"{v['cpu_inside_s']:.2f} s, outside {v['cpu_outside_s'] * 1000:.2f} ms")
    save("windows", out)
    plot_windows(edges)
    return out


def plot_windows(edges: list[dict[str, Any]]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    IMG.mkdir(parents=True, exist_ok=True)
    last = [e for e in edges if e["k"] in ("thaw", "freeze")][-30:]
    t0 = min(e["s"] for e in last)
    fig, ax = plt.subplots(figsize=(11, 2.8))
    rows = {"a": 2, "b": 1, "c": 0}
    colours = {"a": "tab:blue", "b": "tab:orange", "c": "tab:green"}
    open_: dict[str, dict[str, Any]] = {}
    for e in last:
        if e["k"] == "thaw":
            open_[e["p"]] = e
        elif e["p"] in open_:
            s = open_.pop(e["p"])
            y = rows[e["p"]]
            ax.broken_barh([((s["s"] - t0) / 1e6, (e["s"] - s["s"]) / 1e6)], (y + 0.05, 0.4),
                           facecolors="none", edgecolors=colours[e["p"]], linestyle=":")
            ax.broken_barh([((s["a"] - t0) / 1e6, (e["a"] - s["a"]) / 1e6)], (y + 0.5, 0.4),
                           facecolors=colours[e["p"]])
            ax.text((s["a"] - t0) / 1e6, y + 0.95, f"+{(s['a'] - s['s']) / 1000:.0f}us",
                    fontsize=6)
    ax.set_yticks([0.5, 1.5, 2.5], ["c", "b", "a"])
    ax.set(xlabel="time (ms)", title="Major frames: scheduled windows (dotted) and actual "
           "thaw-to-freeze intervals (filled), start delay labelled")
    fig.tight_layout()
    fig.savefig(IMG / "windows.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("part", choices=["accuracy", "interference", "periodic", "windows", "all"])
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    a = ap.parse_args()
    q = a.quick
    parts = ["accuracy", "interference", "periodic", "windows"] if a.part == "all" else [a.part]
    for p in parts:
        if p == "accuracy":
            asyncio.run(accuracy(1.0 if q else 4.0))
        elif p == "interference":
            asyncio.run(interference(2_000 if q else 30_000))
        elif p == "periodic":
            asyncio.run(periodic(300 if q else 10_000))
        elif p == "windows":
            asyncio.run(windows(30 if q else 1_000))


if __name__ == "__main__":
    main()
