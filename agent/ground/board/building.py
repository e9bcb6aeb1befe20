"""``sortie board build``: check every input, then fetch (cached), assemble and pack.

Outputs in ``--out``: ``kernel`` (what QEMU boots: the uncompressed vmlinux on x86_64,
the Image.gz on aarch64), ``vmlinuz`` (Debian's, for bootloaders), ``initramfs.cpio.gz``
(the whole root filesystem without kernel modules: QEMU's fastest path), ``disk.img``
(raw, flashable, boots by itself through UEFI: GPT with an EFI system partition holding
GRUB, root slots A and B, a data partition), ``disk.img.bmap`` (for bmaptool),
``disk-initrd.cpio.gz`` (the initrd in the slot, also beside it to boot the disk with
``-kernel``), ``update.raucb`` (the same root file system as a signed RAUC bundle, for
boards already flashed), ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import agent
from agent.errors import Violation
from agent.ground.board import bundling, diskboot, packing, raspi, rootfs, uefi
from agent.ground.board.fetching import PrivateApt, extract_deb, kernel_package, run
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
    pkg, code, variables = uefi.FIRMWARE["amd64" if b.arch == "x86_64" else "arm64"]
    return {"binary": f"qemu-system-{b.arch}", "machine": machine, "cpu": cpu,
            "smp": len(b.cores), "memory_mib": b.memory_mib, "console": console,
            "firmware_package": pkg, "firmware_code": code, "firmware_vars": variables}


def build(hw: Path, profiles: Path | None, keys: Path | None, config: Path | None,
          out: Path, cache: Path, say: Progress | None = None,
          update_keys: Path = bundling.DEFAULT_KEYS) -> Path:
    say = say or Progress()
    cache, out = cache.resolve(), out.resolve()  # apt resolves relative paths elsewhere
    inputs = check(hw, profiles, keys, config, cache, out)  # before any long step
    signing, created = bundling.load_or_create(update_keys)
    if created:
        say(f"update keys: a new CA and signing key in {update_keys} (keep ca.key.pem "
            "offline; boards built with it accept bundles signed by signing.key.pem)")
    inputs = replace(inputs, update_keyring=signing.keyring())
    cache.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    kdir, kpkg, kver, apt = _kernel(inputs, cache, say)
    base = rootfs.base_tarball(inputs, cache, say)
    wheels = rootfs.wheelhouse(inputs, cache, say)
    code = _code_digest()
    # The recipe is an input too: a changed builder rebuilds (its code is not flown).
    recipe = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(
        Path(__file__).parent.glob("*.py")))).hexdigest()
    key = hashlib.sha256("|".join([inputs.digest(), code, recipe, kpkg, kver, base.name,
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
    # The kernel package ships no modules.dep (its postinst runs depmod): without it
    # nothing autoloads on the board (modprobe finds no module). The host's depmod
    # writes the same index for any architecture.
    for kver in sorted(p.name for p in mods.iterdir()):
        run(["depmod", "-b", str(root), kver], "depmod")
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
    say("disk boot initrd: busybox + the modules a virtio disk with ext4 needs")
    diskboot.boot_initrd(apt, kdir, cache, out / "disk-initrd.cpio.gz")
    # What the bootloader loads from the slot: an update replaces kernel and initrd
    # with the rest of the slot.
    boot = root / "boot"
    boot.mkdir(exist_ok=True)
    shutil.copyfile(vmlinuz, boot / "vmlinuz")
    shutil.copyfile(out / "disk-initrd.cpio.gz", boot / "initrd.img")
    rootfs.normalize(boot)
    rootfs.normalize(root, shallow=True)
    say("tree digest")
    tree = packing.tree_digest(root)
    say("initramfs: the root filesystem without kernel modules and /boot (cpio, gzip -n)")
    parked = [(root / "usr" / "lib" / "modules", cache / f"modules-{inputs.arch}"),
              (boot, cache / f"boot-{inputs.arch}")]
    for src, dst in parked:
        shutil.rmtree(dst, ignore_errors=True)
        src.rename(dst)
    try:
        rootfs.normalize(root / "usr" / "lib", shallow=True)  # the moves changed mtimes
        rootfs.normalize(root, shallow=True)
        packing.initramfs(root, out / "initramfs.cpio.gz")
    finally:
        for src, dst in parked:
            dst.rename(src)
        rootfs.normalize(root / "usr" / "lib", shallow=True)
        rootfs.normalize(root, shallow=True)
    say("bootloader: GRUB EFI (Debian's modules, the host's grub-mkimage)")
    grub, grub_pkg = uefi.grub_efi(apt, cache)
    boot_spec = inputs.board.boot
    console = boot_spec.console or qemu_spec(inputs)["console"]
    esp_files = {f"/EFI/BOOT/{uefi.GRUB[inputs.arch][2]}": grub.read_bytes(),
                 f"{uefi.PREFIX}/grub.cfg": uefi.grub_cfg(console).encode(),
                 f"{uefi.PREFIX}/grubenv": uefi.grubenv(uefi.INITIAL_ENV)}
    board_firmware: dict[str, str] = {}
    if boot_spec.firmware == "raspberrypi":
        say("boot partition: the Raspberry Pi firmware, config.txt, the device tree, U-Boot")
        assert boot_spec.dtb is not None  # the model requires it for this firmware
        pi_files, board_firmware = raspi.boot_files(apt, kdir, boot_spec.dtb, cache)
        esp_files.update(pi_files)
    esp = cache / f"esp-{inputs.arch}.img"
    uefi.esp_image(esp, packing.ESP_MIB, esp_files, key[:8].upper())
    say("root file system: ext4 of the tree (mke2fs -d), read-only on the board")
    root_fs = packing.root_image(root, cache / f"rootfs-{inputs.arch}.ext4", key,
                                 uefi.ROOT_LABEL)
    say("disk image: GPT, EFI system partition, root slots A and B, data")
    layout = packing.disk_image(root_fs, esp, out / "disk.img", inputs.arch, key,
                                uefi.DATA_LABEL)
    esp.unlink()
    size = layout["bytes"]
    say("bmap: the disk's mapped blocks, for bmaptool copy")
    bmap = packing.bmap(out / "disk.img")
    compatible = f"sortie-{inputs.board.name}"
    version = f"{agent.__version__}+{key[:12]}"
    say(f"update bundle: RAUC {bundling.FORMAT}, {compatible} {version}, signed by "
        f"{signing.cert}")
    bundle = bundling.bundle(root_fs, compatible, version, signing, out / "update.raucb")
    root_fs.unlink()
    firmware = uefi.firmware_packages()
    path = packing.write_manifest(out, {
        "kernel": out / "kernel", "vmlinuz": out / "vmlinuz",
        "initramfs": out / "initramfs.cpio.gz", "disk": out / "disk.img",
        "disk_initrd": out / "disk-initrd.cpio.gz", "disk_bmap": bmap,
        "update_bundle": bundle}, {
        "build_key": key,
        "board": inputs.board.name, "arch": inputs.arch,
        "kernel_package": f"{kpkg} {kver}", "agent_version": agent.__version__,
        "inputs_sha256": inputs.digest(), "agent_code_sha256": code,
        "rootfs_tree_sha256": tree, "disk_bytes": size, "disk_layout": layout,
        "bootloader": {"package": grub_pkg, "file": f"EFI/BOOT/{uefi.GRUB[inputs.arch][2]}",
                       "slots": {s: name for s, (name, _) in uefi.SLOT_PARTITIONS.items()},
                       "initial_env": uefi.INITIAL_ENV, "console": console,
                       "board_firmware": boot_spec.firmware,
                       "board_firmware_packages": board_firmware,
                       "esp_files": sorted(esp_files)},
        "update": {"compatible": compatible, "version": version, "format": bundling.FORMAT,
                   "keyring_sha256": hashlib.sha256(inputs.update_keyring).hexdigest(),
                   "updater": f"rauc {_packages(root).get('rauc', 'missing')}"},
        "firmware_for_qemu": firmware,
        "profiles": sorted(inputs.profiles), "keys": sorted(inputs.keys),
        "packages": _packages(root), "qemu": qemu_spec(inputs),
        "reproducibility": "kernel, vmlinuz, initramfs and rootfs_tree_sha256 repeat for "
                           "the same inputs and package versions; disk.img's ext4 records "
                           "inode change times, so its bytes differ between builds; "
                           "update.raucb carries its signing time"})
    say(f"done: {out} ({size >> 20} MiB disk image)")
    return path
