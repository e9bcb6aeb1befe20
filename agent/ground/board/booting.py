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


def command(image: Path, manifest: dict[str, Any], run_s: float, report_s: float,
            accel: str, disk: bool = False, mission: str | None = None,
            freeze_s: float = 0) -> list[str]:
    """QEMU for the initramfs path (rdinit=/init, no systemd), or with ``disk`` the raw
    disk image as a virtio disk booted through systemd (a snapshot: the image is not
    written)."""
    q, art = manifest["qemu"], manifest["artifacts"]
    sortie = f"sortie.run_s={run_s:g} sortie.report_s={report_s:g}" + (
        f" sortie.mission={mission}" if mission else "") + (
        f" sortie.freeze_s={freeze_s:g}" if freeze_s else "")
    if disk:
        boot = ["-initrd", str(image / art["disk_initrd"]["file"]), "-drive",
                f"file={image / art['disk']['file']},format=raw,if=virtio,snapshot=on"]
        append = f"console={q['console']} root=/dev/vda1 rw panic=-1 quiet loglevel=3 {sortie}"
    else:
        boot = ["-initrd", str(image / art["initramfs"]["file"])]
        append = f"console={q['console']} rdinit=/init panic=-1 quiet loglevel=3 {sortie}"
    return [q["binary"], "-M", q["machine"], "-cpu", q["cpu"], "-smp", str(q["smp"]),
            "-m", str(q["memory_mib"]), "-accel", accel, "-nographic", "-no-reboot",
            "-net", "none", "-kernel", str(image / art["kernel"]["file"]), *boot,
            "-append", append]


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
    if shutil.which(doc["qemu"]["binary"]) is None:
        raise BoardError([Violation("host", f"{doc['qemu']['binary']} not found: apt-get "
                                            "install qemu-system-x86 qemu-system-arm")])
    return doc


def boot(image: Path, run_s: float = 0, timeout_s: float = 600, report_s: float = 5,
         accel: str = "tcg", echo: Callable[[str], None] | None = None,
         disk: bool = False, mission: str | None = None, freeze_s: float = 0) -> Boot:
    """``mission``: fly that baked mission instead of the configured one (initramfs
    path only: a flashed board flies what its config says)."""
    if mission and disk:
        raise BoardError([Violation("--mission", "only for the initramfs boot; a disk "
                                                 "boot flies what the baked config says")])
    manifest = load_manifest(image, disk)
    cmd = command(image, manifest, run_s, report_s, accel, disk, mission, freeze_s)
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
