"""The board's root slots, as the bootloader sees them: GRUB's environment block on the
EFI system partition (RAUC's variables ORDER, A_OK, A_TRY, B_OK, B_TRY) and the slot
the kernel was booted from (``sortie.slot=`` on its command line).

GRUB marks the slot it boots as tried; ``mark_good`` (run by ``sortie-mark-good.service``
once ``sortie.service`` is ready, i.e. the mission flies) clears that. A slot tried and
never marked good is skipped at the next boot: the board falls back to the other slot.
The environment block is rewritten in place, same 1024 bytes (GRUB writes it the same
way, never allocating), then synced.
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


def marked_good(env: dict[str, str], slot: str) -> dict[str, str]:
    """The environment with ``slot`` good and no longer on trial. Pure."""
    if slot not in SLOTS:
        raise SlotError(f"unknown slot {slot!r}")
    return {**env, f"{slot}_OK": "1", f"{slot}_TRY": "0"}


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
    new = marked_good(env, st.booted)
    if new != env:
        write(new, path)
    return state(new, cmdline_path.read_text())
