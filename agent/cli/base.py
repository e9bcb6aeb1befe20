"""The command line's light parts: exit codes, the parser class, output. Nothing here
imports the models, so commands that run at boot (``sortie slot``) start fast."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

import yaml

from agent.errors import Violation

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def emit(data: Any, output: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        print(yaml.safe_dump(data, sort_keys=False), end="")


def print_violations(title: str, violations: list[Violation]) -> None:
    print(title, file=sys.stderr)
    for v in violations:
        print(f"  - {v}", file=sys.stderr)
