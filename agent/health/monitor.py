"""Health monitor: detects errors (from events, accounting and job reports), decides with
the partition's table (``health.decide``, pure) and hands the typed action to the
engine, the one writer, which carries it out under its lock. Every verdict is an event
with its cause."""

from __future__ import annotations

import logging
from collections.abc import Callable

from agent.events import Event, EventLog, Severity
from agent.health.table import (
    ErrorKind,
    HealthOrder,
    Ignore,
    JobStats,
    Log,
    RestartWorkload,
    SaturationDetector,
    StopPartition,
    decide,
)
from agent.models import Partition
from agent.policy.accounting import Usage
from agent.status import JobFigures, PartitionHealth

log = logging.getLogger("sortie.health")

# The same error on the same partition acts at most this often (crashes excepted: the
# restart policy paces those).
REARM_S = 10.0
# CPU used outside a partition's windows in one accounting period that counts as overrun.
OVERRUN_NS = 2_000_000
# A job-reporting workload silent this long (and this many usual gaps) has hung.
SILENCE_MIN_S = 1.0
SILENCE_FACTOR = 20.0


# Paced by their own policy (restart back-off, the check's threshold), not by REARM_S.
_UNPACED = (ErrorKind.CRASH, ErrorKind.HEALTH_CHECK)


class HealthMonitor:
    """Detects and decides; never acts. What it needs of the engine is given to it:
    the flying partition's table, whether a partition runs, and where orders go."""

    def __init__(self, events: EventLog, clock: Callable[[], float],
                 table: Callable[[str], Partition | None], running: Callable[[str], bool],
                 order: Callable[[HealthOrder], None], saturation_periods: int) -> None:
        self.events = events
        self.clock = clock
        self.table = table
        self.running = running
        self.order = order
        self.saturation_periods = saturation_periods
        self.saturation: dict[str, SaturationDetector] = {}
        self.jobs: dict[tuple[str, str], JobStats] = {}
        self.counters: dict[str, dict[str, int]] = {}
        self.actions: dict[str, dict[str, dict[str, int]]] = {}
        """partition -> error kind -> action -> verdicts (for metrics)."""
        self.outside_ns: dict[str, int] = {}
        self.stopped: set[str] = set()
        """Partitions the monitor stopped; a new mission generation re-arms them."""
        self._last: dict[tuple[str, str], float] = {}
        self._last_report: dict[tuple[str, str], float] = {}
        self._report_gap: dict[tuple[str, str], float] = {}
        events.subscribe(self._on_event)

    # -- detection -----------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        if ev.partition is None or ev.workload is None:
            return
        if ev.kind == "workload.exited" and ev.severity != "info":
            self.report(ErrorKind.CRASH, ev.partition, ev.workload, ev.message)
        elif ev.kind == "workload.crash-loop":
            self.report(ErrorKind.CRASH_LOOP, ev.partition, ev.workload, ev.message)
        elif ev.kind == "workload.unhealthy":
            self.report(ErrorKind.HEALTH_CHECK, ev.partition, ev.workload, ev.message)

    def on_usage(self, partition: str, use: Usage) -> None:
        det = self.saturation.setdefault(
            partition, SaturationDetector(sustain=self.saturation_periods))
        if det.feed(use):
            self.report(ErrorKind.BUDGET_SATURATION, partition, None,
                        f"used {use.share * 100:.1f} % of a core against a budget of "
                        f"{use.budget_share * 100:.1f} %, throttled in "
                        f"{use.throttled_periods}/{use.periods} periods, for "
                        f"{det.sustain} accounting periods")

    def on_counters(self, partition: str, now: dict[str, int]) -> None:
        before = self.counters.get(partition)
        self.counters[partition] = now
        if before is None:
            return
        if now["oom_kill"] > before["oom_kill"]:
            self.report(ErrorKind.OOM, partition, None,
                        f"{now['oom_kill'] - before['oom_kill']} process(es) OOM-killed")
        if now["pids_max"] > before["pids_max"]:
            self.report(ErrorKind.PIDS_EXHAUSTED, partition, None,
                        f"{now['pids_max'] - before['pids_max']} fork(s) refused at pids_max")

    def on_windows(self, partition: str, outside_ns: int) -> None:
        before = self.outside_ns.get(partition, outside_ns)
        self.outside_ns[partition] = outside_ns
        if outside_ns - before > OVERRUN_NS:
            self.report(ErrorKind.WINDOW_OVERRUN, partition, None,
                        f"{(outside_ns - before) / 1e6:.1f} ms of CPU outside its windows")

    def on_job(self, partition: str, workload: str, response_us: int, deadline_us: int,
               exec_us: int | None = None) -> None:
        stats = self.jobs.setdefault((partition, workload), JobStats())
        now = self.clock()
        last = self._last_report.get((partition, workload))
        if last is not None:
            gap = now - last
            prev = self._report_gap.get((partition, workload), gap)
            self._report_gap[(partition, workload)] = 0.9 * prev + 0.1 * gap
        self._last_report[(partition, workload)] = now
        if stats.record(response_us, deadline_us):
            self.report(ErrorKind.DEADLINE_MISS, partition, workload,
                        f"job took {response_us} us against a {deadline_us} us deadline")
        spec = self.table(partition)
        w = next((x for x in spec.workloads if x.name == workload), None) if spec else None
        if exec_us is not None and w is not None and w.timing is not None \
                and exec_us > w.timing.wcet_us:
            self.report(ErrorKind.WCET_OVERRUN, partition, workload,
                        f"job used {exec_us} us of CPU, more than its declared WCET of "
                        f"{w.timing.wcet_us} us: its deadline's proof no longer holds")

    def check_silence(self) -> None:
        """A workload that reported jobs and went quiet has missed its deadlines (hung)."""
        now = self.clock()
        for key, last in list(self._last_report.items()):
            gap = self._report_gap.get(key)
            if gap is None or not self.running(key[0]):
                continue
            silence = now - last
            if silence > max(SILENCE_MIN_S, SILENCE_FACTOR * gap):
                self.report(ErrorKind.DEADLINE_MISS, key[0], key[1],
                            f"no job reported for {silence:.1f} s (usually every "
                            f"{gap * 1000:.0f} ms): hung?")
                self._last_report[key] = now  # one verdict per silence, re-armed by time

    # -- verdict ---------------------------------------------------------------------
    def report(self, kind: ErrorKind, partition: str, workload: str | None,
               cause: str) -> None:
        spec = self.table(partition)
        if spec is None:
            return
        action = decide(spec, kind)
        if isinstance(action, Ignore):
            return
        now = self.clock()
        key = (partition, kind.value)
        if kind not in _UNPACED and now - self._last.get(key, -REARM_S) < REARM_S:
            return
        self._last[key] = now
        if isinstance(action, StopPartition):
            if partition in self.stopped:
                return
            self.stopped.add(partition)
        subject = f"workload/{partition}/{workload}" if workload else f"partition/{partition}"
        severity: Severity = ("error" if spec.criticality in ("A", "B")
                              or not isinstance(action, Log) else "warning")
        self.events.emit(f"health.{kind}", subject, f"{cause} -> {action}", severity,
                         partition=partition, workload=workload)
        by_kind = self.actions.setdefault(partition, {}).setdefault(kind.value, {})
        by_kind[str(action)] = by_kind.get(str(action), 0) + 1
        if isinstance(action, Log) or (isinstance(action, RestartWorkload)
                                       and kind is ErrorKind.CRASH):
            return  # the event is the action; a crash's restart is its policy's
        self.order(HealthOrder(action, kind, partition, workload))

    def rearm(self, partitions: set[str]) -> None:
        """A new mission generation changed these partitions: forget old verdicts."""
        for p in partitions:
            self.stopped.discard(p)
            self.saturation.pop(p, None)

    def status(self, partition: str) -> PartitionHealth:
        det = self.saturation.get(partition)
        return PartitionHealth(
            saturated=bool(det and det.flagged), stopped=partition in self.stopped,
            counters=dict(self.counters.get(partition, {})),
            jobs={w: JobFigures(s.jobs, s.misses, s.max_response_us, s.p99_us(),
                                s.response_sum_us, s.cumulative())
                  for (p, w), s in self.jobs.items() if p == partition},
            actions={k: dict(v) for k, v in self.actions.get(partition, {}).items()})
