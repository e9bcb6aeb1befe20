"""Shared fixtures. Real-cgroup fixtures create everything under a unique prefix and
remove it (processes first) even when the test fails."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cgroups import detect_version
from agent.cgroups.v1 import CONTROLLERS, V1Backend
from agent.models import AgentConfig, HardwareProfile, load_file

REPO = Path(__file__).resolve().parent.parent
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _has_v1() -> bool:
    try:
        return os.geteuid() == 0 and detect_version(CGROUP_ROOT) == "v1"
    except Exception:
        return False


needs_root_v1 = pytest.mark.skipif(not _has_v1(), reason="needs root and cgroup v1 (this "
                                   "machine kind); v2 runs for real in the QEMU tests")


def release_system(prefix: str) -> None:
    """Give OS processes an agent confined (isolate_os) back to the root: never kill them."""
    for c in CONTROLLERS:
        system = CGROUP_ROOT / c / prefix / "system"
        if not system.exists():
            continue
        for _ in range(5):
            pids = system.joinpath("cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(OSError), open(CGROUP_ROOT / c / "cgroup.procs",
                                                        "w") as f:
                    f.write(pid)
        with contextlib.suppress(OSError):
            system.rmdir()


def purge_prefix(prefix: str) -> None:
    """Kill every process under the prefix and remove its groups, deepest first."""
    release_system(prefix)
    for _ in range(50):
        pids: set[int] = set()
        for c in CONTROLLERS:
            top = CGROUP_ROOT / c / prefix
            if top.exists():
                for procs in top.rglob("cgroup.procs"):
                    with contextlib.suppress(OSError):
                        pids.update(int(x) for x in procs.read_text().split())
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # Thaw in case a test left a group frozen: frozen tasks cannot die.
        freezer = CGROUP_ROOT / "freezer" / prefix
        if freezer.exists():
            for st in freezer.rglob("freezer.state"):
                with contextlib.suppress(OSError), open(st, "w") as f:
                    f.write("THAWED")
        time.sleep(0.02)
    # Every hierarchy: runc also makes the paths in devices, blkio, name=systemd, ...
    for mount in sorted(p for p in CGROUP_ROOT.iterdir() if p.is_dir()):
        top = mount / prefix
        if top.exists():
            for d in sorted((p for p in top.rglob("*") if p.is_dir()),
                            key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    d.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"sortie-test-{uuid.uuid4().hex[:8]}"
    yield name
    purge_prefix(name)
    left = [m.name for m in CGROUP_ROOT.iterdir() if (m / name).exists()]
    assert not left, f"cgroups left behind under {name} in {left}"


@pytest.fixture
def v1(prefix: str) -> V1Backend:
    b = V1Backend(CGROUP_ROOT, prefix)
    b.ensure_base(frozenset({0}))
    return b


@pytest.fixture
def board() -> HardwareProfile:
    """This machine as a board: two cores, core 0 for the OS and the agent."""
    return HardwareProfile.model_validate({
        "name": "test-board", "arch": "x86_64",
        "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
        "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512, "pids": 512},
    })


@pytest.fixture
def rpi4() -> HardwareProfile:
    return load_file(HardwareProfile, REPO / "hwprofiles" / "raspberry-pi-4.yaml")


@pytest.fixture
def agent_config(tmp_path: Path, prefix: str) -> Iterator[AgentConfig]:
    # Workloads run as nobody: their log directory must be reachable, tmp_path is not.
    logs = Path(f"/tmp/{prefix}-logs")
    yield AgentConfig(node_name="test", state_dir=tmp_path / "state", run_dir=tmp_path / "run",
                      log_dir=logs, cgroup_prefix=prefix, agent_cgroup=False,
                      accounting_period_ms=200, profile_dirs=[tmp_path / "profiles"],
                      isolate_os=False, report_dir=Path(f"/tmp/{prefix}-report"))
    shutil.rmtree(logs, ignore_errors=True)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--k3s-kubeconfig", default=None, metavar="PATH",
                     help="run tests/test_k3s.py against the real k3s (or any Kubernetes) "
                          "cluster this kubeconfig reaches; skipped otherwise")
