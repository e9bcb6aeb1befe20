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

``restart-workload`` for a crash means "the restart policy handles it"; for other errors
the workload is restarted at once. A budget-saturated partition is already held to its
budget by the kernel; the event is the flag a person (or a stricter table) acts on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from agent.accounting import Usage
from agent.models import Criticality, Partition
from agent.models.mission import HealthErrorKind

_CRITICAL: dict[str, str] = {
    "crash": "restart-workload", "crash-loop": "log", "budget-saturation": "log",
    "deadline-miss": "log", "oom": "restart-workload", "pids-exhausted": "log",
    "window-overrun": "log"}
_MIDDLE = {**_CRITICAL, "crash-loop": "stop-partition"}
_BEST_EFFORT = {**_MIDDLE, "deadline-miss": "ignore", "oom": "stop-partition",
                "pids-exhausted": "stop-partition"}
DEFAULTS: dict[Criticality, dict[str, str]] = {
    "A": _CRITICAL, "B": _CRITICAL, "C": _MIDDLE, "D": _MIDDLE, "E": _BEST_EFFORT}


def action_for(part: Partition, kind: HealthErrorKind) -> str:
    return part.health.get(kind) or DEFAULTS[part.criticality][kind]


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


@dataclass
class JobStats:
    """Jobs a workload reported through the report socket."""

    jobs: int = 0
    misses: int = 0
    max_response_us: int = 0

    def record(self, response_us: int, deadline_us: int) -> bool:
        """Count one job; True when it missed its deadline."""
        self.jobs += 1
        self.max_response_us = max(self.max_response_us, response_us)
        missed = response_us > deadline_us
        self.misses += missed
        return missed
