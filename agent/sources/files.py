"""File source: mission profiles in directories (the image's baked-in missions).

Which mission flies when several are present: the one the config names, else the only
valid one. Invalid files are reported and skipped; they never replace a valid mission.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ProfileError, Violation
from agent.models import MissionProfile, load_file
from agent.sources.inotify import Inotify
from agent.status import Origin

log = logging.getLogger("sortie.sources.files")

SUFFIXES = (".yaml", ".yml", ".json")
# Editors write a file in several steps; wait for the burst to settle.
SETTLE_S = 0.02


@dataclass(frozen=True)
class Candidate:
    mission: MissionProfile
    origin: Origin


@dataclass(frozen=True)
class Scan:
    chosen: Candidate | None
    errors: list[ProfileError]


def profile_files(paths: list[Path]) -> list[tuple[Path, Path | None]]:
    """Each profile file with the directory it was found in (symlinks must stay there).
    Non-regular entries are listed too, so that the scan names them instead of hanging
    on them (a FIFO) or skipping them without a word."""
    files: list[tuple[Path, Path | None]] = []
    for p in paths:
        if p.is_dir():
            files += sorted((f, p) for f in p.iterdir()
                            if f.suffix in SUFFIXES and not f.is_dir())
        elif p.exists() or p.is_symlink():
            files.append((p, None))
    return files


def scan(paths: list[Path], wanted: str | None) -> Scan:
    missions: list[Candidate] = []
    errors: list[ProfileError] = []
    for f, within in profile_files(paths):
        try:
            m = load_file(MissionProfile, f, within)
        except ProfileError as exc:
            errors.append(exc)
            continue
        except Exception as exc:  # a bug of ours, not the file's: loud, but not fatal
            log.exception("reading %s failed", f)
            errors.append(ProfileError(str(f), [Violation(
                "", f"internal error while reading ({type(exc).__name__}, logged)")]))
            continue
        missions.append(Candidate(m, Origin("file", path=str(f.resolve()))))
    if wanted is not None:
        pick = [c for c in missions if c.mission.name == wanted]
        if not pick:
            where = ", ".join(map(str, paths))
            errors.append(ProfileError(where, [Violation("mission", f"no valid profile "
                                                         f"named {wanted!r} found")]))
    else:
        pick = missions
    if len(pick) > 1:
        names = ", ".join(f"{c.mission.name} ({c.origin.path})" for c in pick)
        errors.append(ProfileError("profile_dirs", [Violation(
            "mission", f"several missions found ({names}); name one in the config")]))
        return Scan(None, errors)
    return Scan(pick[0] if pick else None, errors)


async def watch(paths: list[Path], on_change: Callable[[], Awaitable[None]]) -> None:
    """Call ``on_change`` whenever a file in ``paths`` is written, moved or removed."""
    ino = Inotify()
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    try:
        for p in paths:
            target = p if p.is_dir() else p.parent
            try:
                ino.watch(target)
            except OSError as exc:
                log.warning("cannot watch %s: %s", target, exc.strerror)

        def readable() -> None:
            # Drain inside the callback: a level-triggered reader left full would spin.
            if ino.drain():
                changed.set()

        loop.add_reader(ino.fd, readable)
        while True:
            await changed.wait()
            await asyncio.sleep(SETTLE_S)
            changed.clear()
            await on_change()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(ino.fd)
        ino.close()
