"""sched_setattr(2) for SCHED_DEADLINE, which Python's os module does not wrap.

Everything is prepared before fork so the child only makes the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct

SCHED_DEADLINE = 6
SCHED_FLAG_RESET_ON_FORK = 0x01
# struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes): size, policy, flags, nice,
# priority, runtime, deadline, period.
_ATTR = struct.Struct("=IIQiIQQQ")
_NR = {"x86_64": 314, "aarch64": 274, "armv7l": 380, "armv8l": 380}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def deadline_attr(runtime_ns: int, deadline_ns: int, period_ns: int) -> bytes:
    # Reset-on-fork: a DEADLINE task may not fork otherwise (EAGAIN); children run CFS.
    return _ATTR.pack(_ATTR.size, SCHED_DEADLINE, SCHED_FLAG_RESET_ON_FORK, 0, 0,
                      runtime_ns, deadline_ns, period_ns)


def sched_setattr_self(attr: bytes) -> None:
    """Apply ``attr`` to the calling thread; OSError carries the kernel's errno."""
    nr = _NR.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"sched_setattr number unknown for {platform.machine()}")
    buf = ctypes.create_string_buffer(attr, len(attr))
    if _libc.syscall(nr, 0, buf, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
