"""The v1 backend on this machine's real cgroups, read back independently with cgget."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from agent.cgroups import PartitionLimits
from agent.cgroups.v1 import V1Backend
from agent.errors import CgroupError
from tests.conftest import CGROUP_ROOT, needs_root_v1

pytestmark = needs_root_v1

LIMITS = PartitionLimits(frozenset({1}), "0", 20_000, 100_000, 0, 64 << 20, 32)


def cgget(controller_file: str, group: str) -> str:
    assert shutil.which("cgget"), "cgroup-tools missing: run .ci/setup"
    out = subprocess.run(["cgget", "-n", "-v", "-r", controller_file, group],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_partition_limits_seen_by_cgget(v1: V1Backend, prefix: str) -> None:
    got = v1.apply_partition("fc", LIMITS)
    assert got == LIMITS
    g = f"{prefix}/p-fc"
    assert cgget("cpu.cfs_quota_us", g) == "20000"
    assert cgget("cpu.cfs_period_us", g) == "100000"
    assert cgget("cpuset.cpus", g) == "1"
    assert cgget("memory.limit_in_bytes", g) == str(64 << 20)
    assert cgget("pids.max", g) == "32"


def test_agent_group_on_the_os_cores(v1: V1Backend, prefix: str) -> None:
    assert cgget("cpuset.cpus", f"{prefix}/agent") == "0"
    assert (CGROUP_ROOT / "memory" / prefix / "agent").is_dir()


def test_update_moves_workload_groups_with_the_partition(v1: V1Backend, prefix: str) -> None:
    v1.apply_partition("fc", LIMITS)
    v1.create_workload("fc", "ctl")
    assert cgget("cpuset.cpus", f"{prefix}/p-fc/w-ctl") == "1"
    moved = PartitionLimits(frozenset({0}), "0", 30_000, 50_000, 0, 32 << 20, 16)
    assert v1.apply_partition("fc", moved) == moved
    assert cgget("cpuset.cpus", f"{prefix}/p-fc/w-ctl") == "0"
    assert cgget("cpu.cfs_period_us", f"{prefix}/p-fc") == "50000"


def test_burst_round_trip(v1: V1Backend, prefix: str) -> None:
    if not (CGROUP_ROOT / "cpu" / "cpu.cfs_burst_us").exists():
        pytest.skip("kernel without CFS burst")
    with_burst = PartitionLimits(LIMITS.cpus, "0", 20_000, 100_000, 10_000, 64 << 20, 32)
    assert v1.apply_partition("fc", with_burst).burst_us == 10_000
    assert cgget("cpu.cfs_burst_us", f"{prefix}/p-fc") == "10000"
    lower = PartitionLimits(LIMITS.cpus, "0", 5_000, 100_000, 2_000, 64 << 20, 32)
    assert v1.apply_partition("fc", lower) == lower


@pytest.mark.parametrize("limits,file,value", [
    (PartitionLimits(frozenset({1}), "0", 500, 100_000, 0, 1 << 20, 8), "cpu.cfs_quota_us",
     "500"),
    (PartitionLimits(frozenset({1}), "0", 2_000, 2_000_000, 0, 1 << 20, 8),
     "cpu.cfs_period_us", "2000000"),
    (PartitionLimits(frozenset({5}), "0", 2_000, 10_000, 0, 1 << 20, 8), "cpuset.cpus", "5"),
])
def test_kernel_refusal_names_file_value_errno(v1: V1Backend, limits: PartitionLimits,
                                               file: str, value: str) -> None:
    with pytest.raises(CgroupError) as exc:
        v1.apply_partition("fc", limits)
    assert exc.value.path.endswith(f"p-fc/{file}")
    assert exc.value.value == value
    assert exc.value.errno is not None


def test_freeze_and_thaw(v1: V1Backend, prefix: str) -> None:
    v1.apply_partition("fc", LIMITS)
    v1.freeze("fc", None, True)
    assert cgget("freezer.state", f"{prefix}/p-fc") == "FROZEN"
    v1.freeze("fc", None, False)
    assert cgget("freezer.state", f"{prefix}/p-fc") == "THAWED"


def test_remove_partition_removes_every_hierarchy(v1: V1Backend, prefix: str) -> None:
    v1.apply_partition("fc", LIMITS)
    v1.create_workload("fc", "ctl")
    v1.remove_partition("fc")
    for c in ("cpu", "cpuacct", "cpuset", "memory", "pids", "freezer"):
        assert not (CGROUP_ROOT / c / prefix / "p-fc").exists()
    v1.remove_base()
    assert not (CGROUP_ROOT / "cpu" / prefix).exists()


@needs_root_v1
def test_a_foreign_exclusive_cpuset_is_named_at_start(prefix: str) -> None:
    foreign = CGROUP_ROOT / "cpuset" / f"{prefix}-foreign"
    foreign.mkdir()
    try:
        for f, v in (("cpuset.mems", "0"), ("cpuset.cpus", "1"), ("cpuset.cpu_exclusive", "1")):
            with open(foreign / f, "w") as fh:
                fh.write(v)
        with pytest.raises(CgroupError) as exc:
            V1Backend(CGROUP_ROOT, prefix).ensure_base(frozenset({0}))
        assert f"{prefix}-foreign (cpus 1) holds some of them exclusively" in str(exc.value)
    finally:
        foreign.rmdir()


def test_criticality_weights_and_the_idle_class_as_cgget_sees_them(v1: V1Backend,
                                                                    prefix: str) -> None:
    from dataclasses import replace
    a = v1.apply_partition("a", replace(LIMITS, weight=1_000))
    e = v1.apply_partition("e", replace(LIMITS, cpus=frozenset({0}), weight=0))
    assert (a.weight, e.weight) == (1_000, 0)
    assert cgget("cpu.shares", f"{prefix}/p-a") == "10240"
    assert cgget("cpu.idle", f"{prefix}/p-e") == "1"
    # Leaving the idle class: the kernel resets the weight; the one asked for holds.
    back = v1.apply_partition("e", replace(LIMITS, cpus=frozenset({0}), weight=200))
    assert back.weight == 200 and cgget("cpu.idle", f"{prefix}/p-e") == "0"
    assert cgget("cpu.shares", f"{prefix}/p-e") == "2048"
