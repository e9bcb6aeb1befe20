"""``sortie report``: a timing report a certification reviewer can read. Markdown, with a
PNG of each timed workload's bound against what was measured when matplotlib is there.

Per timed workload: what it declared, the bound admission proved and the method, what
was measured (jobs, misses, worst, p99); the interference present on its cores (the
other partitions there, their criticality, weight, budget and what they used); the
mission, the board and the kernel the figures were measured on, and the assumptions
the bounds rest on. Pure apart from writing the files: it reads a ``Status``."""

from __future__ import annotations

import time
from pathlib import Path

from agent.cli.common import pct
from agent.status import PartitionStatus, Status, WorkloadStatus


def _timed(s: Status) -> list[tuple[PartitionStatus, WorkloadStatus]]:
    return [(p, w) for p in s.partitions for w in p.workloads if w.timing is not None]


def markdown(s: Status, png: str | None) -> str:
    m, a = s.mission, s.timing
    lines = [f"# Timing report: {m.name if m else 'no mission'}"
             f"{f' generation {m.generation}' if m else ''} on {s.board}", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S %Z')} from the agent's status.", ""]
    if a is not None:
        lines += ["## Platform and assumptions", "",
                  f"- kernel {a.kernel}, cgroup {s.cgroup.version} (prefix `{s.cgroup.prefix}`)",
                  f"- scheduler tick {a.tick_us} us: a budget may overrun by one tick and "
                  "is paid back in the next period",
                  f"- latency allowance {a.latency_allowance_us} us per job (interrupts and "
                  "scheduling latency), added to every declared WCET",
                  f"- OS processes kept off exclusive dedicated cores: "
                  f"{'yes' if a.os_isolated else 'no'}",
                  "- jobs are single-threaded and need at most their declared WCET", ""]
    timed = _timed(s)
    lines += ["## Timed workloads", ""]
    if not timed:
        lines += ["No workload of this mission declares timing.", ""]
    else:
        lines += ["| workload | DAL | policy | period | WCET | deadline | bound | jobs | "
                  "misses | worst | p99 | worst / bound |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for p, w in timed:
            t = w.timing
            assert t is not None
            bound = t.response_bound_us
            ratio = f"{t.worst_us / bound:.2f}" if bound and t.jobs else "-"
            lines.append(f"| {p.name}/{w.name} | {p.criticality or '-'} | {w.policy or '-'} "
                         f"| {t.period_us} us | {t.wcet_us} us | {t.deadline_us} us | "
                         f"{'none' if bound is None else f'{bound} us'} | {t.jobs} | "
                         f"{t.misses} | {t.worst_us} us | {t.p99_us} us | {ratio} |")
        over = [f"{p.name}/{w.name}" for p, w in timed if (w.timing and w.timing.misses)
                or (w.timing and w.timing.response_bound_us is not None
                    and w.timing.worst_us > w.timing.response_bound_us)]
        lines += ["", "**Verdict:** " + (f"measured beyond the proof for {over}: the "
                                         "assumptions above did not hold" if over else
                                         "every measured response within its bound, no "
                                         "deadline missed."), ""]
        if png:
            lines += [f"![bound against measurement]({png})", ""]
    lines += ["## Interference present", "",
              "Every partition on the board, with what it used over the last accounting "
              "period (a miner or any other load counts here as the interference the "
              "figures were measured under).", "",
              "| partition | DAL | weight | cores | budget | used | throttled periods |",
              "|---|---|---|---|---|---|---|"]
    for p in s.partitions:
        budget = p.quota_us / p.period_us if p.quota_us and p.period_us else None
        use = p.usage
        weight = "-" if p.weight is None else "idle" if p.weight == 0 else str(p.weight)
        thr = f"{use.throttled_periods}/{use.periods}" if use else "-"
        lines.append(f"| {p.name} | {p.criticality or '-'} | {weight} | "
                     f"{','.join(map(str, p.cpus or []))} | {pct(budget)} | "
                     f"{pct(use.share if use else None)} | {thr} |")
    shed = s.degraded.shed
    lines += ["", f"Degraded: shed {shed}." if shed else "The board had its full capacity.",
              ""]
    return "\n".join(lines)


def plot(s: Status, out: Path) -> bool:
    """Bars per timed workload: deadline, bound, worst, p99. False without matplotlib."""
    timed = _timed(s)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not timed:
        return False
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(timed)), 3.2))
    width = 0.2
    figures = [t for _, w in timed if (t := w.timing) is not None]
    series = [("deadline", "#999999", [t.deadline_us for t in figures]),
              ("bound", "#c0392b", [t.response_bound_us or 0 for t in figures]),
              ("worst measured", "#3b7dd8", [t.worst_us for t in figures]),
              ("p99 measured", "#7fb3f0", [t.p99_us for t in figures])]
    for k, (label, colour, values) in enumerate(series):
        ax.bar([i + (k - 1.5) * width for i in range(len(figures))],
               [v / 1000 for v in values], width, label=label, color=colour)
    ax.set_xticks(range(len(timed)), [f"{p.name}/{w.name}" for p, w in timed])
    ax.set_ylabel("response (ms)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return True


def write(s: Status, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / "timing.png"
    md = directory / "timing-report.md"
    md.write_text(markdown(s, png.name if plot(s, png) else None))
    return md
