"""Flashing a built disk image: bmaptool (only the mapped blocks, checked against the
bmap's sha256) against dd of the whole image (the peer), into a file standing in for the
board's storage, both synced, in the same run; the targets are compared with the image.
Run:  .venv/bin/python -m bench.flash OUT_DIR [OUT_DIR ...]   (built with sortie board build)
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def sha256(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = size
        while left > 0:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def flash(image: Path) -> None:
    disk = image / "disk.img"
    manifest = json.loads((image / "manifest.json").read_text())
    size = disk.stat().st_size
    mapped = disk.stat().st_blocks * 512
    with tempfile.TemporaryDirectory(prefix="sortie-flash-", dir="/var/tmp") as tmp:
        times = {}
        for name, cmd in (
                ("bmaptool copy", ["bmaptool", "-q", "copy", str(disk), f"{tmp}/bmap.img"]),
                ("dd (peer)", ["dd", f"if={disk}", f"of={tmp}/dd.img", "bs=4M",
                               "conv=fsync", "status=none"])):
            subprocess.run(["sync"], check=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            subprocess.run(["sync"], check=True)
            times[name] = time.perf_counter() - t0
        want = sha256(disk, size)
        same = {n: sha256(Path(tmp) / f, size) == want for n, f in (("bmaptool copy", "bmap.img"),
                                                                    ("dd (peer)", "dd.img"))}
    print(f"{manifest['board']}: disk {size / 2**20:.0f} MiB, mapped {mapped / 2**20:.0f} MiB "
          f"({mapped / size * 100:.0f} %), bmap {(image / 'disk.img.bmap').stat().st_size} B")
    for name, t in times.items():
        print(f"  {name:14s} {t:6.2f} s  target equals the image: {same[name]}")
    print(f"  ratio bmaptool/dd {times['bmaptool copy'] / times['dd (peer)']:.2f}")


if __name__ == "__main__":
    for d in sys.argv[1:] or ["out"]:
        flash(Path(d))
