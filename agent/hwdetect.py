"""Describe the machine the agent runs on as a hardware profile (``sortie hw detect``)."""

from __future__ import annotations

import os
import platform
import re
import socket
from pathlib import Path
from typing import Any

import psutil

from agent.models import HardwareProfile


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_models(proc: Path) -> dict[int, str]:
    """Logical CPU -> model name from /proc/cpuinfo (x86 ``model name``, arm ``CPU part``)."""
    text = _read(proc / "cpuinfo") or ""
    models: dict[int, str] = {}
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in
            (line.partition(":") for line in block.splitlines()) if k.strip())
        if "processor" not in fields or not fields["processor"].isdigit():
            continue
        name = fields.get("model name") or fields.get("CPU part") or "generic"
        models[int(fields["processor"])] = name
    return models


def detect(proc: Path = Path("/proc"), sys: Path = Path("/sys")) -> HardwareProfile:
    arch = platform.machine()
    arch = {"arm64": "aarch64", "amd64": "x86_64"}.get(arch, arch)
    online = sys / "devices/system/cpu/online"
    from agent.cgroups.fs import parse_cpu_list
    cpus = sorted(parse_cpu_list(_read(online) or f"0-{(os.cpu_count() or 1) - 1}"))
    models = _cpu_models(proc)
    cores: list[dict[str, Any]] = []
    for c in cpus:
        freq = _read(sys / f"devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq")
        cluster = _read(sys / f"devices/system/cpu/cpu{c}/topology/cluster_id") or "0"
        cluster = "0" if cluster in ("-1", "65535") else cluster  # no cluster info
        core: dict[str, Any] = {"id": c, "model": models.get(c, "generic"),
                                "cluster": f"cluster{cluster}"}
        if freq and freq.isdigit():
            core["max_freq_mhz"] = int(freq) // 1000
        cores.append(core)
    mem_mib = psutil.virtual_memory().total // (1 << 20)
    pid_max = int(_read(proc / "sys/kernel/pid_max") or "32768")
    host = re.sub(r"[^a-z0-9-]", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return HardwareProfile.model_validate({
        "name": host or "detected",
        "description": f"Detected on {socket.gethostname()} ({platform.platform()})",
        "arch": arch,
        "cores": cores,
        "memory_mib": mem_mib,
        "max_pids": pid_max,
        # The OS and the agent keep the first core, 20 % of it, and 1/8 of memory.
        "reserved": {"cores": [cpus[0]], "cpu_fraction": 0.2,
                     "memory_mib": max(128, mem_mib // 8), "pids": 512},
    })
