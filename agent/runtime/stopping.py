"""Stop everything in a workload's group: SIGTERM, grace period, then freeze + SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from agent.cgroups import CgroupBackend
from agent.cgroups.backend import freeze_awaited
from agent.errors import AgentError, WorkloadError

log = logging.getLogger("sortie.runtime")

POLL_S = 0.005
KILL_WAIT_S = 2.0


Kill = Callable[[int, signal.Signals], None]


def _os_kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def signal_group(backend: CgroupBackend, partition: str, workload: str,
                 sig: signal.Signals, kill: Kill = _os_kill) -> int:
    pids = backend.procs(partition, workload)
    for pid in pids:
        kill(pid, sig)
    return len(pids)


async def wait_empty(backend: CgroupBackend, partition: str, workload: str,
                     timeout_s: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while backend.procs(partition, workload):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


async def terminate_group(backend: CgroupBackend, partition: str, workload: str,
                          grace_s: float, kill: Kill = _os_kill) -> bool:
    """Empty the group. True when SIGKILL was needed. Raises if anything survives it."""
    if not signal_group(backend, partition, workload, signal.SIGTERM, kill):
        return False
    if await wait_empty(backend, partition, workload, grace_s):
        return False
    # Frozen tasks cannot fork, so the kill sweep cannot miss a child born mid-sweep.
    frozen = False
    try:
        await freeze_awaited(backend, partition, workload, True)
        frozen = True
    except AgentError as exc:
        log.warning("freeze before kill failed: %s", exc)
    try:
        signal_group(backend, partition, workload, signal.SIGKILL, kill)
    finally:
        if frozen:
            with contextlib.suppress(AgentError):
                await freeze_awaited(backend, partition, workload, False)
    if not await wait_empty(backend, partition, workload, KILL_WAIT_S):
        left = backend.procs(partition, workload)
        raise WorkloadError(f"workload/{partition}/{workload}: processes {left} "
                            f"survived SIGKILL")
    return True
