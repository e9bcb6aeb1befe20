"""Resolve who a workload runs as and what it executes, with errors that name the field."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def resolve_identity(user: str | int, group: str | int | None) -> Identity:
    """Raise LookupError with a reason a person understands."""
    try:
        pw = pwd.getpwuid(user) if isinstance(user, int) else pwd.getpwnam(user)
    except KeyError:
        raise LookupError(f"user {user!r} does not exist on this system") from None
    if group is None:
        gid = pw.pw_gid
    else:
        try:
            gid = (grp.getgrgid(group) if isinstance(group, int) else grp.getgrnam(group)).gr_gid
        except KeyError:
            raise LookupError(f"group {group!r} does not exist on this system") from None
    groups = tuple(sorted({gid, *os.getgrouplist(pw.pw_name, gid)}))
    return Identity(pw.pw_uid, gid, groups, pw.pw_dir)


def resolve_command(argv0: str, path: str = DEFAULT_PATH) -> str:
    """Absolute path of an executable; LookupError when there is none."""
    if "/" in argv0:
        if not os.path.isfile(argv0):
            raise LookupError(f"command {argv0!r} does not exist")
        if not os.access(argv0, os.X_OK):
            raise LookupError(f"command {argv0!r} is not executable")
        return argv0
    found = shutil.which(argv0, path=path)
    if found is None:
        raise LookupError(f"command {argv0!r} is not on PATH ({path})")
    return found
