"""The real engine on the simulator's kernel-like cgroup2 tree with simulated processes
and a virtual clock: engine behaviour tested without root (and in virtual seconds)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agent.models import HardwareProfile, MissionProfile
from simulator.clock import VirtualTimeLoop
from simulator.run import _Sim
from simulator.scenario import Scenario

BOARD4 = HardwareProfile.model_validate({
    "name": "b4", "arch": "aarch64", "cores": [{"id": i} for i in range(4)],
    "memory_mib": 8192, "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512}})


def on_sim(tmp_path: Path, first: MissionProfile, body: Callable[[_Sim], Awaitable[None]],
           patterns: dict[str, Any] | None = None, hw: HardwareProfile = BOARD4,
           **config: Any) -> None:
    """Run ``body`` with a simulated board whose CPU model runs (usage accrues); every
    group is removed after. ``config``: agent config fields to override."""
    sc = Scenario.model_validate({"name": "t", "mission": "m.yaml", "duration_s": 1,
                                  "workloads": patterns or {}})
    loop = VirtualTimeLoop()
    asyncio.set_event_loop(loop)

    async def go() -> None:
        sim = _Sim(sc, first, hw, tmp_path)
        if config:
            sim.config = sim.config.model_copy(update=config)
            sim.engine = sim._engine()
        sim.board.on_change = sim._kick
        sim._handle = loop.call_at(loop.time(), sim._tick)
        try:
            await body(sim)
        finally:
            await sim.engine.shutdown(teardown=True)
            if sim._handle is not None:
                sim._handle.cancel()
    try:
        loop.run_until_complete(go())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
