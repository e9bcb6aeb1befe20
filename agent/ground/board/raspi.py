"""The Raspberry Pi 4's boot partition: what its boot ROM and firmware read from the
first FAT partition (Debian's ``raspi-firmware``: ``start4.elf``, ``fixup4.dat``; our
``config.txt``; the board's device tree from the kernel package), and U-Boot for the Pi
(Debian's ``u-boot-rpi``) as the "kernel" the firmware starts. U-Boot's EFI then loads
``EFI/BOOT/BOOTAA64.EFI`` from the same partition: the GRUB, slot choice and boot
counting every other board uses. The Pi's own ``tryboot`` A/B is not used: one slot
mechanism for every board family, RAUC drives it.

``cmdline.txt`` is not written: the firmware would put it in the device tree for a
kernel it boots itself, but here it boots U-Boot, and GRUB writes the kernel's command
line (the chosen slot's root, the serial console).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.errors import Violation
from agent.ground.board.fetching import PrivateApt, extract_deb
from agent.ground.board.inputs import BoardError

FIRMWARE_PACKAGE = "raspi-firmware"
UBOOT_PACKAGE = "u-boot-rpi"
FIRMWARE_FILES = ("start4.elf", "fixup4.dat")
"""The Pi 4's firmware (the boot ROM reads the EEPROM's bootloader, which reads these)."""
UBOOT = "usr/lib/u-boot/rpi_arm64/u-boot.bin"


def config_txt(dtb_name: str) -> str:
    """The firmware's configuration: 64-bit, U-Boot as the kernel, the serial console
    on GPIO 14/15 (mini UART, fixed core clock), the upstream device tree."""
    return f"""# Sortie: Raspberry Pi 4 firmware -> U-Boot (EFI) -> GRUB -> the root slot's kernel
[pi4]
arm_64bit=1
kernel=u-boot.bin
device_tree={dtb_name}
enable_uart=1
# No GPU memory beyond the minimum: a flight computer has no display.
gpu_mem=16
disable_splash=1
"""


def boot_files(apt: PrivateApt, kdir: Path, dtb: str, cache: Path
               ) -> tuple[dict[str, bytes], dict[str, str]]:
    """ESP path -> content for the Pi's boot partition, and the packages they came from
    (name -> version)."""
    files: dict[str, bytes] = {}
    packages = {}
    for pkg in (FIRMWARE_PACKAGE, UBOOT_PACKAGE):
        packages[pkg] = apt.version(pkg)
        tree = cache / f"{pkg}-{apt.arch}-{packages[pkg]}"
        if not (tree / ".complete").exists():
            shutil.rmtree(tree, ignore_errors=True)
            deb = apt.download(pkg, cache / "debs")
            extract_deb(deb, tree)
            deb.unlink()
            (tree / ".complete").touch()
        if pkg == FIRMWARE_PACKAGE:
            for name in FIRMWARE_FILES:
                found = next(tree.rglob(name), None)
                if found is None:
                    raise BoardError([Violation(pkg, f"has no {name}")])
                files[f"/{name}"] = found.read_bytes()
        else:
            if not (tree / UBOOT).is_file():
                raise BoardError([Violation(pkg, f"has no /{UBOOT}")])
            files["/u-boot.bin"] = (tree / UBOOT).read_bytes()
    dtbs = sorted(kdir.glob(f"usr/lib/linux-image-*/{dtb}"))
    if not dtbs:
        raise BoardError([Violation("boot.dtb", f"{dtb}: not in the kernel package")])
    name = Path(dtb).name
    files[f"/{name}"] = dtbs[-1].read_bytes()
    files["/config.txt"] = config_txt(name).encode()
    return files, packages
