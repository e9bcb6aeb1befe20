"""The board's root slots as GRUB keeps them: its environment block read and rewritten
in place, checked against GRUB's own grub-editenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
    slots.write(slots.with_state(slots.read(p), "A", True), p)
    listed = subprocess.run(["grub-editenv", str(p), "list"], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == ["ORDER=A", "B", "A_OK=1", "A_TRY=0"]


# -- RAUC's contract (its GRUB backend's answers, rauc 1.8 src/bootchooser.c) -----------
FRESH = {"ORDER": "A B", "A_OK": "1", "A_TRY": "0", "B_OK": "0", "B_TRY": "0"}


def test_the_backend_answers_as_raucs_grub_backend(tmp_path: Path) -> None:
    p = env_file(tmp_path, FRESH)
    assert slots.backend(["get-primary"], p) == "A"
    assert [slots.backend(["get-state", s], p) for s in "AB"] == ["good", "bad"]
    # An install into B: RAUC marks it bad before the first byte, then primary.
    slots.backend(["set-state", "B", "bad"], p)
    assert slots.read(p)["B_OK"] == "0" and slots.backend(["get-primary"], p) == "A"
    slots.backend(["set-primary", "B"], p)
    assert slots.read(p) == {**FRESH, "ORDER": "B A", "B_OK": "1", "B_TRY": "0"}
    assert slots.backend(["get-primary"], p) == "B"
    # GRUB boots B once (TRY=1): not good, not primary, until marked good.
    slots.write({**slots.read(p), "B_TRY": "1"}, p)
    assert slots.backend(["get-state", "B"], p) == "bad"
    assert slots.backend(["get-primary"], p) == "A"  # what the next boot would take
    slots.backend(["set-state", "B", "good"], p)
    assert slots.read(p)["B_TRY"] == "0" and slots.backend(["get-primary"], p) == "B"
    # A slot not in ORDER is bad whatever its flags (RAUC: "not found" -> bad).
    slots.write({**slots.read(p), "ORDER": "B"}, p)
    assert slots.backend(["get-state", "A"], p) == "bad"


def test_backend_calls_it_does_not_know_are_refused_and_write_nothing(tmp_path: Path) -> None:
    p = env_file(tmp_path, FRESH)
    before = p.read_bytes()
    for call in (["set-state", "C", "good"], ["set-state", "A", "maybe"], ["get-state"],
                 ["frobnicate"], ["set-primary", "A", "B"], []):
        with pytest.raises(SlotError):
            slots.backend(call, p)
    assert p.read_bytes() == before
    with pytest.raises(SlotError, match="no bootable slot"):
        slots.primary({"ORDER": "A B", "A_OK": "0", "A_TRY": "0", "B_OK": "1", "B_TRY": "1"})


def test_rauc_reads_the_backend_from_stdout(tmp_path: Path) -> None:
    """RAUC runs the handler and reads one word from stdout: the CLI prints only that."""
    p = env_file(tmp_path, {**FRESH, "ORDER": "B A", "B_OK": "1"})
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for call, want in ((["get-primary"], "B\n"), (["get-state", "A"], "good\n"),
                       (["set-state", "A", "bad"], ""), (["get-state", "A"], "bad\n")):
        r = subprocess.run([sys.executable, "-m", "agent.cli", "slot", "backend", *call,
                            "--grubenv", str(p)], capture_output=True, text=True, env=env,
                           check=False)
        assert (r.returncode, r.stdout) == (0, want), r.stderr
    r = subprocess.run([sys.executable, "-m", "agent.cli", "slot", "backend", "set-state",
                        "C", "good", "--grubenv", str(p)], capture_output=True, text=True,
                       env=env, check=False)
    assert r.returncode != 0 and "unknown slot 'C'" in r.stderr


# -- the boot check's policy ---------------------------------------------------------------
def trial(booted: str, other_good: bool = True) -> slots.SlotState:
    other = "B" if booted == "A" else "A"
    return slots.SlotState(booted, (booted, other), {booted: True, other: other_good},
                           {booted: True, other: False})


@pytest.mark.parametrize(("st", "agent", "elapsed", "action"), [
    (trial("B"), "active", 3, "good"),
    (trial("B"), "activating", 3, "wait"),
    (trial("B"), "activating", 121, "bad"),      # never became ready
    (trial("B"), "failed", 10, "bad"),           # restart limit hit
    (trial("B", other_good=False), "failed", 10, "keep"),  # nowhere to fall back to
    (trial("B", other_good=False), "activating", 500, "keep"),
    (slots.SlotState("A", ("A", "B"), {"A": True, "B": False}, {"A": False, "B": False}),
     "failed", 10, "keep"),                      # not on trial: not the check's to judge
    (slots.SlotState(None, (), {"A": True, "B": False}, {"A": False, "B": False}),
     "active", 0, "keep"),
])
def test_the_boot_check_confirms_waits_or_falls_back(st: slots.SlotState, agent: str,
                                                     elapsed: float, action: str) -> None:
    v = slots.verdict(st, agent, elapsed, 120)
    assert v.action == action, v.reason
    assert v.reason
