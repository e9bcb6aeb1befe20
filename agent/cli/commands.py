"""The board-side commands: run, check, plan, status, audit, mode, image, schema, hw
detect."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from agent import __version__
from agent.api.client import AgentUnreachable, call
from agent.cgroups.features import KernelFeatures, kernel_tick_us
from agent.cli.common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    emit,
    images_of,
    load_board,
    load_config,
    print_violations,
    profile_paths,
)
from agent.cli.render import bound_dict, render_bounds
from agent.engine.preflight import host_violations
from agent.errors import AgentError, Violation
from agent.models import AgentConfig, HardwareProfile, MissionProfile, load_file
from agent.policy.admission import admit
from agent.policy.deadlines import TimingEnv, analyse


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
    here = args.hw is None and config.hardware_profile is None
    # This machine's tick when checking for it; another board re-admits with its own.
    env = TimingEnv(kernel_tick_us() if here else TimingEnv.tick_us,
                    config.latency_allowance_us, config.isolate_os)
    violations = admit(mission, board, KernelFeatures(tick_us=env.tick_us), timing=env)
    # Host checks only make sense for the machine we are on.
    if here or args.host_checks:
        violations += host_violations(mission, images_of(config))
    bounds = analyse(mission, board, env)
    result = {"mission": mission.name, "generation": mission.generation, "board": board.name,
              "admitted": not violations,
              "violations": [{"path": v.path, "reason": v.reason} for v in violations],
              "timing": {"tick_us": env.tick_us, "latency_allowance_us": env.latency_us,
                         "workloads": [bound_dict(b) for b in bounds]}}
    if args.output:
        emit(result, args.output)
        return EXIT_REFUSED if violations else EXIT_OK
    if bounds:
        print(render_bounds(bounds, env), file=sys.stderr if violations else sys.stdout)
    if violations:
        print_violations(f"{args.profile}: rejected for board {board.name} "
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
        emit({"against": against, **reply, "violations": [str(v) for v in violations]},
              args.output)
    elif violations:
        print_violations(f"{args.profile}: would be rejected:", violations)
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
    from agent.engine.engine import Engine
    from agent.engine.state import StateStore

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
        emit(status, args.output)
    else:
        from agent.cli.render import render_status
        from agent.status import parse
        print(render_status(parse(status)))
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    from agent.audit.findings import Report
    from agent.audit.gather import gather
    from agent.audit.rules import judge
    from agent.cli.common import DEFAULT_CONFIG

    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    config = load_config(args.config)
    if os.geteuid() != 0:
        print("sortie audit: not root: the state, the agent's environment and its "
              "workloads' processes cannot all be read; findings may be incomplete",
              file=sys.stderr)
    report = Report(judge(gather(config, path, offline=args.offline)))
    if args.output:
        emit(report.to_json(), args.output)
    else:
        print(report.render())
    return report.exit_code


def cmd_mode(args: argparse.Namespace) -> int:
    from agent.daemon import socket_path

    config = load_config(args.config)
    reply = call(socket_path(config), {"op": "mode", "mode": args.name})
    print(f"switching to {reply['mode']} at the next major-frame boundary")
    return EXIT_OK


def cmd_hold(args: argparse.Namespace) -> int:
    from agent.daemon import socket_path

    reply = call(socket_path(load_config(args.config)), {"op": "hold", "reason": args.reason})
    print(("holding: " if reply["changed"] else "already holding: ") + str(reply["held"]))
    return EXIT_OK


def cmd_release(args: argparse.Namespace) -> int:
    from agent.daemon import socket_path

    reply = call(socket_path(load_config(args.config)), {"op": "release",
                                                         "source": args.source})
    print("released" if reply["changed"] else f"{args.source} held nothing", end="")
    if reply["held"]:
        print(f"; still held: {reply['held']}", end="")
    elif reply["pending"]:
        print(f"; {reply['pending']} applies at the next major-frame boundary", end="")
    print()
    return EXIT_OK


def cmd_image(args: argparse.Namespace) -> int:
    from agent.engine.state import StateStore

    config = load_config(args.config)
    store = images_of(config)
    if args.image_command == "import":
        for digest in store.import_path(args.path):
            print(f"imported {digest}")
    elif args.image_command == "list":
        rows = [vars(i) for i in store.images()]
        if args.output:
            emit(rows, args.output)
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


def cmd_report(args: argparse.Namespace) -> int:
    from agent.cli.report import write
    from agent.daemon import socket_path
    from agent.status import parse

    if args.status_file is not None:
        data = json.loads(args.status_file.read_text())
        data = data.get("status", data) if isinstance(data, dict) else data
    else:
        config = load_config(args.config)
        data = call(args.socket or socket_path(config), {"op": "status"})["status"]
    try:
        status = parse(data)
    except ValueError as exc:  # pydantic's ValidationError is one
        raise AgentError(f"not a status this agent understands: {exc}") from exc
    print(f"wrote {write(status, args.out)}")
    return EXIT_OK
