"""The board's side of an A/B update: install a signed bundle into the other root slot
(RAUC writes it; it verifies the signature against the keyring in the running slot
before it reads anything else of the bundle), and the boot check that confirms or
abandons a slot on trial. The slot policy is ``agent.slots``; this is its I/O."""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from agent import slots
from agent.slots import SlotError, SlotState, Verdict

AGENT_UNIT = "sortie.service"
CHECK_TIMEOUT_S = 120.0
"""How long a slot on trial has to get its mission flying (sortie.service ready)."""


def current(path: Path = slots.GRUBENV, cmdline: Path = Path("/proc/cmdline")) -> SlotState:
    return slots.state(slots.read(path), cmdline.read_text())


def _rauc(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(["rauc", *args], capture_output=True, text=True, check=False,
                              timeout=60)
    except FileNotFoundError as exc:
        raise SlotError("rauc is not installed on this board") from exc
    except subprocess.TimeoutExpired as exc:
        raise SlotError(f"rauc {' '.join(args)}: no answer in 60 s") from exc


def _say(line: str) -> None:
    print(line, flush=True)


CHECK_MOUNT = Path("/run/sortie-update")
"""Where the bundle is mounted (through dm-verity) to be read in full before install."""


def parse_info(text: str) -> dict[str, str]:
    """``rauc info --output-format=shell``: NAME='value' lines. Pure."""
    out = {}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if eq and name.startswith("RAUC_"):
            out[name] = shlex.split(value)[0] if value.strip() else ""
    return out


def images(info: dict[str, str]) -> list[tuple[str, str, int]]:
    """(file name, signed sha256, size) of every image the bundle's manifest lists."""
    try:
        count = int(info.get("RAUC_MF_IMAGES", "0"))
        return [(info[f"RAUC_IMAGE_NAME_{i}"], info[f"RAUC_IMAGE_DIGEST_{i}"],
                 int(info[f"RAUC_IMAGE_SIZE_{i}"])) for i in range(count)]
    except (KeyError, ValueError) as exc:
        raise SlotError(f"rauc info: the manifest does not list its images ({exc})") from exc


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def verify_payload(bundle: Path, echo: Callable[[str], None] = _say) -> None:
    """Read every image of ``bundle`` in full and check it against the signed manifest,
    before anything is written. RAUC installs a verity bundle through dm-verity, which
    refuses a corrupted block only when the copy reaches it: half the slot would be
    written by then (marked bad, never booted, but written). So: the signature first
    (``rauc info`` against the board's keyring), then the bundle mounted through the same
    dm-verity and each image's sha256 against the manifest's."""
    r = _rauc("info", "--output-format=shell", str(bundle))
    if r.returncode != 0:
        raise SlotError(f"{bundle}: refused: {(r.stderr or r.stdout).strip()[-300:]}")
    listed = images(parse_info(r.stdout))
    if not listed:
        raise SlotError(f"{bundle}: refused: the manifest lists no image")
    CHECK_MOUNT.mkdir(parents=True, exist_ok=True, mode=0o700)
    m = _rauc(f"--mount={CHECK_MOUNT}", "mount", str(bundle))
    if m.returncode != 0:
        raise SlotError(f"{bundle}: refused: cannot mount it: "
                        f"{(m.stderr or m.stdout).strip()[-300:]}")
    mounted = CHECK_MOUNT / "bundle"
    try:
        for name, digest, size in listed:
            try:
                got, read = _sha256(mounted / name)
            except OSError as exc:  # dm-verity: EIO on the first altered block
                raise SlotError(f"{bundle}: refused: {name} is corrupted ({exc.strerror}); "
                                "nothing was written") from exc
            if read != size or got != digest:
                raise SlotError(f"{bundle}: refused: {name} does not match the signed "
                                "manifest; nothing was written")
            echo(f"verified {name}: sha256 {digest[:16]}... as signed")
    finally:
        subprocess.run(["umount", str(mounted)], check=False, capture_output=True)


def install(bundle: Path, echo: Callable[[str], None] = _say,
            path: Path = slots.GRUBENV) -> SlotState:
    """``rauc install``: verify, write the inactive slot, make it the next boot's (one
    try). Refused before anything is written when the signature, the keyring's chain or
    the compatible string does not match. Returns the slot state after."""
    st = current(path)
    if st.booted is None:
        raise SlotError("this system was not booted from a root slot: nothing to update")
    if not bundle.is_file():
        raise SlotError(f"{bundle}: no such bundle")
    verify_payload(bundle, echo)
    try:
        # Line-buffered: RAUC's progress lines as they happen, not at its exit.
        proc = subprocess.Popen([*(["stdbuf", "-oL", "-eL"] if shutil.which("stdbuf")
                                   else []), "rauc", "install", str(bundle)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError as exc:
        raise SlotError("rauc is not installed on this board") from exc
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        echo(line.rstrip())
        tail = [*tail[-5:], line.strip()]
    if proc.wait() != 0:
        raise SlotError(f"{bundle}: refused by rauc: " + " / ".join(
            t for t in tail if t and "%" not in t)[-400:])
    return current(path)


def agent_state() -> str:
    r = subprocess.run(["systemctl", "show", "-p", "ActiveState", "--value", AGENT_UNIT],
                       capture_output=True, text=True, check=False)
    return r.stdout.strip() or "unknown"


def check(timeout_s: float = CHECK_TIMEOUT_S, echo: Callable[[str], None] = _say,
          path: Path = slots.GRUBENV, poll_s: float = 0.5) -> Verdict:
    """Wait until the slot on trial flies (mark it good) or cannot (mark it bad, reboot
    into the other slot). Returns the verdict acted on."""
    start = time.monotonic()
    while True:
        v = slots.verdict(current(path), agent_state(), time.monotonic() - start, timeout_s)
        if v.action != "wait":
            break
        time.sleep(poll_s)
    echo(f"sortie slot check: {v.action}: {v.reason}")
    if v.action in ("good", "bad"):
        try:
            r = _rauc("status", f"mark-{v.action}")
            failed = (r.stderr or r.stdout).strip() if r.returncode else ""
        except SlotError as exc:
            failed = str(exc)
        if failed:
            # RAUC would only call our backend: write the same flags ourselves rather
            # than leave a flying slot on trial (the next boot would leave it).
            echo(f"sortie slot check: rauc status mark-{v.action} failed ({failed[-200:]}); "
                 "writing the boot flags directly")
            env = slots.read(path)
            booted = slots.state(env, Path("/proc/cmdline").read_text()).booted
            assert booted is not None  # a verdict of good/bad names the booted slot
            slots.write(slots.with_state(env, booted, v.action == "good"), path)
    if v.action == "bad":
        echo("sortie slot check: rebooting into the other slot")
        subprocess.run(["systemctl", "reboot"], check=False)
    return v
