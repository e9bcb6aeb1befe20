"""``sortie slot``: the root slots, updates and the boot check. Light on imports (no
models): RAUC runs ``sortie slot backend`` several times per install and the boot check
starts while the board boots, so ``agent.cli.main`` takes this path directly."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from agent.cli.base import EXIT_OK, EXIT_REFUSED, Parser, emit


def add_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    sl = sub.add_parser("slot", help="the board's root slots (A/B): status, signed updates, "
                        "the boot check")
    sl_sub = sl.add_subparsers(dest="slot_command", required=True, parser_class=Parser)

    def grubenv(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--grubenv", type=Path, help="GRUB's environment block (default "
                        "/boot/efi/EFI/sortie/grubenv)")
    ss = sl_sub.add_parser("status", help="booted slot, order, good and tried flags")
    grubenv(ss)
    ss.add_argument("-o", "--output", choices=["json", "yaml"],
                    help="machine-readable output")
    sm = sl_sub.add_parser("mark-good", help="mark the booted slot good by hand (the "
                           "boot check does it once the mission flies)")
    si = sl_sub.add_parser("install", help="verify a signed update bundle (RAUC) and write "
                           "it to the other slot; the next boot tries it once")
    si.add_argument("bundle", type=Path, help="the .raucb from `sortie board build`")
    sc = sl_sub.add_parser("check", help="boot check (sortie-boot-check.service): mark the "
                           "slot on trial good once the mission flies, or bad and reboot "
                           "into the other slot")
    sc.add_argument("--timeout", type=float, default=120, help="seconds the agent has to "
                    "become ready (default 120)")
    sb = sl_sub.add_parser("backend", help="RAUC's custom bootloader backend (called by "
                           "rauc: get-primary, set-primary S, get-state S, set-state S good|bad)")
    sb.add_argument("call", nargs="+", help="the backend call")
    for sp in (sm, si, sc, sb):
        grubenv(sp)
        sp.set_defaults(output=None)
    sl.set_defaults(func=cmd_slot)


def cmd_slot(args: argparse.Namespace) -> int:
    from agent import slots, updating
    path = args.grubenv or slots.GRUBENV
    if args.slot_command == "mark-good":
        st = slots.mark_good(path)
        print(f"slot {st.booted} marked good (order {' '.join(st.order)})")
        return EXIT_OK
    if args.slot_command == "backend":  # RAUC's custom bootloader backend
        out = slots.backend(args.call, path)
        if out:
            print(out)
        return EXIT_OK
    if args.slot_command == "install":
        st = updating.install(args.bundle, path=path)
        nxt = slots.primary(slots.read(path))
        print(f"installed {args.bundle}: the next boot tries slot {nxt} once (order "
              f"{' '.join(st.order)}); reboot to switch")
        return EXIT_OK
    if args.slot_command == "check":
        v = updating.check(args.timeout, path=path)
        return EXIT_OK if v.action in ("good", "keep") else EXIT_REFUSED
    st = slots.state(slots.read(path), Path("/proc/cmdline").read_text())
    if args.output:
        emit(asdict(st), args.output)
    else:
        for s in slots.SLOTS:
            flags = ("good" if st.good[s] else "not good") + (", tried" if st.tried[s] else "")
            print(f"slot {s}: {flags}{' (booted)' if st.booted == s else ''}")
        print(f"order: {' '.join(st.order)}")
    return EXIT_OK


def parser() -> Parser:
    """``sortie slot ...`` alone: what the fast path parses."""
    p = Parser(prog="sortie")
    add_parser(p.add_subparsers(dest="command", required=True, parser_class=Parser))
    return p
