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

    @property
    def last(self) -> dict[str, Any] | None:
        return self.statuses[-1] if self.statuses else None


FW_CFG = "opt/sortie.dev/options"
"""Where QEMU hands the guest its test options (``sortie.run_s=...``) when nothing can be
appended to a kernel command line: the bootloader on the disk writes that one."""


def command(image: Path, manifest: dict[str, Any], run_s: float, report_s: float,
            accel: str, disk: bool = False, mission: str | None = None,
            freeze_s: float = 0, direct: bool = False, vars_file: Path | None = None
            ) -> list[str]:
    """QEMU for the initramfs path (rdinit=/init, no systemd); with ``disk`` the raw
    disk image as a virtio disk (a snapshot: the image is not written) booted as a board
    boots it: UEFI firmware (``vars_file``: a writable copy of its variable store), GRUB
    from the EFI system partition, the kernel and initrd from the chosen root slot,
    systemd, sortie.service. ``direct``: the same disk with the kernel handed over by
    QEMU (``-kernel``), the path the UEFI boot is measured against."""
    q, art = manifest["qemu"], manifest["artifacts"]
    sortie = f"sortie.run_s={run_s:g} sortie.report_s={report_s:g}" + (
        f" sortie.mission={mission}" if mission else "") + (
        f" sortie.freeze_s={freeze_s:g}" if freeze_s else "")
    base = [q["binary"], "-M", q["machine"], "-cpu", q["cpu"], "-smp", str(q["smp"]),
            "-m", str(q["memory_mib"]), "-accel", accel, "-nographic", "-no-reboot",
            "-net", "none"]
    if not disk:
        return [*base, "-kernel", str(image / art["kernel"]["file"]), "-initrd",
                str(image / art["initramfs"]["file"]), "-append",
                f"console={q['console']} rdinit=/init panic=-1 quiet loglevel=3 {sortie}"]
    drive = ["-drive", f"file={image / art['disk']['file']},format=raw,if=virtio,snapshot=on",
             "-fw_cfg", f"name={FW_CFG},string={sortie}"]
    if direct:
        slot = manifest.get("bootloader", {}).get("slots", {}).get("A", "sortie-a")
        return [*base, "-kernel", str(image / art["kernel"]["file"]), "-initrd",
                str(image / art["disk_initrd"]["file"]), *drive, "-append",
                f"console={q['console']} root=LABEL={slot} rw panic=-1 quiet loglevel=3 "
                f"{sortie}"]
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


def boot(image: Path, run_s: float = 0, timeout_s: float = 600, report_s: float = 5,
         accel: str = "tcg", echo: Callable[[str], None] | None = None,
         disk: bool = False, mission: str | None = None, freeze_s: float = 0,
         direct: bool = False) -> Boot:
    """``mission``: fly that baked mission instead of the configured one (initramfs
    path only: a flashed board flies what its config says)."""
    if mission and disk:
        raise BoardError([Violation("--mission", "only for the initramfs boot; a disk "
                                                 "boot flies what the baked config says")])
    manifest = load_manifest(image, disk)
    with tempfile.TemporaryDirectory(prefix="sortie-boot-") as tmp:
        vars_file = None
        if disk and not direct and "firmware_vars" in manifest["qemu"]:
            # The firmware's variables are the board's NVRAM: each boot starts from the
            # firmware's defaults (the removable-media path needs no boot entry).
            vars_file = Path(tmp) / "vars.fd"
            shutil.copyfile(manifest["qemu"]["firmware_vars"], vars_file)
        cmd = command(image, manifest, run_s, report_s, accel, disk, mission, freeze_s,
                      direct, vars_file)
        return _run(cmd, timeout_s, echo)


def _run(cmd: list[str], timeout_s: float, echo: Callable[[str], None] | None) -> Boot:
    result = Boot(cmd)
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
            for _ in sel.select(0.2):
                chunk = proc.stdout.read() or b""
                buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                result.console.append(line)
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
