"""Last-known-good store: atomic, checksummed, falls back, never returns garbage."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from agent.engine.state import StateStore, StoredMission, decode, encode, write_atomic
from agent.status import Origin
from tests.helpers import mission, partition


def stored(gen: int) -> StoredMission:
    return StoredMission(mission(partition("a"), generation=gen), Origin("file"))


def test_roundtrip_and_root_only_permissions(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "state")
    s.save(stored(1))
    got = s.load()
    assert got is not None and got.mission.generation == 1 and got.origin.source == "file"
    assert stat.S_IMODE(os.stat(s.dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600


def test_second_save_keeps_the_previous_copy(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    s.save(stored(1))
    s.save(stored(2))
    prev = decode((tmp_path / "last-known-good.json.prev").read_bytes())
    assert prev["mission"]["generation"] == 1


@pytest.mark.parametrize("damage", [
    lambda b: b[: len(b) // 2],                                   # torn write
    lambda b: b.replace(b'"generation": 2', b'"generation": 9'),   # bit rot
    lambda b: b"\x00" * len(b),                                    # zeroed block
])
def test_corrupt_current_falls_back_to_previous(tmp_path: Path, damage, caplog) -> None:
    s = StateStore(tmp_path)
    s.save(stored(1))
    s.save(stored(2))
    s.path.write_bytes(damage(s.path.read_bytes()))
    got = s.load()
    assert got is not None and got.mission.generation == 1
    assert "corrupt" in caplog.text


def test_both_copies_corrupt_gives_nothing_not_garbage(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    s.save(stored(1))
    s.save(stored(2))
    for p in tmp_path.glob("last-known-good.json*"):
        p.write_bytes(b"{}")
    assert s.load() is None


def test_checksum_valid_but_schema_invalid_is_rejected(tmp_path: Path) -> None:
    s = StateStore(tmp_path)
    s.path.write_bytes(encode({"mission": {"name": "x"}, "origin": {}}))
    assert s.load() is None


def test_power_loss_before_rename_keeps_old_state(tmp_path: Path) -> None:
    """A crash after the temp file was written but before the rename: old state wins."""
    s = StateStore(tmp_path)
    s.save(stored(1))
    (tmp_path / ".last-known-good.json.tmp").write_bytes(b'{"half": ')
    got = s.load()
    assert got is not None and got.mission.generation == 1
    s.save(stored(3))  # and the next write is not disturbed by the leftover
    assert s.load().mission.generation == 3  # type: ignore[union-attr]


def test_unsupported_version_is_refused() -> None:
    doc = json.loads(encode({"mission": {}}))
    doc["version"] = 99
    with pytest.raises(ValueError, match="unsupported state version"):
        decode(json.dumps(doc).encode())


def test_write_atomic_replaces_whole(tmp_path: Path) -> None:
    p = tmp_path / "f"
    write_atomic(p, b"one")
    write_atomic(p, b"two")
    assert p.read_bytes() == b"two" and (tmp_path / "f.prev").read_bytes() == b"one"


def test_an_earlier_versions_origin_is_read_and_odd_fields_are_dropped(tmp_path: Path) -> None:
    """State files written before the typed Origin used camelCase Kubernetes keys; a
    state file is input: a wrong type or an unknown source must not stop the load."""
    s = StateStore(tmp_path / "state")
    s.dir.mkdir(mode=0o700)
    m = mission(partition("a"), generation=3)
    write_atomic(s.path, encode({"mission": m.model_dump(mode="json"), "origin": {
        "source": "kube", "object": "ns/m", "uid": "u1", "resourceVersion": "42",
        "objectGeneration": 7, "admitted_at": 1700000000, "kid": 5, "signed": "yes"}}))
    got = s.load()
    assert got is not None and got.mission == m
    assert got.origin == Origin("kube", object="ns/m", uid="u1", resource_version="42",
                                object_generation=7, admitted_at=1.7e9)
    assert Origin.from_dict({"source": "ftp", "generation": True}) == Origin("config")
    assert Origin.from_dict(["not", "a", "dict"]) == Origin("config")
