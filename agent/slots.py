"""The board's root slots, as the bootloader sees them: GRUB's environment block on the
EFI system partition (RAUC's variables ORDER, A_OK, A_TRY, B_OK, B_TRY) and the slot
the kernel was booted from (``sortie.slot=`` on its command line).

GRUB marks the slot it boots as tried. RAUC installs updates and drives the slots
through its custom bootloader backend, which is this module (``sortie slot backend``):
the same answers as RAUC's own GRUB backend (``get-primary``, ``set-primary``,
``get-state``, ``set-state``), written by one writer. ``sortie-boot-check.service`` marks a
slot on trial good once ``sortie.service`` is ready (the mission flies), or bad and
reboots when the agent never gets there: the board falls back to the other slot.
The environment block is rewritten in place, same 1024 bytes (GRUB writes it the same
way, never allocating), then synced: no new FAT clusters, no rename to lose power in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from agent.errors import AgentError

GRUBENV = Path("/boot/efi/EFI/sortie/grubenv")
SIZE = 1024
HEADER = "# GRUB Environment Block\n"
SLOTS = ("A", "B")
PARTITIONS = {"A": ("rootfs-a", 2), "B": ("rootfs-b", 3)}
"""Slot -> (GPT partition name, partition number). A slot is a partition, whatever file
system an update wrote into it: GRUB counts partitions on the ESP's disk, the initrd
finds PARTLABEL, RAUC writes /dev/disk/by-partlabel/rootfs-X."""


class SlotError(AgentError):
    """The slot state cannot be read or written."""


def parse(block: bytes) -> dict[str, str]:
    """GRUB's environment block: ``name=value`` lines after the header, '#' padding."""
    if len(block) != SIZE or not block.startswith(HEADER.encode()):
        raise SlotError(f"not a GRUB environment block ({len(block)} bytes)")
    out = {}
    for line in block[len(HEADER):].decode("utf-8", "replace").split("\n"):
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def render(env: dict[str, str]) -> bytes:
    body = HEADER + "".join(f"{k}={v}\n" for k, v in env.items())
    if len(body) > SIZE:
        raise SlotError("GRUB environment block: more than 1024 bytes")
    return (body + "#" * (SIZE - len(body))).encode()


@dataclass(frozen=True)
class SlotState:
    booted: str | None
    """The slot this system runs from (None: not booted through the slots)."""
    order: tuple[str, ...]
    good: dict[str, bool]
    tried: dict[str, bool]


def state(env: dict[str, str], cmdline: str) -> SlotState:
    booted = next((a.split("=", 1)[1] for a in cmdline.split()
                   if a.startswith("sortie.slot=")), None)
    return SlotState(booted if booted in SLOTS else None,
                     tuple(s for s in env.get("ORDER", "").split() if s in SLOTS),
                     {s: env.get(f"{s}_OK") == "1" for s in SLOTS},
                     {s: env.get(f"{s}_TRY") == "1" for s in SLOTS})


# -- RAUC's bootloader contract, as its GRUB backend implements it (rauc 1.8,
# src/bootchooser.c): mirrored so that the slots behave the same under either backend.
def primary(env: dict[str, str]) -> str:
    """The slot the next boot takes: the first in ORDER that is OK and not tried."""
    for slot in env.get("ORDER", "").split():
        if slot in SLOTS and env.get(f"{slot}_OK") == "1" and env.get(f"{slot}_TRY") == "0":
            return slot
    raise SlotError(f"no bootable slot in ORDER {env.get('ORDER', '')!r}")


def good(env: dict[str, str], slot: str) -> bool:
    """RAUC's "good": in ORDER, OK and not on trial."""
    _known(slot)
    return (slot in env.get("ORDER", "").split() and env.get(f"{slot}_OK") == "1"
            and env.get(f"{slot}_TRY") == "0")


def with_state(env: dict[str, str], slot: str, is_good: bool) -> dict[str, str]:
    """``set-state``: good is OK=1, bad is OK=0 (GRUB skips it); both end the trial."""
    _known(slot)
    return {**env, f"{slot}_OK": "1" if is_good else "0", f"{slot}_TRY": "0"}


def with_primary(env: dict[str, str], slot: str) -> dict[str, str]:
    """``set-primary``: ``slot`` first in ORDER, bootable, not tried (one try follows)."""
    _known(slot)
    rest = [s for s in env.get("ORDER", " ".join(SLOTS)).split() if s in SLOTS and s != slot]
    rest += [s for s in SLOTS if s != slot and s not in rest]
    return {**env, "ORDER": " ".join([slot, *rest]), f"{slot}_OK": "1", f"{slot}_TRY": "0"}


def _known(slot: str) -> None:
    if slot not in SLOTS:
        raise SlotError(f"unknown slot {slot!r} (known: {', '.join(SLOTS)})")


def backend(args: list[str], path: Path = GRUBENV) -> str:
    """One call of RAUC's custom bootloader backend; returns what goes to stdout."""
    match args:
        case ["get-primary"]:
            return primary(read(path))
        case ["get-state", slot]:
            return "good" if good(read(path), slot) else "bad"
        case ["set-state", slot, ("good" | "bad") as verdict]:
            write(with_state(read(path), slot, verdict == "good"), path)
            return ""
        case ["set-primary", slot]:
            write(with_primary(read(path), slot), path)
            return ""
    raise SlotError(f"not a bootloader backend call: {' '.join(args)!r} (get-primary, "
                    "set-primary SLOT, get-state SLOT, set-state SLOT good|bad)")


# -- the boot check: is the slot on trial flying? ---------------------------------------
@dataclass(frozen=True)
class Verdict:
    action: str
    """"wait", "good" (mark the booted slot good), "bad" (mark it bad and reboot into
    the other slot), "keep" (nothing to decide: not on trial, or nowhere to fall back)."""
    reason: str


def verdict(st: SlotState, agent_state: str, elapsed_s: float, timeout_s: float) -> Verdict:
    """What the boot check does now. ``agent_state``: sortie.service's ActiveState
    (active: READY=1 came, the mission flies). Pure."""
    if st.booted is None:
        return Verdict("keep", "not booted from a root slot")
    if not st.tried[st.booted]:
        return Verdict("keep", f"slot {st.booted} is not on trial")
    if agent_state == "active":
        return Verdict("good", f"sortie.service is ready on slot {st.booted}")
    other = next(s for s in SLOTS if s != st.booted)
    failed = agent_state == "failed" or elapsed_s >= timeout_s
    if failed and not st.good[other]:
        # Rebooting cannot help: the other slot is not bootable. Keep trying here.
        return Verdict("keep", f"sortie.service {agent_state} on slot {st.booted}, and "
                               f"slot {other} is not good to fall back to")
    if agent_state == "failed":
        return Verdict("bad", f"sortie.service failed on slot {st.booted}")
    if elapsed_s >= timeout_s:
        return Verdict("bad", f"sortie.service not ready {timeout_s:g} s into the trial "
                              f"of slot {st.booted} ({agent_state})")
    return Verdict("wait", f"sortie.service {agent_state}")


def read(path: Path = GRUBENV) -> dict[str, str]:
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise SlotError(f"{path}: {exc.strerror or exc} (is the EFI system partition "
                        "mounted at /boot/efi?)") from exc


def write(env: dict[str, str], path: Path = GRUBENV) -> None:
    data = render(env)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)  # in place: never a new file
        try:
            if os.pwrite(fd, data, 0) != SIZE:
                raise SlotError(f"{path}: short write")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SlotError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def mark_good(path: Path = GRUBENV, cmdline_path: Path = Path("/proc/cmdline")) -> SlotState:
    """Mark the booted slot good (the mission flies); returns the state after."""
    env = read(path)
    st = state(env, cmdline_path.read_text())
    if st.booted is None:
        raise SlotError("this system was not booted from a root slot (no sortie.slot= on "
                        "the kernel command line)")
    new = with_state(env, st.booted, True)
    if new != env:
        write(new, path)
    return state(new, cmdline_path.read_text())
