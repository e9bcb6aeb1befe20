"""``meta.k8s.io/v1`` Tables: what ``kubectl get`` prints. The server renders rows, as
the real one does for nodes (its Go printers) and custom resources (the CRD's
additionalPrinterColumns). Pure functions."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from simulator.kubeapi.store import ResourceType

_FILTER = re.compile(r'^\[\?\(@\.([\w.]+)\s*==\s*"([^"]*)"\)\]')


def jsonpath(obj: Any, path: str) -> list[Any]:
    """The subset printer columns use: ``.a.b``, ``.a[0]``, ``.a[*]``,
    ``.a[?(@.k=="v")].b``."""
    nodes, rest = [obj], path.strip().lstrip("{").rstrip("}")
    while rest:
        if rest.startswith("."):
            m = re.match(r"^\.([\w-]+)", rest)
            if not m:
                return []
            nodes = [n.get(m.group(1)) for n in nodes if isinstance(n, dict)]
            rest = rest[m.end():]
        elif (m := _FILTER.match(rest)) is not None:
            key, want = m.group(1), m.group(2)
            nodes = [item for n in nodes if isinstance(n, list) for item in n
                     if str(jsonpath(item, "." + key)[:1][0] if jsonpath(item, "." + key)
                            else "") == want]
            rest = rest[m.end():]
        elif (m := re.match(r"^\[(\d+|\*)\]", rest)) is not None:
            idx = m.group(1)
            nodes = [x for n in nodes if isinstance(n, list)
                     for x in (n if idx == "*" else n[int(idx):int(idx) + 1])]
            rest = rest[m.end():]
        else:
            return []
        nodes = [n for n in nodes if n is not None]
    return nodes


def age(ts: str | None, now: float) -> str:
    """Human age as kubectl shows it (``45s``, ``12m``, ``5h``, ``3d``)."""
    if not ts:
        return "<unknown>"
    t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()
    s = max(0, int(now - t))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size * (2 if unit != "d" else 1):
            return f"{s // size}{unit}"
    return f"{s}s"


def _cell(values: list[Any], kind: str, now: float) -> Any:
    if not values:
        return None
    if kind == "date":
        return age(str(values[0]), now)
    if len(values) == 1:
        v = values[0]
        return json.dumps(v) if isinstance(v, (dict, list)) else v
    return ",".join(str(v) for v in values)


def _node_columns(obj: dict[str, Any], now: float) -> list[Any]:
    conds = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conds if c.get("type") == "Ready"), None)
    status = "Unknown" if ready is None else ("Ready" if ready.get("status") == "True"
                                              else "NotReady")
    if (obj.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    labels = (obj.get("metadata") or {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels
                   if k.startswith("node-role.kubernetes.io/"))
    info = (obj.get("status") or {}).get("nodeInfo") or {}
    addr = next((a.get("address") for a in (obj.get("status") or {}).get("addresses") or []
                 if a.get("type") == "InternalIP"), "<none>")
    return [obj["metadata"]["name"], status, ",".join(roles) or "<none>",
            age(obj["metadata"].get("creationTimestamp"), now),
            info.get("kubeletVersion", ""), addr, "<none>", info.get("osImage", ""),
            info.get("kernelVersion", ""), info.get("containerRuntimeVersion", "")]


NODE_COLUMNS = [("Name", "string", 0), ("Status", "string", 0), ("Roles", "string", 0),
                ("Age", "string", 0), ("Version", "string", 0), ("Internal-IP", "string", 1),
                ("External-IP", "string", 1), ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1), ("Container-Runtime", "string", 1)]


def table(rt: ResourceType, items: list[dict[str, Any]], rv: str, now: float) -> dict[str, Any]:
    if rt.gr == ("", "nodes"):
        cols = NODE_COLUMNS
        rows = [_node_columns(o, now) for o in items]
    else:
        printer = list(rt.printer_columns)
        if not printer:
            printer = [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]
        cols = [("Name", "string", 0)] + [(c["name"], c.get("type", "string"),
                                           c.get("priority", 0)) for c in printer]
        rows = [[o["metadata"]["name"]] + [_cell(jsonpath(o, c["jsonPath"]),
                                                 c.get("type", "string"), now)
                                           for c in printer] for o in items]
    return {
        "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
        "columnDefinitions": [{"name": n, "type": "string" if t == "date" else t,
                               "format": "name" if n == "Name" else "", "description": n,
                               "priority": p} for n, t, p in cols],
        "rows": [{"cells": cells, "object": obj} for cells, obj in zip(rows, items, strict=True)],
    }
