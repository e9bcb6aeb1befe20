"""Health orders: the monitor's decided actions, carried out one at a time under the
engine's lock (the lock is fair: in the order given, never beside an apply)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from agent.engine.executor import Executor
from agent.errors import AgentError
from agent.events import EventLog
from agent.health import table as hm


class HealthOrders:
    def __init__(self, lock: Callable[[], AbstractAsyncContextManager[None]],
                 executor: Executor, events: EventLog,
                 switch_mode: Callable[[str], object]) -> None:
        self.lock, self.executor, self.events = lock, executor, events
        self.switch_mode = switch_mode
        self._tasks: set[asyncio.Task[None]] = set()

    def order(self, o: hm.HealthOrder) -> None:
        task = asyncio.get_running_loop().create_task(
            self._carry_out(o), name=f"health {o.action} {o.partition}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _carry_out(self, o: hm.HealthOrder) -> None:
        try:
            async with self.lock():
                await self.act(o)
        except (AgentError, OSError) as exc:
            self.events.emit("health.action-failed", f"partition/{o.partition}",
                             f"{o.action} for {o.kind}: {exc}", "error",
                             partition=o.partition)
        except Exception as exc:
            self.events.internal_error("health", f"carrying out {o.action} for {o.kind}",
                                       exc)

    async def act(self, o: hm.HealthOrder) -> None:
        """One action; the caller holds the lock."""
        why = f"health monitor: {o.kind}"
        match o.action:
            case hm.RestartWorkload():
                if o.workload is not None:
                    await self.executor.restart(o.partition, o.workload, why)
            case hm.RestartPartition():
                await self.executor.restart(o.partition, None, why)
            case hm.StopPartition():
                await self.executor.stop_partition(o.partition)
                self.events.emit("partition.stopped", f"partition/{o.partition}",
                                 f"stopped by the health monitor ({o.kind}); a new mission "
                                 "generation starts it again", "warning",
                                 partition=o.partition)
            case hm.SwitchMode(mode=mode):
                self.switch_mode(mode)
            case _:
                pass  # Ignore and Log never reach here: the event is their action

    async def settle(self) -> None:
        """Wait for the actions under way (shutdown, the simulator, tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
