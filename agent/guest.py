"""PID 1 of a board image booted by QEMU (``/init`` execs it after mounting the kernel
filesystems): start the agent, report its status on the console for the host, reap
orphans, and power off cleanly when asked (``sortie-poweroff`` on the console, or after
``sortie.run_s`` seconds from the kernel command line).

Console lines for the host: ``SORTIE-GUEST ...`` (milestones), ``SORTIE-STATUS {json}``
(one per ``sortie.report_s`` seconds), ``SORTIE-STOPPED rc=N``.
PID 1 must never exit: every failure is printed and the guest powers off instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CONFIG = "/etc/sortie/agent.yaml"
SOCKET = Path("/run/sortie/sortie.sock")


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def options(cmdline: str) -> dict[str, str]:
    return dict(p.split("=", 1) for p in cmdline.split() if p.startswith("sortie.") and "=" in p)


FW_CFG = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/sortie.dev/options/raw")


def host_options() -> str:
    """What the host handed over: the kernel command line, and for a disk booted by its
    own bootloader QEMU's fw_cfg entry (the bootloader's command line is the disk's)."""
    text = Path("/proc/cmdline").read_text()
    why = ""
    if not FW_CFG.exists():
        # The initramfs path has no modules (and may have no modprobe on its PATH).
        try:
            r = subprocess.run(["/sbin/modprobe", "qemu_fw_cfg"], capture_output=True,
                               text=True, check=False)
            why = r.stderr.strip()
        except OSError as exc:
            why = str(exc)
    try:
        text += " " + FW_CFG.read_text()
    except OSError as exc:
        if "sortie.report_s" not in text:
            found = sorted(str(p) for p in Path("/sys/firmware").glob("qemu_fw_cfg/by_name/**"))
            say(f"SORTIE-GUEST no options from the host: {exc}; {why}; fw_cfg: {found}")
    return text


def cpu_stat(prefix: str, partition: str) -> dict[str, int]:
    """The kernel's own counters for a partition (cgroup v2 cpu.stat): the host computes
    long-window shares from them, independent of the agent's accounting."""
    path = Path("/sys/fs/cgroup") / prefix / f"p-{partition}" / "cpu.stat"
    with contextlib.suppress(OSError, ValueError):
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}
    return {}


def cpuset(prefix: str, partition: str) -> dict[str, str]:
    """Where the kernel really runs the partition: effective cpus and partition state."""
    d = Path("/sys/fs/cgroup") / prefix / f"p-{partition}"
    out = {}
    for name in ("cpuset.cpus.effective", "cpuset.cpus.partition"):
        with contextlib.suppress(OSError):
            out[name.split(".", 1)[1]] = (d / name).read_text().strip()
    return out


def summary(status: dict[str, Any]) -> dict[str, Any]:
    """What the host needs from the agent's status, on one console line."""
    parts = []
    prefix = (status.get("cgroup") or {}).get("prefix", "sortie")
    for p in status.get("partitions", []):
        use = p.get("usage") or {}
        stat = cpu_stat(prefix, p["name"])
        parts.append({"name": p["name"], "criticality": p.get("criticality"),
                      "usage_usec": stat.get("usage_usec"),
                      "nr_throttled": stat.get("nr_throttled"),
                      "cpuset": cpuset(prefix, p["name"]),
                      "budget": use.get("budget_share"), "share": use.get("share"),
                      "throttled_periods": use.get("throttled_periods"),
                      "periods": use.get("periods"),
                      "workloads": {w["name"]: w.get("state") for w in p.get("workloads", [])}})
    m = status.get("mission") or {}
    started = [since_boot_s(w["pid"]) for p in status.get("partitions", [])
               for w in p.get("workloads", []) if w.get("pid")]
    return {"board": status.get("board"), "cgroup": status.get("cgroup"),
            # Kernel start -> the last workload's process created (exec follows in ~1 ms).
            "last_workload_started_s": max((s for s in started if s is not None),
                                           default=None),
            "mission": {"name": m.get("name"), "generation": m.get("generation")} if m else None,
            "ready_after_s": status.get("ready_after_s"), "partitions": parts,
            "errors": status.get("errors", []), "uptime_s": uptime()}


def since_boot_s(pid: int) -> float | None:
    """When the process started, seconds after the kernel did (10 ms resolution)."""
    from agent.runtime.procs import start_ticks
    ticks = start_ticks(pid)
    return None if ticks is None else ticks / os.sysconf("SC_CLK_TCK")


def uptime() -> float:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/uptime").read_text().split()[0])
    return -1.0


def reap(agent_pid: int, done: threading.Event) -> None:
    """PID 1 inherits every orphan: reap them, but leave the agent to Popen (peek first
    with WNOWAIT so its exit code is not lost)."""
    while not done.is_set():
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = None
        if info is None or info.si_pid == agent_pid:
            time.sleep(0.2)
            continue
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def listen(stop: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "sortie-poweroff":
            stop.set()
            return


def power_off() -> None:
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sysrq-trigger").write_text("o")
    while True:
        time.sleep(1)


def report_once() -> None:
    """One ``SORTIE-STATUS`` line, once the agent's socket exists."""
    if not SOCKET.exists():
        return
    from agent.api.client import call
    try:
        say("SORTIE-STATUS " + json.dumps(summary(call(SOCKET, {"op": "status"},
                                                       5.0)["status"])))
    except Exception as exc:  # keep reporting: the host reads the next one
        say(f"SORTIE-GUEST status unavailable: {exc}")


def main_pid() -> int:
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "sortie.service"],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else 0


def pids_line() -> None:
    """``SORTIE-PIDS {"agent": PID, "workloads": {P/W: PID}}`` for the host."""
    from agent.api.client import call
    try:
        st = call(SOCKET, {"op": "status"}, 2.0)["status"]
    except Exception:  # a frozen agent does not answer: that is the point
        return
    pids = {f"{p['name']}/{w['name']}": w.get("pid") for p in st.get("partitions", [])
            for w in p.get("workloads", [])}
    say("SORTIE-PIDS " + json.dumps({"agent": main_pid(), "workloads": pids}))


def cli_json(what: str, *args: str) -> Any:
    """``sortie ARGS -o json`` in the guest; None (said on the console) when it fails."""
    r = subprocess.run(["/usr/local/bin/sortie", *args, "-o", "json"], capture_output=True,
                       text=True, check=False, timeout=60)
    try:
        return {"rc": r.returncode, "doc": json.loads(r.stdout)}
    except ValueError:
        say(f"SORTIE-GUEST {what} failed rc={r.returncode}: {r.stderr.strip()[-300:]}")
        return None


def audit_line() -> bool:
    """``SORTIE-AUDIT {json}``: the built image's posture, as `sortie audit` says it."""
    got = cli_json("audit", "audit", "--offline")
    if got is not None:
        say("SORTIE-AUDIT " + json.dumps({"rc": got["rc"], **got["doc"]}))
    return True


def slots_line() -> bool:
    """``SORTIE-SLOTS {json}``: the slots as the bootloader sees them; True once the
    booted slot was marked good (sortie-boot-check.service confirmed it)."""
    got = cli_json("slot status", "slot", "status")
    if got is None:
        return True
    st = got["doc"]
    say("SORTIE-SLOTS " + json.dumps(st))
    booted = st.get("booted")
    return bool(booted) and st["good"].get(booted) and not st["tried"].get(booted)


MEDIA = Path("/run/sortie-media")
DATA = Path("/var/lib/sortie")


def data_line() -> None:
    """``SORTIE-DATA {json}``: what the shared data partition holds (the agent's state
    files by sha256), to compare across slots and updates."""
    files = {}
    for f in sorted(DATA.rglob("*")):
        rel = f.relative_to(DATA)
        if rel.parts[0] in ("log", "rauc", "lost+found") or not f.is_file():
            continue  # the journal and RAUC's status change on every boot
        with contextlib.suppress(OSError):
            files[str(rel)] = hashlib.sha256(f.read_bytes()).hexdigest()
    mounted = any(line.split()[1] == str(DATA) for line in
                  Path("/proc/mounts").read_text().splitlines())
    say("SORTIE-DATA " + json.dumps({"mounted": mounted, "files": files}))


def install_from_media(names: list[str]) -> None:
    """Install the host's bundles (the update media, label SORTIE-UPD) in order through
    ``sortie slot install``; after the first one installed, reboot into it."""
    MEDIA.mkdir(exist_ok=True)
    dev = Path("/dev/disk/by-label/SORTIE-UPD")
    for _ in range(50):  # udev names it a moment after boot
        if dev.exists():
            break
        time.sleep(0.2)
    if subprocess.run(["mount", "-o", "ro", str(dev), str(MEDIA)],
                      check=False).returncode != 0:
        say("SORTIE-INSTALL " + json.dumps({"bundle": None, "rc": -1,
                                            "error": "no update media"}))
        return
    for name in names:
        say(f"SORTIE-GUEST installing {name}")
        t0 = time.monotonic()
        proc = subprocess.Popen(["/usr/local/bin/sortie", "slot", "install", str(MEDIA / name)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            say("SORTIE-RAUC " + line.rstrip())
        rc = proc.wait()
        got = cli_json("slot status", "slot", "status")
        say("SORTIE-INSTALL " + json.dumps({"bundle": name, "rc": rc,
                                            "seconds": round(time.monotonic() - t0, 2),
                                            "slots": got["doc"] if got else None}))
        if rc == 0:
            subprocess.run(["umount", str(MEDIA)], check=False)
            say("SORTIE-GUEST rebooting into the updated slot")
            subprocess.run(["systemctl", "reboot"], check=False)
            time.sleep(120)  # systemd stops this unit on the way down
            return
    subprocess.run(["umount", str(MEDIA)], check=False)


def time_restart(old: int, frozen_at: float, timeout_s: float = 60) -> None:
    """How long systemd's watchdog takes to replace a hung agent, and the new agent to
    adopt the mission (its socket answers with every workload running)."""
    from agent.api.client import call
    end = frozen_at + timeout_s
    restarted = None
    while time.monotonic() < end:
        pid = main_pid()
        if restarted is None and pid not in (0, old):
            restarted = time.monotonic()
        if restarted is not None:
            try:
                st = call(SOCKET, {"op": "status"}, 1.0)["status"]
            except Exception:  # not listening yet
                st = None
            if st and st.get("mission") and all(
                    w.get("state") == "running" for p in st.get("partitions", [])
                    for w in p.get("workloads", [])):
                say(f"SORTIE-GUEST watchdog restart after {restarted - frozen_at:.2f} s, "
                    f"mission adopted after {time.monotonic() - frozen_at:.2f} s")
                return
        time.sleep(0.05)
    say("SORTIE-GUEST watchdog restart not seen")


def report_under_systemd(run_s: float, report_s: float, freeze_s: float = 0,
                         install: list[str] | None = None) -> None:
    """Disk boots: systemd runs the agent (sortie.service); this only reports, and after
    ``run_s`` stops the service and powers the guest off the way a board would.
    ``freeze_s``: SIGSTOP the agent then, as a hang would (systemd's watchdog must
    restart it, and the restarted agent adopt the workloads)."""
    slot = options(Path("/proc/cmdline").read_text()).get("sortie.slot", "-")
    say(f"SORTIE-GUEST systemd uptime={uptime():.2f}s run_s={run_s or 'forever'} slot={slot}")
    start = time.monotonic()
    frozen = audited = slot_good = False
    data_line()
    # Bundles to install, and a slot on trial, keep the guest up past run_s until they
    # were tried and the boot check decided (a board booted from a slot).
    on_slot = slot in ("A", "B")
    while run_s <= 0 or time.monotonic() - start < run_s or install or (
            on_slot and not slot_good):
        report_once()
        pids_line()
        if not audited and SOCKET.exists():
            audited = audit_line()
        if not slot_good:
            slot_good = slots_line()
            if slot_good and install:
                data_line()  # what the agent left on the data partition before the update
                install_from_media(install)
                install = None
        if freeze_s and not frozen and time.monotonic() - start >= freeze_s:
            pid = main_pid()
            if pid:
                os.kill(pid, signal.SIGSTOP)
                frozen = True
                say(f"SORTIE-GUEST froze agent pid {pid}")
                time_restart(pid, time.monotonic())
        time.sleep(report_s)
    subprocess.run(["systemctl", "stop", "sortie.service"], check=False)
    rc = subprocess.run(["systemctl", "show", "-p", "ExecMainStatus", "--value",
                         "sortie.service"], capture_output=True, text=True,
                        check=False).stdout.strip()
    say(f"SORTIE-STOPPED rc={rc or -1}")
    subprocess.run(["systemctl", "poweroff"], check=False)


def main() -> None:
    opts = options(host_options())
    if "--systemd" in sys.argv:
        report_under_systemd(float(opts.get("sortie.run_s", "0")),
                             float(opts.get("sortie.report_s", "5")),
                             float(opts.get("sortie.freeze_s", "0")),
                             [n for n in opts.get("sortie.install", "").split(",") if n])
        return
    run_s = float(opts.get("sortie.run_s", "0"))
    report_s = float(opts.get("sortie.report_s", "5"))
    say(f"SORTIE-GUEST init uptime={uptime():.2f}s run_s={run_s or 'forever'}")
    config = CONFIG
    if "sortie.mission" in opts:
        # Fly another of the baked missions (QEMU tests of one image, several missions).
        import yaml
        doc = yaml.safe_load(Path(CONFIG).read_text()) | {"mission": opts["sortie.mission"]}
        config = "/run/sortie-agent.yaml"
        Path(config).write_text(yaml.safe_dump(doc))
    log = open("/run/sortie-agent.log", "ab")  # noqa: SIM115 - held for the agent's life
    agent = subprocess.Popen(["/usr/local/bin/sortie", "run", "--config", config],
                             stdout=log, stderr=subprocess.STDOUT)
    stop, done = threading.Event(), threading.Event()
    threading.Thread(target=reap, args=(agent.pid, done), daemon=True).start()
    threading.Thread(target=listen, args=(stop,), daemon=True).start()
    start = time.monotonic()
    while not stop.is_set() and (run_s <= 0 or time.monotonic() - start < run_s):
        if agent.poll() is not None:
            say(f"SORTIE-GUEST agent exited rc={agent.returncode}; last log lines:")
            with contextlib.suppress(OSError):
                for line in Path("/run/sortie-agent.log").read_text().splitlines()[-15:]:
                    say("  " + line)
            break
        report_once()
        stop.wait(report_s)
    rc = agent.poll()
    if rc is None:
        agent.send_signal(signal.SIGTERM)
        try:
            rc = agent.wait(20)
        except subprocess.TimeoutExpired:
            agent.kill()
            rc = -9
    done.set()
    say(f"SORTIE-STOPPED rc={rc}")
    power_off()


if __name__ == "__main__":
    if "--systemd" in sys.argv:  # an ordinary service: failures are systemd's to log
        main()
        sys.exit(0)
    try:
        main()
    except BaseException as exc:  # PID 1 must not die
        say(f"SORTIE-GUEST failed: {exc!r}")
        power_off()
