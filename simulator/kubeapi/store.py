"""The control-plane simulator's object store: what etcd and the API server's registry do
for the resources Sortie and kubectl use.

One global resourceVersion counter (like etcd's revision), objects keyed by resource,
namespace and name, and a bounded history of change events for watches: a watch from a
resourceVersion older than the history gets 410 Gone, as a compacted etcd would answer.
Thread-safe: the HTTP server runs one thread per request and watches wait on ``cond``.
"""

from __future__ import annotations

import builtins
import copy
import datetime as dt
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from simulator.kubeapi import patching, schema
from simulator.kubeapi.errors import ApiStatus
from simulator.kubeapi.selectors import matches_fields, matches_labels

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    status: bool = False
    """Has a status subresource: the main resource ignores .status, /status only it."""
    printer_columns: tuple[dict[str, Any], ...] = ()
    schema: dict[str, Any] | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gr(self) -> tuple[str, str]:
        return (self.group, self.plural)


Key = tuple[tuple[str, str], str, str]


@dataclass
class Change:
    rv: int
    gr: tuple[str, str]
    type: str
    obj: Obj
    at: float = field(default_factory=time.perf_counter)
    """When the server stored it (for benchmarks: write -> reaction)."""


def now_iso(clock: Callable[[], float]) -> str:
    return dt.datetime.fromtimestamp(clock(), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Obj) -> Obj:
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise ApiStatus(400, "BadRequest", "metadata: expected an object")
    return meta


@dataclass
class Store:
    history: int = 1000
    """Change events kept for watches; older resourceVersions get 410 Gone."""
    clock: Callable[[], float] = field(default=lambda: dt.datetime.now(dt.UTC).timestamp())
    types: dict[tuple[str, str], ResourceType] = field(default_factory=dict)
    objects: dict[Key, Obj] = field(default_factory=dict)
    rv: int = 1
    changes: deque[Change] = field(default_factory=deque)
    compacted: int = 0
    """Every change up to this resourceVersion has fallen out of the history."""
    cond: threading.Condition = field(default_factory=threading.Condition)

    # -- types ---------------------------------------------------------------------
    def register(self, rt: ResourceType) -> None:
        with self.cond:
            self.types[rt.gr] = rt

    def unregister(self, gr: tuple[str, str]) -> None:
        with self.cond:
            self.types.pop(gr, None)
            for key in [k for k in self.objects if k[0] == gr]:
                self._record(gr, "DELETED", self.objects.pop(key))

    def find(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.types.get((group, plural))
        if rt is None or rt.version != version:
            raise ApiStatus(404, "NotFound", f"the server could not find the requested "
                            f"resource ({plural}.{group or 'core'}/{version})")
        return rt

    # -- internal --------------------------------------------------------------------
    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _record(self, gr: tuple[str, str], kind: str, obj: Obj) -> None:
        self.changes.append(Change(self.rv, gr, kind, copy.deepcopy(obj)))
        while len(self.changes) > self.history:
            self.compacted = self.changes.popleft().rv
        self.cond.notify_all()

    def compact(self) -> None:
        """Forget the whole history (a fault: every watch with a version gets 410)."""
        with self.cond:
            self.changes.clear()
            self.rv += 1  # even a client that saw everything must relist
            self.compacted = self.rv
            self.cond.notify_all()

    def _key(self, rt: ResourceType, ns: str | None, name: str) -> Key:
        return (rt.gr, (ns or "") if rt.namespaced else "", name)

    def _get(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        obj = self.objects.get(self._key(rt, ns, name))
        if obj is None:
            raise ApiStatus(404, "NotFound", f'{rt.plural}.{rt.group or ""} "{name}" not found'
                            .replace(". ", " "),
                            {"name": name, "group": rt.group, "kind": rt.plural})
        return obj

    def _check_namespace(self, rt: ResourceType, ns: str | None) -> None:
        if not rt.namespaced:
            return
        if ns is None:
            raise ApiStatus(400, "BadRequest", "a namespace is required")
        if (("", "namespaces"), "", ns) not in self.objects:
            raise ApiStatus(404, "NotFound", f'namespaces "{ns}" not found')

    def _stamp_new(self, rt: ResourceType, ns: str | None, obj: Obj) -> Obj:
        meta = _meta(obj)
        name = meta.get("name")
        if not name and meta.get("generateName"):
            name = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            meta["name"] = name
        if not isinstance(name, str) or not name:
            raise ApiStatus(422, "Invalid", f"{rt.kind} is invalid: metadata.name: Required value")
        if rt.namespaced:
            if meta.get("namespace") not in (None, ns):
                raise ApiStatus(400, "BadRequest", "the namespace of the provided object "
                                "does not match the namespace sent on the request")
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso(self.clock)
        meta["generation"] = 1
        meta["resourceVersion"] = self._bump()
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        if rt.status and "status" in obj and rt.group not in ("",):
            # Custom resources with a status subresource drop status on create.
            obj.pop("status")
        return obj

    # -- verbs -------------------------------------------------------------------------
    def create(self, rt: ResourceType, ns: str | None, obj: Obj) -> Obj:
        if not isinstance(obj, dict):
            raise ApiStatus(400, "BadRequest", "expected a JSON object")
        with self.cond:
            self._check_namespace(rt, ns)
            name = _meta(obj).get("name")
            if isinstance(name, str) and self._key(rt, ns, name) in self.objects:
                raise ApiStatus(409, "AlreadyExists",
                                f'{rt.plural} "{name}" already exists',
                                {"name": name, "kind": rt.plural})
            obj = self._stamp_new(rt, ns, copy.deepcopy(obj))
            obj = schema.admit(rt.schema, obj, rt.kind, obj["metadata"]["name"],
                               group=rt.group, version=rt.version)
            if rt.gr == ("apiextensions.k8s.io", "customresourcedefinitions"):
                obj = self._on_crd(obj)
            self.objects[self._key(rt, ns, obj["metadata"]["name"])] = obj
            self._record(rt.gr, "ADDED", obj)
            return copy.deepcopy(obj)

    def get(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        with self.cond:
            return copy.deepcopy(self._get(rt, ns, name))

    def list(self, rt: ResourceType, ns: str | None, labels: str = "",
             fields: str = "") -> tuple[list[Obj], str]:
        with self.cond:
            items = [copy.deepcopy(o) for (gr, ons, _), o in sorted(self.objects.items())
                     if gr == rt.gr and (ns is None or ons == ns)
                     and matches_labels(o, labels) and matches_fields(o, fields)]
            return items, str(self.rv)

    def _write(self, rt: ResourceType, ns: str | None, name: str, new: Obj,
               subresource: str | None, expect_rv: str | None) -> Obj:
        """Store ``new`` in place of the current object: the caller holds the lock."""
        cur = self._get(rt, ns, name)
        if expect_rv and expect_rv != cur["metadata"]["resourceVersion"]:
            raise ApiStatus(409, "Conflict", f'Operation cannot be fulfilled on {rt.plural}'
                            f'{"." + rt.group if rt.group else ""} "{name}": the object has '
                            "been modified; please apply your changes to the latest version "
                            "and try again", {"name": name, "kind": rt.plural})
        if not isinstance(new, dict):
            raise ApiStatus(400, "BadRequest", "expected a JSON object")
        new = copy.deepcopy(new)
        meta = _meta(new)
        if meta.get("name", name) != name:
            raise ApiStatus(400, "BadRequest", "the name of the object does not match the "
                            "name on the URL")
        if subresource == "status":
            # Only .status changes through /status.
            out = copy.deepcopy(cur)
            out["status"] = new.get("status")
            if out["status"] is None:
                out.pop("status")
            out = schema.admit(rt.schema, out, rt.kind, name, group=rt.group,
                               version=rt.version)
        else:
            out = new
            if rt.status:
                out.pop("status", None)
                if "status" in cur:
                    out["status"] = copy.deepcopy(cur["status"])
            keep = {k: cur["metadata"][k] for k in
                    ("uid", "creationTimestamp", "generation", "namespace")
                    if k in cur["metadata"]}
            out["metadata"] = {**meta, **keep}
            out["apiVersion"], out["kind"] = rt.api_version, rt.kind
            # Pruned and defaulted before the generation is judged: a write that only
            # omits defaulted fields changes nothing, as on a real server.
            out = schema.admit(rt.schema, out, rt.kind, name,
                               ("status",) if rt.status else (), rt.group, rt.version)
            if out.get("spec") != cur.get("spec"):
                out["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
        if out == cur:
            return copy.deepcopy(cur)  # no-op writes do not bump the version
        out["metadata"]["resourceVersion"] = self._bump()
        if rt.gr == ("apiextensions.k8s.io", "customresourcedefinitions"):
            out = self._on_crd(out)
        self.objects[self._key(rt, ns, name)] = out
        self._record(rt.gr, "MODIFIED", out)
        return copy.deepcopy(out)

    def replace(self, rt: ResourceType, ns: str | None, name: str, obj: Obj,
                subresource: str | None = None) -> Obj:
        with self.cond:
            expect = _meta(obj).get("resourceVersion") if isinstance(obj, dict) else None
            return self._write(rt, ns, name, obj, subresource, expect)

    def patch(self, rt: ResourceType, ns: str | None, name: str, content_type: str,
              body: Any, subresource: str | None = None) -> Obj:
        with self.cond:
            try:
                cur = self._get(rt, ns, name)
            except ApiStatus:
                if content_type.startswith("application/apply-patch"):
                    # Server-side apply creates what does not exist yet.
                    if not isinstance(body, dict):
                        raise ApiStatus(400, "BadRequest", "expected an object") from None
                    body = copy.deepcopy(body)
                    _meta(body)["name"] = name
                    obj = self._stamp_new(rt, ns, body)
                    obj = schema.admit(rt.schema, obj, rt.kind, name, group=rt.group,
                                       version=rt.version)
                    self._check_namespace(rt, ns)
                    self.objects[self._key(rt, ns, name)] = obj
                    self._record(rt.gr, "ADDED", obj)
                    return copy.deepcopy(obj)
                raise
            new = patching.apply_patch(cur, content_type, body)
            expect = None
            if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
                expect = body["metadata"].get("resourceVersion")
            return self._write(rt, ns, name, new, subresource, expect)

    def delete(self, rt: ResourceType, ns: str | None, name: str) -> Obj:
        with self.cond:
            obj = self._get(rt, ns, name)
            del self.objects[self._key(rt, ns, name)]
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = self._bump()
            self._record(rt.gr, "DELETED", obj)
            if rt.gr == ("apiextensions.k8s.io", "customresourcedefinitions"):
                spec = obj.get("spec", {})
                self.unregister((spec.get("group", ""), spec.get("names", {}).get("plural", "")))
            if rt.gr == ("", "namespaces"):
                for key in [k for k in self.objects if k[1] == name]:
                    self._bump()
                    self._record(key[0], "DELETED", self.objects.pop(key))
            return obj

    # -- watches -----------------------------------------------------------------------
    def changes_after(self, gr: tuple[str, str], rv: int) -> builtins.list[Change]:
        """Changes of one resource after ``rv``; the caller holds the lock.
        Raises 410 Gone when some of them are no longer kept."""
        if rv < self.compacted:
            raise ApiStatus(410, "Expired", f"too old resource version: {rv} "
                            f"({self.compacted + 1})")
        return [c for c in self.changes if c.rv > rv and c.gr == gr]

    # -- CRDs --------------------------------------------------------------------------
    def _on_crd(self, crd: Obj) -> Obj:
        """Serve what a CustomResourceDefinition defines, and say it is established."""
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
        versions = [v for v in spec.get("versions") or [] if v.get("served")]
        if not (group and plural and kind and versions):
            raise ApiStatus(422, "Invalid", "CustomResourceDefinition is invalid: "
                            "spec.group, spec.names.plural, spec.names.kind and one served "
                            "version are required")
        if crd["metadata"]["name"] != f"{plural}.{group}":
            raise ApiStatus(422, "Invalid", f"metadata.name: Invalid value: must be "
                            f"spec.names.plural+\".\"+spec.group ({plural}.{group})")
        errs: list[str] = []
        unknown: list[str] = []
        for i, v in enumerate(spec.get("versions") or []):
            where = ("spec.validation.openAPIV3Schema" if len(spec["versions"]) == 1
                     else f"spec.versions[{i}].schema.openAPIV3Schema")
            openapi = (v.get("schema") or {}).get("openAPIV3Schema")
            if openapi is None:
                errs.append(f"spec.versions[{i}].schema.openAPIV3Schema: Required value: "
                            "schemas are required")
                continue
            errs += schema.structural_errors(openapi, where, unknown)
        if errs:
            name = crd["metadata"]["name"]
            msg = errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"
            raise ApiStatus(422, "Invalid", f'CustomResourceDefinition.apiextensions.k8s.io '
                            f'"{name}" is invalid: {msg}',
                            {"name": name, "group": "apiextensions.k8s.io",
                             "kind": "CustomResourceDefinition",
                             "causes": [{"reason": "FieldValueInvalid", "message": e}
                                        for e in errs]})
        ver = next((v for v in versions if v.get("storage")), versions[0])
        self.types[(group, plural)] = ResourceType(
            group, ver["name"], plural, kind, spec.get("scope") == "Namespaced",
            names.get("singular", kind.lower()), tuple(names.get("shortNames") or ()),
            "status" in (ver.get("subresources") or {}),
            tuple(ver.get("additionalPrinterColumns") or ()),
            (ver.get("schema") or {}).get("openAPIV3Schema"))
        t = now_iso(self.clock)
        crd["status"] = {
            "acceptedNames": names, "storedVersions": [ver["name"]],
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                 "message": "no conflicts found", "lastTransitionTime": t},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                 "message": "the initial names have been accepted",
                 "lastTransitionTime": t}]}
        return crd
