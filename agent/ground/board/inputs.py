"""What a board image is built from, checked before any long step starts.

Every problem is collected and reported at once with the field or path it concerns:
an unknown board, an architecture without a kernel package, a profile that does not
fit the board (with admission's reasons), missing keys, a config that does not
validate, missing tools, too little disk space.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.errors import AgentError, ProfileError, Violation
from agent.models import AgentConfig, HardwareProfile, MissionProfile, load_file, load_text
from agent.models.loading import validate
from agent.policy.admission import admit

DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
"""Board architecture -> Debian architecture (and its ``linux-image-ARCH`` package)."""
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
# udev: /dev/disk/by-label (the slots, the ESP and the data partition are mounted by
# label) and module autoloading; minbase leaves it out (only recommended by systemd).
PACKAGES = ("python3", "systemd-sysv", "udev", "ca-certificates", "kmod", "rauc",
            "rauc-service")
"""Debian packages in the root filesystem (minbase + these): python3 for the agent,
systemd to start it on real boards, CA certificates for mqtts/https links, RAUC for
signed A/B updates of the root slots (it brings D-Bus)."""
NEED_FREE_MIB = 2048
"""Free space the cache and the output need for one build (rootfs, packing, image)."""
TOOLS = {"mmdebstrap": "mmdebstrap", "apt-get": "apt", "dpkg-deb": "dpkg",
         "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs", "sfdisk": "fdisk", "cpio": "cpio",
         "depmod": "kmod", "grub-mkimage": "grub-common", "mkfs.vfat": "dosfstools",
         "mcopy": "mtools", "bmaptool": "bmap-tools"}
FOREIGN_TOOLS = {"qemu-aarch64-static": "qemu-user-static",
                 "qemu-x86_64-static": "qemu-user-static"}


class BoardError(AgentError):
    """A board image cannot be built (or booted); carries every reason."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__("cannot build the board image:\n"
                         + "\n".join(f"  - {v}" for v in violations))


@dataclass(frozen=True)
class Inputs:
    board: HardwareProfile
    board_path: Path
    arch: str
    """Debian architecture: amd64 or arm64."""
    profiles: dict[str, bytes]
    """Baked mission profiles: file name -> exact bytes."""
    keys: dict[str, str]
    """Trusted planner keys: key id -> base64 Ed25519 public key."""
    config: dict[str, Any]
    """The agent config baked into the image (validated)."""
    mirror: str = MIRROR
    security: str = SECURITY
    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES
    extra: dict[str, str] = field(default_factory=dict)
    update_keyring: bytes = b""
    """The CA certificate(s) update bundles must chain to (PEM), baked into the slot."""

    def digest(self) -> str:
        """One hash of everything that goes into the image (besides the agent's code)."""
        h = hashlib.sha256()
        for part in (self.board.model_dump_json(), self.arch, self.mirror, self.security,
                     self.suite, ",".join(self.packages), yaml.safe_dump(self.config),
                     yaml.safe_dump(self.keys)):
            h.update(part.encode() + b"\0")
        for name, data in sorted(self.profiles.items()):
            h.update(name.encode() + b"\0" + data + b"\0")
        h.update(self.update_keyring)
        return h.hexdigest()


def host_arch() -> str:
    import platform
    return DEBIAN_ARCH.get(platform.machine(), platform.machine())


def _profiles(directory: Path | None, board: HardwareProfile,
              found: list[Violation]) -> dict[str, bytes]:
    if directory is None:
        return {}
    if not directory.is_dir():
        found.append(Violation("--profiles", f"{directory}: not a directory"))
        return {}
    out: dict[str, bytes] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix not in (".yaml", ".yml", ".json"):
            continue
        data = path.read_bytes()
        try:
            mission = load_text(MissionProfile, data, path.name)
        except ProfileError as exc:
            found += [Violation(f"{path.name}: {v.path}" if v.path else path.name, v.reason)
                      for v in exc.violations]
            continue
        found += [Violation(f"{path.name}: {v.path}", f"does not fit {board.name}: {v.reason}")
                  for v in admit(mission, board)]
        out[path.name] = data
    if not out and not any(v.path.startswith("--profiles") for v in found):
        found.append(Violation("--profiles", f"{directory}: no mission profile (*.yaml)"))
    return out


def _keys(directory: Path | None, found: list[Violation]) -> dict[str, str]:
    if directory is None:
        return {}
    if not directory.is_dir():
        found.append(Violation("--keys", f"{directory}: not a directory"))
        return {}
    keys = {p.stem: p.read_text().strip() for p in sorted(directory.glob("*.pub"))}
    if not keys:
        found.append(Violation("--keys", f"{directory}: no planner public key (*.pub, "
                                         "from `sortie keygen`)"))
    return keys


def _config(path: Path | None, board: HardwareProfile, keys: dict[str, str],
            found: list[Violation]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            found.append(Violation("--config", f"{path}: {exc}"))
            return {}
        doc = loaded if isinstance(loaded, dict) else {}
    # Fixed by the image layout: where the image puts things.
    doc = {**doc, "hardware_profile": "/etc/sortie/hardware.yaml",
           "profile_dirs": ["/etc/sortie/profiles"]}
    doc.setdefault("node_name", board.name)
    if keys:
        if "mqtt" not in doc:
            found.append(Violation("--keys", "planner keys need an mqtt section in --config "
                                             "(the link they sign pushes for)"))
        else:
            doc["mqtt"] = {**doc["mqtt"], "trusted_keys": {**doc["mqtt"].get(
                "trusted_keys", {}), **keys}}
    mqtt = doc.get("mqtt")
    if isinstance(mqtt, dict) and not mqtt.get("trusted_keys") \
            and not mqtt.get("insecure_lab_mode"):
        found.append(Violation("--keys", "the config has an mqtt section but no trusted "
                                         "planner key: pass --keys DIR"))
    try:
        validate(AgentConfig, doc, "--config")
    except ProfileError as exc:
        found += [Violation(f"--config: {v.path}", v.reason) for v in exc.violations]
    return doc


def _tools(arch: str, found: list[Violation]) -> None:
    if os.geteuid() != 0:
        found.append(Violation("host", "building an image needs root (mmdebstrap in root "
                                       "mode, chroot, binfmt registration for foreign "
                                       "architectures)"))
    need = dict(TOOLS)
    if arch != host_arch():
        tool = "qemu-aarch64-static" if arch == "arm64" else "qemu-x86_64-static"
        need[tool] = FOREIGN_TOOLS[tool]
    missing = sorted({pkg for tool, pkg in need.items() if shutil.which(tool) is None})
    if missing:
        found.append(Violation("host", f"missing tools; install: apt-get install "
                                       f"{' '.join(missing)} (.ci/setup does)"))


def _space(paths: list[Path], found: list[Violation]) -> None:
    for p in paths:
        probe = p
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free // 2**20
        if free < NEED_FREE_MIB:
            found.append(Violation(str(p), f"{free} MiB free, a build needs "
                                           f"{NEED_FREE_MIB} MiB"))


def check(hw: Path, profiles: Path | None, keys: Path | None, config: Path | None,
          cache: Path, out: Path) -> Inputs:
    """Everything a build needs, or BoardError with every reason."""
    found: list[Violation] = []
    if not hw.is_file():
        raise BoardError([Violation("--hw", f"{hw}: no such board profile (boards are in "
                                            "hwprofiles/)")])
    try:
        board = load_file(HardwareProfile, hw)
    except ProfileError as exc:
        raise BoardError([Violation(f"--hw {hw.name}: {v.path}", v.reason)
                          for v in exc.violations]) from exc
    arch = DEBIAN_ARCH.get(board.arch)
    if arch is None:  # the model allows only known ones today; a new one needs a kernel
        raise BoardError([Violation("--hw arch", f"{board.arch}: no Debian kernel package "
                                                 "(linux-image-*) for this architecture")])
    baked = _profiles(profiles, board, found)
    planner_keys = _keys(keys, found)
    doc = _config(config, board, planner_keys, found)
    _tools(arch, found)
    _space([cache, out], found)
    if found:
        raise BoardError(found)
    return Inputs(board, hw, arch, baked, planner_keys, doc)
