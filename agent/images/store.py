"""The image store: OCI image layouts imported with every digest verified, unpacked
once per image with umoci (a field-made unpacker), garbage-collected when unused.

Layout under the store root:
  layout/        an OCI image layout holding every imported manifest, tagged by digest
  rootfs/HEX/    the unpacked root filesystem of manifest sha256:HEX (read-only use)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
CHUNK = 1 << 20
MAX_IMPORT_BYTES = 2 << 30
"""An imported tar may unpack to this much at most (checked from its headers first)."""
_BLOB_NAME = re.compile(r"^blobs/sha256/[0-9a-f]{64}$")
_LAYOUT_FILES = {"oci-layout", "index.json"}
_LAYOUT_DIRS = {"blobs", "blobs/sha256"}


class ImageError(AgentError):
    """An image is refused or missing; the message says which blob and why."""


@dataclass(frozen=True)
class ImageInfo:
    digest: str
    """Manifest digest, ``sha256:HEX``: how profiles name the image."""
    name: str
    """``org.opencontainers.image.ref.name`` from the imported layout, if any."""
    architecture: str
    size: int
    unpacked: bool


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _hex(digest: str) -> str:
    algo, _, hexd = digest.partition(":")
    if algo != "sha256" or len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise ImageError(f"{digest!r} is not a sha256 digest")
    return hexd


def _read_json(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from the layout (an index, a manifest, a config), shape-checked."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise ImageError(f"{what}: cannot read {path.name}: {type(exc).__name__}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what} {path.name}: not a JSON object")
    return doc


def _descriptors(doc: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    """``doc[key]``: a list of OCI descriptors (digest, optional size, mediaType,
    annotations), each checked for type before anything trusts it."""
    items = doc.get(key, [])
    if not isinstance(items, list):
        raise ImageError(f"{what}: {key} is not a list")
    for i, d in enumerate(items):
        _descriptor(d, f"{what}: {key}[{i}]")
    return items


def _descriptor(d: Any, what: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ImageError(f"{what}: not a descriptor object")
    if not isinstance(d.get("digest"), str):
        raise ImageError(f"{what}: digest missing or not a string")
    if "size" in d and (not isinstance(d["size"], int) or isinstance(d["size"], bool)
                        or d["size"] < 0):
        raise ImageError(f"{what}: size is not a non-negative integer")
    if not isinstance(d.get("mediaType", ""), str):
        raise ImageError(f"{what}: mediaType is not a string")
    ann = d.get("annotations", {})
    if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
        raise ImageError(f"{what}: annotations is not a map of strings")
    return d


def _name(desc: dict[str, Any]) -> str:
    return str(desc.get("annotations", {}).get("org.opencontainers.image.ref.name", ""))


def safe_extract(path: Path, into: Path, max_bytes: int = MAX_IMPORT_BYTES) -> None:
    """Extract an OCI layout tar, refusing before anything is written what is not one:
    only ``oci-layout``, ``index.json`` and ``blobs/sha256/HEX`` regular files, at most
    ``max_bytes`` in all (from the headers; a compressed bomb stops at the first header
    past the limit)."""
    try:
        with tarfile.open(path) as tar:
            wanted, total = [], 0
            for m in tar:
                name = m.name.removeprefix("./").rstrip("/")
                if m.isdir() and name in ({"", "."} | _LAYOUT_DIRS):
                    continue
                if not m.isreg() or not (name in _LAYOUT_FILES or _BLOB_NAME.match(name)):
                    raise ImageError(f"{path}: {m.name!r} is not part of an OCI image "
                                     "layout (only oci-layout, index.json, blobs/sha256/*)")
                total += m.size
                if total > max_bytes:
                    raise ImageError(f"{path}: unpacks to more than {max_bytes} bytes")
                m.name = name
                wanted.append(m)
            if "oci-layout" not in {m.name for m in wanted}:
                raise ImageError(f"{path}: not an OCI image layout (no oci-layout file)")
            tar.extractall(into, members=wanted, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ImageError(f"{path}: not a readable tar: {exc}") from exc


def store_for(state_dir: Path) -> ImageStore:
    """The agent's image store for a config's ``state_dir``: ``sortie run``, ``check``,
    ``plan`` and ``image`` all build it here, so they all see the same images."""
    return ImageStore(state_dir / "images")


class ImageStore:
    def __init__(self, root: Path, max_import_bytes: int = MAX_IMPORT_BYTES) -> None:
        self.root = root
        self.max_import_bytes = max_import_bytes
        self.layout = root / "layout"
        self.rootfs_dir = root / "rootfs"

    # -- verifying a layout -------------------------------------------------------------
    def _blob(self, layout: Path, desc: dict[str, Any], what: str) -> Path:
        digest = str(desc.get("digest", ""))
        path = layout / "blobs" / "sha256" / _hex(digest)
        if not path.is_file():
            raise ImageError(f"{what} {digest}: blob missing")
        if "size" in desc and path.stat().st_size != desc["size"]:
            raise ImageError(f"{what} {digest}: size {path.stat().st_size}, descriptor "
                             f"says {desc['size']}")
        got = file_digest(path)
        if got != digest:
            raise ImageError(f"{what} {digest}: content hashes to {got} (tampered?)")
        return path

    def _manifests(self, layout: Path) -> list[tuple[dict[str, Any], str]]:
        index = _read_json(layout / "index.json", "layout")
        out: list[tuple[dict[str, Any], str]] = []
        for desc in _descriptors(index, "manifests", "index.json"):
            if desc.get("mediaType") == INDEX:
                nested = _read_json(self._blob(layout, desc, "index"), "index")
                out += [(d, _name(desc)) for d in _descriptors(nested, "manifests",
                                                                  f"index {desc['digest']}")]
            else:
                out.append((desc, _name(desc)))
        return out

    def verify(self, layout: Path) -> list[tuple[str, str, list[Path]]]:
        """(manifest digest, name, blob paths) for every image of this architecture.

        Every blob's digest and size is checked; an image for another architecture is an
        error unless the layout also holds one for this board."""
        if not (layout / "oci-layout").is_file():
            raise ImageError(f"{layout}: not an OCI image layout (no oci-layout file)")
        found, other = [], []
        for desc, name in self._manifests(layout):
            if desc.get("mediaType", MANIFEST) != MANIFEST:
                continue
            mpath = self._blob(layout, desc, "manifest")
            manifest = _read_json(mpath, "manifest")
            what = f"manifest {desc['digest']}"
            cpath = self._blob(layout, _descriptor(manifest.get("config"), f"{what}: config"),
                               "config")
            config = _read_json(cpath, "config")
            arch, os_ = config.get("architecture"), config.get("os")
            if (arch, os_) != (ARCH, "linux"):
                other.append(f"{desc['digest']} is {os_!s}/{arch!s}"[:200])
                continue
            layers = [self._blob(layout, ld, "layer")
                      for ld in _descriptors(manifest, "layers", what)]
            found.append((str(desc["digest"]), name, [mpath, cpath, *layers]))
        if not found:
            why = "; ".join(other) or "no image manifests"
            raise ImageError(f"{layout}: no image for linux/{ARCH} ({why})")
        return found

    # -- import / unpack / gc -----------------------------------------------------------
    def _init_layout(self) -> None:
        (self.layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (self.layout / "oci-layout").exists():
            (self.layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        if not (self.layout / "index.json").exists():
            self._write_index({"schemaVersion": 2, "manifests": []})

    def _index(self) -> dict[str, Any]:
        self._init_layout()
        idx: dict[str, Any] = _read_json(self.layout / "index.json", "store")
        return idx

    def _write_index(self, index: dict[str, Any]) -> None:
        from agent.engine.state import write_atomic
        write_atomic(self.layout / "index.json", json.dumps(index, indent=1).encode())

    def import_path(self, path: Path) -> list[str]:
        """Verify and import an OCI layout (directory or tar); returns manifest digests."""
        if path.is_file():
            # Unpacked beside the store (its disk, not a RAM-backed TMPDIR), checked first.
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            with tempfile.TemporaryDirectory(prefix=".import-", dir=self.root) as tmp:
                safe_extract(path, Path(tmp), self.max_import_bytes)
                return self._import_dir(Path(tmp))
        if not path.is_dir():
            raise ImageError(f"{path}: no such directory or tar file")
        return self._import_dir(path)

    def _import_dir(self, layout: Path) -> list[str]:
        images = self.verify(layout)
        index = self._index()
        known = {m["digest"] for m in index["manifests"]}
        for digest, name, blobs in images:
            for blob in blobs:
                dest = self.layout / "blobs" / "sha256" / blob.name
                if not dest.exists():
                    tmp = dest.with_suffix(".part")
                    shutil.copyfile(blob, tmp)
                    tmp.rename(dest)
            if digest not in known:
                size = (self.layout / "blobs" / "sha256" / _hex(digest)).stat().st_size
                index["manifests"].append({
                    "mediaType": MANIFEST, "digest": digest, "size": size,
                    "annotations": {"org.opencontainers.image.ref.name": _hex(digest),
                                    "dev.sortie.name": name}})
                known.add(digest)
        self._write_index(index)
        return [d for d, _, _ in images]

    def has(self, digest: str) -> bool:
        return any(m["digest"] == digest for m in self._index()["manifests"])

    def rootfs(self, digest: str) -> Path:
        """The unpacked root filesystem (unpacked now if needed, with umoci)."""
        hexd = _hex(digest)
        target = self.rootfs_dir / hexd
        if (target / ".sortie-complete").exists():
            return target / "rootfs"
        if not self.has(digest):
            raise ImageError(f"image {digest} is not in the store (sortie image import)")
        # Re-verify before use: a blob changed on disk since import must not run.
        self.verify_stored(digest)
        self.rootfs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix=f".{hexd[:12]}-", dir=self.rootfs_dir))
        try:
            res = subprocess.run(["umoci", "raw", "unpack", "--image",
                                  f"{self.layout}:{hexd}", str(tmp / "rootfs")],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise ImageError(f"umoci could not unpack {digest}: {res.stderr.strip()}")
            (tmp / ".sortie-complete").touch()
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(target)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target / "rootfs"

    def verify_stored(self, digest: str) -> None:
        entry = next(m for m in self._index()["manifests"] if m["digest"] == digest)
        mpath = self._blob(self.layout, entry, "manifest")
        manifest = _read_json(mpath, "manifest")
        self._blob(self.layout, _descriptor(manifest.get("config"), f"{digest}: config"),
                   "config")
        for ld in _descriptors(manifest, "layers", digest):
            self._blob(self.layout, ld, "layer")

    def images(self) -> list[ImageInfo]:
        out = []
        for m in self._index()["manifests"]:
            manifest = _read_json(self.layout / "blobs" / "sha256" / _hex(m["digest"]),
                                  "manifest")
            config = _read_json(self.layout / "blobs" / "sha256"
                                / _hex(manifest["config"]["digest"]), "config")
            size = sum(int(x.get("size", 0)) for x in manifest.get("layers", []))
            out.append(ImageInfo(m["digest"], m.get("annotations", {}).get(
                "dev.sortie.name", ""), str(config.get("architecture")), size,
                (self.rootfs_dir / _hex(m["digest"]) / ".sortie-complete").exists()))
        return out

    def gc(self, keep: set[str]) -> list[str]:
        """Forget images not in ``keep``; remove their rootfs and unreferenced blobs."""
        index = self._index()
        gone = [m["digest"] for m in index["manifests"] if m["digest"] not in keep]
        index["manifests"] = [m for m in index["manifests"] if m["digest"] in keep]
        self._write_index(index)
        for d in gone:
            shutil.rmtree(self.rootfs_dir / _hex(d), ignore_errors=True)
        live: set[str] = set()
        for m in index["manifests"]:
            manifest = _read_json(self.layout / "blobs" / "sha256" / _hex(m["digest"]),
                                  "manifest")
            live |= {_hex(m["digest"]), _hex(manifest["config"]["digest"])}
            live |= {_hex(ld["digest"]) for ld in manifest.get("layers", [])}
        for blob in (self.layout / "blobs" / "sha256").iterdir():
            if blob.name not in live:
                blob.unlink()
        return gone
