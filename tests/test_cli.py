"""The sortie command as a user runs it: exit codes, messages, schema, hw detect, and a
real agent process driven through files, the unix socket, SIGKILL and restart."""

from __future__ import annotations

import copy
import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent import cli
from agent.models import AgentConfig, HardwareProfile
from agent.runtime.procs import cmdline, is_alive, parent_pid
from agent.status import parse, to_json
from tests.conftest import CGROUP_ROOT, REPO, needs_root_v1
from tests.helpers import mission_doc, partition, wait_for_sync, workload


def sortie(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True,
                          text=True, timeout=60, check=check, cwd=REPO)


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.rename(path)
    return path


HW = str(REPO / "hwprofiles" / "raspberry-pi-4.yaml")


def test_check_admits_the_demo_on_every_shipped_board() -> None:
    for hw in sorted((REPO / "hwprofiles").glob("*.yaml")):
        r = sortie("check", str(REPO / "schedules" / "demo.yaml"), "--hw", str(hw))
        assert r.returncode == 0, (hw.name, r.stderr)
        assert "admitted" in r.stdout


def test_check_rejects_with_every_reason_and_exit_1(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", mission_doc(
        partition("a", quota=500, cores=[9]), partition("a", period=2_000_000)))
    r = sortie("check", str(bad), "--hw", HW)
    assert r.returncode == 1
    for needle in ("partitions[0].budget.quota_us", "partitions[0].cpu.dedicated_cores",
                   "partitions[1].name", "partitions[1].budget.period_us"):
        assert needle in r.stderr
    j = sortie("check", str(bad), "--hw", HW, "-o", "json")
    assert j.returncode == 1 and json.loads(j.stdout)["admitted"] is False


def test_check_reports_malformed_and_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("name: [unclosed\n")
    r = sortie("check", str(tmp_path / "m.yaml"), "--hw", HW)
    assert r.returncode == 1 and "malformed YAML" in r.stderr and "line" in r.stderr
    r = sortie("check", str(tmp_path / "nope.yaml"), "--hw", HW)
    assert r.returncode == 1 and "cannot read" in r.stderr


def test_host_checks_name_missing_users_and_commands(tmp_path: Path) -> None:
    p = write(tmp_path / "m.yaml", mission_doc(partition("a", workloads=[
        workload("x", user="no-such-user-xyz"), workload("y", command=["no-such-cmd-xyz"])])))
    r = sortie("check", str(p), "--hw", HW, "--host-checks")
    assert r.returncode == 1
    assert "partitions[0].workloads[0].user" in r.stderr and "does not exist" in r.stderr
    assert "partitions[0].workloads[1].command[0]" in r.stderr


def test_usage_errors_exit_2() -> None:
    assert sortie("check").returncode == 2
    assert sortie("status", "-o", "xml").returncode == 2
    assert sortie("frobnicate").returncode == 2


def test_schema_prints_the_documents_and_the_status() -> None:
    r = sortie("schema", check=True)
    schemas = json.loads(r.stdout)
    assert set(schemas) == {"mission", "hardware", "config", "status"}
    assert "partitions" in schemas["mission"]["properties"]
    st = json.loads(sortie("schema", "status", check=True).stdout)
    assert {"board", "mission", "partitions", "sources", "degraded"} <= set(st["properties"])


def test_hw_detect_writes_a_valid_profile(tmp_path: Path) -> None:
    out = tmp_path / "hw.yaml"
    sortie("hw", "detect", "--out", str(out), check=True)
    hw = HardwareProfile.model_validate(yaml.safe_load(out.read_text()))
    assert len(hw.cores) == os.cpu_count() and hw.memory_mib > 0


def test_run_without_root_explains_why(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert cli.main(["run"]) == 1
    assert "needs root" in capsys.readouterr().err


def test_run_with_a_missing_profile_is_a_usage_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cfg = write(tmp_path / "agent.yaml", {"state_dir": str(tmp_path / "state")})
    code = cli.main(["run", "--config", str(cfg), "--profile", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_plan_reports_an_agents_refusal_instead_of_planning_offline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An agent that answers "no" is not "no agent": the answer reaches the user."""
    import asyncio
    import threading

    from agent.api.server import serve

    async def refuse(_: dict) -> dict:
        raise ValueError("mission: the agent says no")

    cfg = write(tmp_path / "agent.yaml", {"state_dir": str(tmp_path / "state"),
                                          "run_dir": str(tmp_path / "run")})
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(tmp_path / "run" / "sortie.sock", {"plan": refuse}))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        wait_for_sync((tmp_path / "run" / "sortie.sock").exists, 5)
        code = cli.main(["plan", str(REPO / "schedules" / "demo.yaml"), "--config", str(cfg)])
        out = capsys.readouterr()
        assert code == 1
        assert "the agent says no" in out.err and "cgroups on this machine" not in out.out
    finally:
        loop.call_soon_threadsafe(task.cancel)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@needs_root_v1
def test_plan_without_an_agent_previews_on_the_machines_cgroups_and_changes_nothing(
        agent_config: AgentConfig, tmp_path: Path, prefix: str) -> None:
    cfg = write(tmp_path / "agent.yaml", {  # this machine as the board (detected)
        "state_dir": str(agent_config.state_dir), "run_dir": str(agent_config.run_dir),
        "cgroup_prefix": prefix})
    r = sortie("plan", str(REPO / "schedules" / "demo.yaml"), "--config", str(cfg),
               "--output", "json")
    got = json.loads(r.stdout)
    assert r.returncode == 0, r.stderr
    assert got["against"].startswith("the cgroups on this machine") and not got["violations"]
    assert any(a.startswith("ensure partition") for a in got["actions"])
    assert any(a.startswith("start workload") for a in got["actions"])
    assert not (CGROUP_ROOT / "cpu" / prefix).exists()  # a preview writes nothing


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    cfg = write(tmp_path / "agent.yaml", {"cgroup_prefix": "Bad Prefix!", "colour": "red"})
    r = sortie("check", str(REPO / "schedules" / "demo.yaml"), "--config", str(cfg))
    assert r.returncode == 1
    assert "cgroup_prefix" in r.stderr and "colour: unknown field" in r.stderr


def test_status_without_agent_says_so(tmp_path: Path) -> None:
    r = sortie("status", "--socket", str(tmp_path / "none.sock"))
    assert r.returncode == 1 and "no agent is listening" in r.stderr


# -- a real agent process ------------------------------------------------------------
@pytest.fixture
def agent_env(tmp_path: Path, prefix: str) -> Iterator[dict]:
    logs = Path(f"/tmp/{prefix}-logs")
    cfg = {"node_name": "t", "state_dir": str(tmp_path / "state"),
           "run_dir": str(tmp_path / "run"), "log_dir": str(logs),
           "cgroup_prefix": prefix, "agent_cgroup": True, "accounting_period_ms": 200,
           "isolate_os": False, "report_dir": f"/tmp/{prefix}-report",
           "profile_dirs": [str(tmp_path / "profiles")]}
    (tmp_path / "profiles").mkdir()
    write(tmp_path / "agent.yaml", cfg)
    procs: list[subprocess.Popen[str]] = []
    log = open(tmp_path / "agent.log", "a")  # noqa: SIM115 - closed at teardown

    def start(*extra: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config",
                              str(tmp_path / "agent.yaml"), *extra], cwd=REPO, text=True,
                             stdout=subprocess.DEVNULL, stderr=log)
        procs.append(p)
        wait_for_sync((tmp_path / "run" / "sortie.sock").exists, 15)
        return p

    yield {"dir": tmp_path, "config": str(tmp_path / "agent.yaml"), "start": start,
           "profiles": tmp_path / "profiles"}
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    log.close()
    import shutil
    shutil.rmtree(logs, ignore_errors=True)


def status(env: dict) -> dict:
    r = sortie("status", "--config", env["config"], "-o", "json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def try_status(env: dict) -> dict | None:
    """Status, or None while the agent is still coming up (e.g. a stale socket)."""
    r = sortie("status", "--config", env["config"], "-o", "json")
    return json.loads(r.stdout) if r.returncode == 0 else None


def pids(st: dict | None) -> dict[str, int]:
    if st is None:
        return {}
    return {f"{p['name']}/{w['name']}": w["pid"] for p in st["partitions"]
            for w in p["workloads"] if w.get("pid")}


@needs_root_v1
def test_agent_lifecycle_end_to_end(agent_env: dict, prefix: str) -> None:
    profiles = agent_env["profiles"]
    doc = mission_doc(partition("fc", cores=[1], crit="A", workloads=[workload("ctl")]),
                      partition("hog", crit="E", workloads=[workload("spin")]), name="demo")
    write(profiles / "demo.yaml", doc)
    agent = agent_env["start"]()

    # up, with a root-only socket
    st = wait_for_sync(lambda: len(pids(s := try_status(agent_env))) == 2 and s, 15)
    sock = agent_env["dir"] / "run" / "sortie.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert st["mission"]["origin"]["source"] == "file"
    # the answer is the typed contract, whole: read back and written out, nothing lost
    assert json.loads(json.dumps(to_json(parse(st)))) == st
    first = pids(st)
    own = Path(f"/proc/{agent.pid}/cgroup").read_text()
    assert f":cpuset:/{prefix}/agent\n" in own and f":cpu:/{prefix}/agent\n" in own
    # Its spawner goes with it: on the agent's cores, in the agent's budget.
    (spawner,) = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                  if parent_pid(p) == agent.pid and "spawnd" in cmdline(p)]
    assert Path(f"/proc/{spawner}/cgroup").read_text() == own
    table = sortie("status", "--config", agent_env["config"])
    assert "fc" in table.stdout and "running" in table.stdout

    # live change through the file: one more workload, nothing else restarted
    doc2 = {**doc, "generation": 2}
    doc2["partitions"][1]["workloads"].append(workload("extra"))
    write(profiles / "demo.yaml", doc2)
    st = wait_for_sync(lambda: len(pids(s := status(agent_env))) == 3 and s, 10)
    assert {k: v for k, v in pids(st).items() if k in first} == first

    # a bad profile is refused; the mission keeps flying
    bad = {**copy.deepcopy(doc2), "generation": 3}
    bad["partitions"][0]["budget"] = {"quota_us": 100, "period_us": 100_000}
    write(profiles / "demo.yaml", bad)
    wait_for_sync(lambda: any(e["kind"] == "mission.rejected"
                              for e in status(agent_env)["events"]), 10)
    assert status(agent_env)["mission"]["generation"] == 2
    plan = sortie("plan", str(profiles / "demo.yaml"), "--config", agent_env["config"])
    assert plan.returncode == 1 and "quota_us" in plan.stderr

    # An operator's hold (kept across the restart below).
    held = sortie("hold", "--reason", "pre-flight checks", "--config", agent_env["config"])
    assert held.returncode == 0 and "pre-flight checks" in held.stdout, held.stderr

    # SIGKILL: workloads keep running; a new agent adopts the same PIDs
    running = pids(status(agent_env))
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    assert all(is_alive(pid) for pid in running.values())
    write(profiles / "demo.yaml", doc2)  # restore the good file (generation 2)
    agent = agent_env["start"]("--teardown")
    st = wait_for_sync(lambda: len(pids(s := try_status(agent_env))) == 3 and s, 15)
    assert pids(st) == running
    assert all(w["adopted"] for p in st["partitions"] for w in p["workloads"])

    # Still held: a new generation waits, shown in status; released, it flies.
    assert "held by operator: pre-flight checks" in st["hold"]["held"]
    doc4 = {**copy.deepcopy(doc2), "generation": 4}
    doc4["partitions"][1]["workloads"].append(workload("late"))
    write(profiles / "demo.yaml", doc4)
    st = wait_for_sync(lambda: (s := status(agent_env))["hold"]["pending"] and s, 10)
    assert st["hold"]["pending"]["generation"] == 4 and st["mission"]["generation"] == 2
    table = sortie("status", "--config", agent_env["config"]).stdout
    assert "HELD: held by operator: pre-flight checks" in table
    assert "waiting: demo generation 4 from file" in table
    rel = sortie("release", "--config", agent_env["config"])
    assert rel.returncode == 0 and "generation 4 applies" in rel.stdout, rel.stdout
    st = wait_for_sync(lambda: len(pids(s := status(agent_env))) == 4 and s, 10)
    assert st["mission"]["generation"] == 4 and st["hold"]["held"] is None
    assert {k: v for k, v in pids(st).items() if k in running} == running
    running = pids(st)

    # teardown on SIGTERM removes everything
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(timeout=30) == 0
    assert not (CGROUP_ROOT / "cpu" / prefix).exists()
    assert not any(is_alive(pid) for pid in running.values())


def test_check_shows_each_deadline_bound_and_refuses_what_it_cannot_prove(
        tmp_path: Path) -> None:
    hw = write(tmp_path / "hw.yaml", {
        "name": "b", "arch": "x86_64", "cores": [{"id": 0}, {"id": 1}], "memory_mib": 4096,
        "reserved": {"cores": [0], "cpu_fraction": 0.2, "memory_mib": 512}})
    loop = {"name": "loop", "command": ["/bin/true"],
            "timing": {"period_us": 10_000, "wcet_us": 2_000}}
    fc = {"name": "fc", "criticality": "A", "memory_mib": 32, "workloads": [loop],
          "budget": {"mode": "rt", "quota_us": 1_000, "period_us": 100_000,
                     "rt": {"runtime_us": 8_000, "period_us": 10_000}}}
    ok = write(tmp_path / "ok.yaml", {"name": "m", "generation": 1, "partitions": [fc]})
    r = sortie("check", str(ok), "--hw", str(hw))
    assert r.returncode == 0, r.stderr
    assert "fc/loop" in r.stdout and "4000 us" in r.stdout and "ok" in r.stdout
    got = json.loads(sortie("check", str(ok), "--hw", str(hw), "-o", "json").stdout)
    (b,) = got["timing"]["workloads"]
    assert (b["response_bound_us"], b["deadline_us"], b["proven"]) == (4_000, 10_000, True)
    cfs = {**fc, "budget": {"quota_us": 50_000, "period_us": 100_000}}
    bad = write(tmp_path / "bad.yaml", {"name": "m", "generation": 1, "partitions": [cfs]})
    r = sortie("check", str(bad), "--hw", str(hw))
    assert r.returncode == 1
    assert "partitions[0].workloads[0].timing" in r.stderr and "rt mode" in r.stderr
