"""Reads the machine for the audit: file modes, listening sockets, the running agent and
its workloads' processes, kernel settings, and (unless offline) the cluster link. Reads
only: the audit changes nothing, so it can run beside a flying mission."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import socket
import stat
import struct
from pathlib import Path

import psutil

from agent.audit.facts import (
    AgentFact,
    Ancestor,
    Facts,
    KernelFact,
    KubeProbe,
    Listener,
    PathFact,
    PathKind,
    PathRole,
    ProcFact,
    SlotFact,
)
from agent.cgroups import CgroupBackend
from agent.errors import AgentError, Violation
from agent.models import AgentConfig, MissionProfile
from agent.status import Status

log = logging.getLogger("sortie.audit")


# -- files --------------------------------------------------------------------------------
def _kind(mode: int) -> PathKind:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "other"


def path_fact(path: Path, role: PathRole, required: bool = False) -> PathFact:
    path = Path(os.path.abspath(path))
    try:
        st = os.lstat(path)
    except OSError:
        return PathFact(str(path), role, False, required=required)
    ancestors = []
    for parent in path.parents:
        try:
            pst = os.stat(parent)
        except OSError:
            continue
        ancestors.append(Ancestor(str(parent), pst.st_uid, pst.st_mode))
    return PathFact(str(path), role, True, _kind(st.st_mode), st.st_uid, st.st_mode,
                    tuple(ancestors), required)


def _children(d: Path, only_sockets: bool = False) -> list[Path]:
    try:
        entries = sorted(d.iterdir())
    except OSError:
        return []
    return [e for e in entries if not only_sockets or e.is_socket()]


def paths(config: AgentConfig, config_path: Path | None) -> list[PathFact]:
    from agent.daemon import socket_path
    from agent.sources.files import profile_files

    out = []
    if config_path is not None:
        out.append(path_fact(config_path, "config", required=True))
    if config.hardware_profile is not None:
        out.append(path_fact(config.hardware_profile, "hardware", required=True))
    for d in config.profile_dirs:
        out.append(path_fact(d, "profiles"))
    out += [path_fact(f, "profiles") for f, _ in profile_files(list(config.profile_dirs))]
    out.append(path_fact(config.state_dir, "state"))
    out += [path_fact(f, "state") for f in _children(config.state_dir)]
    out.append(path_fact(config.run_dir, "run"))
    out.append(path_fact(socket_path(config), "socket"))
    if config.report_dir is not None:
        out.append(path_fact(config.report_dir, "reports"))
        out += [path_fact(s, "reports") for s in _children(config.report_dir, True)]
    out.append(path_fact(config.log_dir, "logs"))
    for d in _children(config.log_dir):
        out.append(path_fact(d, "logs"))
        out += [path_fact(f, "logs") for f in _children(d) if f.suffix in (".log", ".1")]
    if config.mqtt is not None:
        m = config.mqtt
        out += [path_fact(p, "secret", True) for p in (m.password_file, m.key_file) if p]
        out += [path_fact(p, "certificate", True) for p in (m.ca_file, m.cert_file) if p]
    if config.kube is not None and config.kube.kubeconfig is not None:
        out.append(path_fact(config.kube.kubeconfig, "kubeconfig", True))
    if config.metrics is not None:
        out.append(path_fact(config.metrics.textfile_dir, "metrics", True))
    return out


# -- network --------------------------------------------------------------------------------
def listeners() -> list[Listener]:
    out = []
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError) as exc:
        log.warning("cannot list sockets: %s", exc)
        return []
    for c in conns:
        tcp = c.type == socket.SOCK_STREAM
        if (tcp and c.status != psutil.CONN_LISTEN) or (not tcp and c.raddr) or not c.laddr:
            continue
        v6 = c.family == socket.AF_INET6
        proto = ("tcp" if tcp else "udp") + ("6" if v6 else "")
        name = None
        if c.pid is not None:
            try:
                name = psutil.Process(c.pid).name()
            except psutil.Error:
                name = None
        out.append(Listener(proto, c.laddr.ip, c.laddr.port, c.pid, name))  # type: ignore[arg-type]
    return out


# -- the running agent ----------------------------------------------------------------------
def agent_fact(config: AgentConfig) -> tuple[AgentFact, Status | None]:
    from agent.api.client import call
    from agent.daemon import socket_path
    from agent.status import parse

    path = socket_path(config)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(path))
            # The server's pid from the kernel, not from what it says about itself.
            pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET,
                                                         socket.SO_PEERCRED, 12))
    except OSError:
        return AgentFact(False), None
    env: dict[str, str] = {}
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
        env = dict(x.split("=", 1) for x in raw.decode(errors="replace").split("\0") if "=" in x)
    except OSError:
        pass
    status: Status | None = None
    try:
        status = parse(call(path, {"op": "status"})["status"])
    except Exception as exc:  # an agent of another version: the live checks say less
        log.warning("cannot read the agent's status: %s", exc)
    return AgentFact(True, pid, env.get("WATCHDOG_USEC"), "NOTIFY_SOCKET" in env), status


def _proc_status(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def procs(backend: CgroupBackend | None, status: Status) -> list[ProcFact]:
    """Every process in each workload's cgroup (children too), as the kernel sees it."""
    out = []
    for p in status.partitions:
        for w in p.workloads:
            pids: list[int] = []
            if backend is not None:
                try:
                    pids = backend.procs(p.name, w.name)
                except AgentError:
                    pids = []
            if not pids and w.pid is not None:
                pids = [w.pid]
            for pid in pids:
                try:
                    s = _proc_status(pid)
                except OSError:
                    continue  # exited meanwhile
                out.append(ProcFact(p.name, w.name, pid, w.image is not None,
                                    int(s.get("Uid", "0 0").split()[1]),
                                    int(s.get("CapEff", "0"), 16),
                                    int(s.get("Seccomp", "0")),
                                    s.get("NoNewPrivs", "0") == "1"))
    return out


# -- kernel ---------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


TIME_ERROR = 5
"""adjtimex(2): the clock is not synchronised."""


def clock_synced() -> bool | None:
    """The kernel's NTP state: whatever keeps time (timesyncd, chrony, ntpd, a GNSS
    daemon) clears the unsynchronised state through adjtimex; read with modes = 0."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        buf = ctypes.create_string_buffer(512)  # struct timex is ~208 bytes; modes = 0
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


def backend_of(config: AgentConfig) -> tuple[CgroupBackend | None, str | None]:
    """The agent's cgroup backend (read only here), or why there is none."""
    from agent.cgroups import make_backend
    try:
        return make_backend(config.cgroup_root, config.cgroup_prefix,
                            config.cgroup_version), None
    except AgentError as exc:
        return None, str(exc)


def kernel_fact(backend: CgroupBackend | None, error: str | None) -> KernelFact:
    version = backend.version if backend is not None else None
    features = backend.features() if backend is not None else None
    rt = _read("/proc/sys/kernel/sched_rt_runtime_us")
    swaps = (_read("/proc/swaps") or "").splitlines()[1:]
    swap_kib = sum(int(x.split()[2]) for x in swaps if len(x.split()) > 2
                   and x.split()[2].isdigit())
    return KernelFact(version, error, features, (_read("/proc/cmdline") or "").strip(),
                      int(rt) if rt and rt.strip().lstrip("-").isdigit() else None, swap_kib,
                      clock_synced())


# -- the mission ----------------------------------------------------------------------------
def mission_and_admission(config: AgentConfig, kf: KernelFact
                          ) -> tuple[MissionProfile | None, str, list[Violation]]:
    """The flying mission (the state file, root only), else the baked-in one; and what
    admission says of it on this board with this kernel's features."""
    from agent.cli.common import images_of, load_board
    from agent.engine.preflight import host_violations
    from agent.engine.state import StateStore
    from agent.policy.admission import admit
    from agent.policy.deadlines import TimingEnv
    from agent.sources import files

    mission: MissionProfile | None = None
    source = ""
    try:
        stored = StateStore(config.state_dir).load()
    except (AgentError, OSError):
        stored = None
    if stored is not None:
        mission, source = stored.mission, "flying, from the state file"
    else:
        scan = files.scan(list(config.profile_dirs), config.mission)
        if scan.chosen is not None:
            mission, source = scan.chosen.mission, f"baked in, {scan.chosen.origin.path}"
    if mission is None:
        return None, "", []
    from agent.cgroups.features import KernelFeatures
    feats = kf.features or KernelFeatures()
    env = TimingEnv(feats.tick_us, config.latency_allowance_us, config.isolate_os)
    try:
        board = load_board(None, config)
    except AgentError as exc:
        return mission, source, [Violation("hardware_profile", str(exc))]
    found = admit(mission, board, feats, timing=env)
    found += host_violations(mission, images_of(config))
    return mission, source, found


# -- the cluster link -----------------------------------------------------------------------
OTHER_NODE = "sortie-audit-not-this-board"


def _rights(config: AgentConfig) -> tuple[list[tuple[str, dict[str, str]]],
                                          list[tuple[str, dict[str, str]]]]:
    from agent.sources.kube.names import GROUP, PLURAL

    assert config.kube is not None
    ns = config.kube.namespaces[0] if len(config.kube.namespaces) == 1 else ""
    at = {"namespace": ns} if ns else {}
    mp = {"group": GROUP, "resource": PLURAL, **at}
    node, lease = config.node_name, {"group": "coordination.k8s.io", "resource": "leases",
                                     "namespace": "kube-node-lease"}
    needed = [
        (f"list {PLURAL}", {"verb": "list", **mp}),
        (f"watch {PLURAL}", {"verb": "watch", **mp}),
        (f"patch {PLURAL}/status", {"verb": "patch", "subresource": "status", **mp}),
        ("create events", {"verb": "create", "resource": "events", **at}),
        (f"patch node {node}", {"verb": "patch", "resource": "nodes", "name": node}),
        (f"watch node {node} (its hold)", {"verb": "watch", "resource": "nodes",
                                           "name": node}),
        (f"update lease {node}", {"verb": "update", "name": node, **lease}),
    ]
    excess = [
        (f"update {PLURAL} (their spec)", {"verb": "update", **mp}),
        (f"delete {PLURAL}", {"verb": "delete", **mp}),
        ("get secrets", {"verb": "get", "resource": "secrets", **at}),
        ("create pods", {"verb": "create", "resource": "pods", **at}),
        ("watch every node", {"verb": "watch", "resource": "nodes"}),
        ("patch another board's node", {"verb": "patch", "resource": "nodes",
                                        "name": OTHER_NODE}),
        ("list secrets cluster-wide", {"verb": "list", "resource": "secrets"}),
        ("create clusterrolebindings", {"verb": "create", "group": "rbac.authorization.k8s.io",
                                        "resource": "clusterrolebindings"}),
    ]
    return needed, excess


async def _kube_probe(config: AgentConfig) -> KubeProbe:
    from agent.sources.kube.api import KubeApi, KubeError

    assert config.kube is not None
    api = KubeApi(config.kube, timeout_s=5.0)
    try:
        list_error: tuple[int, str] | None = None
        try:
            await api.list_profiles()
        except KubeError as exc:
            list_error = (exc.code, exc.message)
        if list_error is not None and list_error[0] in (0, 401):
            return KubeProbe(list_error, review_error="the API server did not answer"
                             if list_error[0] == 0 else "the credentials are refused")
        needed, excess = _rights(config)
        try:
            got_needed = {w: await api.access_review(a) for w, a in needed}
            got_excess = {w: await api.access_review(a) for w, a in excess}
        except KubeError as exc:
            return KubeProbe(list_error, review_error=str(exc))
        return KubeProbe(list_error, got_needed, got_excess)
    finally:
        await api.close()


def kube_probe(config: AgentConfig) -> KubeProbe:
    try:
        return asyncio.run(_kube_probe(config))
    except AgentError as exc:  # a kubeconfig that cannot be loaded
        return KubeProbe((0, str(exc)), review_error=str(exc))


RAUC_CONF = Path("/etc/rauc/system.conf")


def slot_fact(cmdline: str, mounts: str | None, conf_path: Path = RAUC_CONF) -> SlotFact:
    """The slot booted, how / is mounted (the last / in the mount table wins), RAUC's
    config and its keyring."""
    import configparser

    from agent import slots
    booted = slots.state({}, cmdline).booted
    root_ro = None
    for line in (mounts or "").splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[1] == "/":
            root_ro = "ro" in fields[3].split(",")
    if not conf_path.exists():
        return SlotFact(booted, root_ro, None)
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(conf_path.read_text())
    except (OSError, configparser.Error) as exc:
        return SlotFact(booted, root_ro, None, f"{conf_path}: {exc}")
    conf = {name: dict(parser[name]) for name in parser.sections()}
    ring = conf.get("keyring", {}).get("path")
    keyring = None
    if ring:
        where = Path(ring) if Path(ring).is_absolute() else conf_path.parent / ring
        keyring = path_fact(where, "certificate", required=True)
    return SlotFact(booted, root_ro, conf, None, keyring)


def gather(config: AgentConfig, config_path: Path | None, offline: bool = False) -> Facts:
    agent, status = agent_fact(config)
    backend, cgroup_error = backend_of(config)
    kf = kernel_fact(backend, cgroup_error)
    mission, source, admission = mission_and_admission(config, kf)
    return Facts(
        config=config, config_path=str(config_path) if config_path else None,
        paths=paths(config, config_path), listeners=listeners(), agent=agent,
        kernel=kf, mission=mission, mission_source=source,
        admission=admission, procs=procs(backend, status) if status else [],
        kube=None if config.kube is None or offline else kube_probe(config),
        slots=slot_fact(kf.cmdline, _read("/proc/self/mounts")))

