"""The major-frame timeline: when each windowed partition is thawed and frozen. Pure.

A windowed partition runs only inside its windows of the active schedule; one without
windows in that schedule stays frozen for the whole frame (a mode can pause it). At an
instant where one window ends and another begins, the freeze comes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agent.models import Schedule


@dataclass(frozen=True, order=True)
class Edge:
    offset_us: int
    """Offset in the major frame."""
    order: int
    """0 for freeze, 1 for thaw: freezes sort first at equal offsets."""
    partition: str
    kind: Literal["freeze", "thaw"]


def edges(schedule: Schedule, windowed: frozenset[str]) -> list[Edge]:
    """Thaw/freeze edges of one frame, merged where a partition's windows touch."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for w in schedule.windows:
        if w.partition in windowed:
            spans.setdefault(w.partition, []).append((w.offset_us, w.offset_us + w.duration_us))
    out: list[Edge] = []
    for p, ss in spans.items():
        merged: list[list[int]] = []
        for start, end in sorted(ss):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        # A window that ends at the frame end and one that starts at 0 join across frames.
        for start, end in merged:
            if not (start == 0 and merged[-1][1] == schedule.major_frame_us and len(merged) > 1):
                out.append(Edge(start, 1, p, "thaw"))
            if not (end == schedule.major_frame_us and merged[0][0] == 0 and len(merged) > 1):
                out.append(Edge(end % schedule.major_frame_us, 0, p, "freeze"))
    return sorted(out)


def running_at(schedule: Schedule, windowed: frozenset[str], offset_us: int) -> set[str]:
    """Windowed partitions that should be thawed at ``offset_us`` into the frame."""
    t = offset_us % schedule.major_frame_us
    return {w.partition for w in schedule.windows if w.partition in windowed
            and w.offset_us <= t < w.offset_us + w.duration_us}
