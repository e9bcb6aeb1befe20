"""cgroup backends: v1 (separate hierarchies) and v2 (unified), behind one protocol."""

from agent.cgroups.backend import CgroupBackend, CpuSample, PartitionLimits, ResourceUse
from agent.cgroups.detect import detect_version, make_backend
from agent.cgroups.fs import CgroupFs, RealCgroupFs

__all__ = [
    "CgroupBackend",
    "CgroupFs",
    "CpuSample",
    "PartitionLimits",
    "RealCgroupFs",
    "ResourceUse",
    "detect_version",
    "make_backend",
]
