"""Per-workload log files, bounded by copy-and-truncate rotation.

Workloads write straight into their file (opened O_APPEND), so their output survives an
agent restart and costs the agent nothing; the agent rotates it on its accounting tick.
A rotation copies only the newest ``max_bytes`` (a workload can make its file huge, even
sparse: the cost must not follow), so ``.1`` never exceeds the limit; the live file can
outgrow it by what the workload writes in one tick. Lines written between the copy and
the truncate are lost; that window is microseconds.
"""

from __future__ import annotations

import os
from pathlib import Path


def log_path(log_dir: Path, partition: str, workload: str) -> Path:
    return log_dir / partition / f"{workload}.log"


def open_log(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)


def rotate_if_large(path: Path, max_bytes: int) -> bool:
    """Keep the newest ``max_bytes`` as the one rotated copy (``.1``), empty the live
    file. Costs O(max_bytes) whatever the file's size."""
    try:
        src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(src).st_size
        if size <= max_bytes:
            return False
        rotated = path.with_name(path.name + ".1")
        tmp = rotated.with_name(rotated.name + ".tmp")
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o640)
        try:
            offset, left = size - max_bytes, max_bytes
            while left > 0:
                n = os.copy_file_range(src, dst, left, offset)
                if n == 0:
                    break  # the file shrank meanwhile
                offset, left = offset + n, left - n
        finally:
            os.close(dst)
        os.replace(tmp, rotated)
        os.truncate(path, 0)
        return True
    finally:
        os.close(src)

