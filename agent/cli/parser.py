"""The ``sortie`` argument parser. Ground-side commands resolve when run, so a flight
image (which has no ``agent.ground``) parses them and says they are not installed."""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from agent import __version__
from agent.cli import commands as cmd
from agent.cli import slot
from agent.cli.common import DEFAULT_CONFIG, Parser
from agent.errors import AgentError

Command = Callable[[argparse.Namespace], int]


def ground(name: str) -> Command:
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module("agent.ground.commands")
        except ModuleNotFoundError as exc:
            raise AgentError(f"`sortie {args.command}` is a ground-side command, not "
                             "installed on this board (flight images carry the agent "
                             "only)") from exc
        fn: Command = getattr(mod, name)
        return fn(args)
    return run


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sortie", description="Orchestration agent for flight-computer "
               "edge boards: cgroup partitions with deterministic CPU budgets.")
    p.add_argument("--version", action="version", version=f"sortie {__version__}")
    p.add_argument("--log-format", default="text", choices=["text", "json"],
                   help="json: one object per line for log shippers (text is journald's "
                        "own format under systemd)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", type=Path, help=f"agent config (default {DEFAULT_CONFIG} "
                        "if present, else built-in defaults)")

    def output(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-o", "--output", choices=["json", "yaml"],
                        help="machine-readable output")

    r = sub.add_parser("run", help="run the agent (root)")
    common(r)
    r.add_argument("--profile", type=Path, action="append",
                   help="mission profile file or directory (repeatable); default: the "
                        "config's profile_dirs, else the embedded demo")
    r.add_argument("--hw", type=Path, help="hardware profile (default: config, else detect)")
    r.add_argument("--state-dir", type=Path, help="override the config's state_dir")
    r.add_argument("--teardown", action="store_true",
                   help="on exit stop every workload and remove the cgroups "
                        "(default: leave the mission flying)")
    r.set_defaults(func=cmd.cmd_run)

    c = sub.add_parser("check", help="admission check of a profile against a board")
    common(c)
    c.add_argument("profile", type=Path)
    c.add_argument("--hw", type=Path, help="hardware profile (default: this machine)")
    c.add_argument("--host-checks", action="store_true",
                   help="also check users and commands on this machine when --hw is given")
    output(c)
    c.set_defaults(func=cmd.cmd_check)

    pl = sub.add_parser("plan", help="what applying a profile would change")
    common(pl)
    pl.add_argument("profile", type=Path)
    pl.add_argument("--hw", type=Path, help="hardware profile when no agent is running")
    output(pl)
    pl.set_defaults(func=cmd.cmd_plan)

    s = sub.add_parser("status", help="partitions, workloads, budgets and measured usage")
    common(s)
    s.add_argument("--socket", type=Path, help="local API socket (default from config)")
    output(s)
    s.set_defaults(func=cmd.cmd_status)

    rp = sub.add_parser("report", help="a timing report for reviewers: each timed "
                        "workload's bound against what was measured, and the interference")
    common(rp)
    rp.add_argument("--socket", type=Path, help="local API socket (default from config)")
    rp.add_argument("--from", dest="status_file", type=Path,
                    help="a saved `sortie status -o json` instead of the running agent")
    rp.add_argument("--out", type=Path, default=Path("sortie-report"),
                    help="directory for timing-report.md and timing.png")
    rp.set_defaults(func=cmd.cmd_report)

    au = sub.add_parser("audit", help="the board's security and determinism posture: "
                        "PASS / WARN / FAIL per check (exit 1 when any fails)")
    common(au)
    au.add_argument("-o", "--output", choices=["json"], help="machine-readable output")
    au.add_argument("--offline", action="store_true",
                    help="do not contact the Kubernetes API server")
    au.set_defaults(func=cmd.cmd_audit)

    slot.add_parser(sub)

    mo = sub.add_parser("mode", help="switch the window schedule (mode) at the next "
                        "major-frame boundary")
    common(mo)
    mo.add_argument("name", help="schedule name from the running mission")
    mo.set_defaults(func=cmd.cmd_mode)

    ho = sub.add_parser("hold", help="hold changes to the flying mission (a new one waits "
                        "until `sortie release`)")
    common(ho)
    ho.add_argument("--reason", required=True, help="why (shown in status, the cluster's "
                    "and the planner's view)")
    ho.set_defaults(func=cmd.cmd_hold)
    re_ = sub.add_parser("release", help="end the operator's hold: a waiting change applies "
                         "at the next major-frame boundary")
    common(re_)
    re_.add_argument("--source", choices=["operator", "kube"], default="operator",
                     help="whose hold: the operator's (default), or the node annotation's "
                     "as last seen (for a board that lost its cluster)")
    re_.set_defaults(func=cmd.cmd_release)

    kg = sub.add_parser("keygen", help="make a planner signing key pair (Ed25519)")
    kg.add_argument("--kid", default="planner", help="key id the board will know it by")
    kg.add_argument("--out", type=Path, default=Path("."), help="directory for the keys")
    kg.set_defaults(func=ground("cmd_keygen"))

    def broker(sp: argparse.ArgumentParser, node: bool = True) -> None:
        if node:
            sp.add_argument("--node", required=True, help="the board's node name")
        sp.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://...")
        sp.add_argument("--username")
        sp.add_argument("--password-file", type=Path)
        sp.add_argument("--ca-file", type=Path, help="CA that signs the broker certificate")
        sp.add_argument("--cert", type=Path, help="client certificate")
        sp.add_argument("--cert-key", type=Path, help="client certificate's key")
        sp.add_argument("--topic-root", default="sortie/v1")

    pu = sub.add_parser("push", help="sign a profile and push it to a board over MQTT")
    pu.add_argument("profile", type=Path)
    pu.add_argument("--key", type=Path, required=True, help="planner private key (keygen)")
    pu.add_argument("--kid", help="key id (default: the key file's name)")
    pu.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for the board's answer (exit 3 without one)")
    broker(pu)
    output(pu)
    pu.set_defaults(func=ground("cmd_push"))

    ro = sub.add_parser("rollout", help="push a profile to many boards over MQTT in "
                        "health-gated waves (docs/fleet.md)")
    ro.add_argument("profile", type=Path)
    ro.add_argument("--nodes", required=True, help="board names: a comma-separated list, "
                    "or a file with one per line")
    ro.add_argument("--waves", default="5%,25%,100%", help="boards reached by the end of "
                    "each wave, cumulative (N%% or counts; default 5%%,25%%,100%%)")
    ro.add_argument("--soak", default="120s", help="how long each wave flies, gate "
                    "passing, before the next (120s, 2m)")
    ro.add_argument("--key", type=Path, required=True, help="planner private key (keygen)")
    ro.add_argument("--kid", help="key id (default: the key file's name)")
    ro.add_argument("--on-failure", choices=["pause", "rollback"], default="pause")
    ro.add_argument("--rollback-to", type=Path, help="the profile failed boards return to "
                    "(re-signed as a higher generation); needed by --on-failure rollback")
    ro.add_argument("--max-criticality", choices=list("ABCDE"), default="B",
                    help="a health action in a partition of this DAL or higher fails a board")
    ro.add_argument("--allow-shed", action="store_true",
                    help="a board shedding a partition still passes")
    ro.add_argument("--apply-timeout", type=int, default=300,
                    help="seconds an online board may stay silent")
    ro.add_argument("--max-failed", type=int, default=0, help="failed boards tolerated")
    ro.add_argument("--timeout", type=float, default=3600.0,
                    help="stop (paused) after this many seconds")
    broker(ro, node=False)
    output(ro)
    ro.set_defaults(func=ground("cmd_rollout"))

    wa = sub.add_parser("watch", help="a board's status, telemetry and events, live")
    wa.add_argument("--seconds", type=float, help="stop after this long")
    broker(wa)
    output(wa)
    wa.set_defaults(func=ground("cmd_watch"))

    si = sub.add_parser("sim", help="run the agent against a simulated board (no root)")
    si.add_argument("scenario", type=Path, help="scenario file (simulator/scenarios/)")
    si.add_argument("--hw", type=Path, required=True, help="hardware profile to simulate")
    si.add_argument("--out", type=Path, default=Path("sim-out"),
                    help="directory for the timeline picture and the trace")
    output(si)
    si.set_defaults(func=ground("cmd_sim"))

    im = sub.add_parser("image", help="container images (OCI layouts, verified)")
    im_sub = im.add_subparsers(dest="image_command", required=True, parser_class=Parser)
    ii = im_sub.add_parser("import", help="verify and import an OCI layout (dir or tar)")
    common(ii)
    ii.add_argument("path", type=Path)
    ii.set_defaults(func=cmd.cmd_image)
    il = im_sub.add_parser("list", help="imported images")
    common(il)
    output(il)
    il.set_defaults(func=cmd.cmd_image)
    ig = im_sub.add_parser("gc", help="remove images the last-known-good mission does not use")
    common(ig)
    ig.set_defaults(func=cmd.cmd_image)

    bo = sub.add_parser("board", help="board images: build, boot in QEMU")
    bo_sub = bo.add_subparsers(dest="board_command", required=True, parser_class=Parser)
    bb = bo_sub.add_parser("build", help="build a flashable image for a board "
                           "(kernel, initramfs, raw disk, manifest)")
    bb.add_argument("--hw", type=Path, required=True, help="hardware profile (hwprofiles/)")
    bb.add_argument("--profiles", type=Path, help="directory of mission profiles to bake in")
    bb.add_argument("--keys", type=Path, help="directory of trusted planner keys (*.pub)")
    bb.add_argument("--config", dest="board_config", type=Path,
                    help="agent config to bake in (paths inside the image are set)")
    bb.add_argument("--out", type=Path, required=True, help="output directory")
    bb.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "SORTIE_CACHE", str(Path.home() / ".cache" / "sortie"))) / "board",
        help="download and build cache (default $SORTIE_CACHE/board or ~/.cache/sortie/board)")
    bb.add_argument("--update-keys", type=Path, help="update signing keys: ca.cert.pem "
                    "(baked in as the board's keyring), signing.cert.pem, signing.key.pem; "
                    "made when the directory has none (default ~/.config/sortie/update-keys)")
    bb.set_defaults(func=ground("cmd_board"))
    bt = bo_sub.add_parser("boot", help="boot a built image in QEMU and report its agent")
    bt.add_argument("image", type=Path, help="the build's output directory")
    bt.add_argument("--seconds", type=float, help="stop the agent and power off after this "
                    "long (default: until Ctrl-C or --timeout)")
    bt.add_argument("--timeout", type=float, default=3600, help="hard limit, seconds")
    bt.add_argument("--report", type=float, default=5, help="status every N seconds")
    bt.add_argument("--accel", default="tcg", choices=["tcg", "kvm"],
                    help="kvm only where it works (not on these build machines)")
    bt.add_argument("--quiet", action="store_true", help="do not show the serial console")
    bt.add_argument("--mission", help="fly this baked mission instead of the configured "
                    "one (initramfs boot)")
    bt.add_argument("--disk", action="store_true", help="boot disk.img as a flashed board "
                    "does (UEFI firmware, GRUB, the root slot's kernel, systemd) instead of "
                    "the initramfs")
    bt.add_argument("--direct-kernel", action="store_true", help="with --disk: hand the "
                    "kernel over with -kernel instead of through the firmware (faster, "
                    "the pre-UEFI path)")
    bt.add_argument("--persist", type=Path, help="with --disk: keep this board's disk and "
                    "NVRAM in DIR from boot to boot (slots, state, boot choice)")
    bt.add_argument("--update", type=Path, action="append", default=[], help="with --disk: "
                    "a signed bundle on a second disk, installed once the slot is confirmed "
                    "(repeat: tried in order until one installs); the board reboots into it")
    output(bt)
    bt.set_defaults(func=ground("cmd_board"))

    ku = sub.add_parser("kube", help="Kubernetes helpers")
    ku_sub = ku.add_subparsers(dest="kube_command", required=True, parser_class=Parser)
    kc = ku_sub.add_parser("crd", help="print a CRD manifest (MissionProfile by default)")
    kc.add_argument("which", nargs="?", choices=["missionprofile", "missionrollout"],
                    default="missionprofile")
    kc.set_defaults(func=ground("cmd_kube_crd"))
    kt = ku_sub.add_parser("controller", help="run the MissionRollout controller (cluster "
                           "side: docs/kube/controller.yaml)")
    kt.add_argument("--namespace", default="sortie-missions", help="where rollouts live")
    kt.add_argument("--kubeconfig", type=Path, help="default: the in-cluster service account")
    kt.add_argument("--identity", help="this replica's name in the leader lease (default: "
                    "$POD_NAME, else the host name)")
    kt.add_argument("--resync", type=float, default=5.0, help="seconds between passes")
    kt.set_defaults(func=ground("cmd_kube_controller"))

    sc = sub.add_parser("schema", help="JSON Schema of the documents Sortie reads, and of "
                        "the status it answers")
    sc.add_argument("which", nargs="?", choices=["mission", "hardware", "config", "status"])
    sc.set_defaults(func=cmd.cmd_schema)

    hw = sub.add_parser("hw", help="hardware profiles")
    hw_sub = hw.add_subparsers(dest="hw_command", required=True, parser_class=Parser)
    d = hw_sub.add_parser("detect", help="write a hardware profile for this machine")
    d.add_argument("--out", type=Path, help="file to write (default: stdout)")
    d.set_defaults(func=cmd.cmd_hw_detect)
    return p
