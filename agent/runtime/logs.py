"""Per-workload log files, bounded by copy-and-truncate rotation.

Workloads write straight into their file (opened O_APPEND), so their output survives an
agent restart and costs the agent nothing; the agent rotates it on its accounting tick.
Lines written between the copy and the truncate are lost; that window is microseconds.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def log_path(log_dir: Path, partition: str, workload: str) -> Path:
    return log_dir / partition / f"{workload}.log"


def open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def rotate_if_large(path: Path, max_bytes: int) -> bool:
    """Keep at most ``max_bytes`` in the live file plus one rotated copy (``.1``)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    rotated = path.with_name(path.name + ".1")
    shutil.copyfile(path, rotated)
    os.truncate(path, 0)
    return True

