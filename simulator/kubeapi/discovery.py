"""Discovery and OpenAPI documents: what kubectl reads before it touches a resource.

kubectl 1.32 asks for aggregated discovery and falls back to the legacy documents served
here; it verifies server-side field validation through ``/openapi/v3`` (a PATCH
operation per resource with the ``fieldValidation`` parameter). kubectl 1.20 validates on
the client against ``/openapi/v2`` in protobuf: a minimal document without definitions,
for which it skips validation as it does for any kind the document does not describe.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from simulator.kubeapi.store import ResourceType

BUILTIN = [
    ResourceType("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",), True),
    ResourceType("", "v1", "nodes", "Node", False, "node", ("no",), True),
    ResourceType("", "v1", "events", "Event", True, "event", ("ev",)),
    ResourceType("", "v1", "pods", "Pod", True, "pod", ("po",), True),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    ResourceType("apiextensions.k8s.io", "v1", "customresourcedefinitions",
                 "CustomResourceDefinition", False, "customresourcedefinition",
                 ("crd", "crds"), True),
]

VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
VERSION = {"major": "1", "minor": "30", "gitVersion": "v1.30.0+sortie-sim",
           "gitCommit": "0" * 40, "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
           "goVersion": "go1.22", "compiler": "gc", "platform": "linux/amd64"}


def _resources(types: list[ResourceType]) -> list[dict[str, Any]]:
    out = []
    for rt in sorted(types, key=lambda t: t.plural):
        out.append({"name": rt.plural, "singularName": rt.singular or rt.kind.lower(),
                    "namespaced": rt.namespaced, "kind": rt.kind, "verbs": VERBS,
                    "shortNames": list(rt.short_names)} | (
                        {"categories": ["all"]} if rt.group.endswith(".dev") else {}))
        if rt.status:
            out.append({"name": f"{rt.plural}/status", "singularName": "",
                        "namespaced": rt.namespaced, "kind": rt.kind,
                        "verbs": ["get", "patch", "update"]})
    return out


def group_versions(types: list[ResourceType]) -> dict[tuple[str, str], list[ResourceType]]:
    out: dict[tuple[str, str], list[ResourceType]] = {}
    for rt in types:
        out.setdefault((rt.group, rt.version), []).append(rt)
    return out


def api_versions() -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                            "serverAddress": "127.0.0.1"}]}


def resource_list(group: str, version: str, types: list[ResourceType]) -> dict[str, Any]:
    return {"kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": _resources(types)}


def _group(group: str, versions: list[str]) -> dict[str, Any]:
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}


def group_list(types: list[ResourceType]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for g, v in group_versions(types):
        if g:
            groups.setdefault(g, []).append(v)
    return {"kind": "APIGroupList", "apiVersion": "v1",
            "groups": [_group(g, vs) for g, vs in sorted(groups.items())]}


def group_doc(group: str, types: list[ResourceType]) -> dict[str, Any] | None:
    versions = sorted({v for g, v in group_versions(types) if g == group})
    return ({"kind": "APIGroup", "apiVersion": "v1"} | _group(group, versions)
            if versions else None)


# -- OpenAPI v3 ----------------------------------------------------------------------------
def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_doc(group: str, version: str, types: list[ResourceType]) -> dict[str, Any]:
    params = [{"name": n, "in": "query", "schema": {"type": "string"}}
              for n in ("fieldValidation", "fieldManager", "dryRun")]
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for rt in types:
        gvk = {"group": rt.group, "version": rt.version, "kind": rt.kind}
        base = "/" + _gv_path(group, version)
        coll = f"{base}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced \
            else f"{base}/{rt.plural}"
        op = {"x-kubernetes-group-version-kind": gvk, "parameters": params,
              "responses": {"200": {"description": "OK"}}}
        paths[coll] = {"post": op, "get": op}
        paths[coll + "/{name}"] = {"get": op, "put": op, "patch": op, "delete": op}
        if rt.schema is not None:
            schemas[f"{rt.group}.{rt.version}.{rt.kind}"] = rt.schema | {
                "x-kubernetes-group-version-kind": [gvk]}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.30.0"},
            "paths": paths, "components": {"schemas": schemas}}


def openapi_v3_root(types: list[ResourceType]) -> dict[str, Any]:
    paths = {}
    for (g, v), rts in sorted(group_versions(types).items()):
        digest = hashlib.sha256(json.dumps(openapi_v3_doc(g, v, rts), sort_keys=True)
                                .encode()).hexdigest()[:32].upper()
        paths[_gv_path(g, v)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}"
                                                      f"?hash={digest}"}
    return {"paths": paths}


# -- OpenAPI v2, protobuf (gnostic openapi_v2.Document) ------------------------------------
def _pb_bytes(field: int, data: bytes) -> bytes:
    n, out = len(data), bytearray([field << 3 | 2])
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + data


def openapi_v2_protobuf() -> bytes:
    info = _pb_bytes(1, b"Kubernetes") + _pb_bytes(2, b"v1.30.0")
    return _pb_bytes(1, b"2.0") + _pb_bytes(2, info) + _pb_bytes(8, b"")


OPENAPI_V2_JSON = {"swagger": "2.0", "info": {"title": "Kubernetes", "version": "v1.30.0"},
                   "paths": {}, "definitions": {}}
