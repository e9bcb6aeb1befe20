"""Small builders for mission documents used across tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from agent.models import MissionProfile

SLEEPER = ["/bin/sleep", "3600"]
SPINNER = ["/usr/bin/python3", "-c", "while True: pass"]


def workload(name: str = "w", command: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "command": command or SLEEPER, "user": "nobody", **kw}


def partition(name: str, *, quota: int = 20_000, period: int = 100_000, cores: list[int] | None
              = None, crit: str = "C", memory: int = 64, pids: int = 32,
              workloads: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"name": name, "criticality": crit,
            "cpu": {"dedicated_cores": cores or []},
            "budget": {"quota_us": quota, "period_us": period},
            "memory_mib": memory, "pids_max": pids,
            "workloads": workloads or [workload()]}


def mission(*parts: dict[str, Any], name: str = "m", generation: int = 1,
            **kw: Any) -> MissionProfile:
    return MissionProfile.model_validate({"name": name, "generation": generation,
                                          "partitions": list(parts), **kw})


def mission_doc(*parts: dict[str, Any], name: str = "m", generation: int = 1,
                **kw: Any) -> dict[str, Any]:
    return {"name": name, "generation": generation, "partitions": list(parts), **kw}


def agent_files(tmp_path: Path, prefix: str, logs: Path, doc: dict[str, Any],
                **config: Any) -> Path:
    """A profile directory holding ``doc`` and an agent config for a test agent run as a
    subprocess under ``prefix`` (the OS left where it is); ``config`` adds or overrides
    fields. Returns the config's path."""
    profiles = tmp_path / "profiles"
    profiles.mkdir(exist_ok=True)
    (profiles / "m.yaml").write_text(yaml.safe_dump(doc))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "node_name": "t", "state_dir": str(tmp_path / "state"), "run_dir": str(tmp_path / "run"),
        "log_dir": str(logs), "cgroup_prefix": prefix, "agent_cgroup": False,
        "isolate_os": False, "report_dir": None, "profile_dirs": [str(profiles)], **config}))
    return cfg


async def wait_for(cond: Callable[[], Any], timeout_s: float = 5.0, step_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(step_s)


def wait_for_sync(cond: Callable[[], Any], timeout_s: float = 5.0, step_s: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(step_s)
