"""Workloads as OCI containers: runc runs them from a verified image, inside the
workload's cgroup, with the partition's budget and limits.

The OCI runtime config is generated here: pid, mount, ipc and uts namespaces (network
per profile), the cgroup path of the workload's group, a read-only root filesystem from
the image store, a tmpfs /tmp, noNewPrivileges, only the listed capabilities, a non-root
user by default, and a default seccomp profile. Lifecycle: runc run --detach (create and
start in one runc process), delete; runc's stdio is the workload's log, so the
container writes straight to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.cgroups import CgroupBackend
from agent.cgroups.backend import partition_dir, workload_dir
from agent.errors import AgentError
from agent.runtime.identity import DEFAULT_PATH
from agent.runtime.logs import open_log
from agent.runtime.ops import Launch, RealOps

if TYPE_CHECKING:
    from agent.images.store import ImageStore

# Syscalls a mission container has no business making (errno EPERM); everything else
# is allowed. A narrow deny list keeps ordinary programs working.
DENIED_SYSCALLS = [
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "delete_module",
    "finit_module", "init_module", "ioperm", "iopl", "kexec_file_load", "kexec_load",
    "keyctl", "lookup_dcookie", "mount", "move_mount", "open_by_handle_at", "open_tree",
    "perf_event_open", "pivot_root", "ptrace", "quotactl", "reboot", "request_key",
    "setns", "settimeofday", "swapoff", "swapon", "umount2", "unshare", "userfaultfd",
    "fsopen", "fsmount", "fsconfig", "fspick"]
USERS = {"root": 0, "nobody": 65534}
# clone() with any namespace flag is what unshare/setns would give: refused (EPERM), one
# rule per flag since seccomp compares masked values for equality. clone3 passes its
# flags in memory seccomp cannot read: it answers ENOSYS, and the C library falls back to
# clone (as Docker's and Podman's default profiles do).
NAMESPACE_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                   "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                   "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                   "CLONE_NEWNET": 0x40000000}
ENOSYS = 38


def seccomp_profile() -> dict[str, Any]:
    rules: list[dict[str, Any]] = [
        {"names": DENIED_SYSCALLS, "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}]
    rules += [{"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
               "args": [{"index": 0, "value": flag, "valueTwo": flag,
                         "op": "SCMP_CMP_MASKED_EQ"}]}
              for flag in NAMESPACE_FLAGS.values()]
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}


def container_id(partition: str, workload: str) -> str:
    """runc's id for a workload. Names may hold '-' but never '_' (DNS labels), so '_'
    keeps ``flight-ctl/loop`` and ``flight/ctl-loop`` apart."""
    return f"sortie_{partition}_{workload}"


def user_ids(user: str | int, group: str | int | None) -> tuple[int, int]:
    """Numeric ids inside the container (names beyond root/nobody are not resolved)."""
    uid = user if isinstance(user, int) else USERS.get(user)
    if uid is None:
        raise AgentError(f"container user {user!r}: use a number, 'root' or 'nobody'")
    gid = uid if group is None else (group if isinstance(group, int) else USERS.get(group))
    if gid is None:
        raise AgentError(f"container group {group!r}: use a number, 'root' or 'nobody'")
    return uid, gid


def oci_config(req: Launch, rootfs: Path, cgroups_path: str) -> dict[str, Any]:
    """The OCI runtime config for one workload. Pure."""
    uid, gid = user_ids(req.user, req.group)
    caps = sorted(req.capabilities)
    namespaces = [{"type": t} for t in ("pid", "mount", "ipc", "uts")]
    if req.network == "none":
        namespaces.append({"type": "network"})
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False,
            "user": {"uid": uid, "gid": gid},
            "args": list(req.command),
            "env": [f"PATH={DEFAULT_PATH}"] + [f"{k}={v}" for k, v in sorted(req.env.items())],
            "cwd": req.working_dir,
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": True},
        "hostname": req.workload,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",  # noqa: S108
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",  # noqa: S108
             "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]},
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "namespaces": namespaces,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list",
                            "/proc/sched_debug", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"],
            "seccomp": seccomp_profile(),
        },
    }


class ContainerOps:
    """ProcessOps that run image workloads with runc and host workloads as processes."""

    def __init__(self, images: Callable[[], ImageStore], state_dir: Path,
                 runc: str = "runc") -> None:
        self._make_images = images
        self._images: ImageStore | None = None
        self.state = state_dir          # runc --root, and the bundles
        self.runc = runc
        self.host = RealOps()
        self._ids: dict[int, str] = {}

    @property
    def images(self) -> ImageStore:
        """The image store, opened on first use (hosts without containers never pay)."""
        if self._images is None:
            self._images = self._make_images()
        return self._images

    def _runc(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.runc, "--root", str(self.state / "runc"), *args],
                              text=True, capture_output=True, check=False, **kw)

    def prepare(self) -> None:
        self.host.prepare()  # runc starts containers; host workloads use the spawner

    def helpers(self) -> list[int]:
        return self.host.helpers()

    def placement(self, cgroup_version: str) -> str:
        return self.host.placement(cgroup_version) + "; containers: runc"

    async def launch_many(self, backend: CgroupBackend,
                          reqs: Sequence[Launch]) -> list[int | AgentError]:
        """Host workloads side by side through the spawner; containers one by one (each
        is a runc process of its own)."""
        host = [r for r in reqs if r.image is None]
        started = iter(await self.host.launch_many(backend, host))
        out: list[int | AgentError] = []
        for r in reqs:
            if r.image is None:
                out.append(next(started))
                continue
            try:
                out.append(self.launch(backend, r))
            except AgentError as exc:
                out.append(exc)
        return out

    def launch(self, backend: CgroupBackend, req: Launch) -> int:
        if req.image is None:
            return self.host.launch(backend, req)
        if shutil.which(self.runc) is None:
            raise AgentError("runc is not installed: container workloads cannot start")
        cid = container_id(req.partition, req.workload)
        rootfs = self.images.rootfs(req.image)
        bundle = self.state / "bundles" / cid
        bundle.mkdir(parents=True, exist_ok=True, mode=0o700)
        cgroups_path = "/" + "/".join((backend.prefix, partition_dir(req.partition),
                                       workload_dir(req.workload)))
        (bundle / "config.json").write_text(json.dumps(oci_config(req, rootfs,
                                                                    cgroups_path)))
        if (self.state / "runc" / cid).exists():  # a stopped one left by a previous agent
            self._runc("delete", "--force", cid)
        pid_file = bundle / "pid"
        pid_file.unlink(missing_ok=True)
        log_fd = open_log(req.log_file)
        runc_log = bundle / "runc.log"
        runc_log.unlink(missing_ok=True)
        try:
            # One runc process (run --detach = create + start): the container inherits its
            # stdout and stderr, both the workload's log; runc's own complaints go to --log.
            created = subprocess.run(
                [self.runc, "--root", str(self.state / "runc"), "--log", str(runc_log),
                 "run", "--detach", "--bundle", str(bundle), "--pid-file", str(pid_file),
                 cid], stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, check=False)
        finally:
            os.close(log_fd)
        if created.returncode != 0:
            self._runc("delete", "--force", cid)
            why = runc_log.read_text()[-400:] if runc_log.exists() else "no runc log"
            raise AgentError(f"runc run {cid}: {why.strip()}")
        pid = int(pid_file.read_text())
        self._ids[pid] = cid
        return pid

    def watch(self, pid: int, on_exit: Callable[[], None]) -> object | None:
        return self.host.watch(pid, on_exit)

    def unwatch(self, handle: object) -> None:
        self.host.unwatch(handle)

    def reap(self, pid: int) -> int | None:
        cid = self._ids.pop(pid, None)
        if cid is None:
            return self.host.reap(pid)
        self._runc("delete", "--force", cid)
        shutil.rmtree(self.state / "bundles" / cid, ignore_errors=True)
        return None  # runc does not keep a detached container's exit status

    def kill(self, pid: int, sig: signal.Signals) -> None:
        self.host.kill(pid, sig)
