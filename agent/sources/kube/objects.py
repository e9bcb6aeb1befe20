"""The Kubernetes objects the board writes and reads, as plain dicts. Pure functions: the
node and its lease, which MissionProfiles target this board, which one flies, and the
status and Events written back."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from agent.errors import ProfileError, Violation
from agent.models import HardwareProfile, MissionProfile
from agent.models.loading import validate
from agent.sources.kube.names import GROUP, KIND, PLURAL, VERSION
from agent.status import Origin, Status

Obj = dict[str, Any]
API_VERSION = f"{GROUP}/{VERSION}"
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
TAINT = {"key": "sortie.dev/board", "value": "true", "effect": "NoSchedule"}
"""Keeps the default scheduler's pods off the board: only Sortie places work here."""
COMPONENT = "sortie"


def timestamp(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_META_TYPES: dict[str, type] = {"name": str, "namespace": str, "uid": str,
                                "resourceVersion": str, "generation": int,
                                "creationTimestamp": str}


def well_formed(obj: Any) -> bool:
    """An object whose metadata has the types every API server gives it (the rest of the
    source trusts them): anything else is dropped at the door, whatever sent it."""
    if not isinstance(obj, dict):
        return False
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) \
            or not meta["name"]:
        return False
    for k, kind in _META_TYPES.items():
        v = meta.get(k)
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            return False
    return isinstance(obj.get("spec", {}), dict)


def key(obj: Obj) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def rv_int(obj: Obj) -> int | None:
    """resourceVersions are opaque, but every real server (etcd revisions) and the
    simulator use integers; ``None`` when one is not, and then nothing is compared."""
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", ""))
    except (ValueError, TypeError, AttributeError):
        return None


# -- the node ------------------------------------------------------------------------------
def node_labels(node: str, board: HardwareProfile, extra: dict[str, str]) -> dict[str, str]:
    return {"kubernetes.io/arch": ARCH[board.arch], "kubernetes.io/os": "linux",
            "kubernetes.io/hostname": node, "sortie.dev/board": board.name,
            "node-role.kubernetes.io/sortie": ""} | extra


def resources(board: HardwareProfile) -> tuple[dict[str, str], dict[str, str]]:
    """Capacity (the whole board) and allocatable (what missions may use: the OS cores
    and memory are reserved)."""
    cores = len(board.cores)
    free = cores - len(board.reserved.cores)
    capacity = {"cpu": str(cores), "memory": f"{board.memory_mib}Mi",
                "pods": "0", "sortie.dev/partitions": str(cores * 8)}
    allocatable = capacity | {"cpu": str(free),
                              "memory": f"{board.memory_mib - board.reserved.memory_mib}Mi"}
    return capacity, allocatable


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str
    message: str


def node_status(board: HardwareProfile, ready: Readiness, now: float, kernel: str,
                agent_version: str, since: float) -> Obj:
    capacity, allocatable = resources(board)
    return {
        "capacity": capacity, "allocatable": allocatable,
        "conditions": [{"type": "Ready", "status": "True" if ready.ready else "False",
                        "reason": ready.reason, "message": ready.message,
                        "lastHeartbeatTime": timestamp(now),
                        "lastTransitionTime": timestamp(since)}],
        "nodeInfo": {"architecture": ARCH[board.arch], "operatingSystem": "linux",
                     "kernelVersion": kernel, "osImage": f"Sortie board {board.name}",
                     "kubeletVersion": f"sortie-{agent_version}",
                     "kubeProxyVersion": "", "containerRuntimeVersion": "sortie://runc",
                     "machineID": "", "systemUUID": "", "bootID": ""},
    }


ADMISSION_FACTS = "sortie.dev/admission"
"""On the board's node: what admission decides with (hardware profile, kernel features,
timing assumptions), so a rollout can dry-run a mission against every board first."""


def node(name: str, board: HardwareProfile, extra_labels: dict[str, str],
         facts: dict[str, Any] | None = None) -> Obj:
    notes = {"sortie.dev/hardware-profile": board.name}
    if facts is not None:
        notes[ADMISSION_FACTS] = json.dumps(facts, separators=(",", ":"), sort_keys=True)
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": node_labels(name, board, extra_labels),
                         "annotations": notes},
            "spec": {"taints": [TAINT]}}


def lease(name: str, node_uid: str | None, duration_s: int, now: float) -> Obj:
    meta: Obj = {"name": name, "namespace": "kube-node-lease"}
    if node_uid:
        # Deleting the Node deletes its lease, as for a kubelet.
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": name,
                                    "uid": node_uid}]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": name, "leaseDurationSeconds": duration_s,
                     "renewTime": micro_time(now)}}


# -- which missions are ours -----------------------------------------------------------------
def targets(obj: Obj, node_name: str, labels: dict[str, str]) -> bool:
    """A MissionProfile aims at a board by node name, by a list of names (a rollout's
    wave), or by labels it must all carry."""
    spec = obj.get("spec")
    target = spec.get("target") if isinstance(spec, dict) else None
    if not isinstance(target, dict):
        return False
    if target.get("nodeName"):
        return bool(target["nodeName"] == node_name)
    names = target.get("nodeNames")
    if isinstance(names, list) and names:
        return node_name in names
    sel = target.get("nodeSelector")
    return isinstance(sel, dict) and bool(sel) and all(labels.get(k) == v
                                                       for k, v in sel.items())


def choose(objs: list[Obj]) -> Obj | None:
    """The board flies one mission: the most recently created profile aimed at it (a new
    profile replaces the previous one); the others are Superseded."""
    if not objs:
        return None
    return max(objs, key=lambda o: ((o["metadata"].get("creationTimestamp") or ""),
                                    key(o)))


def mission_of(obj: Obj) -> MissionProfile:
    """The mission in a MissionProfile's spec; ProfileError names every bad field."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ProfileError(f"missionprofile {key(obj)}", [Violation("spec",
                                                                    "expected an object")])
    body = {k: v for k, v in spec.items() if k != "target"}
    try:
        return validate(MissionProfile, body, f"missionprofile {key(obj)}")
    except ProfileError as exc:
        raise ProfileError(exc.source, [Violation(f"spec.{v.path}" if v.path else "spec",
                                                  v.reason) for v in exc.violations]) from exc


def root_workloads(mission: MissionProfile) -> list[Violation]:
    """Workloads that would run as root (uid 0, host or container)."""
    return [Violation(f"spec.partitions[{i}].workloads[{j}].user",
                      "runs as root; a board flies root workloads from Kubernetes only "
                      "with kube.allow_root_workloads")
            for i, p in enumerate(mission.partitions) for j, w in enumerate(p.workloads)
            if w.user in ("root", 0)]


def origin(obj: Obj) -> Origin:
    meta = obj["metadata"]
    gen = meta.get("generation")
    return Origin("kube", object=key(obj), uid=meta.get("uid"),
                  resource_version=meta.get("resourceVersion"),
                  object_generation=gen if isinstance(gen, int) else None)


# -- what the board writes back ----------------------------------------------------------------
def condition(ctype: str, ok: bool, reason: str, message: str, now: float,
              previous: list[Obj]) -> Obj:
    status = "True" if ok else "False"
    old = next((c for c in previous if c.get("type") == ctype), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status \
        and old.get("lastTransitionTime") else timestamp(now)
    return {"type": ctype, "status": status, "reason": reason, "message": message[:1024],
            "lastTransitionTime": since}


def aggregate(boards: dict[str, Obj], generation: int, now: float,
              previous: list[Obj]) -> Obj:
    """The top level of a profile several boards fly, from their entries: ``state`` the
    one they share (else Partial), the count per state, and Admitted / Applied over all
    of them (kubectl's columns)."""
    by: dict[str, int] = {}
    for e in boards.values():
        st = str(e.get("state") or "Pending")
        by[st] = by.get(st, 0) + 1
    n = len(boards)
    text = ", ".join(f"{c} {s}" for s, c in sorted(by.items(), key=lambda x: -x[1]))
    refused = by.get("Rejected", 0)
    flying = by.get("Flying", 0)
    return {"state": next(iter(by)) if len(by) == 1 else "Partial",
            "observedGeneration": generation, "boardsByState": by,
            "conditions": [
                condition("Admitted", refused == 0, "Fits" if refused == 0 else "DoesNotFit",
                          f"{n - refused} of {n} boards admitted it", now, previous),
                condition("Applied", flying == n, "Applied" if flying == n else "Partial",
                          f"{flying} of {n} boards fly it ({text})", now, previous)],
            "updated": timestamp(now)}


def event(obj: Obj, node_name: str, reason: str, message: str, warning: bool,
          now: float, kind: str = KIND) -> Obj:
    meta = obj["metadata"]
    digest = hashlib.sha256(f"{key(obj)}{reason}{message}{now}".encode()).hexdigest()[:10]
    stamp = timestamp(now)
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{digest}", "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": API_VERSION, "kind": kind, "name": meta["name"],
                           "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "reason": reason, "message": message[:1024], "type": "Warning" if warning else "Normal",
        "source": {"component": COMPONENT, "host": node_name},
        "reportingComponent": COMPONENT, "reportingInstance": node_name,
        "firstTimestamp": stamp, "lastTimestamp": stamp, "eventTime": None, "count": 1,
    }


def usage_status(status: Status) -> dict[str, Obj]:
    """Per-partition budget and measured use (percent of one core), from the engine."""
    out: dict[str, Obj] = {}
    for p in status.partitions:
        use = p.usage
        out[p.name] = {
            "criticality": p.criticality,
            "budgetPercent": None if use is None else round(100 * use.budget_share, 2),
            "usedPercent": None if use is None else round(100 * use.share, 2),
            "throttledPercent": round(100 * use.throttled_periods / use.periods, 2)
            if use and use.periods else None,
            "workloads": {w.name: w.state for w in p.workloads},
        }
        timed = {w.name: {"deadlineUs": w.timing.deadline_us,
                          "responseBoundUs": w.timing.response_bound_us,
                          "jobs": w.timing.jobs, "misses": w.timing.misses,
                          "worstUs": w.timing.worst_us, "p99Us": w.timing.p99_us}
                 for w in p.workloads if w.timing is not None}
        if timed:
            out[p.name]["timing"] = timed
    return out


def diagnose(what: str, code: int, message: str) -> str | None:
    """What is wrong with the cluster link, in words and with the command that mends it,
    for the errors that retrying cannot cure. None for outages (they pass)."""
    if code == 404 and what == "list/watch":
        return (f"the API server has no {PLURAL}.{GROUP} resource: the MissionProfile CRD "
                "is not installed. Install it with `kubectl apply -f "
                "docs/kube/missionprofile-crd.yaml` (or `sortie kube crd | kubectl apply "
                "-f -`)")
    if code == 403:
        return (f"{what}: forbidden ({message}): this board's ServiceAccount lacks the "
                "RBAC it needs; apply docs/kube/rbac.yaml for it (one ServiceAccount, Role "
                "and binding per board)")
    if code == 401:
        return (f"{what}: unauthorized: the API server does not accept the credentials "
                "of the board's kubeconfig (expired or revoked token, or a certificate "
                "it does not trust)")
    return None
