"""OCI container workloads: a verified image store (umoci unpacks), runc runs them in
their partition's cgroup with the partition's budget; bad images never run."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent.cgroups.v1 import V1Backend
from agent.engine.engine import Engine
from agent.engine.state import StateStore
from agent.errors import ProfileError
from agent.images.store import ImageError, ImageStore
from agent.models import AgentConfig, HardwareProfile
from agent.status import Origin
from tests.conftest import CGROUP_ROOT, REPO, needs_root_v1
from tests.helpers import mission, partition, workload
from tests.images import busybox_layout

ORIGIN = Origin("config")

needs_runc = pytest.mark.skipif(not (shutil.which("runc") and shutil.which("umoci")),
                                reason="runc and umoci come from .ci/setup")


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, str]:
    return tmp_path / "layout", busybox_layout(tmp_path / "layout")


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":")[1]


@needs_runc
def test_import_verifies_and_unpacks_with_umoci(tmp_path: Path, layout) -> None:
    path, digest = layout
    store = ImageStore(tmp_path / "store")
    assert store.import_path(path) == [digest]
    rootfs = store.rootfs(digest)
    assert (rootfs / "bin" / "busybox").is_file()
    (info,) = store.images()
    assert info.digest == digest and info.unpacked and info.name == "busybox"


@needs_runc
def test_import_from_a_tar(tmp_path: Path, layout) -> None:
    path, digest = layout
    with tarfile.open(tmp_path / "img.tar", "w") as tar:
        tar.add(path, arcname=".")
    assert ImageStore(tmp_path / "store").import_path(tmp_path / "img.tar") == [digest]


def layer_digest(path: Path, manifest_digest: str) -> str:
    return json.loads(blob(path, manifest_digest).read_bytes())["layers"][0]["digest"]


def test_a_tampered_layer_is_refused(tmp_path: Path, layout) -> None:
    path, digest = layout
    lb = blob(path, layer_digest(path, digest))
    data = bytearray(lb.read_bytes())
    data[-1] ^= 0xFF
    lb.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="tampered"):
        ImageStore(tmp_path / "store").import_path(path)
    assert not (tmp_path / "store" / "layout" / "index.json").exists()


def test_a_missing_blob_is_refused(tmp_path: Path, layout) -> None:
    path, digest = layout
    blob(path, layer_digest(path, digest)).unlink()
    with pytest.raises(ImageError, match="blob missing"):
        ImageStore(tmp_path / "store").import_path(path)


def test_an_image_for_another_architecture_is_refused(tmp_path: Path) -> None:
    busybox_layout(tmp_path / "arm", arch="riscv64")
    with pytest.raises(ImageError, match="no image for linux/"):
        ImageStore(tmp_path / "store").import_path(tmp_path / "arm")


def test_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="not an OCI image layout"):
        ImageStore(tmp_path / "store").import_path(tmp_path / "empty")


@needs_runc
def test_gc_keeps_only_what_is_used(tmp_path: Path, layout) -> None:
    path, digest = layout
    store = ImageStore(tmp_path / "store")
    store.import_path(path)
    store.rootfs(digest)
    assert store.gc({digest}) == []
    assert store.gc(set()) == [digest]
    assert store.images() == []
    assert list((store.layout / "blobs" / "sha256").iterdir()) == []


def test_an_unknown_capability_is_a_profile_error() -> None:
    with pytest.raises(Exception, match="capabilities"):
        mission(partition("c", workloads=[workload("w", image="sha256:" + "0" * 64,
                                                   capabilities=["CAP_TIME_TRAVEL"])]))


# -- running containers ----------------------------------------------------------------
def engine(cfg: AgentConfig, board: HardwareProfile) -> Engine:
    return Engine(cfg, board, V1Backend(CGROUP_ROOT, cfg.cgroup_prefix),
                  StateStore(cfg.state_dir))


PROBE = ("id; cat /proc/self/status | grep CapEff; touch /probe 2>&1 || echo ro-root; "
         "touch /tmp/ok && echo tmp-ok; cat /proc/net/dev | tail -n +3 | cut -d: -f1; "
         "while :; do :; done")


@needs_root_v1
@needs_runc
async def test_a_container_runs_confined_in_its_partition(agent_config: AgentConfig,
                                                          board: HardwareProfile, layout,
                                                          prefix: str) -> None:
    path, digest = layout
    e = engine(agent_config, board)
    assert e.images is not None
    e.images.import_path(path)
    await e.start()
    d = await e.submit(mission(partition("c", quota=20_000, workloads=[
        workload("probe", command=["/bin/sh", "-c", PROBE], image=digest,
                 stop_grace_ms=200)])), ORIGIN)
    assert d.outcome == "applied", d
    r = e.runners["c"]["probe"]
    procs = (CGROUP_ROOT / "pids" / prefix / "p-c" / "w-probe" / "cgroup.procs")
    assert str(r.pid) in procs.read_text().split()
    e.sample()
    await asyncio.sleep(1.5)
    e.sample()
    assert 0.15 <= e.usage["c"].share <= 0.23
    out = r.log_file.read_text()
    assert "uid=65534" in out and "CapEff:\t0000000000000000" in out
    assert "ro-root" in out and "tmp-ok" in out
    assert out.split("tmp-ok")[1].split() == ["lo"]  # network namespace: loopback only
    await e.shutdown(teardown=True)
    assert not list((agent_config.run_dir / "bundles").glob("*"))


@needs_root_v1
@needs_runc
async def test_a_restarted_agent_adopts_the_container(agent_config: AgentConfig,
                                                      board: HardwareProfile, layout) -> None:
    path, digest = layout
    first = engine(agent_config, board)
    first.images.import_path(path)  # type: ignore[union-attr]
    await first.start()
    m = mission(partition("c", workloads=[workload("s", command=["/bin/sleep", "3600"],
                                                   image=digest, stop_grace_ms=200)]))
    await first.submit(m, ORIGIN)
    pid = first.runners["c"]["s"].pid
    await first.shutdown(teardown=False)
    second = engine(agent_config, board)
    await second.start()
    assert second.runners["c"]["s"].pid == pid and second.runners["c"]["s"].adopted
    await second.shutdown(teardown=True)


@needs_root_v1
@needs_runc
async def test_an_image_not_in_the_store_is_refused_before_anything_runs(
        agent_config: AgentConfig, board: HardwareProfile, prefix: str) -> None:
    e = engine(agent_config, board)
    await e.start()
    d = await e.submit(mission(partition("c", workloads=[
        workload("w", image="sha256:" + "ab" * 32, user="operator")])), ORIGIN)
    assert d.outcome == "rejected"
    got = {v.path: v.reason for v in d.violations}
    assert "not in the image store" in got["partitions[0].workloads[0].image"]
    assert "use a number" in got["partitions[0].workloads[0].user"]
    assert not (CGROUP_ROOT / "pids" / prefix / "p-c").exists()
    await e.shutdown(teardown=True)


@needs_runc
def test_image_cli(tmp_path: Path, layout) -> None:
    path, digest = layout
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n")

    def cli(*a: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent.cli", "image", *a, "--config",
                               str(cfg)], capture_output=True, text=True, cwd=REPO,
                              check=False)

    assert f"imported {digest}" in cli("import", str(path)).stdout
    assert digest in cli("list").stdout
    assert f"removed {digest}" in cli("gc").stdout  # no mission uses it
    bad = cli("import", str(tmp_path / "nope"))
    assert bad.returncode == 1 and "no such directory" in bad.stderr
    assert ProfileError  # the CLI maps image errors like any AgentError


@needs_root_v1
@needs_runc
async def test_two_workloads_whose_names_join_alike_both_run(
        agent_config: AgentConfig, board: HardwareProfile, layout) -> None:
    path, digest = layout
    e = engine(agent_config, board)
    e.images.import_path(path)  # type: ignore[union-attr]
    await e.start()
    sleeper = {"command": ["/bin/sleep", "3600"], "image": digest, "stop_grace_ms": 200}
    try:
        d = await e.submit(mission(
            partition("flight-ctl", quota=10_000, workloads=[workload("loop", **sleeper)]),
            partition("flight", quota=10_000, workloads=[workload("ctl-loop", **sleeper)])),
            ORIGIN)
        assert d.outcome == "applied", d
        a, b = e.runners["flight-ctl"]["loop"].pid, e.runners["flight"]["ctl-loop"].pid
        assert a and b and a != b
        await asyncio.sleep(0.5)
        assert Path(f"/proc/{a}").exists() and Path(f"/proc/{b}").exists()
    finally:
        await e.shutdown(teardown=True)


NS_PROBE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    long r = syscall(SYS_clone3, (void *)0, 0);
    printf("clone3 %ld %d\n", r, r < 0 ? errno : 0);
    int flags[] = {CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWPID};
    for (int i = 0; i < 4; i++) {
        long pid = syscall(SYS_clone, flags[i] | SIGCHLD, 0, 0, 0, 0);
        if (pid == 0) _exit(0);
        if (pid > 0) waitpid(pid, 0, 0);
        printf("clone-ns %ld %d\n", pid, pid < 0 ? errno : 0);
    }
    long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, 0, 0);
    printf("clone-plain %d\n", pid > 0);
    fflush(stdout);
    pause();
}
"""


@needs_root_v1
@needs_runc
async def test_a_container_cannot_make_namespaces_with_clone(
        tmp_path: Path, agent_config: AgentConfig, board: HardwareProfile) -> None:
    src = tmp_path / "probe.c"
    src.write_text(NS_PROBE)
    await asyncio.to_thread(subprocess.run, ["gcc", "-static", "-O1", "-o",
                                             str(tmp_path / "probe"), str(src)],
                            check=True, capture_output=True)
    digest = busybox_layout(tmp_path / "layout",
                            extra={"bin/nsprobe": (tmp_path / "probe").read_bytes()})
    e = engine(agent_config, board)
    e.images.import_path(tmp_path / "layout")  # type: ignore[union-attr]
    await e.start()
    try:
        # CAP_SYS_ADMIN kept on purpose: only the seccomp filter stands in the way.
        d = await e.submit(mission(partition("c", workloads=[workload(
            "p", command=["/bin/nsprobe"], image=digest, user="root",
            capabilities=["CAP_SYS_ADMIN"], stop_grace_ms=200)])), ORIGIN)
        assert d.outcome == "applied", d
        log = e.runners["c"]["p"].log_file
        await asyncio.sleep(0.1)
        for _ in range(50):
            if "clone-plain" in log.read_text():
                break
            await asyncio.sleep(0.1)
        lines = log.read_text().splitlines()
        assert "clone3 -1 38" in lines, lines
        assert [ln for ln in lines if ln.startswith("clone-ns")] == ["clone-ns -1 1"] * 4
        assert "clone-plain 1" in lines
    finally:
        await e.shutdown(teardown=True)


# -- hostile image files -----------------------------------------------------------------
def _tar(path: Path, members: dict[str, bytes], gz: bool = True) -> Path:
    import io
    with tarfile.open(path, "w:gz" if gz else "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_a_tar_that_is_not_a_layout_is_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    bomb = _tar(tmp_path / "bomb.tar.gz", {"zeros": b"\0" * (64 << 20)})
    assert bomb.stat().st_size < 200_000
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ImageError, match="'zeros' is not part of an OCI image layout"):
        store.import_path(bomb)
    left = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert left == [], left


def test_an_import_past_the_size_limit_is_refused_from_its_headers(tmp_path: Path) -> None:
    blob = "blobs/sha256/" + "0" * 64
    big = _tar(tmp_path / "big.tar.gz", {"oci-layout": b"{}", blob: b"\0" * (8 << 20)})
    store = ImageStore(tmp_path / "store", max_import_bytes=1 << 20)
    with pytest.raises(ImageError, match="unpacks to more than 1048576 bytes"):
        store.import_path(big)
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]


@pytest.mark.parametrize("index", [
    {"manifests": 3}, {"manifests": [3]}, {"manifests": [{"digest": 5}]},
    {"manifests": [{"digest": "sha256:" + "0" * 64, "annotations": ["x"]}]},
    {"manifests": [{"digest": "sha256:" + "0" * 64, "size": "big"}]}, [], "text",
])
def test_wrong_json_types_in_an_index_are_an_image_error(tmp_path: Path, index: object) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps(index))
    with pytest.raises(ImageError):
        ImageStore(tmp_path / "store").import_path(layout)


@pytest.mark.parametrize("manifest", [
    {"config": "x", "layers": []}, {"config": None}, {"layers": {"a": 1}, "config": {}},
    [1, 2],
])
def test_wrong_json_types_in_a_manifest_are_an_image_error(tmp_path: Path,
                                                           manifest: object) -> None:
    import hashlib
    layout = tmp_path / "layout"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    data = json.dumps(manifest).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": f"sha256:{digest}", "size": len(data)}]}))
    with pytest.raises(ImageError):
        ImageStore(tmp_path / "store").import_path(layout)


@needs_runc
def test_check_finds_the_images_of_the_config_it_is_given(tmp_path: Path, layout) -> None:
    """`sortie check --config C` looks in C's image store, as `sortie run --config C`."""
    path, digest = layout
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n")
    subprocess.run([sys.executable, "-m", "agent.cli", "image", "import", str(path),
                    "--config", str(cfg)], check=True, capture_output=True, cwd=REPO)
    prof = tmp_path / "m.yaml"
    prof.write_text(json.dumps({"name": "m", "generation": 1, "partitions": [{
        "name": "c", "criticality": "C", "memory_mib": 32,
        "budget": {"quota_us": 10_000, "period_us": 100_000},
        "workloads": [{"name": "w", "command": ["/bin/sleep", "1"], "image": digest}]}]}))
    res = subprocess.run([sys.executable, "-m", "agent.cli", "check", str(prof), "--config",
                          str(cfg), "--hw", str(REPO / "hwprofiles" / "qemu-x86_64.yaml"),
                          "--host-checks"], capture_output=True, text=True, cwd=REPO,
                         check=False)
    assert res.returncode == 0, res.stderr
