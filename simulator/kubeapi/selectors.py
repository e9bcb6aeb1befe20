"""Label and field selectors as the API server parses them. Pure functions."""

from __future__ import annotations

import re
from typing import Any

from simulator.kubeapi.errors import ApiStatus

_SET = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b=c``)."""
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def matches_labels(obj: dict[str, Any], selector: str) -> bool:
    labels: dict[str, str] = (obj.get("metadata") or {}).get("labels") or {}
    for req in _split(selector):
        m = _SET.match(req)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (labels.get(key) in values and key in labels):
                return False
            continue
        if "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in req:
            key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif re.fullmatch(r"[A-Za-z0-9._/-]+", req):
            if req not in labels:
                return False
        else:
            raise ApiStatus(400, "BadRequest", f"unable to parse requirement: {req!r}")
    return True


def field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def matches_fields(obj: dict[str, Any], selector: str) -> bool:
    for req in _split(selector):
        if "!=" in req:
            path, value = (s.strip() for s in req.split("!=", 1))
            if field_value(obj, path) == value:
                return False
        elif "=" in req:
            path, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if field_value(obj, path) != value:
                return False
        else:
            raise ApiStatus(400, "BadRequest", f"invalid field selector: {req!r}")
    return True


def exact_name(selector: str) -> str | None:
    """The name a field selector requires exactly (``metadata.name=X``), as the real
    server's RequestInfoFactory reads it from a list or watch: RBAC then authorizes the
    request by that name, so ``resourceNames`` can allow watching one object."""
    names = set()
    for req in _split(selector):
        if "!=" in req or "=" not in req:
            continue
        path, value = (x.strip() for x in req.replace("==", "=").split("=", 1))
        if path == "metadata.name":
            names.add(value)
    return names.pop() if len(names) == 1 else None
