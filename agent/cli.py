"""``sortie`` command line. Exit codes scripts can trust: 0 ok, 1 refused/failed, 2 usage."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import yaml

from agent import __version__
from agent.admission import admit
from agent.api.client import AgentUnreachable, call
from agent.errors import AgentError, ProfileError, Violation
from agent.models import AgentConfig, HardwareProfile, MissionProfile, load_file
from agent.preflight import host_violations

if TYPE_CHECKING:
    from agent.status import Status

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2
DEFAULT_CONFIG = Path("/etc/sortie/agent.yaml")
REPO = Path(__file__).resolve().parent.parent
DEMO_PROFILE = REPO / "schedules" / "demo.yaml"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")


def _print_violations(title: str, violations: list[Violation]) -> None:
    print(title, file=sys.stderr)
    for v in violations:
        print(f"  - {v}", file=sys.stderr)


# -- configuration ----------------------------------------------------------------
def load_config(path: Path | None) -> AgentConfig:
    if path is None:
        return load_file(AgentConfig, DEFAULT_CONFIG) if DEFAULT_CONFIG.exists() \
            else AgentConfig()
    return load_file(AgentConfig, path)


def _images(config: AgentConfig) -> Any:
    from agent.images.store import store_for  # tarfile and friends only when needed
    return store_for(config.state_dir)


def load_board(hw: Path | None, config: AgentConfig) -> HardwareProfile:
    path = hw or config.hardware_profile
    if path is not None:
        return load_file(HardwareProfile, path)
    from agent.hwdetect import detect
    return detect()


def profile_paths(args_profiles: list[Path] | None, config: AgentConfig) -> list[Path]:
    if args_profiles:
        return args_profiles
    existing = [p for p in config.profile_dirs if p.exists()]
    # A board without baked-in profiles flies the embedded demo mission.
    return existing or [DEMO_PROFILE]


# -- commands ---------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from agent.daemon import RunOptions, run

    config = load_config(args.config)
    if args.state_dir:
        config = config.model_copy(update={"state_dir": args.state_dir})
    if os.geteuid() != 0:
        print("sortie run: cannot enforce CPU budgets: creating cgroups, placing processes "
              "in them and dropping them to their users needs root.\n"
              "  Run it as root (sudo sortie run ...), or check a profile without root "
              "with `sortie check PROFILE --hw hwprofiles/BOARD.yaml`.", file=sys.stderr)
        return EXIT_REFUSED
    missing = [p for p in args.profile or [] if not (p.exists() or p.is_symlink())]
    if missing:
        # A typo here would boot a board that flies nothing: say so instead.
        print(f"sortie run: --profile {missing[0]}: no such file or directory",
              file=sys.stderr)
        return EXIT_USAGE
    board = load_board(args.hw, config)
    paths = profile_paths(args.profile, config)
    print(f"sortie {__version__}: board {board.name}, profiles from "
          f"{', '.join(map(str, paths))}; status: sortie status", file=sys.stderr)
    asyncio.run(run(config, board, RunOptions(paths, teardown=args.teardown)))
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    mission = load_file(MissionProfile, args.profile)
    board = load_board(args.hw, config)
    violations = admit(mission, board)
    # Host checks only make sense for the machine we are on.
    if (args.hw is None and config.hardware_profile is None) or args.host_checks:
        violations += host_violations(mission, _images(config))
    result = {"mission": mission.name, "generation": mission.generation, "board": board.name,
              "admitted": not violations,
              "violations": [{"path": v.path, "reason": v.reason} for v in violations]}
    if args.output:
        _emit(result, args.output)
    elif violations:
        _print_violations(f"{args.profile}: rejected for board {board.name} "
                          f"({len(violations)} problem(s)):", violations)
    else:
        print(f"{args.profile}: admitted for board {board.name}")
    return EXIT_REFUSED if violations else EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from agent.daemon import socket_path

    config = load_config(args.config)
    mission = load_file(MissionProfile, args.profile)
    try:
        reply = call(socket_path(config), {"op": "plan",
                                           "mission": mission.model_dump(mode="json")})
        against = "the running agent"
    except AgentUnreachable as exc:
        # No agent at all: the engine's own preview against what this machine's cgroups
        # hold. An agent that answered with a refusal is not "no agent" (that error
        # goes to the user).
        reply = _plan_offline(config, args.hw, mission)
        against = f"the cgroups on this machine ({exc})"
    violations = [Violation(v["path"], v["reason"]) for v in reply["violations"]]
    if args.output:
        _emit({"against": against, **reply, "violations": [str(v) for v in violations]},
              args.output)
    elif violations:
        _print_violations(f"{args.profile}: would be rejected:", violations)
    else:
        print(f"plan against {against}:")
        for a in reply["actions"] or ["nothing to do"]:
            print(f"  {a}")
        if reply["shed"]:
            print(f"degraded: the board would shed {', '.join(reply['shed'])} "
                  "(not enough capacity now)")
    return EXIT_REFUSED if violations else EXIT_OK


def _plan_offline(config: AgentConfig, hw: Path | None,
                  mission: MissionProfile) -> dict[str, Any]:
    """The engine ``sortie run`` would build, reading only: its preview of ``mission``."""
    from agent.cgroups import make_backend
    from agent.reconciling import Engine
    from agent.store import StateStore

    backend = make_backend(config.cgroup_root, config.cgroup_prefix, config.cgroup_version)
    engine = Engine(config, load_board(hw, config), backend, StateStore(config.state_dir))
    engine.inspect()
    return engine.preview(mission).to_dict()


def cmd_status(args: argparse.Namespace) -> int:
    from agent.daemon import socket_path

    config = load_config(args.config)
    path = args.socket or socket_path(config)
    status = call(path, {"op": "status"})["status"]
    if args.output:
        _emit(status, args.output)
    else:
        from agent.status import parse
        print(render_status(parse(status)))
    return EXIT_OK


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:5.1f}%"


def render_status(s: Status) -> str:
    m = s.mission
    lines = [f"board {s.board}  cgroup {s.cgroup.version} /{s.cgroup.prefix}",
             "mission " + (f"{m.name} generation {m.generation} from {m.origin.source} "
                           f"{m.origin.path or m.origin.object or m.origin.kid or ''}"
                           if m else "(none)"), ""]
    lines.append(f"{'PARTITION':<18}{'DAL':<4}{'CPUS':<8}{'BUDGET':>8}{'USED':>8}"
                 f"{'THROTTLED':>11}  MEMORY")
    for p in s.partitions:
        use = p.usage
        budget = p.quota_us / p.period_us if p.quota_us and p.period_us and p.quota_us > 0 \
            else None
        thr = f"{use.throttled_periods}/{use.periods}" if use else "-"
        cpus = ",".join(map(str, p.cpus or []))
        mem = f"{p.memory_bytes >> 20} MiB" if p.memory_bytes else "-"
        lines.append(f"{p.name:<18}{p.criticality or '-':<4}{cpus:<8}"
                     f"{_pct(budget):>8}{_pct(use.share if use else None):>8}{thr:>11}  {mem}")
        flags = [f for f, on in (("SATURATED", p.health.saturated),
                                 ("STOPPED by health monitor", p.health.stopped)) if on]
        if flags:
            lines.append(f"  ! {', '.join(flags)}")
        for w in p.workloads:
            extra = " adopted" if w.adopted else ""
            restarts = f" restarts {w.restarts}" if w.restarts else ""
            lines.append(f"  - {w.name:<16}{w.state:<11}pid {w.pid or '-'}{extra}{restarts}")
    win = s.windows
    if win.partitions:
        lines += ["", f"windows: mode {win.mode}, "
                      f"{'enforcing' if win.enforcing else 'NOT enforcing'}, "
                      f"timekeeper real-time: {win.realtime}",
                  f"  {'PARTITION':<16}{'WINDOWS':>8}{'JITTER p50':>12}{'p99':>9}{'max':>9}"
                  f"{'CPU OUTSIDE':>13}"]
        for name, f in sorted(win.partitions.items()):
            j = f.start_jitter_us
            lines.append(f"  {name:<16}{f.windows:>8}{j.p50:>10.0f}us{j.p99:>7.0f}us"
                         f"{j.max:>7.0f}us{f.cpu_outside_s * 1000:>10.2f} ms")
    if s.degraded.shed:
        lines += ["", f"degraded: shed {', '.join(s.degraded.shed)}"]
    if s.errors:
        lines += ["", "errors:"] + [f"  {e}" for e in s.errors]
    return "\n".join(lines)


def cmd_mode(args: argparse.Namespace) -> int:
    from agent.daemon import socket_path

    config = load_config(args.config)
    reply = call(socket_path(config), {"op": "mode", "mode": args.name})
    print(f"switching to {reply['mode']} at the next major-frame boundary")
    return EXIT_OK


EXIT_NO_ANSWER = 3


def _broker(args: argparse.Namespace) -> Any:
    from agent.planner import broker_config
    return broker_config(args.broker, args.username, args.password_file, args.ca_file,
                         args.cert, args.cert_key, args.topic_root)


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.signing import generate
    priv, pub = generate(args.out, args.kid)
    print(f"private key: {priv} (keep it on the planner, 0600)\npublic key:  {pub}\n\n"
          f"add to the board's agent config:\nmqtt:\n  trusted_keys:\n    {args.kid}: "
          f"{pub.read_text().strip()}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from agent.planner import push
    kid = args.kid or args.key.stem
    ack = asyncio.run(push(args.profile, args.node, args.key, kid, _broker(args),
                           args.timeout))
    if ack is None:
        print(f"no answer from {args.node} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.output:
        _emit(ack, args.output)
    else:
        ref = ack["ref"]
        print(f"{args.node}: {ack['outcome']} {ref.get('name')} generation "
              f"{ref.get('generation')}")
        for r in ack["reasons"]:
            print(f"  - {r['path']}: {r['reason']}", file=sys.stderr)
        for e in ack.get("errors", []):
            print(f"  ! {e}", file=sys.stderr)
    return EXIT_OK if ack["outcome"] in ("applied", "duplicate") else EXIT_REFUSED


def cmd_watch(args: argparse.Namespace) -> int:
    from agent.planner import watch

    def show(kind: str, msg: Any) -> None:
        if args.output == "json":
            print(json.dumps({"kind": kind, **msg} if isinstance(msg, dict) else msg))
        elif kind == "telemetry":
            parts = "  ".join(f"{p} {u['share'] * 100:5.1f}%/{u['budget_share'] * 100:.0f}%"
                              f" thr {u['throttled_periods']}/{u['periods']}"
                              for p, u in sorted(msg.get("partitions", {}).items()))
            print(f"telemetry  {parts}")
        elif kind == "status":
            m = msg.get("mission") or {}
            print(f"status     {'online' if msg.get('online') else 'OFFLINE'} mission "
                  f"{m.get('name')} generation {m.get('generation')}")
        elif kind == "events":
            print(f"event      {msg.get('kind')} {msg.get('subject')}: {msg.get('message')}")
        else:
            print(f"{kind:<10} {json.dumps(msg)}")
        sys.stdout.flush()

    asyncio.run(watch(args.node, _broker(args), show, args.seconds))
    return EXIT_OK


def cmd_sim(args: argparse.Namespace) -> int:
    try:
        from simulator import scenario as scenarios
        from simulator.run import run as run_sim
    except ImportError as exc:  # an image without the simulator
        raise AgentError(f"the simulator is not installed here ({exc})") from exc
    board = load_file(HardwareProfile, args.hw)
    sc, mission = scenarios.load(args.scenario, board)
    violations = admit(mission, board)
    if violations:
        _print_violations(f"{sc.mission}: does not fit {board.name}:", violations)
        return EXIT_REFUSED
    result = run_sim(sc, mission, board)
    out = args.out / f"{sc.name}-{board.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    trace = out.with_suffix(".trace.json")
    trace.write_text(json.dumps({"partitions": result.partitions, "trace": result.trace},
                                indent=1))
    if args.output:
        _emit({"scenario": sc.name, "board": board.name, "partitions": result.partitions,
               "speedup": result.speedup, "trace": str(trace)}, args.output)
    else:
        print(render_sim(result))
    try:
        from simulator.picture import draw
        png = draw(result, out.with_suffix(".png"))
        print(f"\ntimeline picture: {png}\ntrace: {trace}", file=sys.stderr)
    except ImportError:
        print(f"\ntrace: {trace} (install matplotlib for the timeline picture)",
              file=sys.stderr)
    return EXIT_OK


def render_sim(r: Any) -> str:
    lines = [f"{r.scenario} on {r.board}: {r.duration_s:g} s simulated in {r.wall_s:.2f} s "
             f"({r.speedup:.0f}x real time)", "",
             f"{'PARTITION':<18}{'DAL':<4}{'BUDGET':>8}{'USED':>8}{'THROTTLED':>14}"
             f"{'JOBS':>7}{'MISSES':>8}{'HEALTH':>8}  SHED"]
    for name, p in r.partitions.items():
        thr = f"{p['throttled_periods']}/{p['periods']}"
        lines.append(f"{name:<18}{p['criticality']:<4}{_pct(p['budget']):>8}"
                     f"{_pct(p['used']):>8}{thr:>14}{p['jobs']:>7}{p['deadline_misses']:>8}"
                     f"{p['health_actions']:>8}  {'yes' if p['shed'] else ''}")
    notable = [e for e in r.trace if e[1].startswith(("sim.", "degraded.", "mode.",
                                                       "state.", "workload.adopted",
                                                       "mission."))
               or (e[1].startswith("health.") and (e[1] != "health.deadline-miss"
                                                   or "hung" in e[3]))]
    if notable:
        lines += ["", "faults and what the agent did:"]
        lines += [f"  {t:8.3f} s  {kind:<26} {subject}: {msg[:90]}"
                  for t, kind, subject, msg in notable[:40]]
        if len(notable) > 40:
            lines.append(f"  ... {len(notable) - 40} more in the trace")
    return "\n".join(lines)


def cmd_image(args: argparse.Namespace) -> int:
    from agent.store import StateStore

    config = load_config(args.config)
    store = _images(config)
    if args.image_command == "import":
        for digest in store.import_path(args.path):
            print(f"imported {digest}")
    elif args.image_command == "list":
        rows = [vars(i) for i in store.images()]
        if args.output:
            _emit(rows, args.output)
        else:
            for i in store.images():
                print(f"{i.digest}  {i.name or '-':<16} {i.architecture:<6} "
                      f"{i.size / (1 << 20):7.1f} MiB  {'unpacked' if i.unpacked else ''}")
    else:  # gc: keep what the last-known-good mission uses
        stored = StateStore(config.state_dir).load()
        keep = {w.image for p in (stored.mission.partitions if stored else [])
                for w in p.workloads if w.image}
        for digest in store.gc(keep):
            print(f"removed {digest}")
    return EXIT_OK


def cmd_board(args: argparse.Namespace) -> int:
    from agent.board.inputs import BoardError
    try:
        if args.board_command == "build":
            from agent.board.building import build
            manifest = build(args.hw, args.profiles, args.keys, args.board_config, args.out,
                             args.cache)
            print(manifest)
            return EXIT_OK
        from agent.board.booting import boot
        show = None if args.quiet or args.output else print
        result = boot(args.image, args.seconds or 0, args.timeout, args.report, args.accel,
                      show, args.disk, args.mission)
    except BoardError as exc:
        _print_violations("board:", exc.violations)
        return EXIT_REFUSED
    report = {"clean_shutdown": result.clean, "agent_rc": result.agent_rc,
              "qemu_rc": result.qemu_rc, "first_status_s": result.first_status_s,
              "status": result.last, "command": result.command}
    if args.output:
        _emit(report, args.output)
    else:
        last = result.last or {}
        print(f"\nboard {last.get('board')}: first agent status "
              f"{result.first_status_s or float('nan'):.1f} s after QEMU started; "
              f"{'clean shutdown' if result.clean else 'NO clean shutdown'}")
        for p in last.get("partitions", []):
            print(f"  {p['name']:<20} budget {_pct(p.get('budget'))}  "
                  f"used {_pct(p.get('share'))}  {p.get('workloads')}")
    return EXIT_OK if result.clean and result.last else EXIT_REFUSED


def cmd_kube_crd(args: argparse.Namespace) -> int:
    from agent.kube.crd import manifest_yaml
    print(manifest_yaml(), end="")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from agent import status
    models: dict[str, Any] = {"mission": MissionProfile.model_json_schema,
                              "hardware": HardwareProfile.model_json_schema,
                              "config": AgentConfig.model_json_schema,
                              "status": status.schema}
    picked = {args.which: models[args.which]} if args.which else models
    schemas = {k: m() for k, m in picked.items()}
    print(json.dumps(schemas[args.which] if args.which else schemas, indent=2))
    return EXIT_OK


def cmd_hw_detect(args: argparse.Namespace) -> int:
    from agent.hwdetect import detect

    text = yaml.safe_dump(detect().model_dump(mode="json", exclude_none=True), sort_keys=False)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text, end="")
    return EXIT_OK


# -- parser -----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="sortie", description="Orchestration agent for flight-computer "
               "edge boards: cgroup partitions with deterministic CPU budgets.")
    p.add_argument("--version", action="version", version=f"sortie {__version__}")
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
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("check", help="admission check of a profile against a board")
    common(c)
    c.add_argument("profile", type=Path)
    c.add_argument("--hw", type=Path, help="hardware profile (default: this machine)")
    c.add_argument("--host-checks", action="store_true",
                   help="also check users and commands on this machine when --hw is given")
    output(c)
    c.set_defaults(func=cmd_check)

    pl = sub.add_parser("plan", help="what applying a profile would change")
    common(pl)
    pl.add_argument("profile", type=Path)
    pl.add_argument("--hw", type=Path, help="hardware profile when no agent is running")
    output(pl)
    pl.set_defaults(func=cmd_plan)

    s = sub.add_parser("status", help="partitions, workloads, budgets and measured usage")
    common(s)
    s.add_argument("--socket", type=Path, help="local API socket (default from config)")
    output(s)
    s.set_defaults(func=cmd_status)

    mo = sub.add_parser("mode", help="switch the window schedule (mode) at the next "
                        "major-frame boundary")
    common(mo)
    mo.add_argument("name", help="schedule name from the running mission")
    mo.set_defaults(func=cmd_mode)

    kg = sub.add_parser("keygen", help="make a planner signing key pair (Ed25519)")
    kg.add_argument("--kid", default="planner", help="key id the board will know it by")
    kg.add_argument("--out", type=Path, default=Path("."), help="directory for the keys")
    kg.set_defaults(func=cmd_keygen)

    def broker(sp: argparse.ArgumentParser) -> None:
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
    pu.set_defaults(func=cmd_push)

    wa = sub.add_parser("watch", help="a board's status, telemetry and events, live")
    wa.add_argument("--seconds", type=float, help="stop after this long")
    broker(wa)
    output(wa)
    wa.set_defaults(func=cmd_watch)

    si = sub.add_parser("sim", help="run the agent against a simulated board (no root)")
    si.add_argument("scenario", type=Path, help="scenario file (simulator/scenarios/)")
    si.add_argument("--hw", type=Path, required=True, help="hardware profile to simulate")
    si.add_argument("--out", type=Path, default=Path("sim-out"),
                    help="directory for the timeline picture and the trace")
    output(si)
    si.set_defaults(func=cmd_sim)

    im = sub.add_parser("image", help="container images (OCI layouts, verified)")
    im_sub = im.add_subparsers(dest="image_command", required=True, parser_class=Parser)
    ii = im_sub.add_parser("import", help="verify and import an OCI layout (dir or tar)")
    common(ii)
    ii.add_argument("path", type=Path)
    ii.set_defaults(func=cmd_image)
    il = im_sub.add_parser("list", help="imported images")
    common(il)
    output(il)
    il.set_defaults(func=cmd_image)
    ig = im_sub.add_parser("gc", help="remove images the last-known-good mission does not use")
    common(ig)
    ig.set_defaults(func=cmd_image)

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
    bb.set_defaults(func=cmd_board)
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
    bt.add_argument("--disk", action="store_true", help="boot disk.img through systemd "
                    "(as a flashed board does) instead of the initramfs")
    output(bt)
    bt.set_defaults(func=cmd_board)

    ku = sub.add_parser("kube", help="Kubernetes helpers")
    ku_sub = ku.add_subparsers(dest="kube_command", required=True, parser_class=Parser)
    kc = ku_sub.add_parser("crd", help="print the MissionProfile CRD manifest")
    kc.set_defaults(func=cmd_kube_crd)

    sc = sub.add_parser("schema", help="JSON Schema of the documents Sortie reads, and of "
                        "the status it answers")
    sc.add_argument("which", nargs="?", choices=["mission", "hardware", "config", "status"])
    sc.set_defaults(func=cmd_schema)

    hw = sub.add_parser("hw", help="hardware profiles")
    hw_sub = hw.add_subparsers(dest="hw_command", required=True, parser_class=Parser)
    d = hw_sub.add_parser("detect", help="write a hardware profile for this machine")
    d.add_argument("--out", type=Path, help="file to write (default: stdout)")
    d.set_defaults(func=cmd_hw_detect)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except ProfileError as exc:
        _print_violations(f"{exc.source}: {len(exc.violations)} problem(s):", exc.violations)
        return EXIT_REFUSED
    except AgentError as exc:
        print(f"sortie: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
