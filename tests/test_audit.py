"""`sortie audit`: the rules on facts made to break them, then the real command on this
machine (a world-writable directory fails, named), against a running agent and its
workloads' processes, and against the control-plane simulator's RBAC."""

from __future__ import annotations

import base64
import dataclasses
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent.audit.facts import (
    AgentFact,
    Ancestor,
    Facts,
    KernelFact,
    KubeProbe,
    Listener,
    PathFact,
    ProcFact,
)
from agent.audit.findings import Finding, Report
from agent.audit.gather import kube_probe
from agent.audit.rules import caps, judge
from agent.cgroups.features import KernelFeatures
from agent.models import AgentConfig
from agent.models.config import KubeConfig, MqttConfig
from tests.conftest import REPO, needs_root_v1
from tests.helpers import agent_files, mission, mission_doc, partition, wait_for_sync, workload
from tests.kubesim import CRD, board_rbac, cluster

ROOT_DIRS = (Ancestor("/etc", 0, 0o40755), Ancestor("/", 0, 0o40755))
KEY = base64.b64encode(bytes(range(32))).decode()  # shaped as an Ed25519 public key


def facts(**over: Any) -> Facts:
    """A board with nothing wrong; each test breaks one thing."""
    base = Facts(
        config=AgentConfig(), config_path="/etc/sortie/agent.yaml",
        paths=[PathFact("/etc/sortie/agent.yaml", "config", True, "file", 0, 0o100644,
                        ROOT_DIRS, True),
               PathFact("/var/lib/sortie", "state", True, "dir", 0, 0o40700, ROOT_DIRS),
               PathFact("/run/sortie/sortie.sock", "socket", True, "socket", 0, 0o140600,
                        ROOT_DIRS)],
        listeners=[Listener("tcp", "127.0.0.1", 9100, 77, "node_exporter")],
        agent=AgentFact(True, 42, "10000000", True),
        kernel=KernelFact("v2", None, KernelFeatures(), "console=ttyS0", 950_000, 0, True),
        mission=mission(partition("fc", crit="A")), mission_source="flying",
        admission=[], procs=[ProcFact("fc", "w", 100, False, 65534, 0, 0, True)], kube=None)
    return dataclasses.replace(base, **over)


def by_id(found: list[Finding]) -> dict[str, Finding]:
    return {f.id: f for f in found}


def test_a_hardened_board_has_nothing_to_fail_or_warn() -> None:
    found = judge(facts())
    assert [f for f in found if f.level != "PASS"] == []
    assert Report(found).exit_code == 0


def test_modes_owners_and_the_directories_above() -> None:
    wide = facts(paths=[
        PathFact("/etc/sortie/profiles", "profiles", True, "dir", 0, 0o40777, ROOT_DIRS),
        PathFact("/etc/sortie/mqtt.pass", "secret", True, "file", 0, 0o100644, ROOT_DIRS),
        PathFact("/run/sortie/sortie.sock", "socket", True, "socket", 0, 0o140666, ROOT_DIRS),
        PathFact("/srv/agent.yaml", "config", True, "file", 1000, 0o100644, (
            Ancestor("/srv", 0, 0o40777), Ancestor("/", 0, 0o40755))),
        PathFact("/etc/sortie/ca.pem", "certificate", False, required=True),
        PathFact("/var/log/sortie/workloads", "logs", True, "dir", 0, 0o40755, ROOT_DIRS),
        PathFact("/var/log/sortie/workloads/fc/w.log", "logs", True, "file", 0, 0o100644,
                 ROOT_DIRS),
        PathFact("/tmp/x/state", "state", True, "dir", 0, 0o40700, (
            Ancestor("/tmp/x", 0, 0o40700), Ancestor("/tmp", 0, 0o41777)))])
    f = by_id(judge(wide))
    assert f["2.3"].level == "FAIL" and "/etc/sortie/profiles is writable by everyone " \
        "(mode 0777)" in f["2.3"].reason
    assert f["2.9"].level == "FAIL" and "readable by others than root" in f["2.9"].reason
    assert f["2.6"].level == "FAIL" and "others than root may connect" in f["2.6"].reason
    assert f["2.1"].level == "FAIL" and "owned by uid 1000" in f["2.1"].reason
    assert "/srv (above /srv/agent.yaml) is writable by everyone" in f["2.1"].reason
    assert f["2.10"].level == "FAIL" and "ca.pem is missing" in f["2.10"].reason
    assert f["2.4"].level == "WARN" and "shared sticky directory" in f["2.4"].reason
    assert f["2.8"].level == "WARN" and f["2.8"].reason == (
        "/var/log/sortie/workloads/fc/w.log: every user can read this workload's log "
        "(mode 0644)")  # the directory's 0755 alone lets no one read a log
    assert Report(list(f.values())).exit_code == 1


def test_the_agents_own_ports_fail_others_warn() -> None:
    f = by_id(judge(facts(listeners=[Listener("tcp", "0.0.0.0", 8080, 42, "sortie"),
                                     Listener("tcp6", "::", 22, 5, "sshd"),
                                     Listener("tcp", "127.0.0.1", 9100, 6, "x")])))
    assert f["1.1"].level == "FAIL" and "tcp 0.0.0.0:8080" in f["1.1"].reason
    assert f["1.2"].level == "WARN" and ":::22 (sshd)" in f["1.2"].reason
    assert "9100" not in f["1.2"].reason  # loopback is not the board's network


def test_mqtt_settings() -> None:
    lab = AgentConfig(mqtt=MqttConfig(url="mqtt://ground:1883", insecure_lab_mode=True,
                                      trusted_keys={"ok": KEY, "bad": "not-a-key"},
                                      max_payload_bytes=4 << 20))
    f = by_id(judge(facts(config=lab)))
    assert f["3.1"].level == "FAIL" and "plain MQTT" in f["3.1"].reason
    assert f["3.2"].level == "WARN" and f["3.3"].level == "FAIL"
    assert f["3.4"].level == "FAIL" and f["3.4"].reason.endswith(": bad")
    assert f["3.5"].level == "WARN"
    good = AgentConfig(mqtt=MqttConfig(url="mqtts://ground:8883", cert_file=Path("/c"),
                                       key_file=Path("/k"), trusted_keys={"ok": KEY},
                                       revoked_keys=["ok"]))
    g = by_id(judge(facts(config=good)))
    assert all(g[i].level == "PASS" for i in ("3.1", "3.2", "3.3", "3.4", "3.5", "3.6"))
    assert "revoked while listed: ok" in g["3.4"].reason


def test_kube_settings_and_rights() -> None:
    cfg = AgentConfig(kube=KubeConfig(namespaces=["a", "b"], allow_root_workloads=True))
    probe = KubeProbe((404, "the server could not find the requested resource"),
                      {"list missionprofiles": True, "patch node x": False},
                      {"get secrets": True, "create pods": False})
    f = by_id(judge(facts(config=cfg, kube=probe)))
    assert f["4.1"].level == "WARN" and f["4.2"].level == "FAIL"
    assert f["4.3"].level == "FAIL" and "kubectl apply -f docs/kube/missionprofile-crd.yaml" \
        in f["4.3"].reason
    assert f["4.4"].level == "FAIL" and "missing: patch node x" in f["4.4"].reason
    assert "more than a board needs: get secrets" in f["4.4"].reason
    outage = by_id(judge(facts(config=cfg, kube=KubeProbe((0, "connection refused")))))
    assert outage["4.3"].level == "WARN"  # an outage is not a misconfiguration


def test_kernel_and_host() -> None:
    bad = KernelFact("v1", None, KernelFeatures(freezer=False), "quiet", -1, 2 << 20, False)
    dedicated = mission(partition("fc", cores=[1], crit="A"))
    f = by_id(judge(facts(kernel=bad, mission=dedicated,
                          agent=AgentFact(True, 42, None, False))))
    assert f["5.1"].level == "WARN" and "freezer" in f["5.1"].reason
    assert f["5.3"].level == "FAIL" and f["5.5"].level == "WARN"
    assert f["5.4"].level == "WARN" and "isolcpus=nohz,domain,1" in f["5.4"].remedy
    assert f["5.6"].level == "WARN" and f["5.7"].level == "WARN"
    isolated = dataclasses.replace(bad, cmdline="isolcpus=nohz,domain,1 nohz_full=1")
    assert by_id(judge(facts(kernel=isolated, mission=dedicated)))["5.4"].level == "PASS"
    from agent.errors import Violation
    refused = by_id(judge(facts(admission=[Violation("partitions[0].budget.mode",
                                                     "rt needs CONFIG_RT_GROUP_SCHED")])))
    assert refused["5.2"].level == "FAIL" and "CONFIG_RT_GROUP_SCHED" in refused["5.2"].reason


def test_workload_processes_as_the_kernel_sees_them() -> None:
    m = mission(partition("fc", workloads=[workload("w"), workload("ctr", image="sha256:"
                                                                  + "0" * 64,
                                                                  capabilities=["CAP_NET_RAW"])]))
    procs = [ProcFact("fc", "w", 100, False, 0, 1 << 21, 0, False),  # root, SYS_ADMIN
             ProcFact("fc", "ctr", 101, True, 1000, 1 << 13, 0, True)]  # NET_RAW, declared
    f = by_id(judge(facts(mission=m, procs=procs)))
    assert f["6.1"].level == "FAIL" and "fc/w (pid 100)" in f["6.1"].reason
    assert f["6.3"].level == "FAIL" and "fc/ctr (pid 101)" in f["6.3"].reason
    assert f["6.4"].level == "FAIL" and "fc/w (pid 100)" in f["6.4"].reason
    assert f["6.2"].level == "WARN" and "declared for fc/ctr" in f["6.2"].reason
    assert caps(1 << 21 | 1 << 13) == ["CAP_NET_RAW", "CAP_SYS_ADMIN"]
    undeclared = [ProcFact("fc", "w", 100, False, 1000, 1 << 1, 2, True)]
    assert by_id(judge(facts(mission=m, procs=undeclared)))["6.2"].level == "FAIL"


# -- the real command --------------------------------------------------------------------
def audit(cfg: Path, *extra: str) -> tuple[int, dict[str, Finding]]:
    r = subprocess.run([sys.executable, "-m", "agent.cli", "audit", "--config", str(cfg),
                        "-o", "json", *extra], capture_output=True, text=True, cwd=REPO,
                       check=False, timeout=120)
    doc = json.loads(r.stdout)
    return r.returncode, {f["id"]: Finding(**f) for f in doc["findings"]}


@needs_root_v1
def test_the_audit_of_a_flying_board_and_a_world_writable_directory(
        tmp_path: Path, prefix: str) -> None:
    tmp_path.chmod(0o755)
    logs = Path(f"/tmp/{prefix}-logs")
    cfg = agent_files(tmp_path, prefix, logs, mission_doc(
        partition("fc", crit="A", workloads=[workload("ctl"), workload("two")]),
        name="demo"), report_dir=str(tmp_path / "report"))
    profiles = tmp_path / "profiles"
    agent = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg),
                              "--teardown"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for_sync(lambda: (tmp_path / "state" / "last-known-good.json").exists()
                      and (tmp_path / "run" / "sortie.sock").exists(), 20, 0.1)
        rc, f = audit(cfg)
        fails = {k: v for k, v in f.items() if v.level == "FAIL"}
        assert rc == 0 and not fails, fails
        assert f["1.1"].level == "PASS" and f"pid {agent.pid}" in f["1.1"].reason
        assert f["6.4"].level == "PASS" and "for all 2 processes" in f["6.4"].reason
        assert f["6.1"].level == "PASS" and f["5.2"].level == "PASS"
        assert "flying, from the state file" in f["5.2"].reason
        assert f["5.7"].level == "WARN"  # not under systemd here
        # A directory anyone may write: whoever can, commands the board.
        profiles.chmod(0o777)
        rc, f = audit(cfg)
        assert rc == 1 and f["2.3"].level == "FAIL"
        assert f"{profiles} is writable by everyone (mode 0777)" in f["2.3"].reason
        profiles.chmod(0o755)
        (tmp_path / "state").chmod(0o755)
        rc, f = audit(cfg)
        assert rc == 1 and f["2.4"].level == "FAIL" and "readable by others" in f["2.4"].reason
        (tmp_path / "state").chmod(0o700)
        text = subprocess.run([sys.executable, "-m", "agent.cli", "audit", "--config",
                               str(cfg)], capture_output=True, text=True, cwd=REPO,
                              check=False).stdout
        assert "2.3 Baked-in mission profiles" in text and "[FAIL]" not in text
        assert text.splitlines()[-1].endswith(" 0 failed")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        import shutil
        shutil.rmtree(logs, ignore_errors=True)


def test_a_bad_config_is_a_clear_refusal(tmp_path: Path) -> None:
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("mqtt: {url: 'http://x'}\n")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "audit", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 1 and "mqtt.url" in r.stderr


def test_the_cluster_link_and_the_boards_rights_against_the_simulators_rbac(
        tmp_path: Path) -> None:
    from simulator.kubeapi.rbac import Authorizer
    with cluster(tmp_path) as c:
        c.server.add_subject("board", board_rbac("b1"))
        as_board = c.server.kubeconfig(tmp_path / "board.kubeconfig", token="board")
        cfg = AgentConfig(node_name="b1", kube=KubeConfig(kubeconfig=as_board,
                                                          namespaces=["sortie-missions"]))
        f = by_id(judge(facts(config=cfg, kube=kube_probe(cfg))))
        assert f["4.3"].level == "FAIL" and "CRD is not installed" in f["4.3"].reason
        c.kubectl("apply", "-f", str(CRD))
        f = by_id(judge(facts(config=cfg, kube=kube_probe(cfg))))
        assert f["4.3"].level == "PASS"
        assert f["4.4"].level == "PASS", f["4.4"].reason
        # The admin's kubeconfig on a board: everything works, and far too much is allowed.
        admin = AgentConfig(node_name="b1", kube=KubeConfig(kubeconfig=c.kubeconfig,
                                                            namespaces=["sortie-missions"]))
        f = by_id(judge(facts(config=admin, kube=kube_probe(admin))))
        assert f["4.4"].level == "FAIL" and "get secrets" in f["4.4"].reason
        # A board bound to nothing: the list is forbidden, with the RBAC remedy.
        c.server.add_subject("nobody", Authorizer("system:serviceaccount:x:y", []))
        none = AgentConfig(node_name="b1", kube=KubeConfig(
            kubeconfig=c.server.kubeconfig(tmp_path / "none.kubeconfig", token="nobody"),
            namespaces=["sortie-missions"]))
        f = by_id(judge(facts(config=none, kube=kube_probe(none))))
        assert f["4.3"].level == "FAIL" and "rbac.yaml" in f["4.3"].reason
        assert f["4.4"].level == "FAIL" and "missing: list missionprofiles" in f["4.4"].reason
    gone = by_id(judge(facts(config=cfg, kube=kube_probe(cfg))))  # the server is down
    assert gone["4.3"].level == "WARN" and gone["4.4"].level == "WARN"


# -- 7 root slots and updates ---------------------------------------------------------
RAUC = {"system": {"compatible": "sortie-b1", "bootloader": "custom",
                   "bundle-formats": "verity"},
        "keyring": {"path": "/etc/rauc/keyring.pem", "check-purpose": "codesign"}}
KEYRING = PathFact("/etc/rauc/keyring.pem", "certificate", True, "file", 0, 0o100644,
                   ROOT_DIRS, True)


def test_a_slotted_board_updates_only_through_verified_bundles() -> None:
    from agent.audit.facts import SlotFact
    good = by_id(judge(facts(slots=SlotFact("B", True, RAUC, None, KEYRING))))
    assert good["7.1"].level == good["7.2"].level == "PASS", (good["7.1"], good["7.2"])
    assert "codesign" in good["7.2"].reason and "keyring.pem" in good["7.2"].reason
    rw = by_id(judge(facts(slots=SlotFact("B", False, RAUC, None, KEYRING))))["7.1"]
    assert rw.level == "WARN" and "read-write" in rw.reason
    none = by_id(judge(facts(slots=SlotFact("A", True, None))))["7.2"]
    assert none.level == "FAIL" and "system.conf is missing" in none.reason
    plain = {**RAUC, "system": {**RAUC["system"], "bundle-formats": "plain verity"},
             "keyring": {"path": "/etc/rauc/keyring.pem"}}
    weak = by_id(judge(facts(slots=SlotFact("A", True, plain, None, KEYRING))))["7.2"]
    assert weak.level == "WARN" and "bundle-formats" in weak.reason \
        and "check-purpose" in weak.reason
    lost = PathFact("/etc/rauc/keyring.pem", "certificate", False, required=True)
    gone = by_id(judge(facts(slots=SlotFact("A", True, RAUC, None, lost))))["7.2"]
    assert gone.level == "FAIL" and "keyring.pem is missing" in gone.reason
    open_ring = PathFact("/etc/rauc/keyring.pem", "certificate", True, "file", 0, 0o100666,
                         ROOT_DIRS, True)
    writable = by_id(judge(facts(slots=SlotFact("A", True, RAUC, None, open_ring))))["7.2"]
    assert writable.level == "FAIL", writable
    # Not an A/B board (a development machine): nothing to judge, said so.
    dev = by_id(judge(facts()))["7.1"]
    assert dev.level == "PASS" and "not booted from a root slot" in dev.reason


def test_the_slot_facts_come_from_the_command_line_the_mounts_and_raucs_config(
        tmp_path: Path) -> None:
    from agent.audit.gather import slot_fact
    conf = tmp_path / "system.conf"
    (tmp_path / "keyring.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    conf.write_text("[system]\ncompatible=sortie-b1\nbundle-formats=verity\n"
                    "[keyring]\npath=keyring.pem\ncheck-purpose=codesign\n")
    mounts = ("/dev/root / ext4 rw,relatime 0 0\n"
              "/dev/vda2 / ext4 ro,relatime 0 0\n"   # the last / wins (the slot)
              "/dev/vda4 /data ext4 rw,noatime 0 0\n")
    sf = slot_fact("root=PARTLABEL=rootfs-b ro sortie.slot=B", mounts, conf)
    assert (sf.booted, sf.root_readonly) == ("B", True)
    assert sf.rauc is not None and sf.rauc["keyring"]["check-purpose"] == "codesign"
    assert sf.keyring is not None and sf.keyring.exists  # relative to system.conf
    assert slot_fact("quiet", mounts, tmp_path / "absent").rauc is None
    conf.write_text("not an ini file\n")
    broken = slot_fact("sortie.slot=A", mounts, conf)
    assert broken.rauc is None and broken.rauc_error and "system.conf" in broken.rauc_error
