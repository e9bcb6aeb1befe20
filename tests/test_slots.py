"""The board's root slots as GRUB keeps them: its environment block read and rewritten
in place, checked against GRUB's own grub-editenv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import slots
from agent.slots import SlotError

needs_editenv = pytest.mark.skipif(shutil.which("grub-editenv") is None,
                                   reason="grub-common (.ci/setup) has grub-editenv")


def env_file(tmp_path: Path, env: dict[str, str]) -> Path:
    p = tmp_path / "grubenv"
    p.write_bytes(slots.render(env))
    return p


def test_the_block_round_trips_and_garbage_is_refused() -> None:
    env = {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}
    block = slots.render(env)
    assert len(block) == 1024 and slots.parse(block) == env
    for bad in (b"", b"x" * 1024, block[:1000]):
        with pytest.raises(SlotError, match="not a GRUB environment block"):
            slots.parse(bad)
    with pytest.raises(SlotError, match="1024"):
        slots.render({"X": "y" * 1100})


def test_the_booted_slot_is_marked_good_in_place(tmp_path: Path) -> None:
    p = env_file(tmp_path, {"ORDER": "B A", "A_OK": "1", "A_TRY": "0", "B_OK": "1",
                            "B_TRY": "1"})
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=LABEL=sortie-b rw sortie.slot=B quiet\n")
    inode = p.stat().st_ino
    st = slots.mark_good(p, cmdline)
    assert st.booted == "B" and st.good == {"A": True, "B": True}
    assert st.tried == {"A": False, "B": False} and st.order == ("B", "A")
    assert p.stat().st_ino == inode and p.stat().st_size == 1024  # rewritten in place
    assert slots.read(p)["B_TRY"] == "0"
    cmdline.write_text("root=/dev/vda1 rw\n")
    with pytest.raises(SlotError, match="not booted from a root slot"):
        slots.mark_good(p, cmdline)
    with pytest.raises(SlotError, match="EFI system partition mounted"):
        slots.read(tmp_path / "missing")


@needs_editenv
def test_grub_editenv_and_the_board_read_each_other(tmp_path: Path) -> None:
    p = tmp_path / "grubenv"
    subprocess.run(["grub-editenv", str(p), "create"], check=True)
    subprocess.run(["grub-editenv", str(p), "set", "ORDER=A B", "A_OK=1", "A_TRY=1"],
                   check=True)
    assert slots.read(p) == {"ORDER": "A B", "A_OK": "1", "A_TRY": "1"}
    slots.write(slots.marked_good(slots.read(p), "A"), p)
    listed = subprocess.run(["grub-editenv", str(p), "list"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == ["ORDER=A", "B", "A_OK=1", "A_TRY=0"]
