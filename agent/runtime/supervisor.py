"""One runner per workload: start in its cgroup, watch it through a pidfd, restart with
backoff, detect crash loops, run its health check, stop it and everything it left.

Exits are events from the kernel (pidfd readable), not polls; timers are loop timers,
so an injected or fast-forwarded loop clock drives them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from agent.cgroups import CgroupBackend
from agent.errors import AgentError
from agent.events import EventLog, Severity
from agent.models import Workload
from agent.runtime import procs
from agent.runtime.logs import log_path
from agent.runtime.ops import Launch, ProcessOps, RealOps
from agent.runtime.stopping import terminate_group
from agent.status import ProbeStatus, WorkloadStatus
from agent.timing.sched import SchedPolicy, workload_hash

log = logging.getLogger("sortie.runtime")

# A process that ran this long counts as healthy again: its backoff starts over.
STABLE_AFTER_S = 10.0


class RunnerState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"
    CRASH_LOOP = "crash-loop"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class ExitInfo:
    code: int | None
    """Exit code; ``None`` when unknown (an adopted process is not our child)."""
    signal: int | None
    """Signal that ended the process, if any."""
    at: float
    """Loop time of the exit."""

    @property
    def failed(self) -> bool:
        return self.code != 0

    def describe(self) -> str:
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        if self.code is None:
            return "exited (status unknown: adopted process)"
        return f"exited with code {self.code}"


def backoff_delay_s(spec: Workload, failures: int) -> float:
    """Exponential: initial, 2x initial, ... capped at the maximum. Pure."""
    r = spec.restart
    if failures <= 0:
        return 0.0
    delay_ms: int = min(r.backoff_initial_ms * 2 ** (failures - 1), r.backoff_max_ms)
    return delay_ms / 1000.0


def should_restart(spec: Workload, exit_: ExitInfo) -> bool:
    policy = spec.restart.policy
    return policy == "always" or (policy == "on-failure" and exit_.failed)


class WorkloadRunner:
    def __init__(self, partition: str, spec: Workload, backend: CgroupBackend,
                 log_dir: Path, events: EventLog, sched: SchedPolicy | None = None,
                 report_socket: str | None = None, ops: ProcessOps | None = None) -> None:
        self.ops: ProcessOps = ops or RealOps()
        self.partition = partition
        self.spec = spec
        self.sched = sched
        self.report_socket = report_socket
        self.backend = backend
        self.log_file = log_path(log_dir, partition, spec.name)
        self.events = events
        self.loop = asyncio.get_running_loop()
        self.state = RunnerState.STOPPED
        self.pid: int | None = None
        self.adopted = False
        self.restarts = 0
        self.last_exit: ExitInfo | None = None
        self.last_error: str | None = None
        self._child = False  # our child: we reap it and learn its exit status
        self._watch_handle: object | None = None
        self._watching = False
        self._started_at = 0.0
        self._failures = 0
        self._restart_times: deque[float] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._health = _HealthProbe(self) if spec.health_check else None

    @property
    def subject(self) -> str:
        return f"workload/{self.partition}/{self.spec.name}"

    def _emit(self, kind: str, message: str, severity: Severity = "info") -> None:
        self.events.emit(kind, self.subject, message, severity, partition=self.partition,
                         workload=self.spec.name)

    @property
    def spec_hash(self) -> str:
        return workload_hash(self.spec, self.sched)

    # -- start / adopt -----------------------------------------------------------
    def env(self) -> dict[str, str]:
        tags = {procs.ENV_PARTITION: self.partition,
                procs.ENV_WORKLOAD: f"{self.partition}/{self.spec.name}",
                procs.ENV_SPEC: self.spec_hash}
        if self.report_socket:
            tags[procs.ENV_REPORT] = self.report_socket
        return {**self.spec.env, **tags}

    def start(self) -> None:
        """Spawn now. Failures become a backoff, never an exception to the caller."""
        try:
            got: int | AgentError = self.ops.launch(self.backend, self.first_launch())
        except AgentError as exc:
            got = exc
        self.began(got)

    def first_launch(self) -> Launch:
        """What starting the workload asks of the process ops (``start``, or the
        executor starting several side by side, then ``began``)."""
        return self.launch_request(self.spec.command, self.env(), self.sched)

    def began(self, got: int | AgentError) -> None:
        """The launch's outcome: watch the process, or back off (a restart timer that
        was pending is void either way)."""
        self._cancel_timer()
        if isinstance(got, AgentError):
            self.last_error = str(got)
            self._emit("workload.start-failed", str(got), "error")
            self._after_exit(ExitInfo(code=127, signal=None, at=self.loop.time()))
            return
        self.pid, self.adopted, self._child = got, False, True
        self._watch(got)
        self._emit("workload.started", f"pid {self.pid}")

    def launch_request(self, command: list[str], env: dict[str, str],
                       sched: SchedPolicy | None) -> Launch:
        s = self.spec
        return Launch(self.partition, s.name, command, s.user, s.group, s.working_dir, env,
                      self.log_file, sched, s.image, tuple(s.capabilities), s.network)

    def adopt(self, pid: int) -> None:
        """Take over a process a previous agent started (same PID, no restart)."""
        self.pid, self.adopted, self._child = pid, True, False
        self._emit("workload.adopted", f"pid {pid}")
        self._watch(pid)

    def _watch(self, pid: int) -> None:
        self.state = RunnerState.RUNNING
        self._started_at = self.loop.time()
        self._watching = True
        self._watch_handle = self.ops.watch(pid, self._on_exit)
        if self._watch_handle is None:
            self.loop.call_soon(self._on_exit)
            return
        if self._health:
            self._health.schedule()

    # -- exit handling -----------------------------------------------------------
    def _unwatch(self) -> None:
        if self._watch_handle is not None:
            self.ops.unwatch(self._watch_handle)
            self._watch_handle = None
        self._watching = False

    def _reap(self) -> ExitInfo:
        now = self.loop.time()
        if self._child and self.pid is not None:
            self._child = False
            rc = self.ops.reap(self.pid)
            if rc is None:
                return ExitInfo(code=None, signal=None, at=now)
            return ExitInfo(code=None if rc < 0 else rc, signal=-rc if rc < 0 else None, at=now)
        return ExitInfo(code=None, signal=None, at=now)

    def detach(self) -> None:
        """Stop watching without touching the process (the agent is exiting)."""
        self._cancel_timer()
        if self._health:
            self._health.cancel()
        self._unwatch()

    def _on_exit(self) -> None:
        if not self._watching:
            return  # already handled (a stop raced the exit notification)
        self._unwatch()
        if self._health:
            self._health.cancel()
        exit_ = self._reap()
        self.pid = None
        if self.state in (RunnerState.STOPPING, RunnerState.STOPPED):
            self.last_exit = exit_
            return
        self._emit("workload.exited", exit_.describe(),
                         "warning" if exit_.failed else "info")
        self._after_exit(exit_)

    def _after_exit(self, exit_: ExitInfo) -> None:
        self.last_exit = exit_
        ran = exit_.at - self._started_at
        self._failures = 1 if ran >= STABLE_AFTER_S else self._failures + 1
        if not should_restart(self.spec, exit_):
            self.state = RunnerState.FAILED if exit_.failed else RunnerState.STOPPED
            return
        window = self.spec.restart.crash_loop_window_s
        self._restart_times.append(exit_.at)
        while self._restart_times and self._restart_times[0] < exit_.at - window:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.spec.restart.crash_loop_restarts:
            if self.state != RunnerState.CRASH_LOOP:
                self._emit("workload.crash-loop",
                                 f"{len(self._restart_times)} restarts in {window:g} s", "error")
            self.state = RunnerState.CRASH_LOOP
        else:
            self.state = RunnerState.BACKOFF
        delay = backoff_delay_s(self.spec, self._failures)
        self._timer = self.loop.call_later(delay, self._restart)

    def _restart(self) -> None:
        self._timer = None
        self.restarts += 1
        in_loop = self.state == RunnerState.CRASH_LOOP
        self.start()
        if in_loop and self.state == RunnerState.RUNNING:
            self.state = RunnerState.CRASH_LOOP  # stays flagged until it runs stably
            self.loop.call_later(STABLE_AFTER_S, self._clear_crash_loop, self.pid)

    def _clear_crash_loop(self, pid: int | None) -> None:
        if self.state == RunnerState.CRASH_LOOP and self.pid == pid and pid is not None:
            self.state = RunnerState.RUNNING
            self._restart_times.clear()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- stop --------------------------------------------------------------------
    async def stop(self) -> None:
        """SIGTERM everything in the group, wait the grace period, then SIGKILL the rest."""
        self.state = RunnerState.STOPPING
        self._cancel_timer()
        if self._health:
            self._health.cancel()
        grace = self.spec.stop_grace_ms / 1000.0
        if await terminate_group(self.backend, self.partition, self.spec.name, grace,
                                 self.ops.kill):
            self._emit("workload.killed",
                             f"still running {grace:g} s after SIGTERM; sent SIGKILL", "warning")
        if self._watching:
            self._on_exit()
        self.state = RunnerState.STOPPED
        self.pid = None
        self._emit("workload.stopped", "stopped")

    async def restart(self, reason: str) -> None:
        """Stop and start again, now (the engine's health actions await this under its
        lock)."""
        self._emit("workload.restarting", reason, "warning")
        await self.stop()
        self.restarts += 1
        self.start()

    def status(self) -> WorkloadStatus:
        return WorkloadStatus(
            name=self.spec.name, state=self.state.value, pid=self.pid,
            adopted=self.adopted, restarts=self.restarts,
            last_exit=self.last_exit.describe() if self.last_exit else None,
            last_error=self.last_error, spec_hash=self.spec_hash, image=self.spec.image,
            log=str(self.log_file),
            health=self._health.status() if self._health else None,
            policy=self.sched.describe() if self.sched else "SCHED_OTHER")


class _HealthProbe:
    """Runs the workload's health check inside its cgroup on a loop timer."""

    def __init__(self, runner: WorkloadRunner) -> None:
        assert runner.spec.health_check is not None
        self.runner = runner
        self.check = runner.spec.health_check
        self.consecutive_failures = 0
        self.last_result: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._pid: int | None = None
        self._handle: object | None = None
        self._deadline: asyncio.TimerHandle | None = None

    def schedule(self) -> None:
        self.cancel()
        self._timer = self.runner.loop.call_later(self.check.interval_ms / 1000, self._run)

    def cancel(self) -> None:
        for t in (self._timer, self._deadline):
            if t is not None:
                t.cancel()
        self._timer = self._deadline = None
        if self._pid is not None:
            self.runner.ops.kill(self._pid, signal.SIGKILL)
            self._finish(None, record=False)

    def _run(self) -> None:
        r = self.runner
        self._timer = None
        try:
            env = {**r.spec.env, procs.ENV_PARTITION: r.partition}
            self._pid = r.ops.launch(r.backend, r.launch_request(
                self.check.command, env, None))
        except AgentError as exc:
            self._record(False, f"check could not start: {exc}")
            return
        self._handle = r.ops.watch(self._pid, self._on_done)
        if self._handle is None:
            r.loop.call_soon(self._on_done)
        self._deadline = r.loop.call_later(self.check.timeout_ms / 1000, self._on_timeout)

    def _finish(self, result: tuple[bool, str] | None, record: bool = True) -> None:
        if self._handle is not None:
            self.runner.ops.unwatch(self._handle)
            self._handle = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        rc = None
        if self._pid is not None:
            rc = self.runner.ops.reap(self._pid)
            self._pid = None
        if result is None and rc is not None:
            result = (rc == 0, "ok" if rc == 0 else f"exit code {rc}")
        if result is not None and record:
            self._record(*result)

    def _on_done(self) -> None:
        if self._pid is not None:
            self._finish(None)

    def _on_timeout(self) -> None:
        self._deadline = None
        if self._pid is not None:
            self.runner.ops.kill(self._pid, signal.SIGKILL)
        self._finish((False, f"timed out after {self.check.timeout_ms} ms"))

    def _record(self, ok: bool, detail: str) -> None:
        self.last_result = detail
        self.consecutive_failures = 0 if ok else self.consecutive_failures + 1
        if self.consecutive_failures >= self.check.failure_threshold:
            self.consecutive_failures = 0
            # The health monitor decides (its table; a restart by default) and the
            # engine carries it out under its lock: the probe never acts itself.
            self.runner._emit("workload.unhealthy", f"health check failed "
                              f"{self.check.failure_threshold} times in a row (last: "
                              f"{detail})", "warning")
        if self.runner.state in (RunnerState.RUNNING, RunnerState.CRASH_LOOP):
            self.schedule()

    def status(self) -> ProbeStatus:
        return ProbeStatus(self.consecutive_failures, self.last_result)
