"""The ground-side commands: keygen, push, watch (a planner's), sim, board build/boot,
kube crd. Not in flight images: the board's ``sortie`` says so when asked for one."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from typing import Any

from agent.cli.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, emit, pct, print_violations
from agent.errors import AgentError
from agent.models import HardwareProfile, MissionProfile, load_file
from agent.policy.admission import admit

EXIT_NO_ANSWER = 3
EXIT_HELD = 4
"""Admitted, waiting for the board's hold to end (its final answer follows on acks)."""


def _broker(args: argparse.Namespace) -> Any:
    from agent.ground.push import broker_config
    return broker_config(args.broker, args.username, args.password_file, args.ca_file,
                         args.cert, args.cert_key, args.topic_root)


def cmd_keygen(args: argparse.Namespace) -> int:
    from agent.sources.signing import generate
    priv, pub = generate(args.out, args.kid)
    print(f"private key: {priv} (keep it on the planner, 0600)\npublic key:  {pub}\n\n"
          f"add to the board's agent config:\nmqtt:\n  trusted_keys:\n    {args.kid}: "
          f"{pub.read_text().strip()}")
    return EXIT_OK


def cmd_push(args: argparse.Namespace) -> int:
    from agent.ground.push import push
    kid = args.kid or args.key.stem
    ack = asyncio.run(push(args.profile, args.node, args.key, kid, _broker(args),
                           args.timeout))
    if ack is None:
        print(f"no answer from {args.node} within {args.timeout:g} s", file=sys.stderr)
        return EXIT_NO_ANSWER
    if args.output:
        emit(ack, args.output)
    else:
        ref = ack["ref"]
        print(f"{args.node}: {ack['outcome']} {ref.get('name')} generation "
              f"{ref.get('generation')}")
        for r in ack["reasons"]:
            print(f"  - {r['path']}: {r['reason']}", file=sys.stderr)
        for e in ack.get("errors", []):
            print(f"  ! {e}", file=sys.stderr)
        if ack.get("reason"):
            print(f"  ({ack['reason']})", file=sys.stderr)
    if ack["outcome"] == "held":
        return EXIT_HELD
    return EXIT_OK if ack["outcome"] in ("applied", "duplicate") else EXIT_REFUSED


def cmd_watch(args: argparse.Namespace) -> int:
    from agent.ground.push import watch

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
        print_violations(f"{sc.mission}: does not fit {board.name}:", violations)
        return EXIT_REFUSED
    result = run_sim(sc, mission, board)
    out = args.out / f"{sc.name}-{board.name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    trace = out.with_suffix(".trace.json")
    trace.write_text(json.dumps({"partitions": result.partitions, "trace": result.trace},
                                indent=1))
    if args.output:
        emit({"scenario": sc.name, "board": board.name, "partitions": result.partitions,
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
        lines.append(f"{name:<18}{p['criticality']:<4}{pct(p['budget']):>8}"
                     f"{pct(p['used']):>8}{thr:>14}{p['jobs']:>7}{p['deadline_misses']:>8}"
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


MAX_REBOOTS = 5
"""``sortie board boot --persist``: boots again after a reboot at most this often (a
board rolling back reboots twice; more is a reboot loop to look at)."""


def cmd_board(args: argparse.Namespace) -> int:
    from agent.ground.board.inputs import BoardError
    try:
        if args.board_command == "build":
            from agent.ground.board import bundling
            from agent.ground.board.building import build
            manifest = build(args.hw, args.profiles, args.keys, args.board_config, args.out,
                             args.cache, update_keys=args.update_keys or bundling.DEFAULT_KEYS)
            print(manifest)
            return EXIT_OK
        from agent.ground.board.booting import boot
        show = None if args.quiet or args.output else print
        bundles = tuple(args.update)
        for _ in range(MAX_REBOOTS + 1):
            result = boot(args.image, args.seconds or 0, args.timeout, args.report,
                          args.accel, show, args.disk, args.mission,
                          direct=args.direct_kernel, persist=args.persist, bundles=bundles)
            if not (result.rebooted and args.persist):
                break
            # A board that reboots comes up again: same disk and NVRAM, no media.
            print("\nboard rebooted: powering it on again")
            bundles = ()
    except BoardError as exc:
        print_violations("board:", exc.violations)
        return EXIT_REFUSED
    report = {"clean_shutdown": result.clean, "agent_rc": result.agent_rc,
              "qemu_rc": result.qemu_rc, "first_status_s": result.first_status_s,
              "status": result.last, "command": result.command}
    if args.output:
        emit(report, args.output)
    else:
        last = result.last or {}
        print(f"\nboard {last.get('board')}: first agent status "
              f"{result.first_status_s or float('nan'):.1f} s after QEMU started; "
              f"{'clean shutdown' if result.clean else 'NO clean shutdown'}")
        for p in last.get("partitions", []):
            print(f"  {p['name']:<20} budget {pct(p.get('budget'))}  "
                  f"used {pct(p.get('share'))}  {p.get('workloads')}")
    return EXIT_OK if result.clean and result.last else EXIT_REFUSED


def cmd_kube_crd(args: argparse.Namespace) -> int:
    from agent.ground.crd import manifest_yaml
    print(manifest_yaml(args.which), end="")
    return EXIT_OK


def cmd_kube_controller(args: argparse.Namespace) -> int:
    import logging
    import os
    import socket

    from agent.ground.rollout.controller import Controller
    from agent.models.config import KubeConfig
    from agent.sources.kube.api import KubeApi

    if args.resync <= 0:
        print("--resync: expected seconds above 0", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    identity = args.identity or os.environ.get("POD_NAME") or socket.gethostname()
    api = KubeApi(KubeConfig(kubeconfig=str(args.kubeconfig) if args.kubeconfig else None,
                             namespaces=[args.namespace]))

    async def run() -> None:
        try:
            await Controller(api, args.namespace, identity).run_forever(args.resync)
        finally:
            await api.close()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return EXIT_OK


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip()
    n = t[:-1] if t[-1:] in units else t
    value = float(n) * units.get(t[-1:], 1)
    if value < 0:
        raise ValueError(text)
    return value


def _nodes(arg: str) -> list[str]:
    from pathlib import Path
    p = Path(arg)
    raw = p.read_text().split() if p.is_file() else arg.split(",")
    return [n.strip() for n in raw if n.strip() and not n.startswith("#")]


def _bar(state: Any, judged: dict[str, Any]) -> str:
    wave = state.waves[state.wave]
    done = sum(1 for b in wave if judged.get(b) is not None
               and judged[b].verdict in ("applied", "held", "failed"))
    cells = round(20 * done / max(1, len(wave)))
    counts = {v: sum(1 for b in wave if judged.get(b) is not None and judged[b].verdict == v)
              for v in ("applied", "held", "offline", "failed")}
    return (f"wave {state.wave + 1}/{len(state.waves)} [{'#' * cells}{'-' * (20 - cells)}] "
            f"{done}/{len(wave)}  applied {counts['applied']}  held {counts['held']}  "
            f"offline {counts['offline']}  failed {counts['failed']}  {state.phase}")


def cmd_rollout(args: argparse.Namespace) -> int:
    from agent.ground.rollout.model import Gate
    from agent.ground.rollout.over_mqtt import Plan, Planner, rollback_of
    from agent.models.loading import load_text
    from agent.sources.signing import load_private

    try:
        soak = _seconds(args.soak)
        nodes = _nodes(args.nodes)
        gate = Gate(max_criticality=args.max_criticality, allow_shed=args.allow_shed,
                    apply_timeout_seconds=args.apply_timeout, max_failed=args.max_failed)
    except (ValueError, OSError) as exc:
        print(f"sortie rollout: bad argument: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.on_failure == "rollback" and args.rollback_to is None:
        print("--on-failure rollback needs --rollback-to PROFILE (the mission failed boards "
              "return to)", file=sys.stderr)
        return EXIT_USAGE
    data = args.profile.read_bytes()
    mission = load_text(MissionProfile, data, str(args.profile))
    rollback = None
    if args.rollback_to is not None:
        previous = load_file(MissionProfile, args.rollback_to)
        rollback = rollback_of(previous, mission.generation)
    plan = Plan(mission, data, rollback, gate, soak, args.on_failure)
    planner = Planner(_broker(args), load_private(args.key), args.kid or args.key.stem, plan)
    last = [""]

    def show(state: Any, judged: dict[str, Any]) -> None:
        line = _bar(state, judged)
        if line != last[0] and not args.output:
            print(line, flush=True)
            last[0] = line

    state, judged = asyncio.run(planner.run(nodes, args.waves.split(","), show,
                                            args.timeout))
    boards = {b: {"verdict": judged[b].verdict if b in judged else
                  ("rolled-back" if b in state.rolled_back else "not-sent"),
                  "why": state.failed.get(b) or (judged[b].why if b in judged else "")}
              for w in state.waves for b in w}
    summary = {"phase": state.phase, "message": state.message, "boards": boards,
               "published": planner.published, "received": planner.received}
    if args.output:
        emit(summary, args.output)
    else:
        print(f"{state.phase}: {state.message}")
        for b, v in sorted(boards.items()):
            print(f"  {b:<24}{v['verdict']:<12}{v['why']}")
    return EXIT_OK if state.phase == "Complete" else EXIT_REFUSED
