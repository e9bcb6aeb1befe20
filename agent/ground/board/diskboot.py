"""The small initrd that boots ``disk.img`` as a real board boots it: load the kernel
modules a virtio disk with ext4 needs, mount the root partition, hand over to systemd
(which starts ``sortie.service``). Made from busybox-static for the board's
architecture (through the private apt state) and the kernel package's own modules."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.errors import Violation
from agent.ground.board import packing, rootfs
from agent.ground.board.fetching import PrivateApt, extract_deb
from agent.ground.board.inputs import BoardError

ROOT_MODULES = ("virtio_pci", "virtio_mmio", "virtio_blk", "crc32c_generic", "ext4")
"""Enough for a virtio disk with ext4 under QEMU (Debian builds them as modules)."""

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.order); do insmod /modules/$m.ko 2>/dev/null; done
root=$(sed -n 's/.*root=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
mode=rw
grep -qw ro /proc/cmdline && mode=ro
want=$root
i=0
# root=PARTLABEL=rootfs-a|b (the slot the bootloader chose: the partition, whatever file
# system an update wrote into it), LABEL=, UUID= or a device path; devices appear late.
while [ $i -lt 100 ]; do
    case "$want" in
        PARTLABEL=*)
            for u in /sys/class/block/*/uevent; do
                if grep -qx "PARTNAME=${want#PARTLABEL=}" "$u"; then
                    root=/dev/$(sed -n 's/^DEVNAME=//p' "$u")
                fi
            done ;;
        LABEL=*|UUID=*) root=$(findfs "$want" 2>/dev/null) ;;
    esac
    [ -b "$root" ] && break
    sleep 0.1; i=$((i+1))
done
mkdir -p /newroot
if ! mount -t ext4 -o $mode "$root" /newroot; then
    echo "sortie-initrd: cannot mount $root"; exec sh
fi
umount /proc /sys
mount --move /dev /newroot/dev 2>/dev/null || umount /dev
exec switch_root /newroot /sbin/init
"""


def _depends(ko: Path) -> list[str]:
    """The ``depends=`` field of a module's .modinfo (NUL-separated key=value strings)."""
    data = ko.read_bytes()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    raw = data[at + 9:data.index(b"\0", at + 9)].decode()
    return [d for d in raw.split(",") if d]


def module_order(moddir: Path, wanted: tuple[str, ...]) -> list[Path]:
    """``wanted`` and everything they depend on, dependencies first."""
    index = {p.name[:-3].replace("-", "_"): p for p in moddir.rglob("*.ko")}
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        ko = index.get(name)
        if ko is None:
            return  # built into the kernel
        for dep in _depends(ko):
            visit(dep)
        order.append(ko)
    for w in wanted:
        visit(w)
    return order


def boot_initrd(apt: PrivateApt, kdir: Path, cache: Path, out: Path) -> None:
    bdir = cache / f"busybox-{apt.arch}"
    if not (bdir / "bin" / "busybox").exists():
        extract_deb(apt.download("busybox-static", cache / "debs"), bdir)
    moddirs = list((kdir / "lib" / "modules").iterdir())
    if not moddirs:
        raise BoardError([Violation("kernel", "the kernel package has no modules")])
    tree = cache / f"initrd-{apt.arch}"
    shutil.rmtree(tree, ignore_errors=True)
    for d in ("bin", "dev", "proc", "sys", "newroot", "modules"):
        (tree / d).mkdir(parents=True)
    shutil.copy2(bdir / "bin" / "busybox", tree / "bin" / "busybox")
    mods = module_order(moddirs[0], ROOT_MODULES)
    for ko in mods:
        shutil.copy2(ko, tree / "modules" / ko.name)
    (tree / "modules.order").write_text("\n".join(ko.name[:-3] for ko in mods) + "\n")
    (tree / "init").write_text(INIT)
    (tree / "init").chmod(0o755)
    rootfs.normalize(tree)
    packing.initramfs(tree, out)
