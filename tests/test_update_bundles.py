"""Signed update bundles on the build host: keys, RAUC bundles, and what the board's
keyring accepts (the real rauc verifies them, with the board's rules)."""

from __future__ import annotations

import configparser
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.ground.board import bundling, rootfs
from agent.ground.board.inputs import BoardError

needs_rauc = pytest.mark.skipif(shutil.which("rauc") is None or shutil.which("mksquashfs")
                                is None, reason="rauc and squashfs-tools (.ci/setup)")


def ext4(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True, exist_ok=True)
    (tree / "etc" / "release").write_bytes(os.urandom(1 << 20))  # not all zeros
    img = tmp_path / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-F", "-q", "-d", str(tree), str(img), "8M"], check=True)
    return img


def test_update_keys_are_made_once_private_and_a_partial_set_is_refused(
        tmp_path: Path) -> None:
    keys, created = bundling.load_or_create(tmp_path / "k")
    assert created and keys.keyring().startswith(b"-----BEGIN CERTIFICATE-----")
    for secret in (keys.key, tmp_path / "k" / "ca.key.pem"):
        assert secret.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o700
    again, created = bundling.load_or_create(tmp_path / "k")
    assert not created and again.keyring() == keys.keyring()
    keys.cert.unlink()
    with pytest.raises(BoardError, match="only some of"):
        bundling.load_or_create(tmp_path / "k")


@needs_rauc
def test_a_bundle_verifies_against_its_keyring_and_nothing_else(tmp_path: Path) -> None:
    keys, _ = bundling.load_or_create(tmp_path / "keys")
    other, _ = bundling.load_or_create(tmp_path / "other")
    b = bundling.bundle(ext4(tmp_path), "sortie-test-board", "1.0+x", keys,
                        tmp_path / "update.raucb")
    assert bundling.verify(b, keys.ca_cert) == "sortie-test-board"
    with pytest.raises(BoardError, match="unable to get local issuer certificate"):
        bundling.verify(b, other.ca_cert)  # signed by another CA
    # The signature (CMS, at the end of the bundle) altered: refused.
    data = bytearray(b.read_bytes())
    data[-300] ^= 0x01
    bad = tmp_path / "tampered.raucb"
    bad.write_bytes(data)
    with pytest.raises(BoardError, match="signature verification failed"):
        bundling.verify(bad, keys.ca_cert)
    # A signer certificate without the codeSigning purpose: the board's rules refuse it,
    # and so does the host (it verifies with the same rules before it writes the bundle).
    keys.cert.write_bytes(keys.ca_cert.read_bytes())
    shutil.copyfile(tmp_path / "keys" / "ca.key.pem", keys.key)
    with pytest.raises(BoardError, match="rauc bundle"):
        bundling.bundle(ext4(tmp_path), "sortie-test-board", "1", keys, tmp_path / "x.raucb")
    assert not (tmp_path / "x.raucb").exists()


def test_the_boards_rauc_config_names_both_slots_and_the_keyring_rules() -> None:
    conf = configparser.ConfigParser()
    conf.read_string(rootfs.rauc_system_conf("sortie-qemu-x86_64"))
    assert conf["system"]["compatible"] == "sortie-qemu-x86_64"
    assert conf["system"]["bootloader"] == "custom"
    assert conf["system"]["bundle-formats"] == "verity"
    assert conf["system"]["data-directory"].startswith("/var/lib/sortie/")  # data partition
    assert conf["keyring"]["check-purpose"] == "codesign"
    assert bundling.KEYRING_RULES.strip() == "check-purpose=codesign"  # host checks alike
    slots = {conf[s]["bootname"]: conf[s]["device"] for s in conf.sections()
             if s.startswith("slot.rootfs.")}
    assert slots == {"A": "/dev/disk/by-partlabel/rootfs-a",
                     "B": "/dev/disk/by-partlabel/rootfs-b"}
    assert conf["handlers"]["bootloader-custom-backend"] == "/usr/local/lib/sortie/rauc-backend"
    assert "sortie slot backend" in rootfs.RAUC_BACKEND


@needs_rauc
def test_the_board_reads_the_signed_image_digests_from_rauc_info(tmp_path: Path) -> None:
    """What ``sortie slot install`` checks every image against before writing."""
    from agent import updating
    from agent.slots import SlotError
    keys, _ = bundling.load_or_create(tmp_path / "keys")
    img = ext4(tmp_path)
    b = bundling.bundle(img, "sortie-test-board", "1", keys, tmp_path / "u.raucb")
    conf = bundling._host_conf(tmp_path, keys.ca_cert)
    out = subprocess.run(["rauc", f"--conf={conf}", "info", "--output-format=shell", str(b)],
                         capture_output=True, text=True, check=True).stdout
    info = updating.parse_info(out)
    assert info["RAUC_MF_COMPATIBLE"] == "sortie-test-board"
    digest = hashlib.sha256(img.read_bytes()).hexdigest()
    assert updating.images(info) == [("rootfs.ext4", digest, img.stat().st_size)]
    with pytest.raises(SlotError, match="does not list its images"):
        updating.images({"RAUC_MF_IMAGES": "1"})
