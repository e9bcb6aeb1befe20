"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge
patch and server-side apply (both approximated, see below). Pure functions."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from simulator.kubeapi.errors import ApiStatus

MERGE_KEYS = ("type", "name", "key", "containerPort", "ip")
"""List items merged by these keys in a strategic merge patch (conditions by type,
containers and volumes by name, taints by key, addresses...)."""


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _strategic_list(cur: list[Any], patch: list[Any]) -> list[Any]:
    key = next((k for k in MERGE_KEYS
                if patch and all(isinstance(p, dict) and k in p for p in patch)
                and all(isinstance(c, dict) and k in c for c in cur)), None)
    if key is None:
        return copy.deepcopy(patch)
    out = [copy.deepcopy(c) for c in cur]
    for item in patch:
        if item.get("$patch") == "delete":
            out = [c for c in out if c.get(key) != item[key]]
            continue
        for i, c in enumerate(out):
            if c.get(key) == item[key]:
                out[i] = strategic_merge(c, item)
                break
        else:
            out.append(copy.deepcopy(item))
    return out


def strategic_merge(target: Any, patch: Any) -> Any:
    """Merge patch that merges lists of objects by their usual key (approximation of the
    per-field patch strategies the real server reads from its Go types)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if k.startswith("$"):
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = _strategic_list(out[k], v)
        else:
            out[k] = strategic_merge(out.get(k), v)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiStatus(422, "Invalid", f"json patch path {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        elif isinstance(doc, dict):
            doc = doc[p]
        else:
            raise KeyError(p)
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise ApiStatus(400, "BadRequest", "json patch: expected a list of operations")
    doc = copy.deepcopy(doc)
    for i, op in enumerate(ops):
        try:
            kind, parts = op["op"], _pointer(op["path"])
            if kind == "test":
                if _walk(doc, parts) != op["value"]:
                    raise ApiStatus(422, "Invalid", f"json patch operation {i}: test failed "
                                    f"at {op['path']}")
                continue
            if kind in ("move", "copy"):
                value = copy.deepcopy(_walk(doc, _pointer(op["from"])))
                if kind == "move":
                    doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            else:
                value = copy.deepcopy(op.get("value"))
            if not parts:
                if kind in ("add", "replace", "move", "copy"):
                    doc = value
                    continue
                raise ApiStatus(422, "Invalid", "json patch: cannot remove the document")
            parent, last = _walk(doc, parts[:-1]), parts[-1]
            if kind in ("add", "move", "copy"):
                if isinstance(parent, list):
                    parent.insert(len(parent) if last == "-" else int(last), value)
                else:
                    parent[last] = value
            elif kind == "replace":
                _walk(doc, parts)  # must exist
                parent[int(last) if isinstance(parent, list) else last] = value
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                raise ApiStatus(422, "Invalid", f"json patch operation {i}: unknown op "
                                f"{kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiStatus(422, "Invalid", f"json patch operation {i}: {exc!r} "
                            "does not apply") from exc
    return doc


def apply_patch(current: dict[str, Any], content_type: str, body: Any) -> Any:
    ctype = content_type.split(";", maxsplit=1)[0].strip()
    if ctype == "application/merge-patch+json":
        return merge_patch(current, body)
    if ctype == "application/json-patch+json":
        return json_patch(current, body)
    if ctype == "application/strategic-merge-patch+json":
        if current.get("apiVersion", "").split("/")[0].endswith(".dev"):
            # As the real server: custom resources have no Go types to read strategies from.
            raise ApiStatus(415, "UnsupportedMediaType", "strategic merge patch is not "
                            "supported for custom resources")
        return strategic_merge(current, body)
    if ctype == "application/apply-patch+yaml":
        # Server-side apply without field ownership: the applied fields win, lists replaced.
        doc = yaml.safe_load(body) if isinstance(body, (str, bytes)) else body
        return merge_patch(current, doc)
    raise ApiStatus(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                    f"format - accepted media types include: application/json-patch+json, "
                    f"application/merge-patch+json, application/apply-patch+yaml "
                    f"(got {ctype!r})")
