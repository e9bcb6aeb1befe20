"""Health monitor decisions: which error happened, and which action the table gives. Pure.

The profile's per-partition ``health`` table overrides these defaults, chosen so that a
flight-critical partition is kept running and a best-effort one is contained:

| error              | A, B               | C, D               | E                |
|--------------------|--------------------|--------------------|------------------|
| crash              | restart-workload   | restart-workload   | restart-workload |
| crash-loop         | log                | stop-partition     | stop-partition   |
| budget-saturation  | log                | log                | log              |
| deadline-miss      | log                | log                | ignore           |
| oom                | restart-workload   | restart-workload   | stop-partition   |
| pids-exhausted     | log                | log                | stop-partition   |
| window-overrun     | log                | log                | log              |
| wcet-overrun       | log                | log                | ignore           |
| health-check       | restart-workload   | restart-workload   | restart-workload |

``restart-workload`` for a crash means "the restart policy handles it"; for other errors
the workload is restarted at once. A budget-saturated partition is already held to its
budget by the kernel; the event is the flag a person (or a stricter table) acts on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from agent.models import Criticality, Partition
from agent.policy.accounting import Usage


class ErrorKind(StrEnum):
    """What the health monitor detects (the keys of a partition's ``health`` table)."""

    CRASH = "crash"
    CRASH_LOOP = "crash-loop"
    BUDGET_SATURATION = "budget-saturation"
    DEADLINE_MISS = "deadline-miss"
    OOM = "oom"
    PIDS_EXHAUSTED = "pids-exhausted"
    WINDOW_OVERRUN = "window-overrun"
    WCET_OVERRUN = "wcet-overrun"
    """A job took more CPU than the WCET its deadline's proof assumed."""
    HEALTH_CHECK = "health-check"
    """The workload's own health check failed its threshold of times in a row."""


@dataclass(frozen=True)
class _Named:
    """An action the profile names by one word (``NAME``)."""

    NAME: ClassVar[str] = ""

    def __str__(self) -> str:
        return self.NAME


@dataclass(frozen=True)
class Ignore(_Named):
    """Nothing: not even an event."""

    NAME = "ignore"


@dataclass(frozen=True)
class Log(_Named):
    """The event alone (the kernel already holds the partition to its limits)."""

    NAME = "log"


@dataclass(frozen=True)
class RestartWorkload(_Named):
    """Restart the workload that erred (for a crash: its restart policy does)."""

    NAME = "restart-workload"


@dataclass(frozen=True)
class RestartPartition(_Named):
    """Restart every workload of the partition."""

    NAME = "restart-partition"


@dataclass(frozen=True)
class StopPartition(_Named):
    """Stop the partition's workloads until a new mission generation."""

    NAME = "stop-partition"


@dataclass(frozen=True)
class SwitchMode:
    """Switch the window schedule (at the next major-frame boundary)."""

    mode: str

    def __str__(self) -> str:
        return f"switch-mode:{self.mode}"


HealthAction = Ignore | Log | RestartWorkload | RestartPartition | StopPartition | SwitchMode
_NAMED: dict[str, HealthAction] = {str(a): a for a in (
    Ignore(), Log(), RestartWorkload(), RestartPartition(), StopPartition())}


def parse_action(text: str) -> HealthAction:
    """A table entry as the profile writes it (validated by the model's pattern)."""
    if text.startswith("switch-mode:"):
        return SwitchMode(text.split(":", 1)[1])
    return _NAMED[text]


_CRITICAL: dict[ErrorKind, HealthAction] = {
    ErrorKind.CRASH: RestartWorkload(), ErrorKind.CRASH_LOOP: Log(),
    ErrorKind.BUDGET_SATURATION: Log(), ErrorKind.DEADLINE_MISS: Log(),
    ErrorKind.OOM: RestartWorkload(), ErrorKind.PIDS_EXHAUSTED: Log(),
    ErrorKind.WINDOW_OVERRUN: Log(), ErrorKind.WCET_OVERRUN: Log(),
    ErrorKind.HEALTH_CHECK: RestartWorkload()}
_MIDDLE = {**_CRITICAL, ErrorKind.CRASH_LOOP: StopPartition()}
_BEST_EFFORT = {**_MIDDLE, ErrorKind.DEADLINE_MISS: Ignore(), ErrorKind.WCET_OVERRUN: Ignore(),
                ErrorKind.OOM: StopPartition(),
                ErrorKind.PIDS_EXHAUSTED: StopPartition()}
DEFAULTS: dict[Criticality, dict[ErrorKind, HealthAction]] = {
    "A": _CRITICAL, "B": _CRITICAL, "C": _MIDDLE, "D": _MIDDLE, "E": _BEST_EFFORT}


def decide(part: Partition, kind: ErrorKind) -> HealthAction:
    """The partition's table entry for this error, else its criticality's default (as
    ARINC 653's partition health-monitor table answers an error)."""
    text = part.health.get(kind.value)
    return parse_action(text) if text else DEFAULTS[part.criticality][kind]


@dataclass(frozen=True)
class HealthOrder:
    """A decided action for the one writer to carry out, with its cause."""

    action: HealthAction
    kind: ErrorKind
    partition: str
    workload: str | None


@dataclass
class SaturationDetector:
    """Sustained saturation: the partition used its whole CFS budget and was throttled
    in nearly every period, for ``sustain`` accounting periods in a row. This is
    the signature of a runaway loop or a miner; a busy but bursty job does not show it."""

    sustain: int = 5
    # Throttled in (nearly) every period means the whole quota was used every period;
    # the share test is loose because a sample never aligns with the CFS periods.
    share_of_budget: float = 0.75
    throttled_fraction: float = 0.8
    _recent: deque[bool] = field(default_factory=deque)
    flagged: bool = False

    def feed(self, use: Usage) -> bool:
        """True once, when saturation becomes sustained; re-arms when it clears."""
        saturated = (use.budget_share > 0 and use.share >= self.share_of_budget
                     * use.budget_share and use.periods > 0
                     and use.throttled_periods >= self.throttled_fraction * use.periods)
        self._recent.append(saturated)
        while len(self._recent) > self.sustain:
            self._recent.popleft()
        sustained = len(self._recent) == self.sustain and all(self._recent)
        if sustained and not self.flagged:
            self.flagged = True
            return True
        if not any(self._recent):
            self.flagged = False
        return False


RECENT_JOBS = 2_000
RESPONSE_BUCKETS_US = (100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000,
                       100_000, 250_000, 1_000_000)
"""Upper bounds of the response-time histogram (Prometheus ``le``): the same for every
workload, so a fleet's histograms add up; a workload's deadline is its own gauge."""


@dataclass
class JobStats:
    """Jobs a workload reported through the report socket."""

    jobs: int = 0
    misses: int = 0
    max_response_us: int = 0
    response_sum_us: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(RESPONSE_BUCKETS_US))
    """Jobs per histogram bucket (not cumulative; above the last bound: jobs - sum)."""
    recent: deque[int] = field(default_factory=lambda: deque(maxlen=RECENT_JOBS))
    """The last responses, for a percentile (bounded memory per workload)."""

    def record(self, response_us: int, deadline_us: int) -> bool:
        """Count one job; True when it missed its deadline."""
        self.jobs += 1
        self.max_response_us = max(self.max_response_us, response_us)
        self.response_sum_us += response_us
        i = bisect_left(RESPONSE_BUCKETS_US, response_us)
        if i < len(self.buckets):
            self.buckets[i] += 1
        self.recent.append(response_us)
        missed = response_us > deadline_us
        self.misses += missed
        return missed

    def cumulative(self) -> tuple[tuple[int, int], ...]:
        """(le_us, jobs at or under it) per bound, as a Prometheus histogram counts."""
        out, total = [], 0
        for le, n in zip(RESPONSE_BUCKETS_US, self.buckets, strict=True):
            total += n
            out.append((le, total))
        return tuple(out)

    def p99_us(self) -> int:
        """99th percentile of the recent responses (0 before any)."""
        if not self.recent:
            return 0
        ordered = sorted(self.recent)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
