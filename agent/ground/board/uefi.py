"""The UEFI boot path of a flashable disk: GRUB (Debian's EFI build for the board's
architecture, as a removable-media ``EFI/BOOT/BOOT*.EFI`` that no firmware variable has
to name), its configuration choosing between the two root slots, and the EFI system
partition holding both.

Slot choice follows RAUC's GRUB contract (variables ORDER, A_OK, A_TRY, B_OK, B_TRY in
``grubenv`` on the ESP), which RAUC drives through ``sortie slot backend``: the first
slot in ORDER that is OK and not already tried boots; its TRY flag is set before it
boots and cleared by the boot check once the mission flies (mark-good); a slot that was
tried and never marked good is skipped at the next boot, which falls back to the other
slot. A slot is a partition, found by its number on the ESP's disk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from agent import slots
from agent.errors import Violation
from agent.ground.board.fetching import PrivateApt, extract_deb, run
from agent.ground.board.inputs import BoardError
from agent.ground.board.rootfs import EPOCH

# arch -> (Debian package with GRUB's EFI modules, GRUB platform, removable-media name)
GRUB = {"amd64": ("grub-efi-amd64-bin", "x86_64-efi", "BOOTX64.EFI"),
        "arm64": ("grub-efi-arm64-bin", "arm64-efi", "BOOTAA64.EFI")}
MODULES = ("part_gpt", "fat", "ext2", "normal", "linux", "configfile", "loadenv", "test",
           "echo", "search", "search_label", "search_fs_uuid", "gzio", "reboot", "halt",
           "sleep", "true", "cat", "efi_gop", "regexp")
"""Built into the image: GRUB then needs no module directory on the ESP."""
ESP_LABEL = "SORTIE-ESP"
SLOT_PARTITIONS = slots.PARTITIONS
ROOT_LABEL = "sortie-root"
"""The ext4 label of every root file system (both slots carry the same after updates)."""
DATA_LABEL = "sortie-data"
PREFIX = "/EFI/sortie"

EARLY = f"""search --no-floppy --label --set=root {ESP_LABEL}
set prefix=($root){PREFIX}
configfile $prefix/grub.cfg
"""


def grub_cfg(console: str, extra: str = "") -> str:
    """The slot choice and one menu entry per slot. ``console``: the kernel's serial
    console (ttyS0, ttyAMA0); the firmware's console carries GRUB's own lines."""
    entries = []
    for slot, (name, number) in SLOT_PARTITIONS.items():
        entries.append(f"""menuentry "sortie slot {slot}" --id {slot} {{
    set root=($disk,gpt{number})
    linux /boot/vmlinuz root=PARTLABEL={name} ro console={console} panic=10 quiet \\
        loglevel=3 systemd.show_status=1 rauc.slot={slot} sortie.slot={slot} {extra}
    initrd /boot/initrd.img
}}
""")
    return f"""# Sortie: boot the first slot in ORDER that is good and not already tried.
set timeout=0
set ORDER="A B"
set A_OK=0
set A_TRY=0
set B_OK=0
set B_TRY=0
load_env --file $prefix/grubenv
set chosen=""
for SLOT in $ORDER; do
    if [ -z "$chosen" ]; then
        if [ "$SLOT" = "A" -a "$A_OK" = "1" -a "$A_TRY" = "0" ]; then
            set chosen=A
            set A_TRY=1
        elif [ "$SLOT" = "B" -a "$B_OK" = "1" -a "$B_TRY" = "0" ]; then
            set chosen=B
            set B_TRY=1
        fi
    fi
done
if [ -z "$chosen" ]; then
    # Every slot was tried and none marked good: give the first good one another try
    # rather than no boot at all (a flaky power supply is not a bad image).
    for SLOT in $ORDER; do
        if [ -z "$chosen" ]; then
            if [ "$SLOT" = "A" -a "$A_OK" = "1" ]; then set chosen=A; fi
            if [ "$SLOT" = "B" -a "$B_OK" = "1" ]; then set chosen=B; fi
        fi
    done
fi
save_env --file $prefix/grubenv A_TRY B_TRY
# The slots are partitions of the disk the ESP is on (hdN,gpt1 -> hdN).
regexp --set=1:disk '^([^,]+),' "$root"
echo "sortie: booting slot $chosen (ORDER=$ORDER A_OK=$A_OK A_TRY=$A_TRY B_OK=$B_OK B_TRY=$B_TRY)"
set default=$chosen
{"".join(entries)}"""


def grubenv(variables: dict[str, str]) -> bytes:
    """GRUB's environment block (the board rewrites it with the same code)."""
    return slots.render(variables)


INITIAL_ENV = {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}
"""A fresh disk: slot A holds the image, slot B is empty until the first update."""


def grub_efi(apt: PrivateApt, cache: Path) -> tuple[Path, str]:
    """GRUB's EFI binary for the board's architecture, built with the host's
    grub-mkimage from Debian's module package (cached per version)."""
    pkg, platform, _ = GRUB[apt.arch]
    version = apt.version(pkg)
    recipe = hashlib.sha256(f"{MODULES}{EARLY}{PREFIX}".encode()).hexdigest()[:12]
    out = cache / f"grub-{apt.arch}-{version}-{recipe}.efi"
    if out.exists():
        return out, f"{pkg} {version}"
    if shutil.which("grub-mkimage") is None:
        raise BoardError([Violation("host", "grub-mkimage not found: apt-get install "
                                            "grub-common (or run .ci/setup)")])
    tree = cache / f"grub-{apt.arch}-{version}"
    shutil.rmtree(tree, ignore_errors=True)
    extract_deb(apt.download(pkg, cache / "debs"), tree)
    early = tree / "early.cfg"
    early.write_text(EARLY)
    tmp = out.with_suffix(".tmp")
    run(["grub-mkimage", "-O", platform, "-d", str(tree / "usr/lib/grub" / platform),
         "-p", PREFIX, "-c", str(early), "-o", str(tmp), *MODULES], "grub-mkimage")
    tmp.rename(out)
    shutil.rmtree(tree)
    return out, f"{pkg} {version}"


def esp_image(out: Path, size_mib: int, files: dict[str, bytes], volume_id: str) -> None:
    """A FAT32 file system image holding ``files`` (ESP path -> content), made without a
    mount (mkfs.vfat, mtools) and the same for the same content (--invariant, fixed
    volume id, every file's time the image epoch)."""
    for tool in ("mkfs.vfat", "mcopy", "mmd"):
        if shutil.which(tool) is None:
            raise BoardError([Violation("host", f"{tool} not found: apt-get install "
                                                "dosfstools mtools (or run .ci/setup)")])
    out.unlink(missing_ok=True)
    run(["mkfs.vfat", "-F", "32", "-n", ESP_LABEL, "-i", volume_id, "--invariant",
         "-C", str(out), str(size_mib * 1024)], "mkfs.vfat")
    staging = out.with_name(out.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    dirs: set[str] = set()
    for path in files:
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    for d in sorted(dirs, key=lambda x: x.count("/")):
        subprocess.run(["mmd", "-i", str(out), f"::/{d}"], check=True, env=env)
    staging.mkdir()
    try:
        for path, data in sorted(files.items()):
            src = staging / path.strip("/").replace("/", "_")
            src.write_bytes(data)
            os.utime(src, (EPOCH, EPOCH))
            subprocess.run(["mcopy", "-m", "-i", str(out), str(src), f"::{path}"],
                           check=True, env=env)
    finally:
        shutil.rmtree(staging)


FIRMWARE = {"amd64": ("ovmf", "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
            "arm64": ("qemu-efi-aarch64", "/usr/share/AAVMF/AAVMF_CODE.fd",
                      "/usr/share/AAVMF/AAVMF_VARS.fd")}
"""QEMU's UEFI firmware per architecture: package, code and variable store (pflash)."""


def firmware_packages() -> dict[str, str]:
    """The host's UEFI firmware packages QEMU boots the disk with, and their versions."""
    out = {}
    for pkg, _, _ in FIRMWARE.values():
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True,
                           text=True, check=False)
        out[pkg] = r.stdout.strip() if r.returncode == 0 else "not installed"
    return out
