"""Prometheus metrics for node_exporter's textfile collector (docs/operations.md).

Every accounting period the daemon renders the board's typed ``Status`` into the
exposition format and replaces ``TEXTFILE_DIR/sortie.prom`` atomically; node_exporter
serves it with the host's own metrics, so the agent opens no port. The families are
built from the status alone (``families``, pure): what Prometheus shows is what
``sortie status`` shows.

The text format (0.0.4) is written here, not by prometheus_client: with 50 workloads
its renderer took 2.0 ms per write (4 us a sample, most in label-name validation of
names fixed at build time) and put the idle agent at 0.68 % of a core against the 0.5 %
target, plus 1.4 MiB of imports (bench/ops_overhead.py, docs/benchmarks.md). The format
is small: HELP and TYPE lines, samples with escaped label values, no timestamps.
prometheus_client's parser and promtool check what is written (tests/test_metrics.py).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.errors import AgentError
from agent.status import PartitionStatus, Status, WorkloadStatus

FILE_NAME = "sortie.prom"
PLABELS = ("partition", "criticality")
WLABELS = ("partition", "workload", "criticality")


@dataclass(frozen=True)
class AgentProcess:
    """The agent's own cost, read where it runs (not part of the board's status)."""

    resident_bytes: int
    cpu_s: float

    @classmethod
    def now(cls) -> AgentProcess:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return cls(pages * os.sysconf("SC_PAGE_SIZE"), ru.ru_utime + ru.ru_stime)


@dataclass
class Metric:
    """One metric family and its samples: (name suffix, label values, value)."""

    name: str
    type: Literal["gauge", "counter", "histogram"]
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[str, tuple[str, ...], float]] = field(default_factory=list)

    def add_metric(self, values: Sequence[str], value: float) -> None:
        self.samples.append(("", tuple(values), value))

    def add_histogram(self, values: Sequence[str], buckets: Sequence[tuple[str, int]],
                      total: float) -> None:
        """Cumulative (le, count) buckets ending with "+Inf"; the count is the last."""
        for le, n in buckets:
            self.samples.append(("_bucket", (*values, le), n))
        self.samples.append(("_count", tuple(values), buckets[-1][1]))
        self.samples.append(("_sum", tuple(values), total))


def _g(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    return Metric(name, "gauge", doc, tuple(labels))


def _c(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    assert name.endswith("_total"), name
    return Metric(name, "counter", doc, tuple(labels))


def _h(name: str, doc: str, labels: Sequence[str] = ()) -> Metric:
    return Metric(name, "histogram", doc, tuple(labels))


def _value(v: float) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def _escape(v: str) -> str:
    if "\\" not in v and "\n" not in v and '"' not in v:
        return v  # the common case, checked first: a write renders ~500 samples
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(metrics: list[Metric]) -> bytes:
    """The exposition text (format 0.0.4, which node_exporter's textfile collector reads)."""
    out: list[str] = []
    for m in metrics:
        out.append(f"# HELP {m.name} {m.help}\n# TYPE {m.name} {m.type}\n")
        names = m.labels + (("le",) if m.type == "histogram" else ())
        for suffix, values, v in m.samples:
            name = m.name + suffix
            if values:
                pairs = ",".join(f'{k}="{_escape(x)}"' for k, x in zip(names, values,
                                                                       strict=False))
                out.append(f"{name}{{{pairs}}} {_value(v)}\n")
            else:
                out.append(f"{name} {_value(v)}\n")
    return "".join(out).encode()


def _crit(p: PartitionStatus) -> str:
    return p.criticality or ""


def families(st: Status, node: str, agent: AgentProcess | None = None) -> list[Metric]:
    """Every metric family of the board, from its status."""
    out: list[Metric] = []
    info = _g("sortie_agent_info", "The agent: board profile, node name, cgroup version.",
              ["board", "node", "cgroup"])
    info.add_metric([st.board, node, st.cgroup.version], 1)
    out.append(info)
    if st.ready_after_s is not None:
        ready = _g("sortie_agent_ready_seconds",
                   "Process start to first reconcile done at the last start.")
        ready.add_metric([], st.ready_after_s)
        out.append(ready)
    if agent is not None:
        rss = _g("sortie_agent_resident_memory_bytes", "The agent's resident memory.")
        rss.add_metric([], agent.resident_bytes)
        cpu = _c("sortie_agent_cpu_seconds_total", "CPU time the agent used.")
        cpu.add_metric([], agent.cpu_s)
        out += [rss, cpu]
    errs = _c("sortie_internal_errors_total",
              "Faults the agent caught and survived, by component.", ["component"])
    for comp, n in sorted(st.internal_errors.items()):
        errs.add_metric([comp], n)
    out.append(errs)
    out += _mission(st)
    out += _partitions(st.partitions)
    out += _workloads(st.partitions)
    out += _windows(st)
    out += _sources(st)
    return out


def _mission(st: Status) -> list[Metric]:
    info = _g("sortie_mission_info", "The flying mission (absent: none).", ["mission", "source"])
    gen = _g("sortie_mission_generation", "Generation of the flying mission.")
    if st.mission is not None:
        info.add_metric([st.mission.name, st.mission.origin.source], 1)
        gen.add_metric([], st.mission.generation)
    degraded = _g("sortie_degraded",
                  "1 while the board runs with lost capacity (partitions may be shed).")
    degraded.add_metric([], 1 if st.degraded.shed or any(
        c < 1 for c in st.degraded.capacity.values()) else 0)
    shed = _g("sortie_partition_shed", "1 for a partition shed by degraded mode.", ["partition"])
    for p in st.degraded.shed:
        shed.add_metric([p], 1)
    cap = _g("sortie_cpu_capacity_ratio", "Capacity of each core now (1 full, 0 offline).",
             ["cpu"])
    for cpu, c in sorted(st.degraded.capacity.items()):
        cap.add_metric([str(cpu)], c)
    return [info, gen, degraded, shed, cap]


def _partitions(parts: list[PartitionStatus]) -> list[Metric]:
    budget = _g("sortie_partition_cpu_budget_ratio",
                "CPU budget as cores (quota / period; 0.2 = 20 % of one core).", PLABELS)
    used = _g("sortie_partition_cpu_used_ratio",
              "CPU used over the last accounting period, as cores.", PLABELS)
    cpu_s = _c("sortie_partition_cpu_used_seconds_total", "CPU time the partition used.",
               PLABELS)
    periods = _c("sortie_partition_cpu_periods_total", "CFS periods elapsed.", PLABELS)
    thr_p = _c("sortie_partition_cpu_throttled_periods_total",
               "CFS periods in which the partition hit its quota.", PLABELS)
    thr_s = _c("sortie_partition_cpu_throttled_seconds_total",
               "Time the partition spent throttled.", PLABELS)
    mem = _g("sortie_partition_memory_bytes", "Memory charged to the partition.", PLABELS)
    mem_max = _g("sortie_partition_memory_limit_bytes", "The partition's memory limit.", PLABELS)
    pids = _g("sortie_partition_pids", "Tasks in the partition.", PLABELS)
    pids_max = _g("sortie_partition_pids_limit", "The partition's task limit.", PLABELS)
    weight = _g("sortie_partition_cpu_weight",
                "CFS weight on shared cores (cpu.weight scale; 0: the idle class).", PLABELS)
    ooms = _c("sortie_partition_oom_kills_total", "Processes OOM-killed in the partition.",
              PLABELS)
    refused = _c("sortie_partition_forks_refused_total", "Forks refused at the task limit.",
                 PLABELS)
    saturated = _g("sortie_partition_saturated",
                   "1 while the partition uses its whole budget and is throttled.", PLABELS)
    stopped = _g("sortie_partition_stopped", "1 when the health monitor stopped it.", PLABELS)
    actions = _c("sortie_health_actions_total", "Health verdicts by error and action taken.",
                 [*PLABELS, "error", "action"])
    for p in parts:
        lv = [p.name, _crit(p)]
        if p.quota_us is not None and p.period_us:
            budget.add_metric(lv, p.quota_us / p.period_us)
        if p.usage is not None:
            used.add_metric(lv, p.usage.share)
        if p.totals is not None:
            t = p.totals
            cpu_s.add_metric(lv, t.cpu_used_s)
            periods.add_metric(lv, t.periods)
            thr_p.add_metric(lv, t.throttled_periods)
            thr_s.add_metric(lv, t.throttled_s)
            if t.memory_bytes is not None:
                mem.add_metric(lv, t.memory_bytes)
            if t.pids is not None:
                pids.add_metric(lv, t.pids)
        if p.memory_bytes is not None:
            mem_max.add_metric(lv, p.memory_bytes)
        if p.pids_max is not None:
            pids_max.add_metric(lv, p.pids_max)
        if p.weight is not None:
            weight.add_metric(lv, p.weight)
        if "oom_kill" in p.health.counters:
            ooms.add_metric(lv, p.health.counters["oom_kill"])
        if "pids_max" in p.health.counters:
            refused.add_metric(lv, p.health.counters["pids_max"])
        saturated.add_metric(lv, int(p.health.saturated))
        stopped.add_metric(lv, int(p.health.stopped))
        for kind, by_action in sorted(p.health.actions.items()):
            for action, n in sorted(by_action.items()):
                actions.add_metric([*lv, kind, action], n)
    return [budget, used, cpu_s, periods, thr_p, thr_s, mem, mem_max, pids, pids_max,
            weight, ooms, refused, saturated, stopped, actions]


def _workloads(parts: list[PartitionStatus]) -> list[Metric]:
    # One series per workload, its current state (not one per possible state, as
    # kube-state-metrics does): a third of the file's samples at the same meaning, since
    # a state left goes stale in Prometheus and `== 1` alerts resolve.
    state = _g("sortie_workload_state", "1, labelled with the state the workload is in.",
               [*WLABELS, "state"])
    restarts = _c("sortie_workload_restarts_total", "Restarts of the workload.", WLABELS)
    period = _g("sortie_workload_period_seconds", "Declared period (minimum inter-arrival).",
                WLABELS)
    wcet = _g("sortie_workload_wcet_seconds", "Declared execution budget of one job.", WLABELS)
    deadline = _g("sortie_workload_deadline_seconds", "Declared relative deadline.", WLABELS)
    bound = _g("sortie_workload_response_bound_seconds",
               "Worst-case response time admission proved on the board as it is now.", WLABELS)
    misses = _c("sortie_workload_deadline_misses_total", "Jobs that missed their deadline.",
                WLABELS)
    response = _h("sortie_workload_response_seconds",
                  "Response time of the jobs the workload reported.", WLABELS)
    for p in parts:
        for w in p.workloads:
            lv = [p.name, w.name, _crit(p)]
            state.add_metric([*lv, w.state], 1)
            restarts.add_metric(lv, w.restarts)
            _timing(w, lv, period, wcet, deadline, bound)
            jobs = p.health.jobs.get(w.name)
            if jobs is None:
                continue
            misses.add_metric(lv, jobs.misses)
            buckets = [(_le(le_us), n) for le_us, n in jobs.response_buckets]
            response.add_histogram(lv, [*buckets, ("+Inf", jobs.jobs)],
                                   jobs.response_sum_us / 1e6)
    return [state, restarts, period, wcet, deadline, bound, misses, response]


def _le(us: int) -> str:
    return repr(us / 1e6)


def _timing(w: WorkloadStatus, lv: list[str], period: Metric, wcet: Metric,
            deadline: Metric, bound: Metric) -> None:
    t = w.timing
    if t is None:
        return
    period.add_metric(lv, t.period_us / 1e6)
    wcet.add_metric(lv, t.wcet_us / 1e6)
    deadline.add_metric(lv, t.deadline_us / 1e6)
    if t.response_bound_us is not None:
        bound.add_metric(lv, t.response_bound_us / 1e6)


def _windows(st: Status) -> list[Metric]:
    w = st.windows
    enforcing = _g("sortie_windows_enforcing", "1 while a time-window schedule is enforced.",
                   ["mode"])
    enforcing.add_metric([w.mode or ""], int(w.enforcing))
    jitter = _g("sortie_window_start_jitter_seconds",
                "Lateness of window starts (quantile 1: the worst).", ["partition", "quantile"])
    inside = _c("sortie_window_cpu_inside_seconds_total", "CPU used inside the windows.",
                ["partition"])
    outside = _c("sortie_window_cpu_outside_seconds_total",
                 "CPU used outside the windows (an overrun).", ["partition"])
    for p, f in sorted(w.partitions.items()):
        for q, v in (("0.5", f.start_jitter_us.p50), ("0.99", f.start_jitter_us.p99),
                     ("1", f.start_jitter_us.max)):
            jitter.add_metric([p, q], v / 1e6)
        inside.add_metric([p], f.cpu_inside_s)
        outside.add_metric([p], f.cpu_outside_s)
    return [enforcing, jitter, inside, outside]


def _sources(st: Status) -> list[Metric]:
    out: list[Metric] = []
    src = st.sources
    if src.files is not None:
        invalid = _g("sortie_profile_files_invalid",
                     "Profile files the last scan refused.")
        invalid.add_metric([], len(src.files.invalid))
        out.append(invalid)
    if st.reports is not None:
        reps = _c("sortie_job_reports_total", "Job report datagrams by outcome.", ["outcome"])
        for outcome in ("accepted", "rejected", "throttled"):
            reps.add_metric([outcome], getattr(st.reports, outcome))
        out.append(reps)
    if src.mqtt is not None:
        m = src.mqtt
        up = _g("sortie_mqtt_connected", "1 while the planner broker is connected.")
        up.add_metric([], int(m.connected))
        pushes = _c("sortie_mqtt_pushes_total", "Mission pushes by outcome.", ["outcome"])
        for outcome, n in sorted(m.pushes.items()):
            pushes.add_metric([outcome], n)
        dropped = _c("sortie_mqtt_dropped_total",
                     "Pushes dropped because the incoming queue was full.")
        dropped.add_metric([], m.dropped)
        backlog = _g("sortie_mqtt_backlog_events", "Events waiting for the broker.")
        backlog.add_metric([], m.backlog)
        out += [up, pushes, dropped, backlog]
        if m.last_push is not None:
            last = _g("sortie_mqtt_last_push_timestamp_seconds",
                      "When the last push arrived (Unix time).", ["outcome"])
            last.add_metric([m.last_push.outcome], m.last_push.at)
            out.append(last)
    if src.kube is not None:
        k = src.kube
        up = _g("sortie_kube_connected",
                "1 while the MissionProfile watch is healthy.")
        up.add_metric([], int(k.connected))
        targeting = _g("sortie_kube_profiles_targeting",
                       "MissionProfiles whose selector matches this board.")
        targeting.add_metric([], len(k.targeting_this_board))
        out += [up, targeting]
        decisions = _c("sortie_kube_decisions_total",
                       "What the board decided about MissionProfiles.", ["decision"])
        for name, n in sorted(k.counters.items()):
            if name.startswith("decisions_"):
                decisions.add_metric([name.removeprefix("decisions_")], n)
            else:
                c = _c(f"sortie_kube_{name}_total", f"Kubernetes link: {name.replace('_', ' ')}.")
                c.add_metric([], n)
                out.append(c)
        out.append(decisions)
    return out


class TextfileWriter:
    """Replaces ``DIR/sortie.prom`` atomically: node_exporter never reads half a file.

    Written here rather than with prometheus_client's ``write_to_textfile``: that one
    leaves the mode to the umask (the agent runs with 077, and node_exporter reads as its
    own user) and names its temporary file after the pid, so a crash between write and
    rename leaves a new stray file per start. This temp name is fixed and hidden (no
    ``.prom`` ending: the collector skips it)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME
        self.tmp = directory / f".{FILE_NAME}.tmp"

    def write(self, data: bytes) -> None:
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o644)
            try:
                os.fchmod(fd, 0o644)  # O_CREAT's mode is masked by the umask
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(data)
            finally:
                os.close(fd)
            os.replace(self.tmp, self.path)
        except OSError as exc:
            raise AgentError(f"metrics.textfile_dir: cannot write {self.path}: "
                             f"{exc.strerror or exc}") from exc

    def remove(self) -> None:
        """Stale figures are worse than none: gone when the agent stops."""
        for p in (self.path, self.tmp):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise AgentError(f"metrics.textfile_dir: cannot remove {p}: "
                                 f"{exc.strerror or exc}") from exc
