"""The agent's own log lines: journald's format under systemd, JSON for shippers."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from agent.cli.logs import JournalFormatter, JsonFormatter, under_journald
from tests.conftest import REPO


def record(level: int, msg: str) -> logging.LogRecord:
    return logging.LogRecord("sortie.engine", level, __file__, 1, msg, None, None)


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    f = JournalFormatter()
    assert f.format(record(logging.WARNING, "degraded")) == "<4>sortie.engine: degraded"
    assert f.format(record(logging.ERROR, "a\nb")) == "<3>sortie.engine: a\n<3>b"
    assert f.format(record(logging.INFO, "x")).startswith("<6>")


def test_json_lines_are_one_object_each() -> None:
    doc = json.loads(JsonFormatter().format(record(logging.ERROR, 'say "hi"\nthere')))
    assert doc["level"] == "error" and doc["message"] == 'say "hi"\nthere'
    assert doc["logger"] == "sortie.engine" and doc["ts"] > 0


def test_journald_is_recognised_by_the_streams_device_and_inode(tmp_path: Path) -> None:
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(f, {"JOURNAL_STREAM": "garbage"})
        assert not under_journald(f, {})


def test_the_cli_logs_json_and_quiets_http_libraries(tmp_path: Path) -> None:
    code = ("import logging, sys\n"
            "from agent.cli.logs import configure\n"
            "configure('info', sys.argv[1])\n"
            "logging.getLogger('sortie.x').warning('hello')\n"
            "logging.getLogger('httpx').info('HTTP Request: GET /lease 200')\n")
    for fmt in ("json", "text"):
        r = subprocess.run([sys.executable, "-c", code, fmt], capture_output=True,
                           text=True, cwd=REPO, check=True)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "hello" in lines[0], lines  # no httpx line
        if fmt == "json":
            assert json.loads(lines[0])["level"] == "warning"
