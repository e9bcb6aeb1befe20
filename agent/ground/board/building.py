"""``sortie board build``: check every input, then fetch (cached), assemble and pack.

Outputs in ``--out``: ``kernel`` (what QEMU boots: the uncompressed vmlinux on x86_64,
the Image.gz on aarch64), ``vmlinuz`` (Debian's, for bootloaders), ``initramfs.cpio.gz``
(the whole root filesystem without kernel modules: QEMU's path), ``disk.img`` (raw,
flashable: MBR + ext4 root with modules, systemd and sortie.service),
``disk-initrd.cpio.gz`` (boots ``disk.img`` under QEMU through systemd, as a board
does), ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import agent
from agent.errors import Violation
from agent.ground.board import diskboot, packing, rootfs
from agent.ground.board.fetching import PrivateApt, extract_deb, kernel_package
from agent.ground.board.inputs import BoardError, Inputs, check
from agent.ground.board.progress import Progress


def _code_digest() -> str:
    h = hashlib.sha256()
    src = Path(agent.__file__).parent
    for p in sorted(q for q in src.rglob("*.py")
                    if q.relative_to(src).parts[0] != rootfs.GROUND_SIDE):
        h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _kernel(inputs: Inputs, cache: Path, say: Progress) -> tuple[Path, str, str, PrivateApt]:
    apt = PrivateApt(cache / f"apt-{inputs.arch}", inputs)
    say(f"kernel: apt update in a private state for {inputs.arch} (the host's apt is "
        "not touched)")
    apt.update()
    pkg = kernel_package(apt)
    version = apt.version(pkg)
    kdir = cache / f"kernel-{pkg}_{version}"
    if not (kdir / ".complete").exists():
        say(f"kernel: downloading {pkg} {version}")
        shutil.rmtree(kdir, ignore_errors=True)
        deb = apt.download(pkg, cache / "debs")
        extract_deb(deb, kdir)
        deb.unlink()
        (kdir / ".complete").touch()
    else:
        say(f"kernel: cached {pkg} {version}")
    return kdir, pkg, version, apt


def _packages(root: Path) -> dict[str, str]:
    out, name = {}, None
    for line in (root / "var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            name = line[9:]
        elif line.startswith("Version: ") and name:
            out[name] = line[9:]
    return dict(sorted(out.items()))


def qemu_spec(inputs: Inputs) -> dict[str, Any]:
    b = inputs.board
    q = b.qemu
    machine, cpu, console = (q.machine, q.cpu, q.console) if q else (
        ("q35", "max", "ttyS0") if b.arch == "x86_64" else ("virt", "cortex-a53", "ttyAMA0"))
    return {"binary": f"qemu-system-{b.arch}", "machine": machine, "cpu": cpu,
            "smp": len(b.cores), "memory_mib": b.memory_mib, "console": console}


def build(hw: Path, profiles: Path | None, keys: Path | None, config: Path | None,
          out: Path, cache: Path, say: Progress | None = None) -> Path:
    say = say or Progress()
    cache, out = cache.resolve(), out.resolve()  # apt resolves relative paths elsewhere
    inputs = check(hw, profiles, keys, config, cache, out)  # before any long step
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    kdir, kpkg, kver, apt = _kernel(inputs, cache, say)
    base = rootfs.base_tarball(inputs, cache, say)
    wheels = rootfs.wheelhouse(inputs, cache, say)
    code = _code_digest()
    key = hashlib.sha256("|".join([inputs.digest(), code, kpkg, kver, base.name,
                                   wheels.name]).encode()).hexdigest()
    manifest = out / "manifest.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("build_key") == key and all(
                (out / a["file"]).exists() and packing.sha256(out / a["file"]) == a["sha256"]
                for a in old["artifacts"].values()):
            say(f"nothing changed: {out} is up to date")
            return manifest
    root = cache / f"root-{inputs.arch}"
    rootfs.assemble(inputs, base, wheels, root, say)
    say("kernel modules into the disk image's tree")
    mods = kdir / "lib" / "modules"
    shutil.copytree(mods, root / "usr" / "lib" / "modules", symlinks=True, dirs_exist_ok=True)
    rootfs.normalize(root / "usr" / "lib" / "modules")
    vmlinuz = next((kdir / "boot").glob("vmlinuz-*"), None)
    if vmlinuz is None:
        raise BoardError([Violation("kernel", f"{kpkg} has no /boot/vmlinuz-*")])
    shutil.copyfile(vmlinuz, out / "vmlinuz")
    if inputs.arch == "amd64":
        say("kernel: extracting the uncompressed vmlinux (PVH boot, no decompression)")
        (out / "kernel").write_bytes(packing.vmlinux_from_bzimage(vmlinuz.read_bytes()))
    else:
        shutil.copyfile(vmlinuz, out / "kernel")
    say("tree digest")
    tree = packing.tree_digest(root)
    say("initramfs: the root filesystem without kernel modules (cpio, gzip -n)")
    modules = root / "usr" / "lib" / "modules"
    parked = cache / f"modules-{inputs.arch}"
    shutil.rmtree(parked, ignore_errors=True)
    modules.rename(parked)
    try:
        rootfs.normalize(modules.parent, shallow=True)  # the move changed usr/lib's mtime
        packing.initramfs(root, out / "initramfs.cpio.gz")
    finally:
        parked.rename(modules)
        rootfs.normalize(modules.parent, shallow=True)
    say("disk boot initrd: busybox + the modules a virtio disk with ext4 needs")
    diskboot.boot_initrd(apt, kdir, cache, out / "disk-initrd.cpio.gz")
    say("disk image: MBR + ext4 root (mke2fs -d)")
    size = packing.disk_image(root, out / "disk.img", key)
    path = packing.write_manifest(out, {
        "kernel": out / "kernel", "vmlinuz": out / "vmlinuz",
        "initramfs": out / "initramfs.cpio.gz", "disk": out / "disk.img",
        "disk_initrd": out / "disk-initrd.cpio.gz"}, {
        "build_key": key,
        "board": inputs.board.name, "arch": inputs.arch,
        "kernel_package": f"{kpkg} {kver}", "agent_version": agent.__version__,
        "inputs_sha256": inputs.digest(), "agent_code_sha256": code,
        "rootfs_tree_sha256": tree, "disk_bytes": size,
        "profiles": sorted(inputs.profiles), "keys": sorted(inputs.keys),
        "packages": _packages(root), "qemu": qemu_spec(inputs),
        "reproducibility": "kernel, vmlinuz, initramfs and rootfs_tree_sha256 repeat for "
                           "the same inputs and package versions; disk.img's ext4 records "
                           "inode change times, so its bytes differ between builds"})
    say(f"done: {out} ({size >> 20} MiB disk image)")
    return path
