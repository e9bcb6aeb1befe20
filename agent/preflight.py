"""Host checks before a mission is applied: users, groups, commands, directories.

Unlike admission these look at this machine, so ``sortie check --hw OTHER`` skips them.
"""

from __future__ import annotations

import os

from agent.errors import Violation
from agent.models import MissionProfile
from agent.runtime.identity import resolve_command, resolve_identity


def host_violations(mission: MissionProfile) -> list[Violation]:
    found: list[Violation] = []
    for i, p in enumerate(mission.partitions):
        for j, w in enumerate(p.workloads):
            at = f"partitions[{i}].workloads[{j}]"
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
