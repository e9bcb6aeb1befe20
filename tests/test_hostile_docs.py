"""Hostile documents: nesting, aliases, huge numbers, odd files. Each gets a refusal with a
path and a reason, never an exception of another kind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.errors import ProfileError
from agent.models import MissionProfile, load_file, load_text
from agent.sources.files import scan
from tests.test_models import GOOD


def refusal(text: str | bytes) -> list[str]:
    with pytest.raises(ProfileError) as exc:
        load_text(MissionProfile, text, "t.yaml")
    return [str(v) for v in exc.value.violations]


def test_deep_nesting_is_refused_with_a_reason() -> None:
    for text in ("[" * 3000, "{a: " * 3000, '{"a":' * 100_000):
        (reason,) = refusal(text)
        assert "nested" in reason


def test_alias_bombs_are_refused() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    (reason,) = refusal(bomb)
    assert "alias" in reason


def test_ordinary_aliases_still_load() -> None:
    # yaml.safe_dump writes aliases for shared objects: such documents must keep loading.
    text = GOOD.replace("budget: {quota_us: 2000, period_us: 10000}",
                        "budget: &b {quota_us: 2000, period_us: 10000}") + """
  - name: q
    criticality: B
    budget: *b
    memory_mib: 16
    workloads: [{name: w, command: [/bin/true]}]
"""
    m = load_text(MissionProfile, text, "t.yaml")
    assert m.partitions[1].budget == m.partitions[0].budget


def test_a_huge_integer_is_refused() -> None:
    text = GOOD.replace("generation: 1", "generation: " + "1" * 5000)
    (reason,) = refusal(text)
    assert reason.startswith("line 3") and "digits" in reason


def test_unknown_keys_that_are_not_field_names_are_not_echoed(tmp_path: Path) -> None:
    secret = "root:$y$j9T$Zq0secretsalt$hash:19000:0:99999:7:::"
    reasons = refusal(GOOD + f"{secret}: 1\n")
    assert reasons and not any("secretsalt" in r for r in reasons)


def test_a_symlink_out_of_the_profile_dir_is_refused_without_reading_it(
        tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$y$j9T$secretsalt:19000:0:99999:7:::\n")
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "m.yaml").symlink_to(secret)
    s = scan([d], None)
    assert s.chosen is None
    text = "\n".join(str(e) for e in s.errors)
    assert "symlink" in text and "secretsalt" not in text


def test_a_symlink_inside_the_profile_dir_is_followed(tmp_path: Path) -> None:
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "m-v1.yml.orig").write_text(GOOD)
    (d / "current.yaml").symlink_to("m-v1.yml.orig")
    s = scan([d], None)
    assert s.chosen is not None and s.chosen.mission.name == "m", s.errors


def test_a_fifo_does_not_hang_the_scan(tmp_path: Path) -> None:
    d = tmp_path / "profiles"
    d.mkdir()
    os.mkfifo(d / "m.yaml")
    (d / "ok.yaml").write_text(GOOD)
    s = scan([d], None)
    assert s.chosen is not None
    assert any("not a regular file" in str(e) for e in s.errors)
    with pytest.raises(ProfileError, match="not a regular file"):
        load_file(MissionProfile, d / "m.yaml")


def test_a_file_that_breaks_the_parser_in_any_way_is_only_an_error(tmp_path: Path) -> None:
    d = tmp_path / "profiles"
    d.mkdir()
    (d / "a.yaml").write_text("[" * 3000)
    (d / "b.yaml").write_bytes(b"\xff\xfe\x00garbage")
    (d / "c.yaml").write_text(GOOD)
    s = scan([d], None)
    assert s.chosen is not None and len(s.errors) == 2


# -- the local API ---------------------------------------------------------------------------
async def test_the_local_api_answers_hostile_requests_and_keeps_serving(
        tmp_path: Path) -> None:
    import asyncio
    import json

    from agent.api.server import serve

    async def boom(_: dict) -> dict:
        raise KeyError("a bug")

    async def ok(_: dict) -> dict:
        return {"fine": True}

    path = tmp_path / "run" / "sortie.sock"
    task = asyncio.create_task(serve(path, {"boom": boom, "ok": ok}))
    try:
        for _ in range(100):
            if path.exists():
                break
            await asyncio.sleep(0.01)

        async def ask(data: bytes) -> dict:
            reader, writer = await asyncio.open_unix_connection(str(path))
            writer.write(data)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            await writer.wait_closed()
            return json.loads(line)

        deep = await ask(b'{"op":' + b"[" * 100_000 + b"\n")
        assert deep["ok"] is False and "nested too deeply" in deep["error"]
        bug = await ask(b'{"op": "boom"}\n')
        assert bug == {"ok": False, "error": "internal error (KeyError, logged)"}
        assert (await ask(b'{"op": "ok"}\n')) == {"ok": True, "fine": True}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
