"""The timeline picture of a simulation: who ran on each core, usage against budget per
partition, and faults, sheds, mode switches and health actions marked."""

from __future__ import annotations

from pathlib import Path

from simulator.run import SimResult

PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
           "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]


def draw(r: SimResult, out: Path, zoom_s: float = 1.0) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(r.partitions)
    colour = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(names)}
    fig, axes = plt.subplots(3, 1, figsize=(12, 8.5),
                             gridspec_kw={"height_ratios": [1.2, 1.2, 2]})
    cores = sorted(r.cores)
    # 1) the whole run, per core; 2) a zoom of the first ``zoom_s`` seconds.
    for ax, (t0, t1), title in ((axes[0], (0.0, r.duration_s), "whole run"),
                                (axes[1], (0.0, min(zoom_s, r.duration_s)),
                                 f"first {zoom_s:g} s")):
        for row, c in enumerate(cores):
            spans = [s for s in r.cores[c] if s[2] is not None and s[1] > t0 and s[0] < t1]
            for p in names:
                bars = [(s[0], s[1] - s[0]) for s in spans if s[2] == p]
                if bars:
                    ax.broken_barh(bars, (row + 0.1, 0.8), facecolors=colour[p])
        ax.set_yticks([i + 0.5 for i in range(len(cores))], [f"core {c}" for c in cores])
        ax.set_xlim(t0, t1)
        ax.set_title(f"{r.scenario} on {r.board}: who ran on each core ({title})",
                     fontsize=10)
        for t, label in r.marks:
            if t0 <= t <= t1 and not label.startswith("health.deadline-miss"):
                ax.axvline(t, color="black", linewidth=0.8, linestyle="--")
    ax = axes[2]
    for p in names:
        series = r.usage.get(p, [])
        if series:
            ts = [x[0] for x in series]
            ax.plot(ts, [x[1] * 100 for x in series], color=colour[p], label=f"{p} used")
            ax.plot(ts, [x[2] * 100 for x in series], color=colour[p], linestyle=":",
                    label=f"{p} budget")
    seen: set[str] = set()
    for t, label in r.marks:
        kind = label.split()[0]
        if kind == "health.deadline-miss" and kind in seen:
            continue
        seen.add(kind)
        ax.axvline(t, color="black", linewidth=0.8, linestyle="--")
        ax.text(t, ax.get_ylim()[1] * 0.98, " " + label, rotation=90, fontsize=7, va="top")
    ax.set(xlabel="simulated time (s)", ylabel="% of a core",
           title="CPU used per partition against its budget (dotted), events marked")
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
