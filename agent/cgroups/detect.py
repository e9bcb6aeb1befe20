"""Pick the cgroup backend by probing the mounts under the injected root."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from agent.cgroups.backend import CgroupBackend
from agent.cgroups.fs import CgroupFs, RealCgroupFs
from agent.cgroups.v1 import V1Backend
from agent.cgroups.v2 import V2Backend
from agent.errors import CgroupError


def detect_version(root: Path, fs: CgroupFs | None = None) -> Literal["v1", "v2"]:
    """v2 when the root is a unified mount offering the cpu controller, else v1.

    A hybrid host (v1 hierarchies plus a controller-less cgroup2 at ``unified``) is v1.
    """
    fs = fs or RealCgroupFs()
    controllers = root / "cgroup.controllers"
    if fs.exists(controllers) and "cpu" in fs.read(controllers).split():
        return "v2"
    if fs.exists(root / "cpu") and fs.exists(root / "cpuset"):
        return "v1"
    raise CgroupError(str(root), "no usable cgroup v1 or v2 mount with the cpu controller")


def make_backend(root: Path, prefix: str, version: Literal["auto", "v1", "v2"] = "auto",
                 fs: CgroupFs | None = None) -> CgroupBackend:
    chosen = detect_version(root, fs) if version == "auto" else version
    if chosen == "v2":
        return V2Backend(root, prefix, fs)
    return V1Backend(root, prefix, fs)
