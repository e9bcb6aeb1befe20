"""struct sched_attr for SCHED_DEADLINE, which Python's os module does not wrap.

Packed before the workload's process exists, so its child only makes the call
(``agent.runtime.spawnd.sched_setattr_self``).
"""

from __future__ import annotations

import struct

SCHED_DEADLINE = 6
SCHED_FLAG_RESET_ON_FORK = 0x01
# struct sched_attr, SCHED_ATTR_SIZE_VER0 (48 bytes): size, policy, flags, nice,
# priority, runtime, deadline, period.
_ATTR = struct.Struct("=IIQiIQQQ")


def deadline_attr(runtime_ns: int, deadline_ns: int, period_ns: int) -> bytes:
    # Reset-on-fork: a DEADLINE task may not fork otherwise (EAGAIN); children run CFS.
    return _ATTR.pack(_ATTR.size, SCHED_DEADLINE, SCHED_FLAG_RESET_ON_FORK, 0, 0,
                      runtime_ns, deadline_ns, period_ns)
