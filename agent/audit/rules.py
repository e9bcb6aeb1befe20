"""The audit's checks: facts in, findings out. Pure: no file, socket or process is
touched here (``gather`` reads the machine)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import stat
from collections.abc import Callable
from urllib.parse import urlsplit

from agent.audit.facts import Facts, PathFact, PathRole
from agent.audit.findings import Finding, Level, order
from agent.models import MissionProfile

# Linux capability numbers (include/uapi/linux/capability.h), for naming CapEff bits.
CAP_NAMES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID",
    "SETUID", "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN",
    "NET_RAW", "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT",
    "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE",
    "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL",
    "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND",
    "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE")
MAX_SAFE_PAYLOAD = 1 << 20
MAX_SAFE_TTL_S = 86_400


def caps(mask: int) -> list[str]:
    """Capability names of a CapEff mask."""
    return [f"CAP_{CAP_NAMES[i]}" if i < len(CAP_NAMES) else f"cap{i}"
            for i in range(64) if mask >> i & 1]


def _worst(levels: list[Level]) -> Level:
    return "FAIL" if "FAIL" in levels else "WARN" if "WARN" in levels else "PASS"


# -- 1 network -------------------------------------------------------------------------
def network(f: Facts) -> list[Finding]:
    out = []
    if not f.agent.running:
        out.append(Finding("1.1", "The agent listens on no network port", "WARN",
                           "the agent is not running: its sockets could not be checked",
                           "run the audit while `sortie run` flies the mission"))
    else:
        mine = [x for x in f.listeners if x.pid == f.agent.pid]
        out.append(Finding(
            "1.1", "The agent listens on no network port", "FAIL" if mine else "PASS",
            f"the agent (pid {f.agent.pid}) listens on " + ", ".join(
                f"{x.proto} {x.address}:{x.port}" for x in mine) if mine else
            f"the agent (pid {f.agent.pid}) has no listening TCP or UDP socket; its control "
            "surface is the root-only local socket",
            "the agent opens no port by design: find what added one (a debugging patch?)"))
    exposed = [x for x in f.listeners if x.pid != f.agent.pid and x.proto.startswith("tcp")
               and not _loopback(x.address)]
    out.append(Finding(
        "1.2", "No other service listens on the board's networks", "WARN" if exposed
        else "PASS",
        ("listening beyond loopback: " + ", ".join(
            f"{x.address}:{x.port} ({x.process or 'pid ' + str(x.pid)})" for x in exposed))
        if exposed else "no TCP port is open beyond loopback",
        "each open port is an entry point: remove the service, bind it to loopback, or "
        "firewall it to the ground network (node_exporter: --web.listen-address)"))
    return out


def _loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%", maxsplit=1)[0]).is_loopback
    except ValueError:
        return False


# -- 2 files and sockets ----------------------------------------------------------------
ROLES: list[tuple[str, PathRole, str]] = [
    ("2.1", "config", "The agent's config"),
    ("2.2", "hardware", "The hardware profile"),
    ("2.3", "profiles", "Baked-in mission profiles"),
    ("2.4", "state", "The state directory (last-known-good mission, replay ledger)"),
    ("2.5", "run", "The runtime directory"),
    ("2.6", "socket", "The local API socket"),
    ("2.7", "reports", "The job-report sockets"),
    ("2.8", "logs", "Workload logs"),
    ("2.9", "secret", "Broker credentials (password, client key)"),
    ("2.10", "certificate", "Broker certificates (CA, client certificate)"),
    ("2.11", "kubeconfig", "The Kubernetes credentials"),
    ("2.12", "metrics", "The metrics textfile directory"),
]
# Roles holding secrets: readable by root only.
SECRET: set[PathRole] = {"secret", "kubeconfig", "state"}
# Roles whose files belong to workload users by design (report sockets).
FOREIGN_OWNED: set[PathRole] = {"reports"}


def _path_problems(p: PathFact) -> list[tuple[Level, str]]:
    if not p.exists:
        return [("FAIL", f"{p.path} is missing (the config names it)")] if p.required else []
    assert p.mode is not None and p.uid is not None
    out: list[tuple[Level, str]] = []
    perm = stat.S_IMODE(p.mode)
    writable = perm & 0o022
    foreign_leaf = p.role in FOREIGN_OWNED and p.kind == "socket"
    if p.uid != 0 and not foreign_leaf:
        out.append(("FAIL", f"{p.path} is owned by uid {p.uid}, not root: that user can "
                            "change it"))
    if writable and not (p.kind == "dir" and perm & stat.S_ISVTX and p.role == "metrics"):
        who = "everyone" if perm & 0o002 else "its group"
        level: Level = "WARN" if p.role == "metrics" else "FAIL"
        out.append((level, f"{p.path} is writable by {who} (mode {perm:04o})"))
    if p.role in SECRET and perm & 0o077:
        out.append(("FAIL", f"{p.path} is readable by others than root (mode {perm:04o})"))
    if p.role == "socket" and perm & 0o077:
        out.append(("FAIL", f"{p.path}: others than root may connect (mode {perm:04o})"))
    if p.role == "logs" and p.kind == "file" and perm & 0o004:
        out.append(("WARN", f"{p.path}: every user can read this workload's log "
                            f"(mode {perm:04o})"))
    for a in p.ancestors:
        aperm = stat.S_IMODE(a.mode)
        if a.uid != 0:
            out.append(("FAIL", f"{a.path} (above {p.path}) is owned by uid {a.uid}: that "
                                "user can replace what is below"))
        elif aperm & 0o002 and not aperm & stat.S_ISVTX:
            out.append(("FAIL", f"{a.path} (above {p.path}) is writable by everyone "
                                f"(mode {aperm:04o}): anyone can replace what is below"))
        elif aperm & 0o020 and not aperm & stat.S_ISVTX:
            out.append(("FAIL", f"{a.path} (above {p.path}) is writable by its group "
                                f"(mode {aperm:04o})"))
        elif aperm & 0o002:
            out.append(("WARN", f"{a.path} (above {p.path}) is a shared sticky directory "
                                "(like /tmp): another user may create it first"))
    return out


REMEDY: dict[PathRole, str] = {
    "config": "chown root:root and chmod 0644 (0600 if it names secrets) the config and "
              "keep it in a root-owned directory such as /etc/sortie",
    "hardware": "chown root:root; chmod 0644",
    "profiles": "chown -R root:root and chmod -R go-w the profile directories: whoever "
                "writes a baked-in profile commands the board",
    "state": "chown -R root:root and chmod 0700 the state directory (the agent makes it so "
             "when it creates it)",
    "run": "chown root:root; chmod 0755 (systemd's RuntimeDirectory= does it)",
    "socket": "the agent makes the socket 0600 root; restart it if the mode was changed",
    "reports": "the agent makes the directory 0711 root and each socket 0600 for its "
               "workload's user; restart it if they were changed",
    "logs": "chown root:root and chmod 0640 the logs (the agent creates them so)",
    "secret": "chown root:root; chmod 0600",
    "certificate": "chown root:root; chmod 0644 (the key next to it 0600)",
    "kubeconfig": "chown root:root; chmod 0600",
    "metrics": "chown root:root; chmod 0755 the textfile directory (node_exporter only "
               "reads it)",
}


def files(f: Facts) -> list[Finding]:
    out = []
    for cid, role, title in ROLES:
        paths = [p for p in f.paths if p.role == role]
        if role == "config" and f.config_path is None:
            out.append(Finding(cid, title, "PASS", "no config file: the built-in defaults"))
            continue
        if not paths:
            continue
        problems = [x for p in paths for x in _path_problems(p)]
        present = [p.path for p in paths if p.exists]
        if not problems:
            reason = ("root-owned, not writable by others" + (", not readable by others"
                                                               if role in SECRET else "")
                      + f": {', '.join(present[:4])}{' ...' if len(present) > 4 else ''}"
                      if present else "not present")
            out.append(Finding(cid, title, "PASS", reason))
            continue
        level = _worst([lv for lv, _ in problems])
        out.append(Finding(cid, title, level,
                           "; ".join(m for lv, m in problems if lv == level)
                           + (f" (and {sum(lv != level for lv, _ in problems)} warning(s))"
                              if level == "FAIL" and any(lv == "WARN" for lv, _ in problems)
                              else ""), REMEDY[role]))
    return out


# -- 3 the planners' link (MQTT) --------------------------------------------------------
def mqtt(f: Facts) -> list[Finding]:
    m = f.config.mqtt
    if m is None:
        return [Finding("3.1", "Planner link over MQTT", "PASS", "not configured")]
    url = urlsplit(m.url)
    host = url.hostname or ""
    out = []
    if url.scheme == "mqtts":
        out.append(Finding("3.1", "The broker link is encrypted (TLS)", "PASS",
                           f"{m.url}: TLS, the broker's certificate verified"))
    else:
        local = host in ("localhost",) or _loopback(host)
        out.append(Finding("3.1", "The broker link is encrypted (TLS)",
                           "WARN" if local else "FAIL",
                           f"{m.url} is plain MQTT" + (" (on loopback)" if local else
                                                       ": pushes and status cross the "
                                                       "network readable and forgeable"),
                           "use mqtts://HOST:8883 with the broker's CA in mqtt.ca_file"))
    has_cert = m.cert_file is not None and m.key_file is not None
    has_pw = m.username is not None and m.password_file is not None
    out.append(Finding("3.2", "The board authenticates to the broker",
                       "PASS" if has_cert or has_pw else "WARN",
                       ("client certificate" if has_cert else
                        f"user {m.username} with a password file") if has_cert or has_pw else
                       "neither a client certificate nor a user and password: the broker "
                       "must allow anonymous clients, who may then publish on the board's "
                       "topics (status, events) in its name",
                       "set mqtt.cert_file and mqtt.key_file (or username and password_file) "
                       "and refuse anonymous clients at the broker"))
    out.append(Finding("3.3", "Unsigned profiles are refused",
                       "FAIL" if m.insecure_lab_mode else "PASS",
                       "insecure_lab_mode is on: any client of the broker can fly any "
                       "mission on this board" if m.insecure_lab_mode else
                       "insecure_lab_mode is off: only signed envelopes are read",
                       "set mqtt.insecure_lab_mode: false (it exists for lab benches only)"))
    bad = [kid for kid, pub in m.trusted_keys.items() if not _ed25519(pub)]
    revoked_trusted = [kid for kid, pub in m.trusted_keys.items()
                       if kid in m.revoked_keys or pub in m.revoked_keys]
    if bad:
        out.append(Finding("3.4", "Trusted planner keys", "FAIL",
                           f"not a base64 Ed25519 public key (32 bytes): {', '.join(bad)}",
                           "replace them with what `sortie keygen` prints"))
    elif not m.trusted_keys and not m.insecure_lab_mode:
        out.append(Finding("3.4", "Trusted planner keys", "WARN",
                           "no trusted key: no planner can push a mission over MQTT",
                           "add the planners' keys to mqtt.trusted_keys"))
    else:
        note = f"; revoked while listed: {', '.join(revoked_trusted)}" if revoked_trusted \
            else ""
        out.append(Finding("3.4", "Trusted planner keys", "PASS",
                           f"{len(m.trusted_keys)} key(s), {len(m.revoked_keys)} revoked{note}"))
    out.append(Finding("3.5", "Pushes are size-limited before parsing",
                       "WARN" if m.max_payload_bytes > MAX_SAFE_PAYLOAD else "PASS",
                       f"max_payload_bytes {m.max_payload_bytes} (announced to the broker "
                       "as the packet-size limit)",
                       f"keep mqtt.max_payload_bytes at or below {MAX_SAFE_PAYLOAD}: a "
                       "mission profile is a few KiB"))
    out.append(Finding("3.6", "Envelopes expire", "WARN" if m.max_envelope_ttl_s >
                       MAX_SAFE_TTL_S else "PASS",
                       f"max_envelope_ttl_s {m.max_envelope_ttl_s}",
                       f"keep mqtt.max_envelope_ttl_s at or below {MAX_SAFE_TTL_S}: a "
                       "captured envelope replays until it expires (on a board that lost "
                       "its ledger)"))
    return out


def _ed25519(pub: str) -> bool:
    try:
        return len(base64.b64decode(pub, validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


# -- 4 the cluster link (Kubernetes) ----------------------------------------------------
def kube(f: Facts) -> list[Finding]:
    k = f.config.kube
    if k is None:
        return [Finding("4.1", "Kubernetes control plane", "PASS", "not configured")]
    out = [Finding("4.1", "The board reads missions in its own namespace only",
                   "PASS" if len(k.namespaces) == 1 else "WARN",
                   f"namespaces {', '.join(k.namespaces)}"
                   + ("" if len(k.namespaces) == 1 else
                      ": several namespaces mean a cluster-wide watch and cluster-wide "
                      "read rights for the board's credentials"),
                   "give each fleet one missions namespace (kube.namespaces)"),
           Finding("4.2", "Root workloads are refused from the cluster",
                   "FAIL" if k.allow_root_workloads else "PASS",
                   "allow_root_workloads is on: MissionProfiles are not signed, so whoever "
                   "may write one in the namespace runs code as root on the board"
                   if k.allow_root_workloads else "allow_root_workloads is off",
                   "set kube.allow_root_workloads: false; fly root workloads from signed "
                   "MQTT pushes or baked-in profiles")]
    probe = f.kube
    if probe is None:
        out.append(Finding("4.3", "The cluster link works", "WARN",
                           "not checked (--offline)", "run the audit without --offline"))
        return out
    if probe.list_error is None:
        out.append(Finding("4.3", "The cluster link works", "PASS",
                           "the board lists its MissionProfiles"))
    else:
        from agent.sources.kube.objects import diagnose
        code, msg = probe.list_error
        told = diagnose("list/watch", code, msg)
        passing = (f"the API server is unreachable: {msg}" if code == 0 else
                   f"the API server answered {code}: {msg} (retried by the agent)")
        out.append(Finding("4.3", "The cluster link works", "FAIL" if told else "WARN",
                           told or passing,
                           "as said" if told else "check kube.kubeconfig's server and the "
                           "network; the board flies its last mission meanwhile"))
    if probe.review_error is not None:
        out.append(Finding("4.4", "The board's credentials grant what it needs, no more",
                           "WARN", f"access reviews failed: {probe.review_error}",
                           "allow SelfSubjectAccessReview (every authenticated user may)"))
        return out
    missing = [w for w, ok in probe.needed.items() if not ok]
    excess = [w for w, ok in probe.excess.items() if ok]
    level: Level = "FAIL" if missing or excess else "PASS"
    parts = []
    if missing:
        parts.append(f"missing: {', '.join(missing)}")
    if excess:
        parts.append(f"more than a board needs: {', '.join(excess)} (a board's stolen "
                     "credentials would reach that far)")
    out.append(Finding("4.4", "The board's credentials grant what it needs, no more", level,
                       "; ".join(parts) or f"{len(probe.needed)} needed rights granted, "
                       f"none of {len(probe.excess)} others",
                       "bind the board's ServiceAccount to docs/kube/rbac.yaml's roles only"))
    return out


# -- 5 kernel and host ------------------------------------------------------------------
def kernel(f: Facts) -> list[Finding]:
    kf = f.kernel
    out = []
    if kf.cgroup_version is None:
        out.append(Finding("5.1", "cgroups usable", "FAIL", kf.cgroup_error or "unknown",
                           "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1) or the "
                           "v1 cpu, cpuacct, cpuset, memory, pids and freezer controllers"))
    else:
        feats = kf.features
        missing = [n for n, ok in (("freezer (time windows, health stops)",
                                    feats.freezer if feats else False),
                                   ("CFS burst", feats.cfs_burst if feats else False))
                   if not ok]
        out.append(Finding("5.1", "cgroups usable", "WARN" if missing else "PASS",
                           f"cgroup {kf.cgroup_version}" + (
                               f"; missing: {', '.join(missing)}" if missing else
                               "; freezer and CFS burst available"),
                           "enable the missing controllers in the kernel and the mounts"))
    if f.mission is None:
        out.append(Finding("5.2", "The mission fits this kernel and board", "WARN",
                           "no mission found (none flying, none baked in)",
                           "bake a profile into the image (profile_dirs)"))
    elif f.admission:
        out.append(Finding("5.2", "The mission fits this kernel and board", "FAIL",
                           f"{f.mission.name} ({f.mission_source}) would be refused: "
                           + "; ".join(str(v) for v in f.admission[:5])
                           + (" ..." if len(f.admission) > 5 else ""),
                           "fix the mission (sortie check PROFILE) or the kernel "
                           "(RT group scheduling, SCHED_DEADLINE, freezer)"))
    else:
        out.append(Finding("5.2", "The mission fits this kernel and board", "PASS",
                           f"{f.mission.name} generation {f.mission.generation} "
                           f"({f.mission_source}) is admitted with this kernel's features"))
    if kf.rt_runtime_us == -1:
        out.append(Finding("5.3", "Real-time tasks cannot starve the board", "FAIL",
                           "kernel.sched_rt_runtime_us is -1: a runaway SCHED_FIFO task "
                           "holds its core for ever, the agent and the OS included",
                           "sysctl kernel.sched_rt_runtime_us=950000 (the default)"))
    else:
        out.append(Finding("5.3", "Real-time tasks cannot starve the board", "PASS",
                           f"kernel.sched_rt_runtime_us {kf.rt_runtime_us}"
                           if kf.rt_runtime_us is not None else "RT throttling as built"))
    out.append(_isolation(f.mission, kf.cmdline))
    out.append(Finding("5.5", "No swap", "WARN" if kf.swap_kib else "PASS",
                       f"{kf.swap_kib // 1024} MiB of swap active: a partition's pages may "
                       "be swapped out, and a page fault then takes milliseconds from its "
                       "deadline" if kf.swap_kib else "no swap active",
                       "swapoff -a and remove swap from /etc/fstab"))
    out.append(Finding("5.6", "The clock is synchronised",
                       "PASS" if kf.clock_synced else "WARN",
                       "the kernel's clock is synchronised (NTP state OK)" if kf.clock_synced
                       else "the kernel's clock is not synchronised" if kf.clock_synced is
                       False else "the NTP state could not be read",
                       "run a time service (systemd-timesyncd, chrony; GNSS time in "
                       "flight): envelope expiry and logs need the right time"))
    a = f.agent
    if not a.running:
        out.append(Finding("5.7", "The agent runs under systemd's watchdog", "WARN",
                           "the agent is not running", "systemctl start sortie"))
    else:
        out.append(Finding("5.7", "The agent runs under systemd's watchdog",
                           "PASS" if a.watchdog_usec else "WARN",
                           f"WatchdogSec is {int(a.watchdog_usec) / 1e6:g} s"
                           if a.watchdog_usec and a.watchdog_usec.isdigit() else
                           "no watchdog: a hung agent would go unnoticed",
                           "run it from the shipped sortie.service (Type=notify, "
                           "WatchdogSec=, KillMode=process)"))
    return out


def _isolation(mission: MissionProfile | None, cmdline: str) -> Finding:
    dedicated = sorted({c for p in (mission.partitions if mission else [])
                        for c in p.cpu.dedicated_cores})
    if not dedicated:
        return Finding("5.4", "Dedicated cores are isolated from the kernel's load", "PASS",
                       "no partition holds dedicated cores")
    from agent.cgroups.fs import parse_cpu_list
    isolated: set[int] = set()
    for arg in cmdline.split():
        key, _, val = arg.partition("=")
        if key in ("isolcpus", "nohz_full") and val:
            spec = ",".join(x for x in val.split(",") if x and x[0].isdigit())
            try:
                isolated |= set(parse_cpu_list(spec))
            except ValueError:
                continue
    missing = [c for c in dedicated if c not in isolated]
    return Finding("5.4", "Dedicated cores are isolated from the kernel's load",
                   "WARN" if missing else "PASS",
                   f"dedicated cores {missing} are not in isolcpus= / nohz_full=: kernel "
                   "threads, interrupts and the tick still run there (the deadline bounds' "
                   "latency allowance must cover them)" if missing else
                   f"dedicated cores {dedicated} are isolated on the kernel command line",
                   f"boot with isolcpus=nohz,domain,{','.join(map(str, missing))} "
                   f"nohz_full={','.join(map(str, missing))}")


# -- 6 workloads ------------------------------------------------------------------------
def workloads(f: Facts) -> list[Finding]:
    out = []
    m = f.mission
    declared_root = [f"{p.name}/{w.name}" for p in (m.partitions if m else [])
                     for w in p.workloads if w.user in (0, "root")]
    live_root = [f"{x.partition}/{x.workload} (pid {x.pid})" for x in f.procs if x.euid == 0
                 and f"{x.partition}/{x.workload}" not in declared_root]
    level: Level = "FAIL" if live_root else "WARN" if declared_root else "PASS"
    reason = []
    if live_root:
        reason.append(f"running as root though not declared so: {', '.join(live_root)}")
    if declared_root:
        reason.append(f"declared to run as root: {', '.join(declared_root)}")
    out.append(Finding("6.1", "Workloads do not run as root", level,
                       "; ".join(reason) or ("no workload runs as root" + (
                           f" ({len(f.procs)} processes checked)" if f.procs else
                           " (declared users; the agent is not running)")),
                       "give each workload its own unprivileged user (workloads[].user)"))
    declared = {f"{p.name}/{w.name}": set(w.capabilities) for p in (m.partitions if m else [])
                for w in p.workloads}
    extra = []
    for x in f.procs:
        held = set(caps(x.cap_eff)) - declared.get(f"{x.partition}/{x.workload}", set())
        if held and x.euid != 0:
            extra.append(f"{x.partition}/{x.workload}: {', '.join(sorted(held))}")
    with_caps = sorted(k for k, v in declared.items() if v)
    out.append(Finding("6.2", "Workloads hold no capabilities they did not declare",
                       "FAIL" if extra else "WARN" if with_caps else "PASS",
                       f"undeclared capabilities held: {'; '.join(extra)}" if extra else
                       f"capabilities declared for {', '.join(with_caps)}" if with_caps else
                       "no workload holds a capability",
                       "drop what is not needed (workloads[].capabilities)"))
    containers = [x for x in f.procs if x.container]
    open_ = [f"{x.partition}/{x.workload} (pid {x.pid})" for x in containers if x.seccomp == 0]
    out.append(Finding("6.3", "Containers run under seccomp", "FAIL" if open_ else "PASS",
                       f"without a seccomp filter: {', '.join(open_)}" if open_ else
                       f"{len(containers)} container process(es) filtered" if containers
                       else "no container runs",
                       "the agent's runc spec carries a default seccomp profile: start "
                       "containers through the agent only"))
    privs = [f"{x.partition}/{x.workload} (pid {x.pid})" for x in f.procs
             if not x.no_new_privs]
    out.append(Finding("6.4", "Workloads cannot gain privileges (no_new_privs)",
                       "FAIL" if privs else "PASS",
                       f"no_new_privs is off for {', '.join(privs)}: a setuid binary would "
                       "make them root" if privs else
                       f"no_new_privs set for all {len(f.procs)} processes" if f.procs
                       else "no workload process runs",
                       "the agent sets no_new_privs for every workload: restart it through "
                       "the agent"))
    return out


# -- 7 root slots and updates ----------------------------------------------------------------
def updates(f: Facts) -> list[Finding]:
    sf = f.slots
    if sf is None or sf.booted is None:
        return [Finding("7.1", "Root slots and signed updates", "PASS",
                        "not booted from a root slot (no A/B on this machine)")]
    out = [Finding("7.1", "The root slot is read-only",
                   "PASS" if sf.root_readonly else "WARN",
                   f"slot {sf.booted}: / is mounted " + (
                       "read-only" if sf.root_readonly else "read-write" if
                       sf.root_readonly is not None else "(not found in the mount table)"),
                   "boot the slot with `ro` (the image's GRUB does): a slot written at run "
                   "time is no longer what was installed and verified")]
    title = "Updates are verified before they are written (RAUC)"
    if sf.rauc is None:
        out.append(Finding("7.2", title, "FAIL", sf.rauc_error or
                           f"booted from slot {sf.booted} but /etc/rauc/system.conf is "
                           "missing: no verified way to update the other slot",
                           "rebuild the image with `sortie board build` (it installs RAUC "
                           "and its config)"))
        return out
    problems: list[tuple[Level, str]] = []
    ring = sf.keyring
    if ring is None:
        problems.append(("FAIL", "system.conf names no keyring: bundles are not verified"))
    else:
        problems += _path_problems(ring)
    system, keyring = sf.rauc.get("system", {}), sf.rauc.get("keyring", {})
    if system.get("bundle-formats", "").split() != ["verity"]:
        problems.append(("WARN", f"bundle-formats is {system.get('bundle-formats')!r}: "
                                 "only verity bundles are checked block by block"))
    if not keyring.get("check-purpose"):
        problems.append(("WARN", "no check-purpose: any certificate the CA signed may sign "
                                 "an update"))
    if problems:
        out.append(Finding("7.2", title, _worst([lv for lv, _ in problems]),
                           "; ".join(r for _, r in problems),
                           "use the image's /etc/rauc/system.conf (bundle-formats=verity, "
                           "check-purpose=codesign, a root-owned keyring)"))
    else:
        out.append(Finding("7.2", title, "PASS",
                           f"verity bundles for {system.get('compatible')!r}, signatures "
                           f"chained to {ring.path if ring else '?'} "
                           f"(purpose {keyring.get('check-purpose')})"))
    return out


SECTIONS: list[Callable[[Facts], list[Finding]]] = [network, files, mqtt, kube, kernel,
                                                    workloads, updates]


def judge(f: Facts) -> list[Finding]:
    return order([x for section in SECTIONS for x in section(f)])
