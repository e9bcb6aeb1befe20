"""Reading processes from /proc: start times (PID-reuse guard) and the agent's env tags."""

from __future__ import annotations

import os

# Tags the agent sets in every workload's environment. /proc/PID/environ keeps the
# exec-time environment, so a restarted agent can tell which process is which workload
# and which spec it runs without any state file.
ENV_WORKLOAD = "SORTIE_WORKLOAD"
ENV_SPEC = "SORTIE_SPEC"
ENV_PARTITION = "SORTIE_PARTITION"
ENV_REPORT = "SORTIE_REPORT_SOCKET"


def start_ticks(pid: int) -> int | None:
    """Process start time in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[19])


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rfind(b")") + 2:].split()[1])


def environ(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, val = item.partition(b"=")
        if sep:
            out[key.decode(errors="replace")] = val.decode(errors="replace")
    return out


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running anymore.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:][:1] != b"Z"


def age_s(pid: int) -> float | None:
    """Seconds since the process started (10 ms resolution), from /proc alone."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    with open("/proc/uptime", "rb") as f:
        uptime = float(f.read().split()[0])
    return max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
