"""The board's root filesystem: a cached Debian base (mmdebstrap, minbase), then the
agent, its Python dependencies for the board's architecture, the baked config, hardware
profile, missions and keys, the systemd unit (real boards) and the init QEMU boots."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

import agent
from agent.ground.board.fetching import foreign_exec, run
from agent.ground.board.inputs import Inputs
from agent.ground.board.progress import Progress
from agent.slots import PARTITIONS as SLOT_PARTITIONS

EPOCH = 1767225600  # 2026-01-01: every file's mtime in the image (reproducible content)
EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*",
            "/usr/share/locale/*", "/usr/share/lintian/*")
PLATFORMS = {"amd64": ["manylinux_2_36_x86_64", "manylinux_2_28_x86_64",
                       "manylinux_2_17_x86_64", "manylinux2014_x86_64", "linux_x86_64"],
             "arm64": ["manylinux_2_36_aarch64", "manylinux_2_28_aarch64",
                       "manylinux_2_17_aarch64", "manylinux2014_aarch64", "linux_aarch64"]}
"""Wheel tags bookworm's glibc 2.36 runs; Python 3.11 is bookworm's python3."""
LIB = "opt/sortie/lib"
BOARD_PYTHON = (3, 11)
"""bookworm's python3: the bytecode in the image is for it."""

UNIT = """[Unit]
Description=Sortie mission agent
After=local-fs.target network-online.target
Wants=network-online.target
# The state directory is the data partition (nofail in fstab): wait for it, without
# refusing to fly when it is missing (the agent keeps its state on the slot then).
Wants=var-lib-sortie.mount
After=var-lib-sortie.mount
# "Started sortie.service" (READY=1: the mission flies) reaches the serial console before
# the login prompt takes it over; a start that hangs delays the prompt by
# TimeoutStartSec at most (systemd.special(7): getty-pre.target).
Before=getty-pre.target
Wants=getty-pre.target

[Service]
# READY=1 after the first reconcile, STATUS= with the flying mission, WATCHDOG=1 from the
# agent's event loop every WatchdogSec/2 while it is healthy (agent/systemd.py).
Type=notify
NotifyAccess=main
WatchdogSec=10
TimeoutStartSec=120
ExecStart=/usr/local/bin/sortie run --config /etc/sortie/agent.yaml
Restart=always
RestartSec=1
# The agent's workloads live in its own cgroups, not the service's: restarting or
# upgrading the agent (a watchdog restart too) must not stop the mission (it adopts the
# running workloads).
KillMode=process
TimeoutStopSec=20

[Install]
WantedBy=multi-user.target
"""

REPORT_UNIT = f"""[Unit]
Description=Sortie status on the console for a QEMU host (options through fw_cfg)
# Only under QEMU: the host hands its options (sortie.report_s, run_s) through fw_cfg,
# since the disk's own bootloader writes the kernel command line.
ConditionVirtualization=qemu
After=sortie.service

[Service]
Environment=PYTHONPATH=/{LIB}
ExecStart=/usr/bin/python3 -m agent.guest --systemd
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

BOOT_CHECK_UNIT = """[Unit]
Description=Confirm the booted root slot once the mission flies, or fall back
# After sortie.service's start job: READY=1 (the mission flies) or a failed start. The
# check then waits for "active" (mark the slot good) or "failed" / 120 s (mark it bad and
# reboot: GRUB boots the other slot). Wants, not Requires: a failed agent must not stop
# the check that rolls back from it.
Wants=sortie.service
After=sortie.service
RequiresMountsFor=/boot/efi /var/lib/sortie
ConditionKernelCommandLine=sortie.slot

[Service]
Type=oneshot
ExecStart=/usr/local/bin/sortie slot check --timeout 120
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
"""

RAUC_BACKEND = """#!/bin/sh
# RAUC's custom bootloader backend: the slots' one writer (agent/slots.py).
exec /usr/local/bin/sortie slot backend "$@"
"""


def rauc_system_conf(compatible: str) -> str:
    """RAUC on the board: two ext4 root slots (the GPT partitions by name), slot choice
    through GRUB's environment (our custom backend), only verity bundles, signatures
    chained to the baked keyring with the codeSigning purpose, its status on the data
    partition (the slots stay read-only)."""
    slots = "".join(f"""
[slot.rootfs.{i}]
device=/dev/disk/by-partlabel/{name}
type=ext4
bootname={slot}
""" for i, (slot, (name, _)) in enumerate(SLOT_PARTITIONS.items()))
    return f"""[system]
compatible={compatible}
bootloader=custom
bundle-formats=verity
data-directory=/var/lib/sortie/rauc

[keyring]
path=/etc/rauc/keyring.pem
check-purpose=codesign

[handlers]
bootloader-custom-backend=/usr/local/lib/sortie/rauc-backend
{slots}"""


LAUNCHER = f"""#!/bin/sh
PYTHONPATH=/{LIB} exec /usr/bin/python3 -m agent.cli "$@"
"""

INIT = f"""#!/bin/sh
# QEMU's path to the agent (rdinit=/init): the same root filesystem as the disk image,
# without systemd. Real boards boot systemd, which starts sortie.service.
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname -F /etc/hostname 2>/dev/null
PYTHONPATH=/{LIB} exec /usr/bin/python3 -m agent.guest
"""


def base_key(inputs: Inputs) -> str:
    h = hashlib.sha256("|".join([inputs.arch, inputs.suite, inputs.mirror, inputs.security,
                                 ",".join(inputs.packages), ",".join(EXCLUDES)]).encode())
    return h.hexdigest()[:16]


def base_tarball(inputs: Inputs, cache: Path, say: Progress) -> Path:
    """Debian minbase + packages for the board's architecture, cached by its inputs."""
    tar = cache / f"rootfs-{inputs.arch}-{base_key(inputs)}.tar"
    if tar.exists():
        say(f"root filesystem base: cached ({tar.name})")
        return tar
    say(f"root filesystem base: mmdebstrap {inputs.suite} {inputs.arch} "
        f"(+{', '.join(inputs.packages)}); about 30 s for amd64, 2-3 min for arm64 "
        "(maintainer scripts under qemu-user)")
    tmp = tar.with_name(tar.stem + ".partial.tar")  # mmdebstrap picks the format by suffix
    cmd = ["mmdebstrap", "--mode=root", "--variant=minbase", f"--architectures={inputs.arch}",
           f"--include={','.join(inputs.packages)}", "--skip=check/qemu",
           *[f"--dpkgopt=path-exclude={e}" for e in EXCLUDES],
           "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
           inputs.suite, str(tmp), f"deb {inputs.mirror} {inputs.suite} main",
           f"deb {inputs.security} {inputs.suite}-security main"]
    with foreign_exec(inputs.arch):
        run(cmd, "mmdebstrap", env={**os.environ, "SOURCE_DATE_EPOCH": str(EPOCH)})
    tmp.rename(tar)
    return tar


def requirements() -> list[str]:
    """The agent's own runtime dependencies (no extras), from its installed metadata."""
    reqs = metadata.requires("sortie") or []
    return sorted(r.split(";")[0].strip() for r in reqs if "extra ==" not in r)


def _pip_platform(arch: str) -> list[str]:
    out = ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
           "--abi", "cp311", "--abi", "abi3", "--abi", "none"]
    for p in PLATFORMS[arch]:
        out += ["--platform", p]
    return out


def wheelhouse(inputs: Inputs, cache: Path, say: Progress) -> Path:
    reqs = requirements()
    key = hashlib.sha256(("|".join(reqs) + inputs.arch).encode()).hexdigest()[:16]
    wh = cache / f"wheels-{inputs.arch}-{key}"
    if (wh / ".complete").exists():
        say(f"python dependencies: cached ({len(list(wh.glob('*.whl')))} wheels)")
        return wh
    say(f"python dependencies: pip download for {inputs.arch}: {', '.join(reqs)}")
    wh.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "-d", str(wh),
         *_pip_platform(inputs.arch), *reqs], "pip download")
    (wh / ".complete").write_text("\n".join(reqs))
    return wh


GROUND_SIDE = "ground"
"""``agent/ground``: the planner's and the build host's code, never on a board."""


def copy_agent(dest: Path) -> None:
    """The agent's package as a board runs it: without its ground-side package."""
    src = Path(agent.__file__).parent
    junk = shutil.ignore_patterns("__pycache__", "*.pyc")

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = set(junk(directory, names))
        return skip | {GROUND_SIDE} if Path(directory) == src else skip
    shutil.copytree(src, dest / "agent", ignore=ignore)


def _write(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(mode)


def assemble(inputs: Inputs, base: Path, wheels: Path, root: Path, say: Progress) -> None:
    """Unpack the base and add everything Sortie brings; fast (seconds)."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    say("assembling: base + agent + dependencies + baked config and missions")
    run(["tar", "-xf", str(base), "-C", str(root), "--numeric-owner"], "tar -x rootfs")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links",
         str(wheels), "--target", str(root / LIB), "--no-compile", *_pip_platform(inputs.arch),
         *requirements()], "pip install --target")
    copy_agent(root / LIB)
    for junk in (root / LIB).glob("*.dist-info/RECORD"):
        junk.unlink()  # lists absolute build paths; not needed to run
    if sys.version_info[:2] == BOARD_PYTHON:
        # The slot is read-only: bytecode the board cannot write must be in the image,
        # or every boot compiles the agent again. checked-hash: valid whatever the
        # files' times, the same bytes for the same sources.
        run([sys.executable, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode",
             "checked-hash", "-d", f"/{LIB}", str(root / LIB)], "compileall")
    else:
        say(f"bytecode: not compiled (the host's Python is not the board's "
            f"{BOARD_PYTHON[0]}.{BOARD_PYTHON[1]}); the board compiles at every start")
    etc = root / "etc" / "sortie"
    _write(etc / "agent.yaml", yaml.safe_dump(inputs.config, sort_keys=True))
    _write(etc / "hardware.yaml", inputs.board_path.read_bytes())
    (etc / "profiles").mkdir(parents=True, exist_ok=True)
    for name, data in inputs.profiles.items():
        _write(etc / "profiles" / name, data)
    for kid, pub in inputs.keys.items():
        _write(etc / "keys" / f"{kid}.pub", pub + "\n")
    etc.chmod(0o700)  # config and keys: root only
    _write(root / "usr/local/bin/sortie", LAUNCHER, 0o755)
    _write(root / "etc/systemd/system/sortie.service", UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    _write(root / "etc/systemd/system/sortie-report.service", REPORT_UNIT)
    _write(root / "etc/systemd/system/sortie-boot-check.service", BOOT_CHECK_UNIT)
    for unit in ("sortie.service", "sortie-report.service", "sortie-boot-check.service"):
        link = wants / unit
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{unit}")
    # The board's hardware watchdog, petted by systemd: a hang anywhere (before the boot
    # check can judge a slot on trial, too) resets the board, and GRUB skips the slot
    # left on trial. Boards without one: systemd says so and goes on.
    _write(root / "etc/systemd/system.conf.d/sortie-watchdog.conf",
           "[Manager]\nRuntimeWatchdogSec=30s\nRebootWatchdogSec=2min\n")
    # A headless board has no seats or user sessions: logind (brought by D-Bus for
    # RAUC) has nothing to manage, and on the read-only root it fails to start.
    logind = root / "etc/systemd/system/systemd-logind.service"
    logind.unlink(missing_ok=True)
    logind.symlink_to("/dev/null")
    _write(root / "init", INIT, 0o755)
    _write(root / "usr/local/sbin/sortie-init", INIT, 0o755)
    _write(root / "etc/hostname", str(inputs.config.get("node_name", inputs.board.name)) + "\n")
    # Updates: RAUC, its config and keyring (in the slot: an update may rotate it), the
    # backend that makes agent/slots.py the slots' one writer.
    _write(root / "etc/rauc/system.conf", rauc_system_conf(f"sortie-{inputs.board.name}"))
    _write(root / "etc/rauc/keyring.pem", inputs.update_keyring)
    _write(root / "usr/local/lib/sortie/rauc-backend", RAUC_BACKEND, 0o755)
    # The root is the slot the bootloader chose (root=PARTLABEL=rootfs-a|b), mounted
    # read-only: a slot's bytes are what was built or installed, nothing else writes
    # them. What must be written lives elsewhere: the data partition (/data) is both
    # slots' /var/lib/sortie (state, ledger, images, RAUC's status, the board's keys)
    # and /var/log, /tmp and /var/tmp are memory, the ESP holds the boot choice.
    _write(root / "etc/fstab", "LABEL=sortie-data /data ext4 "
           "defaults,noatime,nofail,x-systemd.device-timeout=10s 0 2\n"
           "/data/state /var/lib/sortie none bind,nofail,"
           "x-systemd.requires-mounts-for=/data 0 0\n"
           # Logs (the journal, workload logs) outlive reboots and updates.
           "/data/log /var/log none bind,nofail,x-systemd.requires-mounts-for=/data 0 0\n"
           "LABEL=SORTIE-ESP /boot/efi vfat "
           "umask=0077,noatime,nofail,x-systemd.device-timeout=10s 0 2\n"
           "tmpfs /tmp tmpfs mode=1777,nosuid,nodev,size=25% 0 0\n"
           "tmpfs /var/tmp tmpfs mode=1777,nosuid,nodev,size=10% 0 0\n")
    (root / "boot/efi").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "var/lib/sortie").mkdir(parents=True, exist_ok=True)
    (root / "var/lib/sortie").chmod(0o700)
    normalize(root)


def normalize(root: Path, shallow: bool = False) -> None:
    """Same mtime everywhere, so the same inputs give the same tree and archive."""
    subprocess.run(["find", str(root), "-maxdepth", "0" if shallow else "1000000", "-exec",
                    "touch", "-h", "-d", f"@{EPOCH}", "{}", "+"], check=True)
