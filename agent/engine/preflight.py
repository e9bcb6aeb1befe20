"""Host checks before a mission is applied: users, groups, commands, directories.

Unlike admission these look at this machine, so ``sortie check --hw OTHER`` skips them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from agent.errors import AgentError, Violation
from agent.models import MissionProfile, Workload
from agent.runtime.identity import resolve_command, resolve_identity

if TYPE_CHECKING:
    from agent.images.store import ImageStore


def _container(w: Workload, at: str, images: ImageStore | None) -> list[Violation]:
    from agent.runtime.containers import user_ids  # container support loads on demand

    found = []
    if images is None or w.image is None or not images.has(w.image):
        found.append(Violation(f"{at}.image", f"image {w.image} is not in the image store "
                                              "(sortie image import PATH)"))
    try:
        user_ids(w.user, w.group)
    except AgentError as exc:
        found.append(Violation(f"{at}.user", str(exc)))
    return found


def host_violations(mission: MissionProfile,
                    images: ImageStore | None = None) -> list[Violation]:
    found: list[Violation] = []
    for i, p in enumerate(mission.partitions):
        for j, w in enumerate(p.workloads):
            at = f"partitions[{i}].workloads[{j}]"
            if w.image is not None:  # the command and user live inside the image
                found += _container(w, at, images)
                continue
            try:
                resolve_identity(w.user, w.group)
            except LookupError as exc:
                field = "group" if "group" in str(exc) else "user"
                found.append(Violation(f"{at}.{field}", str(exc)))
            try:
                resolve_command(w.command[0])
            except LookupError as exc:
                found.append(Violation(f"{at}.command[0]", str(exc)))
            if w.health_check is not None:
                try:
                    resolve_command(w.health_check.command[0])
                except LookupError as exc:
                    found.append(Violation(f"{at}.health_check.command[0]", str(exc)))
            if not os.path.isdir(w.working_dir):
                found.append(Violation(f"{at}.working_dir",
                                       f"directory {w.working_dir!r} does not exist"))
    return found
