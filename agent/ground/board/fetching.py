"""Kernels and foreign-architecture code, fetched without changing the host: a private
apt state per architecture under the cache (no ``dpkg --add-architecture``), pip wheels
downloaded for the target platform, and a binfmt registration for qemu-user that lasts
only as long as the foreign root filesystem is being built."""

from __future__ import annotations

import contextlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from agent.errors import Violation
from agent.ground.board.inputs import BoardError, Inputs, host_arch

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


def run(cmd: list[str], what: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, check=False)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-8:]
        raise BoardError([Violation(what, f"`{' '.join(cmd[:3])} ...` failed "
                                          f"({res.returncode}): " + " | ".join(tail))])
    return res.stdout


class PrivateApt:
    """apt-get with its own state, cache and sources for one architecture."""

    def __init__(self, root: Path, inputs: Inputs) -> None:
        self.root, self.arch = root, inputs.arch
        for d in ("state/lists/partial", "cache/archives/partial", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        self.sources = root / "etc" / "sources.list"
        self.sources.write_text(
            # non-free-firmware: the Raspberry Pi's boot firmware (raspi-firmware).
            f"deb [arch={self.arch} signed-by={KEYRING}] {inputs.mirror} {inputs.suite} "
            "main non-free-firmware\n"
            f"deb [arch={self.arch} signed-by={KEYRING}] {inputs.security} "
            f"{inputs.suite}-security main\n")

    def _opts(self) -> list[str]:
        r = self.root
        return ["-o", f"APT::Architecture={self.arch}", "-o",
                f"APT::Architectures={self.arch}", "-o", f"Dir::State={r}/state",
                "-o", "Dir::State::status=/dev/null", "-o", f"Dir::Cache={r}/cache",
                "-o", f"Dir::Etc::sourcelist={self.sources}",
                "-o", "Dir::Etc::sourceparts=/nonexistent", "-o", "Debug::NoLocking=1",
                "-qq"]

    def update(self) -> None:
        run(["apt-get", *self._opts(), "update"], "apt update (private state)")

    def depends(self, package: str) -> list[str]:
        out = run(["apt-cache", *self._opts(), "depends", package], f"apt-cache {package}")
        return re.findall(r"Depends: (\S+)", out)

    def version(self, package: str) -> str:
        out = run(["apt-cache", *self._opts(), "show", "--no-all-versions", package],
                  f"apt-cache show {package}")
        m = re.search(r"^Version: (\S+)", out, re.M)
        return m.group(1) if m else "unknown"

    def download(self, package: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        before = set(into.glob("*.deb"))
        run(["apt-get", *self._opts(), "download", package], f"apt download {package}",
            cwd=into)
        new = sorted(set(into.glob("*.deb")) - before) or sorted(into.glob(f"{package}_*.deb"))
        if not new:
            raise BoardError([Violation("kernel", f"apt downloaded no {package}")])
        return new[-1]


def kernel_package(apt: PrivateApt) -> str:
    """``linux-image-ARCH`` is a meta package: the real one is what it depends on."""
    meta = f"linux-image-{apt.arch}"
    real = [d for d in apt.depends(meta) if d.startswith("linux-image-")]
    if not real:
        raise BoardError([Violation("kernel", f"{meta}: no kernel package found for "
                                              f"{apt.arch} in the mirror")])
    return real[0]


def extract_deb(deb: Path, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(into)], f"dpkg-deb -x {deb.name}")


@contextlib.contextmanager
def foreign_exec(arch: str) -> Iterator[None]:
    """Let the host run ``arch`` binaries (a foreign chroot) for the duration: mount
    binfmt_misc if needed, register qemu-user's handler, and undo both afterwards."""
    if arch == host_arch():
        yield
        return
    qemu = {"arm64": "aarch64", "amd64": "x86_64"}[arch]
    base = Path("/proc/sys/fs/binfmt_misc")
    mounted = False
    if not (base / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(base)], "binfmt_misc mount")
        mounted = True
    entry = base / f"qemu-{qemu}"
    registered = False
    if not entry.exists():
        conf = Path(f"/usr/lib/binfmt.d/qemu-{qemu}.conf")
        if not conf.exists():
            raise BoardError([Violation("host", f"{conf} missing: apt-get install "
                                                "qemu-user-static")])
        line = next(x for x in conf.read_text().splitlines() if x.startswith(":"))
        with open(base / "register", "w") as f:
            f.write(line)
        registered = True
    try:
        yield
    finally:
        if registered and entry.exists():
            with open(entry, "w") as f:
                f.write("-1")
        if mounted:
            subprocess.run(["umount", str(base)], check=False, capture_output=True)
