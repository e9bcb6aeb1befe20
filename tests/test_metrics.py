"""Prometheus metrics: the families built from a board's status, the atomic textfile, and
the real witnesses: promtool's lint, prometheus_client's parser, node_exporter's textfile
collector scraped over loopback, and a real agent writing the file."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent.errors import AgentError
from agent.health.table import ErrorKind
from agent.metrics import FILE_NAME, AgentProcess, TextfileWriter, families, render
from agent.status import KubeStatus, MqttStatus, Origin, SourcesStatus, Status
from simulator.run import _Sim
from tests.conftest import REPO, needs_root_v1
from tests.helpers import agent_files, mission, mission_doc, partition, wait_for_sync, workload
from tests.simengine import on_sim

PROM_BIN = REPO / ".cache" / "prometheus" / "usr" / "bin"
PROMTOOL = PROM_BIN / "promtool"
NODE_EXPORTER = PROM_BIN / "prometheus-node-exporter"
needs_prom = pytest.mark.skipif(not PROMTOOL.exists() or not NODE_EXPORTER.exists(),
                                reason=".ci/setup unpacks promtool and node_exporter")

TIMED = {"name": "ctl", "command": ["/bin/sleep", "3600"], "user": "nobody",
         "timing": {"period_us": 10_000, "wcet_us": 2_000}}
DEADLINE = {"mode": "deadline", "quota_us": 1_000, "period_us": 100_000, "deadline": {
    "runtime_us": 9_000, "deadline_us": 10_000, "period_us": 10_000}}
BOARD_MISSION = mission(
    dict(partition("fc", crit="A", workloads=[TIMED]), budget=DEADLINE),
    partition("hog", crit="E", quota=30_000, workloads=[workload("spin"), workload("idle")]),
    name="sortie-demo", generation=3)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition text, by name and labels (prometheus_client's parser)."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def promtool_lint(text: bytes) -> str:
    r = subprocess.run([str(PROMTOOL), "check", "metrics"], input=text, capture_output=True,
                       check=False)
    return (r.stdout + r.stderr).decode() + f"(exit {r.returncode})" if r.returncode else ""


def simulated_status(tmp_path: Path) -> Status:
    """A simulated board flying BOARD_MISSION for 3 virtual seconds, with job reports
    (one late) and a health verdict."""
    out: list[Status] = []

    async def body(sim: _Sim) -> None:
        e = sim.engine
        await e.start()
        assert (await e.submit(BOARD_MISSION, Origin("config"))).outcome == "applied"
        e.sample()
        for _ in range(3):
            await asyncio.sleep(1.0)
            e.sample()
        for response in (800, 1_500, 3_000, 12_000):  # the last misses its 10 ms deadline
            e.monitor.on_job("fc", "ctl", response, 10_000)
        e.monitor.report(ErrorKind.BUDGET_SATURATION, "hog", None, "test")
        out.append(e.snapshot())

    on_sim(tmp_path, BOARD_MISSION, body,
           patterns={"hog/spin": {"pattern": "runaway"}})
    return out[0]


@pytest.fixture(scope="module")
def board_status(tmp_path_factory: pytest.TempPathFactory) -> Status:
    return simulated_status(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def board_text(board_status: Status) -> bytes:
    return render(families(board_status, "board-7", AgentProcess.now()))


def test_what_the_board_does_is_what_prometheus_sees(board_text: bytes) -> None:
    got = samples(board_text.decode())
    fc, hog = {"partition": "fc", "criticality": "A"}, {"partition": "hog", "criticality": "E"}
    assert value(got, "sortie_partition_cpu_budget_ratio", **fc) == 0.01  # CFS, beside DL
    assert value(got, "sortie_partition_cpu_budget_ratio", **hog) == 0.3
    # The spinner used its whole 30 % budget over 3 virtual seconds and was throttled.
    used = value(got, "sortie_partition_cpu_used_seconds_total", **hog)
    assert 0.85 <= used <= 0.95, used
    assert value(got, "sortie_partition_cpu_used_ratio", **hog) == pytest.approx(0.3, abs=0.02)
    assert value(got, "sortie_partition_cpu_throttled_periods_total", **hog) >= 25
    assert value(got, "sortie_partition_cpu_used_seconds_total", **fc) < 0.01
    assert value(got, "sortie_partition_memory_limit_bytes", **fc) == 64 << 20
    assert value(got, "sortie_partition_pids_limit", **hog) == 32
    ctl = {"partition": "fc", "workload": "ctl", "criticality": "A"}
    assert value(got, "sortie_workload_state", **ctl, state="running") == 1
    assert ("sortie_workload_state", frozenset({**ctl, "state": "crash-loop"}.items())) \
        not in got  # one series per workload: its current state
    assert value(got, "sortie_workload_restarts_total", **ctl) == 0
    assert value(got, "sortie_workload_deadline_seconds", **ctl) == 0.01
    assert value(got, "sortie_workload_wcet_seconds", **ctl) == 0.002
    assert value(got, "sortie_workload_response_bound_seconds", **ctl) == 0.01
    # The histogram counts what was reported: 800 us, 1.5 ms, 3 ms and a 12 ms miss.
    assert value(got, "sortie_workload_response_seconds_bucket", **ctl, le="0.001") == 1
    assert value(got, "sortie_workload_response_seconds_bucket", **ctl, le="0.005") == 3
    assert value(got, "sortie_workload_response_seconds_bucket", **ctl, le="0.01") == 3
    assert value(got, "sortie_workload_response_seconds_bucket", **ctl, le="+Inf") == 4
    assert value(got, "sortie_workload_response_seconds_count", **ctl) == 4
    assert value(got, "sortie_workload_response_seconds_sum", **ctl) == pytest.approx(0.0173)
    assert value(got, "sortie_workload_deadline_misses_total", **ctl) == 1
    assert value(got, "sortie_health_actions_total", **fc, error="deadline-miss",
                 action="log") == 1
    assert value(got, "sortie_health_actions_total", **hog, error="budget-saturation",
                 action="log") == 1
    assert value(got, "sortie_mission_generation") == 3
    assert value(got, "sortie_mission_info", mission="sortie-demo", source="config") == 1
    assert value(got, "sortie_agent_info", board="b4", node="board-7", cgroup="v2") == 1
    assert value(got, "sortie_degraded") == 0
    assert value(got, "sortie_agent_resident_memory_bytes") > 10 << 20
    # No timestamps: node_exporter refuses textfile samples that carry one.
    assert all(len(line.split()) == 2 for line in board_text.decode().splitlines()
               if line and not line.startswith("#") and "{" not in line)


@needs_prom
def test_promtool_finds_nothing_to_lint(board_text: bytes) -> None:
    assert promtool_lint(board_text) == ""


@needs_prom
def test_promtool_is_a_witness_that_can_fail() -> None:
    assert "counter metrics should have \"_total\" suffix" in promtool_lint(
        b"# HELP sortie_bad A counter.\n# TYPE sortie_bad counter\nsortie_bad 1\n")


def test_the_file_is_replaced_whole_and_readable_by_node_exporter(tmp_path: Path) -> None:
    w = TextfileWriter(tmp_path)
    first = b"# HELP a_total A.\n# TYPE a_total counter\na_total 1\n"
    old = os.umask(0o077)  # the agent's umask
    try:
        w.write(first)
    finally:
        os.umask(old)
    assert (tmp_path / FILE_NAME).stat().st_mode & 0o777 == 0o644
    big = render([]) + b"".join(f"x_{i} {i}\n".encode() for i in range(20_000))
    small = b"y 1\n"
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(len((tmp_path / FILE_NAME).read_bytes()))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(200):
            w.write(big)
            w.write(small)
    finally:
        stop.set()
        reader.join()
    assert seen <= {len(first), len(big), len(small)}, sorted(seen)[:5]  # never half a file
    assert sorted(p.name for p in tmp_path.iterdir()) == [FILE_NAME]
    w.remove()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(AgentError, match=r"metrics\.textfile_dir: cannot write"):
        TextfileWriter(tmp_path / "missing").write(small)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def node_exporter(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    port = free_port()
    p = subprocess.Popen([str(NODE_EXPORTER), f"--web.listen-address=127.0.0.1:{port}",
                          "--collector.disable-defaults", "--collector.textfile",
                          f"--collector.textfile.directory={textfiles}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_sync(lambda: scrape(url) is not None, 10, 0.05)
        yield textfiles, url
    finally:
        p.terminate()
        p.wait(10)


def scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return str(r.read().decode())
    except OSError:
        return None


@needs_prom
def test_node_exporter_serves_the_boards_metrics(board_text: bytes,
                                                 node_exporter: tuple[Path, str]) -> None:
    textfiles, url = node_exporter
    TextfileWriter(textfiles).write(board_text)
    text = scrape(url)
    assert text is not None
    got = samples(text)
    assert value(got, "node_textfile_scrape_error") == 0, text[-2000:]
    # The staleness alert (docs/prometheus) keys on this series' file label.
    (mtime,) = [labels for name, labels in got if name == "node_textfile_mtime_seconds"]
    assert re.fullmatch(r"(.*/)?sortie\.prom", dict(mtime)["file"]), mtime
    assert value(got, "sortie_partition_cpu_budget_ratio", partition="hog",
                 criticality="E") == 0.3
    assert value(got, "sortie_workload_response_seconds_count", partition="fc",
                 workload="ctl", criticality="A") == 4


@needs_root_v1
@needs_prom
def test_a_running_agent_keeps_the_file_and_survives_an_unwritable_directory(
        tmp_path: Path, prefix: str, node_exporter: tuple[Path, str]) -> None:
    textfiles, url = node_exporter
    logs = Path(f"/tmp/{prefix}-logs")
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    cfg = agent_files(tmp_path, prefix, logs, mission_doc(
        partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]), name="demo"),
        accounting_period_ms=200, metrics={"textfile_dir": str(blocked / "sub")})
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg),
                              "--teardown"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)

    def status() -> dict | None:
        r = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(cfg),
                            "-o", "json"], capture_output=True, text=True, cwd=REPO,
                           check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def kinds() -> list[str]:
        st = status()
        return [e["kind"] for e in st["events"]] if st else []

    try:
        wait_for_sync(lambda: "metrics.unwritable" in kinds(), 20, 0.2)
        assert agent.poll() is None
        # The operator fixes the path: a restart is not needed (the config is read at
        # start, so the directory is made where the config points).
        blocked.unlink()
        (blocked / "sub").mkdir(parents=True)
        wait_for_sync(lambda: "metrics.written" in kinds(), 10, 0.2)
        text = (blocked / "sub" / FILE_NAME).read_text()
        got = samples(text)
        assert value(got, "sortie_workload_state", partition="fc", workload="ctl",
                     criticality="A", state="running") == 1
        assert value(got, "sortie_partition_pids", partition="fc", criticality="A") == 1
        mem = value(got, "sortie_partition_memory_bytes", partition="fc", criticality="A")
        assert 0 < mem < 64 << 20
        # And node_exporter serves what a live agent wrote.
        shutil.copy(blocked / "sub" / FILE_NAME, textfiles / FILE_NAME)
        served = samples(scrape(url) or "")
        assert value(served, "node_textfile_scrape_error") == 0
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        assert not (blocked / "sub" / FILE_NAME).exists()  # stale figures removed
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        shutil.rmtree(logs, ignore_errors=True)



DASHBOARD = REPO / "docs" / "grafana" / "sortie-fleet.json"
ALERTS = REPO / "docs" / "prometheus"


def linked(st: Status) -> Status:
    """The same board with MQTT and Kubernetes configured."""
    return dataclasses.replace(st, sources=SourcesStatus(
        files=st.sources.files,
        mqtt=MqttStatus("mqtts://broker:8883", True, 0, {"applied": 2, "rejected": 1,
                                                         "duplicate": 0}, 0, 0, 0, None,
                        False, None, None, None),
        kube=KubeStatus("https://k3s:6443", "board-7", False, "12", 3, ["sortie/m"],
                        {"lists": 2, "errors": 5, "decisions_applied": 1}, "404")))


def queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if "query" in v
              and isinstance(v["query"], dict)]
    return exprs


def test_the_dashboard_and_alerts_use_only_metrics_the_agent_writes(
        board_status: Status) -> None:
    text = render(families(linked(board_status), "board-7", AgentProcess.now())).decode()
    got = samples(text)
    # Families without samples on this board (no windows, nothing shed) still count.
    emitted = {name for name, _ in got} | set(re.findall(r"^# TYPE (\S+)", text, re.M))
    assert value(got, "sortie_kube_connected") == 0 and value(got, "sortie_mqtt_connected") == 1
    assert value(got, "sortie_mqtt_pushes_total", outcome="rejected") == 1
    assert value(got, "sortie_kube_errors_total") == 5
    assert value(got, "sortie_kube_decisions_total", decision="applied") == 1
    used = set()
    for expr in [*queries(), (ALERTS / "sortie-alerts.yml").read_text()]:
        used |= set(re.findall(r"\bsortie_[a-z_]+", expr))
    assert used, "no query found"
    unknown = {n for n in used if n not in emitted}
    assert not unknown, f"dashboard or alerts use metrics the agent never writes: {unknown}"


@needs_prom
def test_the_dashboards_queries_parse_and_the_alerts_fire_as_tested(tmp_path: Path) -> None:
    # promtool parses PromQL in rule files: every panel query becomes a recording rule.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": re.sub(r"\$\w+", ".*", q)}
        for i, q in enumerate(queries()) if not q.startswith("label_values")]}]}
    (tmp_path / "dash.yml").write_text(yaml.safe_dump(rules))
    for argv in (["check", "rules", str(tmp_path / "dash.yml")],
                 ["check", "rules", str(ALERTS / "sortie-alerts.yml")],
                 ["test", "rules", "sortie-alerts.test.yml"]):
        r = subprocess.run([str(PROMTOOL), *argv], capture_output=True, text=True,
                           cwd=ALERTS, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


def test_label_values_are_escaped_as_the_format_says() -> None:
    from agent.metrics import Metric
    nasty = 'a "quoted" \\ back\nslash'
    m = Metric("sortie_x_total", "counter", "X.", ("v",))
    m.add_metric([nasty], 3)
    h = Metric("sortie_y_seconds", "histogram", "Y.", ("v",))
    h.add_histogram([nasty], [("0.1", 1), ("+Inf", 2)], 0.25)
    got = samples(render([m, h]).decode())
    assert value(got, "sortie_x_total", v=nasty) == 3
    assert value(got, "sortie_y_seconds_bucket", v=nasty, le="+Inf") == 2
    assert value(got, "sortie_y_seconds_count", v=nasty) == 2
    assert value(got, "sortie_y_seconds_sum", v=nasty) == 0.25
