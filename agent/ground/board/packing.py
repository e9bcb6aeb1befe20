"""Artifacts from an assembled root filesystem: the kernel QEMU boots fastest, an
initramfs, a flashable raw disk image, and the manifest with every sha256."""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import shutil
import stat
import subprocess
import uuid
import zlib
from pathlib import Path
from typing import Any

from agent.errors import Violation
from agent.ground.board.fetching import run
from agent.ground.board.inputs import BoardError
from agent.ground.board.rootfs import EPOCH

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08\x00"
PARTITION_OFFSET = 1 << 20


def vmlinux_from_bzimage(data: bytes) -> bytes:
    """The uncompressed ELF kernel inside an x86 bzImage: QEMU boots it through PVH in
    about 2 s instead of 5 s (no in-guest decompression under TCG). Pure."""
    for magic, make in ((XZ_MAGIC, lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
                        (GZIP_MAGIC, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))):
        start = data.find(magic)
        while start >= 0:
            try:
                out = make().decompress(data[start:])
            except (lzma.LZMAError, zlib.error):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = data.find(magic, start + 1)
    raise BoardError([Violation("kernel", "no compressed ELF kernel found in the bzImage")])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_digest(root: Path) -> str:
    """One hash of the file tree's content: paths, types, modes, owners, sizes, bytes,
    link targets (not inode times). Equal trees give equal digests."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode):o}\0"
                     f"{st.st_uid}:{st.st_gid}\0".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(p).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(sha256(p).encode())
            h.update(b"\n")
    return h.hexdigest()


def initramfs(root: Path, out: Path) -> None:
    """newc cpio of the whole tree, sorted, inode numbers and times normalized, gzip -n:
    byte-for-byte the same for the same tree."""
    files = subprocess.run(["find", ".", "-mindepth", "1"], cwd=root, capture_output=True,
                           check=True).stdout.split(b"\n")
    listing = b"\n".join(sorted(f for f in files if f)) + b"\n"
    with out.open("wb") as sink:
        cpio = subprocess.Popen(["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
                                cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        gz = subprocess.Popen(["gzip", "-n", "-6"], stdin=cpio.stdout, stdout=sink)
        assert cpio.stdin is not None and cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write(listing)
        cpio.stdin.close()
        if cpio.wait() != 0 or gz.wait() != 0:
            raise BoardError([Violation("initramfs", "cpio | gzip failed")])


# GPT partition types (UAPI Discoverable Partitions Specification).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_TYPE = {"amd64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
             "arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE"}
DATA_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
ESP_MIB = 64
DATA_MIB = 512
DATA_DIRS = (("state", "040700"), ("state/keys", "040700"), ("log", "040755"),
             ("log/journal", "042755"))
"""The data partition's tree: directory -> mode (the journal's is setgid, as journald
makes it)."""


def _uuid(seed: str, what: str) -> str:
    return str(uuid.UUID(hashlib.sha256(f"{seed}/{what}".encode()).hexdigest()[:32]))


def slot_mib(root: Path) -> int:
    """Room for the tree in one root slot, with space for a larger update."""
    used = int(subprocess.run(["du", "-s", "--block-size=1M", str(root)], capture_output=True,
                              text=True, check=True).stdout.split()[0])
    return int(used * 1.3) + 128


def root_image(root: Path, out: Path, seed: str, label: str) -> Path:
    """The root file system of one slot as a file: ext4 made from the tree (mke2fs -d,
    no mount), sized for the slot. The disk's slot A and the update bundle carry it."""
    fs_uuid = _uuid(seed, "root-fs")
    out.unlink(missing_ok=True)
    run(["mkfs.ext4", "-F", "-q", "-L", label, "-U", fs_uuid, "-E",
         f"root_owner=0:0,hash_seed={fs_uuid}", "-d", str(root), str(out),
         f"{slot_mib(root)}M"], "mkfs.ext4 root", env={**os.environ,
                                                        "E2FSPROGS_FAKE_TIME": str(EPOCH)})
    return out


def disk_image(root_fs: Path, esp: Path, out: Path, arch: str, seed: str,
               data_label: str) -> dict[str, Any]:
    """A GPT disk a board boots by itself: the EFI system partition (``esp``, a FAT
    image), root slots A (``root_fs``) and B (empty: the first update writes it), and
    the data partition that both slots share (state, ledger). Made without a loop
    device or a mount (sfdisk, mke2fs); sparse, so unused space costs nothing on the
    build host or, with bmap, when flashing. Returns the layout (offsets in bytes)."""
    slot = root_fs.stat().st_size >> 20
    sizes = [("esp", ESP_MIB, ESP_TYPE), ("rootfs-a", slot, ROOT_TYPE[arch]),
             ("rootfs-b", slot, ROOT_TYPE[arch]), ("data", DATA_MIB, DATA_TYPE)]
    layout: dict[str, Any] = {}
    lines = [f"label: gpt\nlabel-id: {_uuid(seed, 'disk')}\n"]
    at = PARTITION_OFFSET
    for number, (name, mib, ptype) in enumerate(sizes, 1):
        lines.append(f"start={at // 512}, size={mib * 2048}, type={ptype}, "
                     f"uuid={_uuid(seed, name)}, name={name}\n")
        layout[name] = {"offset": at, "bytes": mib << 20, "number": number}
        at += mib << 20
    size = at + PARTITION_OFFSET  # room for the backup GPT at the end
    out.unlink(missing_ok=True)
    with out.open("wb") as f:
        f.truncate(size)
    res = subprocess.run(["sfdisk", "--quiet", str(out)], input="".join(lines), text=True,
                         capture_output=True, check=False)
    if res.returncode != 0:
        raise BoardError([Violation("disk image", f"sfdisk: {res.stderr.strip()}")])
    _place(esp, out, layout["esp"]["offset"])
    _place(root_fs, out, layout["rootfs-a"]["offset"])
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(EPOCH)}
    # The data partition (mounted at /data): state/ is /var/lib/sortie, root's alone
    # (0700; its keys/ holds this board's own secrets, put there when it is provisioned:
    # one image serves a fleet, updates keep them); log/ is /var/log (the journal,
    # workload logs). Both bound in by the slot's fstab. mke2fs cannot set modes inside;
    # debugfs can, on a file of its own.
    data, fs_uuid = out.with_name(out.name + ".data"), _uuid(seed, "data-fs")
    try:
        run(["mkfs.ext4", "-F", "-q", "-L", data_label, "-U", fs_uuid, "-E",
             f"root_owner=0:0,hash_seed={fs_uuid}", str(data), f"{DATA_MIB}M"],
            "mkfs.ext4 data", env=env)
        cmds = data.with_name(data.name + ".debugfs")
        cmds.write_text("".join(f"mkdir {d}\nset_inode_field {d} mode {mode}\n"
                                for d, mode in DATA_DIRS))
        try:
            run(["debugfs", "-w", "-f", str(cmds), str(data)], "debugfs data", env=env)
        finally:
            cmds.unlink()
        _place(data, out, layout["data"]["offset"])
    finally:
        data.unlink(missing_ok=True)
    layout["data"]["label"] = data_label
    layout["esp"]["label"] = "SORTIE-ESP"
    layout["bytes"] = size
    return layout


def _place(src: Path, disk: Path, offset: int) -> None:
    """Copy a partition's image into the disk at ``offset``, skipping zero blocks so the
    disk stays sparse."""
    with disk.open("r+b") as f, src.open("rb") as data:
        f.seek(offset)
        for chunk in iter(lambda: data.read(1 << 20), b""):
            if chunk.count(0) == len(chunk):
                f.seek(len(chunk), os.SEEK_CUR)
            else:
                f.write(chunk)


def bmap(disk: Path) -> Path:
    """``DISK.bmap`` beside the image: bmaptool writes only the mapped blocks."""
    out = disk.with_name(disk.name + ".bmap")
    if shutil.which("bmaptool") is None:
        raise BoardError([Violation("host", "bmaptool not found: apt-get install bmap-tools "
                                            "(or run .ci/setup)")])
    run(["bmaptool", "create", "-o", str(out), str(disk)], "bmaptool create")
    return out


def write_manifest(out: Path, artifacts: dict[str, Path], extra: dict[str, Any]) -> Path:
    doc = {"artifacts": {name: {"file": p.name, "sha256": sha256(p), "bytes": p.stat().st_size}
                         for name, p in sorted(artifacts.items())}, **extra}
    path = out / "manifest.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return path
