"""A group's CFS weight and idle class, on v1 (``cpu.shares``) and v2 (``cpu.weight``).

The kernel refuses a weight on an idle group and resets the weight when the idle class
is left, so ``cpu.idle`` is written first. Without ``cpu.idle`` (before Linux 5.15) the
idle class becomes the smallest weight, which read-back then reports."""

from __future__ import annotations

from pathlib import Path

from agent.cgroups.fs import CgroupFs

V1_SHARES_PER_WEIGHT = 1024 / 100


def set_weight(fs: CgroupFs, group: Path, weight_file: str, weight: int) -> None:
    idle = group / "cpu.idle"
    has_idle = fs.exists(idle)
    if weight == 0 and has_idle:
        fs.write(idle, "1")
        return
    if has_idle:
        fs.write(idle, "0")
    w = max(weight, 1)
    fs.write(group / weight_file, str(max(2, round(w * V1_SHARES_PER_WEIGHT))
                                      if weight_file == "cpu.shares" else w))


def read_weight(fs: CgroupFs, group: Path, weight_file: str) -> int:
    idle = group / "cpu.idle"
    if fs.exists(idle) and fs.read(idle).strip() == "1":
        return 0
    raw = int(fs.read(group / weight_file))
    return round(raw / V1_SHARES_PER_WEIGHT) if weight_file == "cpu.shares" else raw
