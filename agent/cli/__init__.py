"""``sortie`` command line. Exit codes scripts can trust: 0 ok, 1 refused/failed, 2 usage
(3: a pushed board did not answer). ``parser`` builds the commands, ``commands`` runs the
board-side ones, ``render`` draws tables; the ground-side commands live in
``agent.ground.commands``."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from agent.cli.base import EXIT_REFUSED, print_violations
from agent.errors import AgentError, ProfileError


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand, past the global options (which take a value)."""
    it = iter(argv)
    for tok in it:
        if tok in ("--log-level", "--log-format"):
            next(it, None)
        elif not tok.startswith("-"):
            return tok
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["slot"]:
        # At boot and under RAUC: parse without importing the models (agent.cli.slot).
        from agent.cli.slot import parser
        args = parser().parse_args(argv)
        args.log_level, args.log_format = "info", "text"
    else:
        if _command(argv) == "run":
            os.environ.setdefault("SORTIE_MODEL_DOCS", "0")  # see agent.models._base.DOCS
            if os.geteuid() == 0:
                # The spawner's interpreter starts while this one imports the agent.
                from agent.runtime.spawn import SPAWNER
                SPAWNER.launch()
        from agent.cli.parser import build_parser
        args = build_parser().parse_args(argv)
    from agent.cli.logs import configure
    configure(args.log_level, args.log_format)
    try:
        code: int = args.func(args)
    except ProfileError as exc:
        print_violations(f"{exc.source}: {len(exc.violations)} problem(s):", exc.violations)
        return EXIT_REFUSED
    except AgentError as exc:
        print(f"sortie: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OSError as exc:  # a file named on the command line: missing, unreadable
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"sortie: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    return code
