"""``sortie status`` as a table, from the typed Status."""

from __future__ import annotations

from agent.cli.common import pct
from agent.policy.deadlines import Bound, TimingEnv
from agent.status import Status


def render_status(s: Status) -> str:
    m = s.mission
    lines = [f"board {s.board}  cgroup {s.cgroup.version} /{s.cgroup.prefix}",
             "mission " + (f"{m.name} generation {m.generation} from {m.origin.source} "
                           f"{m.origin.path or m.origin.object or m.origin.kid or ''}"
                           if m else "(none)"), ""]
    lines.append(f"{'PARTITION':<18}{'DAL':<4}{'WEIGHT':<7}{'CPUS':<8}{'BUDGET':>8}{'USED':>8}"
                 f"{'THROTTLED':>11}  MEMORY")
    for p in s.partitions:
        use = p.usage
        budget = p.quota_us / p.period_us if p.quota_us and p.period_us and p.quota_us > 0 \
            else None
        thr = f"{use.throttled_periods}/{use.periods}" if use else "-"
        cpus = ",".join(map(str, p.cpus or []))
        mem = f"{p.memory_bytes >> 20} MiB" if p.memory_bytes else "-"
        weight = "-" if p.weight is None else "idle" if p.weight == 0 else str(p.weight)
        lines.append(f"{p.name:<18}{p.criticality or '-':<4}{weight:<7}{cpus:<8}"
                     f"{pct(budget):>8}{pct(use.share if use else None):>8}{thr:>11}  {mem}")
        flags = [f for f, on in (("SATURATED", p.health.saturated),
                                 ("STOPPED by health monitor", p.health.stopped)) if on]
        if flags:
            lines.append(f"  ! {', '.join(flags)}")
        for w in p.workloads:
            extra = " adopted" if w.adopted else ""
            restarts = f" restarts {w.restarts}" if w.restarts else ""
            lines.append(f"  - {w.name:<16}{w.state:<11}pid {w.pid or '-'}{extra}{restarts}"
                         + (f"  {w.policy}" if w.policy else ""))
            t = w.timing
            if t is not None:
                bound = "none" if t.response_bound_us is None else f"{t.response_bound_us}"
                lines.append(f"      deadline {t.deadline_us} us, bound {bound} us; measured "
                             f"{t.jobs} jobs, worst {t.worst_us} us, p99 {t.p99_us} us, "
                             f"misses {t.misses}")
    win = s.windows
    if win.partitions:
        lines += ["", f"windows: mode {win.mode}, "
                      f"{'enforcing' if win.enforcing else 'NOT enforcing'}, "
                      f"timekeeper real-time: {win.realtime}",
                  f"  {'PARTITION':<16}{'WINDOWS':>8}{'JITTER p50':>12}{'p99':>9}{'max':>9}"
                  f"{'CPU OUTSIDE':>13}"]
        for name, f in sorted(win.partitions.items()):
            j = f.start_jitter_us
            lines.append(f"  {name:<16}{f.windows:>8}{j.p50:>10.0f}us{j.p99:>7.0f}us"
                         f"{j.max:>7.0f}us{f.cpu_outside_s * 1000:>10.2f} ms")
    if s.degraded.shed:
        lines += ["", f"degraded: shed {', '.join(s.degraded.shed)}"]
    h = s.hold
    if h is not None and (h.held or h.pending):
        lines += ["", f"HELD: {h.held}" if h.held else "not held"]
        if h.pending is not None:
            what = (f"{h.pending.mission} generation {h.pending.generation}"
                    if h.pending.mission else "a withdrawal")
            lines.append(f"  waiting: {what} from {h.pending.source}")
    if s.errors:
        lines += ["", "errors:"] + [f"  {e}" for e in s.errors]
    return "\n".join(lines)


def bound_dict(b: Bound) -> dict[str, object]:
    return {"path": b.path, "partition": b.partition, "workload": b.workload,
            "deadline_us": b.deadline_us, "response_bound_us": b.response_bound_us,
            "proven": b.proven, "method": b.method, "why": b.why}


def render_bounds(bounds: list[Bound], env: TimingEnv) -> str:
    """Every timed workload's proven bound against its deadline."""
    lines = [f"deadlines (tick {env.tick_us} us, latency allowance {env.latency_us} us "
             "per job):",
             f"  {'WORKLOAD':<24}{'BOUND':>10}{'DEADLINE':>10}  {'':<6}HOW"]
    for b in bounds:
        got = "-" if b.response_bound_us is None else f"{b.response_bound_us} us"
        verdict = "ok" if b.proven else "MISS?" if b.response_bound_us else "NONE"
        lines.append(f"  {b.partition + '/' + b.workload:<24}{got:>10}"
                     f"{b.deadline_us:>8} us  {verdict:<6}{b.method}")
        if b.why and not b.proven:
            lines.append(f"  {'':<24}{b.why}")
    return "\n".join(lines)
