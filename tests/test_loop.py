"""The agent's waits for the kernel and for its helpers are awaited: the event loop keeps
turning while a group freezes or the timekeeper exits."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from agent.cgroups.backend import freeze_awaited


class SlowFreezer:
    """A group that takes ``delay_s`` to reach the state it was asked for."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.asked_at = 0.0
        self.writes: list[bool] = []

    def freeze_write(self, partition: str, workload: str | None, frozen: bool) -> None:
        self.asked_at = time.monotonic()
        self.writes.append(frozen)

    def freeze_reached(self, partition: str, workload: str | None, frozen: bool) -> bool:
        return time.monotonic() - self.asked_at >= self.delay_s


async def worst_lateness_ms(work: Any) -> float:
    worst = 0.0
    task = asyncio.create_task(work)
    while not task.done():
        t0 = time.perf_counter()
        await asyncio.sleep(0.001)
        worst = max(worst, (time.perf_counter() - t0 - 0.001) * 1000)
    await task
    return worst


async def test_a_slow_freeze_does_not_stall_the_loop() -> None:
    backend = SlowFreezer(0.2)
    worst = await worst_lateness_ms(freeze_awaited(backend, "p", None, True))  # type: ignore
    assert backend.writes == [True]
    assert worst < 5, f"the loop stalled {worst:.1f} ms while the group froze"


async def test_the_timekeeper_exit_is_awaited() -> None:
    import subprocess
    import sys

    from agent.timing.enforcer import _exited
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])  # noqa: ASYNC220
    try:
        worst = await worst_lateness_ms(_exited(proc, 2.0))
        assert proc.poll() is not None
        assert worst < 5, f"the loop stalled {worst:.1f} ms waiting for a child"
    finally:
        proc.kill()
        proc.wait()


def test_a_stop_right_behind_the_setup_is_not_lost(tmp_path: Any) -> None:
    """A mission changed again before the timekeeper finished starting: its stop must be
    heard at once (it was read into a buffer with the setup and never seen again)."""
    import json
    import os
    import subprocess
    import sys
    parts = {}
    for p in "ab":
        (tmp_path / f"{p}.freeze").write_text("THAWED")
        (tmp_path / f"{p}.usage").write_text("0")
        parts[p] = {"freeze": str(tmp_path / f"{p}.freeze"), "frozen": "FROZEN",
                    "thawed": "THAWED", "usage": str(tmp_path / f"{p}.usage"),
                    "usage_key": None}
    setup = {"partitions": parts, "windowed": ["a", "b"], "epoch_ns": time.monotonic_ns(),
             "cpus": [0], "priority": 1, "schedule": {
                 "name": "n", "major_frame_us": 50_000, "windows": [
                     {"partition": "a", "offset_us": 0, "duration_us": 20_000},
                     {"partition": "b", "offset_us": 20_000, "duration_us": 30_000}]}}
    proc = subprocess.Popen([sys.executable, "-m", "agent.timing.timekeeper"],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(setup).encode() + b'\n{"op":"stop"}\n')
        proc.stdin.flush()
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdin is not None:
            proc.stdin.close()
