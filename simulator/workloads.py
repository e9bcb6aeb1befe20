"""Demand patterns of simulated workloads. All times in microseconds of nominal work (a
core at relative speed 1.0 does 1 us of work per us); deterministic given the seed."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from agent.models._base import Frozen

PatternKind = Literal["idle", "runaway", "periodic", "bursts"]


class PatternSpec(Frozen):
    """What a simulated workload does (keyed ``partition/workload`` in a scenario)."""

    pattern: PatternKind = "idle"
    """idle (sleeps), runaway (a miner: always runnable), periodic (a job every period),
    bursts (random busy spells)."""
    period_ms: float = Field(default=10.0, gt=0)
    """periodic: job period."""
    work_ms: float = Field(default=2.0, ge=0)
    """periodic: work per job at nominal speed."""
    deadline_ms: float | None = Field(default=None, gt=0)
    """periodic: relative deadline (default: the period); misses are reported."""
    burst_ms: float = Field(default=50.0, gt=0)
    """bursts: mean length of a busy spell."""
    idle_ms: float = Field(default=150.0, gt=0)
    """bursts: mean pause between spells."""
    crash_at_s: float | None = Field(default=None, ge=0)
    """Exit with code 1 at this simulated time (each start crashes again this long after)."""
    hang_at_s: float | None = Field(default=None, ge=0)
    """Stop doing anything (and reporting jobs) at this simulated time."""
    memory_mib: float = Field(default=16.0, ge=0)
    """Resident memory at start."""
    memory_growth_mib_s: float = Field(default=0.0, ge=0)
    """Memory growth rate; past the partition's limit the kernel OOM-kills it."""
    ignores_sigterm: bool = False
    """A stop needs SIGKILL."""


JobSink = Callable[[int, int], None]
"""(response_us, deadline_us) for each completed job."""


class Demand:
    """Runtime state of one pattern instance."""

    def __init__(self, spec: PatternSpec, rng: random.Random, started_us: float,
                 report: JobSink | None, exec_us: float = 0.0) -> None:
        self.spec = spec
        self.rng = rng
        self.started_us = started_us
        self.report = report
        self.work_us = float("inf") if spec.pattern == "runaway" else 0.0
        self.releases: deque[float] = deque()
        # A process needs a moment between fork and its first instruction (exec).
        self.ready_us = started_us + exec_us
        self._next_release = self.ready_us
        self._burst_until = 0.0
        self._next_burst = started_us + rng.expovariate(1 / (spec.idle_ms * 1000))
        self.hung = False
        self.may_crash = spec.crash_at_s is not None
        self.grows = spec.memory_growth_mib_s > 0
        self.may_hang = spec.hang_at_s is not None

    def deadline_us(self) -> int:
        s = self.spec
        return int((s.deadline_ms or s.period_ms) * 1000)

    def advance(self, now_us: float, dt_us: float) -> None:
        """Release work due by ``now_us`` (the start of the next slice)."""
        s = self.spec
        if now_us < self.ready_us:
            if self.work_us == float("inf"):
                self._pending_inf, self.work_us = True, 0.0
            return
        if getattr(self, "_pending_inf", False):
            self._pending_inf, self.work_us = False, float("inf")
        if self.hung or (s.hang_at_s is not None and now_us >= s.hang_at_s * 1e6):
            self.hung, self.work_us = True, 0.0
            return
        if self.work_us == float("inf"):
            return
        if s.pattern == "periodic":
            while self._next_release <= now_us:
                self.work_us += s.work_ms * 1000
                self.releases.append(self._next_release)
                self._next_release += s.period_ms * 1000
        elif s.pattern == "bursts":
            if now_us >= self._next_burst:
                length = self.rng.expovariate(1 / (s.burst_ms * 1000))
                self._burst_until = now_us + length
                self._next_burst = self._burst_until + self.rng.expovariate(
                    1 / (s.idle_ms * 1000))
            self.work_us = dt_us if now_us < self._burst_until else 0.0

    def consumed(self, work: float, at_us: float) -> None:
        """``work`` nominal us were done, finishing at ``at_us``."""
        if self.work_us == float("inf"):
            return
        self.work_us = max(0.0, self.work_us - work)
        if self.spec.pattern != "periodic":
            return
        # Jobs complete in release order; the backlog left is the unfinished part.
        job = self.spec.work_ms * 1000
        while self.releases and self.work_us <= (len(self.releases) - 1) * job + 1e-6:
            release = self.releases.popleft()
            if self.report is not None and not self.hung:
                self.report(int(at_us - release), self.deadline_us())

    def next_event_us(self, now_us: float, mem_limit_mib: float | None) -> float:
        """When this demand may next want the CPU or die (for skipping idle time)."""
        s = self.spec
        times = [float("inf")]
        if now_us < self.ready_us:
            return self.ready_us
        if self.work_us > 0:
            return now_us
        if s.crash_at_s is not None:
            times.append(self.started_us + s.crash_at_s * 1e6)
        if s.hang_at_s is not None and not self.hung:
            times.append(s.hang_at_s * 1e6)
        if not self.hung:
            if s.pattern == "periodic":
                times.append(self._next_release)
            elif s.pattern == "bursts":
                times.append(now_us if now_us < self._burst_until else self._next_burst)
        if mem_limit_mib is not None and s.memory_growth_mib_s > 0:
            times.append(self.started_us + max(0.0, mem_limit_mib - s.memory_mib)
                         / s.memory_growth_mib_s * 1e6)
        return min(times)

    def hang(self) -> None:
        self.hung, self.work_us = True, 0.0

    def run_away(self) -> None:
        """A hijacked workload: from now on it always wants the CPU."""
        self.hung, self.work_us = False, float("inf")

    def memory_at(self, now_us: float) -> float:
        s = self.spec
        if not s.memory_growth_mib_s:
            return s.memory_mib
        return s.memory_mib + s.memory_growth_mib_s * max(0.0, now_us - self.started_us) / 1e6

    def crash_due(self, now_us: float) -> bool:
        s = self.spec
        return s.crash_at_s is not None and now_us >= self.started_us + s.crash_at_s * 1e6
