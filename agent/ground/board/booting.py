"""``sortie board boot DIR``: boot a built image in QEMU with the board's core count,
memory and CPU model, show the serial console, and hand the agent's status (reported
by the guest's init on the console) to the host. Clean shutdown: the guest is asked to
stop the agent and power off (after ``run_s``, at ``timeout_s``, or on Ctrl-C); QEMU is
killed only if it does not go in time."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import Violation
from agent.ground.board.inputs import BoardError

STATUS = "SORTIE-STATUS "
STOPPED = "SORTIE-STOPPED rc="


@dataclass
class Boot:
    command: list[str]
    statuses: list[dict[str, Any]] = field(default_factory=list)
    first_status_s: float | None = None
    """Seconds from starting QEMU to the first status the agent gave."""
    agent_rc: int | None = None
    qemu_rc: int | None = None
    clean: bool = False
    """The guest stopped the agent and powered off by itself."""
    console: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """Seconds from starting QEMU to each console line."""
    rebooted: bool = False
    """The guest asked for a reboot (QEMU runs with -no-reboot: it exits instead)."""
    cut_at_s: float | None = None
    """When the power was cut (``cut_on``): QEMU killed."""

    def at(self, text: str) -> float | None:
        """Seconds from QEMU's start to the first console line containing ``text``."""
        return next((t for line, t in zip(self.console, self.times, strict=True)
                     if text in line), None)

    @property
    def last(self) -> dict[str, Any] | None:
        return self.statuses[-1] if self.statuses else None


FW_CFG = "opt/sortie.dev/options"
"""Where QEMU hands the guest its test options (``sortie.run_s=...``) when nothing can be
appended to a kernel command line: the bootloader on the disk writes that one."""


def command(image: Path, manifest: dict[str, Any], run_s: float, report_s: float,
            accel: str, disk: bool = False, mission: str | None = None,
            freeze_s: float = 0, direct: bool = False, vars_file: Path | None = None,
            disk_file: Path | None = None, media: Path | None = None,
            install: tuple[str, ...] = ()) -> list[str]:
    """QEMU for the initramfs path (rdinit=/init, no systemd); with ``disk`` the raw
    disk image as a virtio disk (a snapshot: the image is not written) booted as a board
    boots it: UEFI firmware (``vars_file``: a writable copy of its variable store), GRUB
    from the EFI system partition, the kernel and initrd from the chosen root slot,
    systemd, sortie.service. ``direct``: the same disk with the kernel handed over by
    QEMU (``-kernel``), the path the UEFI boot is measured against."""
    q, art = manifest["qemu"], manifest["artifacts"]
    sortie = f"sortie.run_s={run_s:g} sortie.report_s={report_s:g}" + (
        f" sortie.mission={mission}" if mission else "") + (
        f" sortie.freeze_s={freeze_s:g}" if freeze_s else "") + (
        f" sortie.install={','.join(install)}" if install else "")
    base = [q["binary"], "-M", q["machine"], "-cpu", q["cpu"], "-smp", str(q["smp"]),
            "-m", str(q["memory_mib"]), "-accel", accel, "-nographic", "-no-reboot",
            "-net", "none"]
    if not disk:
        return [*base, "-kernel", str(image / art["kernel"]["file"]), "-initrd",
                str(image / art["initramfs"]["file"]), "-append",
                f"console={q['console']} rdinit=/init panic=-1 quiet loglevel=3 {sortie}"]
    # The built disk as a snapshot (never written), or the board's own copy (persist).
    target = f"file={disk_file},format=raw,if=virtio" if disk_file else \
        f"file={image / art['disk']['file']},format=raw,if=virtio,snapshot=on"
    # QEMU's option syntax: a comma inside a value is written twice.
    drive = ["-drive", target, "-fw_cfg", f"name={FW_CFG},string={sortie.replace(',', ',,')}"]
    if media is not None:  # a USB stick with update bundles, as a second disk
        drive += ["-drive", f"file={media},format=raw,if=virtio,readonly=on"]
    if direct:
        slot = manifest.get("bootloader", {}).get("slots", {}).get("A", "rootfs-a")
        return [*base, "-kernel", str(image / art["kernel"]["file"]), "-initrd",
                str(image / art["disk_initrd"]["file"]), *drive, "-append",
                f"console={q['console']} root=PARTLABEL={slot} ro panic=-1 quiet "
                f"loglevel=3 {sortie}"]
    if vars_file is None:
        raise BoardError([Violation("firmware", "a UEFI boot needs a variable store copy")])
    code = manifest["qemu"].get("firmware_code")
    if code is None:
        raise BoardError([Violation(str(image), "built before disks booted through UEFI: "
                                                "rebuild it with `sortie board build`")])
    return [*base, "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_file}", *drive]


def load_manifest(image: Path, disk: bool = False) -> dict[str, Any]:
    path = image / "manifest.json"
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BoardError([Violation(str(path), f"not a built board image ({exc}); run "
                                               "`sortie board build` first")]) from exc
    for name in ("kernel", "disk", "disk_initrd") if disk else ("kernel", "initramfs"):
        if name not in doc["artifacts"]:
            raise BoardError([Violation(str(path), f"no {name} in this build")])
        f = image / doc["artifacts"][name]["file"]
        if not f.exists():
            raise BoardError([Violation(str(f), "missing")])
    if disk and "firmware_vars" in doc["qemu"]:
        for name in ("firmware_code", "firmware_vars"):
            if not Path(doc["qemu"][name]).exists():
                pkg = doc["qemu"].get("firmware_package", "ovmf / qemu-efi-aarch64")
                raise BoardError([Violation("host", f"{doc['qemu'][name]} not found: "
                                                    f"apt-get install {pkg}")])
    if shutil.which(doc["qemu"]["binary"]) is None:
        raise BoardError([Violation("host", f"{doc['qemu']['binary']} not found: apt-get "
                                            "install qemu-system-x86 qemu-system-arm")])
    return doc


MEDIA_LABEL = "SORTIE-UPD"
"""The ext4 label of the update media the guest installs bundles from."""


def update_media(bundles: list[Path], out: Path) -> Path:
    """An ext4 image (label SORTIE-UPD) holding ``bundles``: what a technician's USB
    stick would carry. Made with mke2fs -d, no mount; the files root's, read-only."""
    staging = out.with_name(out.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for b in bundles:
            if not b.is_file():
                raise BoardError([Violation(str(b), "no such bundle")])
            shutil.copyfile(b, staging / b.name)
            (staging / b.name).chmod(0o644)
        mib = sum(b.stat().st_size for b in bundles) // (1 << 20) + 64
        out.unlink(missing_ok=True)
        res = subprocess.run(["mkfs.ext4", "-F", "-q", "-L", MEDIA_LABEL, "-E",
                              "root_owner=0:0", "-d", str(staging), str(out), f"{mib}M"],
                             capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise BoardError([Violation("update media", res.stderr.strip()[-300:])])
    finally:
        shutil.rmtree(staging)
    return out


def boot(image: Path, run_s: float = 0, timeout_s: float = 600, report_s: float = 5,
         accel: str = "tcg", echo: Callable[[str], None] | None = None,
         disk: bool = False, mission: str | None = None, freeze_s: float = 0,
         direct: bool = False, persist: Path | None = None,
         bundles: tuple[Path, ...] = (), cut_on: tuple[str, float] | None = None) -> Boot:
    """``mission``: fly that baked mission instead of the configured one (initramfs
    path only: a flashed board flies what its config says). ``persist``: the board's
    own disk and NVRAM in that directory, kept from boot to boot (made from the image
    the first time); without it every disk boot starts from the built disk.
    ``bundles``: on a second disk; the guest installs them in order once its slot is
    confirmed (a refused one is reported, the next tried) and reboots after the first
    installed. ``cut_on``: (text, seconds): cut the power (kill QEMU) that long after a
    console line containing the text."""
    if mission and disk:
        raise BoardError([Violation("--mission", "only for the initramfs boot; a disk "
                                                 "boot flies what the baked config says")])
    if (persist or bundles) and (not disk or direct):
        raise BoardError([Violation("--persist/--update", "only for a disk booted through "
                                                          "its firmware (--disk)")])
    manifest = load_manifest(image, disk)
    with tempfile.TemporaryDirectory(prefix="sortie-boot-") as tmp:
        vars_file = disk_file = media = None
        if persist is not None:
            persist.mkdir(parents=True, exist_ok=True)
            disk_file = persist / "disk.img"
            if not disk_file.exists():
                subprocess.run(["cp", "--sparse=always", str(image / manifest["artifacts"][
                    "disk"]["file"]), str(disk_file)], check=True)
        if disk and not direct and "firmware_vars" in manifest["qemu"]:
            # The firmware's variables are the board's NVRAM: each boot starts from the
            # firmware's defaults (the removable-media path needs no boot entry), or
            # from the persisted board's own.
            vars_file = (persist or Path(tmp)) / "vars.fd"
            if not vars_file.exists():
                shutil.copyfile(manifest["qemu"]["firmware_vars"], vars_file)
        if bundles:
            media = update_media(list(bundles), Path(tmp) / "media.img")
        cmd = command(image, manifest, run_s, report_s, accel, disk, mission, freeze_s,
                      direct, vars_file, disk_file, media, tuple(b.name for b in bundles))
        return _run(cmd, timeout_s, echo, cut_on)


REBOOT = "reboot: Restarting system"


def _run(cmd: list[str], timeout_s: float, echo: Callable[[str], None] | None,
         cut_on: tuple[str, float] | None = None) -> Boot:
    result = Boot(cmd)
    cut_at: float | None = None
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    assert proc.stdout is not None and proc.stdin is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    buf, asked = b"", 0.0
    try:
        while proc.poll() is None:
            now = time.monotonic() - t0
            if now > timeout_s and not asked:
                asked = now  # ask the guest to stop its agent and power off
                proc.stdin.write(b"\nsortie-poweroff\n")
                proc.stdin.flush()
            if asked and now > asked + 30:
                proc.kill()
                break
            if cut_at is not None and now >= cut_at:
                proc.kill()  # the power cut: no shutdown, no sync
                result.cut_at_s = now
                break
            for _ in sel.select(0.2):
                chunk = proc.stdout.read() or b""
                buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                result.console.append(line)
                result.times.append(time.monotonic() - t0)
                if cut_on is not None and cut_at is None and cut_on[0] in line:
                    cut_at = result.times[-1] + cut_on[1]
                if REBOOT in line:
                    result.rebooted = True
                # Under systemd the console adds "[time] python3[pid]: " in front.
                if (at := line.find(STATUS)) >= 0:
                    with contextlib.suppress(ValueError):  # a line cut short: skip it
                        result.statuses.append(json.loads(line[at + len(STATUS):]))
                    if result.first_status_s is None:
                        result.first_status_s = time.monotonic() - t0
                elif (at := line.find(STOPPED)) >= 0:
                    with contextlib.suppress(ValueError):
                        result.agent_rc = int(line[at + len(STOPPED):].split()[0])
                    result.clean = True
                if echo is not None:
                    echo(line)
    except KeyboardInterrupt:
        proc.stdin.write(b"\nsortie-poweroff\n")
        proc.stdin.flush()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    finally:
        result.qemu_rc = proc.wait()
        sel.close()
        for f in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):  # a dead QEMU: the flush may fail
                f.close()
    return result
