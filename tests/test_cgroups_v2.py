"""The v2 backend against a kernel-like cgroup2 tree (for real inside QEMU guests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cgroups import PartitionLimits, detect_version, make_backend
from agent.cgroups.v2 import V2Backend
from agent.errors import CgroupError
from simulator.cgroupfs import FakeCgroup2Fs

ROOT = Path("/fake/cgroup")


@pytest.fixture
def fs() -> FakeCgroup2Fs:
    return FakeCgroup2Fs(ROOT, cpus="0-3")


@pytest.fixture
def v2(fs: FakeCgroup2Fs) -> V2Backend:
    b = V2Backend(ROOT, "sortie", fs)
    b.ensure_base(frozenset({0}))
    return b


LIMITS = PartitionLimits(frozenset({1, 2}), "0", 20_000, 100_000, 5_000, 64 << 20, 32)


def test_detects_v2_on_a_unified_mount(fs: FakeCgroup2Fs) -> None:
    assert detect_version(ROOT, fs) == "v2"
    assert isinstance(make_backend(ROOT, "sortie", "auto", fs), V2Backend)


def test_refuses_a_unified_mount_without_cpu(tmp_path: Path) -> None:
    fs = FakeCgroup2Fs(ROOT, controllers=("hugetlb",))
    with pytest.raises(CgroupError, match="cpu"):
        V2Backend(ROOT, "sortie", fs)


def test_partition_limits_written_and_read_back(v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    got = v2.apply_partition("fc", LIMITS)
    assert got == LIMITS
    assert fs.read(ROOT / "sortie/p-fc/cpu.max") == "20000 100000\n"
    assert fs.read(ROOT / "sortie/p-fc/cpuset.cpus") == "1-2\n"
    assert v2.partitions() == ["fc"]


def test_controllers_enabled_top_down(v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    for group in ("", "sortie"):
        enabled = fs.read(ROOT / group / "cgroup.subtree_control").split()
        assert {"cpu", "cpuset", "memory", "pids"} <= set(enabled)


def test_burst_dropped_before_quota_shrinks(v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    v2.apply_partition("fc", LIMITS)
    smaller = PartitionLimits(LIMITS.cpus, "0", 3_000, 100_000, 1_000, 64 << 20, 32)
    assert v2.apply_partition("fc", smaller) == smaller  # 5000 burst > 3000 quota otherwise


def test_kernel_refusal_names_file_value_and_errno(v2: V2Backend) -> None:
    bad = PartitionLimits(LIMITS.cpus, "0", 500, 100_000, 0, 64 << 20, 32)
    with pytest.raises(CgroupError) as exc:
        v2.apply_partition("fc", bad)
    assert exc.value.path.endswith("p-fc/cpu.max") and exc.value.value == "500 100000"
    assert exc.value.errno == 22


def test_workload_groups_are_leaves(v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    v2.apply_partition("fc", LIMITS)
    v2.create_workload("fc", "ctl")
    assert v2.workloads("fc") == ["ctl"]
    fs.write(ROOT / "sortie/p-fc/w-ctl/cgroup.procs", "4242")
    assert v2.procs("fc", "ctl") == [4242]
    with pytest.raises(CgroupError, match="busy"):
        v2.remove_partition("fc")
    fs.write(ROOT / "cgroup.procs", "4242")  # the process left
    v2.remove_partition("fc")
    assert v2.partitions() == []


def test_freeze_waits_for_the_frozen_event(v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    v2.apply_partition("fc", LIMITS)
    v2.freeze("fc", None, True)
    assert "frozen 1" in fs.read(ROOT / "sortie/p-fc/cgroup.events")
    v2.freeze("fc", None, False)
    assert "frozen 0" in fs.read(ROOT / "sortie/p-fc/cgroup.events")


def test_cpu_sample_converts_microseconds(v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    v2.apply_partition("fc", LIMITS)
    g = fs._group(ROOT / "sortie/p-fc")
    assert g is not None
    g.files["cpu.stat"] = "usage_usec 1500\nnr_periods 10\nnr_throttled 3\nthrottled_usec 700\n"
    s = v2.cpu_sample("fc")
    assert (s.usage_ns, s.nr_periods, s.nr_throttled, s.throttled_ns) == (1_500_000, 10, 3,
                                                                          700_000)


def test_cpuset_outside_the_board_is_refused(v2: V2Backend) -> None:
    with pytest.raises(CgroupError, match=r"cpuset\.cpus"):
        v2.apply_partition("fc", PartitionLimits(frozenset({9}), "0", 20_000, 100_000, 0,
                                                 1 << 20, 8))


def test_the_prefix_is_a_partition_root_and_exclusive_partitions_are_roots(
        v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    """Linux 6.1 makes a partition root only under partition roots: the prefix is one
    over the cores not reserved for the OS, and the agent stays outside it (the kernel
    keeps everything outside on the reserved cores)."""
    import dataclasses
    assert v2.partitioned
    assert fs.read(ROOT / "sortie/cpuset.cpus.partition") == "root\n"
    assert fs.read(ROOT / "sortie/cpuset.cpus") == "1-3\n"
    assert not fs.exists(ROOT / "sortie/agent"), "the agent stays outside the prefix"
    assert v2.isolate_os(frozenset({0})) == 0 and not fs.exists(ROOT / "sortie/system")
    got = v2.apply_partition("fc", dataclasses.replace(LIMITS, exclusive=True))
    assert got.exclusive and got.cpus == LIMITS.cpus
    assert fs.read(ROOT / "sortie/p-fc/cpuset.cpus.partition") == "root\n"
    v2.remove_partition("fc")
    v2.remove_base()
    assert not fs.exists(ROOT / "sortie")


def test_without_a_partition_root_exclusive_reads_back_as_not_exclusive() -> None:
    """When the kernel cannot make the prefix a partition root (here: no core left for
    the OS), the member layout stays, and an exclusive partition reads back as not
    exclusive ("root invalid (Parent is not a partition root)", seen on 6.1) instead of
    claiming it."""
    import dataclasses
    fs = FakeCgroup2Fs(ROOT, cpus="0-3")
    v2 = V2Backend(ROOT, "sortie", fs)
    v2.ensure_base(frozenset({0, 1, 2, 3}))
    assert not v2.partitioned and fs.exists(ROOT / "sortie/agent")
    got = v2.apply_partition("fc", dataclasses.replace(LIMITS, exclusive=True))
    assert got.exclusive is False and got.cpus == LIMITS.cpus, "the cores still apply"
    assert "Parent is not a partition root" in fs.read(
        ROOT / "sortie/p-fc/cpuset.cpus.partition")


def test_a_pool_on_a_reserved_core_gives_up_the_partition_root(
        v2: V2Backend, fs: FakeCgroup2Fs) -> None:
    """A root prefix cannot share a core with the OS: when every other core is dedicated
    and the shared pool is the reserved core, the prefix becomes a member again (with the
    agent's group inside) so pool partitions run where admission put them."""
    assert v2.place(frozenset({1, 2, 3})) is False and v2.partitioned
    assert v2.place(frozenset({0, 1})) is True
    assert not v2.partitioned
    assert fs.read(ROOT / "sortie/cpuset.cpus.partition").startswith("member")
    assert fs.read(ROOT / "sortie/cpuset.cpus") == "0-3\n"
    assert fs.read(ROOT / "sortie/agent/cpuset.cpus") == "0\n"
    got = v2.apply_partition("pool", PartitionLimits(frozenset({0}), "0", 50_000, 100_000,
                                                     0, 1 << 20, 8))
    assert got.cpus == frozenset({0})
    assert fs.read(ROOT / "sortie/p-pool/cpuset.cpus.effective") == "0\n"
    assert v2.place(frozenset({0, 1})) is False, "nothing left to change"


def test_a_restart_keeps_the_member_layout_for_partitions_on_reserved_cores(
        fs: FakeCgroup2Fs) -> None:
    """A partition left running on a reserved core by the previous agent keeps its core
    when the agent starts again: the prefix is not made a partition root under it."""
    first = V2Backend(ROOT, "sortie", fs)
    first.ensure_base(frozenset({0}))
    first.place(frozenset({0}))
    first.apply_partition("pool", PartitionLimits(frozenset({0}), "0", 50_000, 100_000, 0,
                                                  1 << 20, 8))
    fs.rmdir(ROOT / "sortie/agent")  # as after a crash that lost the agent's group
    again = V2Backend(ROOT, "sortie", fs)
    again.ensure_base(frozenset({0}))
    assert not again.partitioned
    assert fs.read(ROOT / "sortie/p-pool/cpuset.cpus.effective") == "0\n"


def test_weights_and_the_idle_class_in_the_kernels_order(v2: V2Backend,
                                                          fs: FakeCgroup2Fs) -> None:
    from dataclasses import replace
    e = v2.apply_partition("e", replace(LIMITS, weight=0))
    assert e.weight == 0 and fs.read(ROOT / "sortie/p-e/cpu.idle") == "1\n"
    with pytest.raises(CgroupError):  # the kernel refuses a weight on an idle group
        fs.write(ROOT / "sortie/p-e/cpu.weight", "500")
    back = v2.apply_partition("e", replace(LIMITS, weight=500))
    assert back.weight == 500 and fs.read(ROOT / "sortie/p-e/cpu.weight") == "500\n"
