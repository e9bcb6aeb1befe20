"""Test images built now from Debian's busybox-static into an OCI layout (no registry)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ["sh", "sleep", "cat", "id", "echo", "true", "false", "ls", "yes"]


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    tar.addfile(info, io.BytesIO(data))


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def busybox_layout(layout: Path, arch: str = "amd64", name: str = "busybox",
                   extra: dict[str, bytes] | None = None) -> str:
    """Write an OCI layout with one busybox image (and ``extra`` executables, by path);
    returns the manifest digest."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "etc", "tmp", "proc", "dev", "sys"):
            info = tarfile.TarInfo(d)
            # runc keeps a tmpfs mount point's mode: /tmp must be 1777 in the image
            info.type, info.mtime = tarfile.DIRTYPE, 0
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        _add(tar, "bin/busybox", BUSYBOX.read_bytes(), 0o755)
        for a in APPLETS:
            info = tarfile.TarInfo(f"bin/{a}")
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "busybox", 0
            tar.addfile(info)
        _add(tar, "etc/passwd", b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n")
        _add(tar, "etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        for path, data in (extra or {}).items():
            _add(tar, path, data, 0o755)
    layer = buf.getvalue()
    layer_desc = {"mediaType": "application/vnd.oci.image.layer.v1.tar", **_blob(layout, layer)}
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers",
                                    "diff_ids": [layer_desc["digest"]]}}).encode()
    config_desc = {"mediaType": "application/vnd.oci.image.config.v1+json",
                   **_blob(layout, config)}
    manifest = json.dumps({"schemaVersion": 2,
                           "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": config_desc, "layers": [layer_desc]}).encode()
    mdesc = {"mediaType": "application/vnd.oci.image.manifest.v1+json", **_blob(layout, manifest),
             "annotations": {"org.opencontainers.image.ref.name": name}}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [mdesc]}))
    return str(mdesc["digest"])
