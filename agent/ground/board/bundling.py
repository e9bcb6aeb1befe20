"""Signed update bundles (RAUC): the root slot's file system, signed by the build host's
update key, verified by the board against the keyring baked into its running slot.

Why RAUC and X.509 rather than the planners' Ed25519 keys: RAUC (Debian's 1.8) already
does what an A/B update needs and is hard to get right (the signature checked before
the bundle is mounted, dm-verity over every block read while writing, the target slot
marked bad before the first byte, the compatible string, its slot status); it verifies
CMS signatures against an X.509 keyring. And an update key is a different role from a
mission planner's: a planner may change what flies, never the operating system. So a
separate CA: ``ca.key.pem`` (keep it offline) signs ``signing.cert.pem`` (EKU
codeSigning), whose key signs bundles; the board trusts ``ca.cert.pem``.
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import Violation
from agent.ground.board.fetching import run
from agent.ground.board.inputs import BoardError

FORMAT = "verity"
"""RAUC's bundle format: the signature covers the manifest with the dm-verity root
hash, and the kernel checks every block the install reads."""
SQUASHFS = "-comp zstd -Xcompression-level 3"
"""The bundle's compression: zstd 3 packs a 1 GiB x86_64 slot to the size gzip does
(190 vs 189 MiB) in 1.4 s instead of 75 s; the board's kernel reads it
(CONFIG_SQUASHFS_ZSTD)."""
VALID_DAYS = 3650
"""Boards may fly with a wrong clock (no RTC, no network): RAUC checks validity
against the board's time, so certificates span years."""
DEFAULT_KEYS = Path(os.environ.get("XDG_CONFIG_HOME", str(Path.home() / ".config"))) \
    / "sortie" / "update-keys"


@dataclass(frozen=True)
class UpdateKeys:
    dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.cert.pem"

    @property
    def cert(self) -> Path:
        return self.dir / "signing.cert.pem"

    @property
    def key(self) -> Path:
        return self.dir / "signing.key.pem"

    def keyring(self) -> bytes:
        return self.ca_cert.read_bytes()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sortie"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def generate(directory: Path, name: str = "Sortie update") -> UpdateKeys:
    """A new update CA and signing certificate (ECDSA P-256) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    keys = UpdateKeys(directory)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    until = now + datetime.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name(f"{name} CA"))
          .issuer_name(_name(f"{name} CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(f"{name} signing"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                         False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _private(directory / "ca.key.pem", _pem_key(ca_key))
    _private(keys.key, _pem_key(key))
    keys.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    keys.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return keys


def load_or_create(directory: Path) -> tuple[UpdateKeys, bool]:
    """The update keys in ``directory``; a new set when it has none (True)."""
    keys = UpdateKeys(directory)
    present = [p.exists() for p in (keys.ca_cert, keys.cert, keys.key)]
    if all(present):
        return keys, False
    if any(present):
        raise BoardError([Violation("--update-keys", f"{directory}: has only some of "
                                    "ca.cert.pem, signing.cert.pem, signing.key.pem")])
    return generate(directory), True


def _rauc() -> str:
    for tool, pkg in (("rauc", "rauc"), ("mksquashfs", "squashfs-tools")):
        if shutil.which(tool) is None:
            raise BoardError([Violation("host", f"{tool} not found: apt-get install {pkg} "
                                                "(or run .ci/setup)")])
    return "rauc"


def _host_conf(directory: Path, keyring: Path) -> Path:
    """A system.conf for the build host's rauc: the board's keyring rules (purpose
    codesign), so the host refuses what the board would refuse."""
    conf = directory / "host-system.conf"
    conf.write_text(f"[system]\ncompatible=sortie-build-host\nbootloader=noop\n\n"
                    f"[keyring]\npath={keyring.resolve()}\n{KEYRING_RULES}")
    return conf


KEYRING_RULES = "check-purpose=codesign\n"
"""The board's [keyring] rules besides the path (signer EKU codeSigning)."""


def bundle(image: Path, compatible: str, version: str, keys: UpdateKeys, out: Path) -> Path:
    """``out``: a RAUC bundle writing ``image`` (an ext4 root file system) into the
    other root slot of boards whose system.conf says ``compatible``."""
    staging = out.with_name(out.name + ".d")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    out.unlink(missing_ok=True)
    try:
        try:
            os.link(image, staging / "rootfs.ext4")
        except OSError:
            subprocess.run(["cp", "--sparse=always", str(image),
                            str(staging / "rootfs.ext4")], check=True)
        (staging / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible}\nversion={version}\n\n"
            f"[bundle]\nformat={FORMAT}\n\n[image.rootfs]\nfilename=rootfs.ext4\n")
        with tempfile.TemporaryDirectory(prefix="sortie-rauc-") as tmp:
            run([_rauc(), f"--conf={_host_conf(Path(tmp), keys.ca_cert)}", "bundle",
                 f"--mksquashfs-args={SQUASHFS}", f"--cert={keys.cert}",
                 f"--key={keys.key}", f"--keyring={keys.ca_cert}", str(staging), str(out)],
                "rauc bundle")
    finally:
        shutil.rmtree(staging)
    return out


def verify(path: Path, keyring: Path) -> str:
    """``rauc info`` against ``keyring``: the bundle's compatible string when its
    signature holds; BoardError naming RAUC's reason otherwise."""
    with tempfile.TemporaryDirectory(prefix="sortie-rauc-") as tmp:
        res = subprocess.run([_rauc(), f"--conf={_host_conf(Path(tmp), keyring)}", "info",
                              f"--keyring={keyring}", "--output-format=shell", str(path)],
                             capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BoardError([Violation(str(path), (res.stderr or res.stdout).strip()[-400:])])
    for line in res.stdout.splitlines():
        if line.startswith("RAUC_MF_COMPATIBLE="):
            return line.split("=", 1)[1].strip("'")
    raise BoardError([Violation(str(path), "rauc info: no compatible string")])
