"""What a real API server does with a CRD's schema: apiextensions.k8s.io/v1's structural-
schema rules when a CRD is written, and pruning, defaulting and validation of every
custom resource written against it.

The rules are the documented ones ("Specifying a structural schema", "Field pruning",
"Defaulting", "Validation" in the Kubernetes CRD docs) and the checks of the apiextensions
validation code, with the same messages where a client can see them:

- every node specifies a non-empty ``type`` (root, properties, additionalProperties,
  items), except under ``x-kubernetes-int-or-string`` or
  ``x-kubernetes-preserve-unknown-fields``; ``type: null`` is refused (use nullable);
- ``properties`` and ``additionalProperties`` are mutually exclusive (``false`` too);
- no ``$ref``, ``definitions``, ``dependencies``, ``patternProperties``,
  ``additionalItems``, ``id``, ``uniqueItems: true``, tuple ``items``;
- ``x-kubernetes-preserve-unknown-fields`` is true or absent;
- inside ``allOf``/``anyOf``/``oneOf``/``not``: no ``type``, ``description``,
  ``default``, ``additionalProperties`` or ``nullable`` (but the int-or-string pattern),
  and every property named there is also specified outside;
- ``metadata`` at the root may only restrict ``name`` and ``generateName``;
- a ``default`` must itself validate against its schema;
- keywords that are not JSONSchemaProps fields are dropped without a word, even under
  ``fieldValidation=Strict`` (seen on kube-apiserver 1.36 with ``propertyNames``).

Custom resources: fields the schema does not specify are pruned (``fieldValidation``
``Strict`` refuses them with 400 instead, ``Warn`` - the server's default - answers a
``Warning`` header per field, ``Ignore`` says nothing), defaults fill missing fields of
objects that exist, then the result is validated (422 with every cause).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from typing import Any

from simulator.kubeapi.errors import ApiStatus

Schema = dict[str, Any]

TYPES = {"array", "boolean", "integer", "number", "object", "string"}
KEYWORDS = {
    "id", "$schema", "$ref", "description", "type", "format", "title", "default",
    "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength", "minLength",
    "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "enum", "maxProperties",
    "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
    "additionalProperties", "patternProperties", "dependencies", "additionalItems",
    "definitions", "externalDocs", "example", "nullable", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string",
    "x-kubernetes-list-map-keys", "x-kubernetes-list-type", "x-kubernetes-map-type",
    "x-kubernetes-validations",
}
JUNCTORS = ("allOf", "anyOf", "oneOf")
FORBIDDEN = {"$ref": "$ref is not supported", "definitions": "definitions is not supported",
             "dependencies": "dependencies is not supported",
             "patternProperties": "patternProperties is not supported",
             "additionalItems": "additionalItems is not supported",
             "id": "id is not supported"}


class _Context(threading.local):
    mode = "Warn"
    warnings: list[str]

    def __init__(self) -> None:
        self.warnings = []


REQUEST = _Context()
"""Per request (one thread each): the fieldValidation mode and the warnings to answer."""


def begin_request(mode: str | None) -> None:
    REQUEST.mode = mode if mode in ("Strict", "Warn", "Ignore") else "Warn"
    REQUEST.warnings = []


# -- the CRD's schema -------------------------------------------------------------------
def structural_errors(schema: Any, path: str, unknown: list[str] | None = None) -> list[str]:
    """Every reason a real API server refuses this openAPIV3Schema, as it words them.
    Keywords that are not JSONSchemaProps fields are removed (the real server drops them
    silently) and named in ``unknown`` for the caller's information."""
    errs: list[str] = []
    if not isinstance(schema, dict):
        return [f"{path}: Required value: must be an object"]
    _node(schema, path, errs, in_junctor=False, is_root=True,
          unknown=unknown if unknown is not None else [])
    if not errs and schema.get("type") != "object":
        errs.append(f"{path}.type: Invalid value: {json.dumps(schema.get('type', ''))}: "
                    "must be object at the root")
    meta = (schema.get("properties") or {}).get("metadata")
    if isinstance(meta, dict):
        for k in meta:
            if k not in ("type", "properties", "description"):
                errs.append(f"{path}.properties[metadata]: Forbidden: must not specify "
                            f"anything other than name and generateName, but metadata "
                            f"is implicitly specified ({k})")
        for k in meta.get("properties") or {}:
            if k not in ("name", "generateName"):
                errs.append(f"{path}.properties[metadata]: Forbidden: must not specify "
                            "anything other than name and generateName, but metadata is "
                            f"implicitly specified (properties[{k}])")
    return errs


def _special(s: Schema) -> bool:
    return bool(s.get("x-kubernetes-int-or-string")
                or s.get("x-kubernetes-preserve-unknown-fields"))


def _node(s: Schema, path: str, errs: list[str], in_junctor: bool, is_root: bool = False,
          unknown: list[str] | None = None) -> None:
    unknown = unknown if unknown is not None else []
    for k in [k for k in s if k not in KEYWORDS]:
        unknown.append(f"{path}.{k}")
        del s[k]
    for k, why in FORBIDDEN.items():
        if k in s:
            errs.append(f"{path}.{k}: Forbidden: {why}")
    if s.get("uniqueItems") is True:
        errs.append(f"{path}.uniqueItems: Forbidden: uniqueItems cannot be set to true since "
                    "the runtime complexity becomes quadratic")
    if s.get("type") == "null":
        errs.append(f"{path}.type: Forbidden: type cannot be set to null, use nullable as an "
                    "alternative")
    elif "type" in s and s["type"] not in TYPES:
        errs.append(f"{path}.type: Unsupported value: {json.dumps(s['type'])}: supported "
                    f"values: {', '.join(json.dumps(t) for t in sorted(TYPES))}")
    if s.get("x-kubernetes-preserve-unknown-fields") is False:
        errs.append(f"{path}.x-kubernetes-preserve-unknown-fields: Invalid value: false: "
                    "must be true or undefined")
    if in_junctor:
        int_or_string = _is_int_or_string_branch(s)
        for k in ("type", "description", "default", "additionalProperties", "nullable"):
            if k in s and not (k == "type" and int_or_string):
                errs.append(f"{path}.{k}: Forbidden: must be empty to be structural")
    elif not s.get("type") and not _special(s) and not is_root:
        errs.append(f"{path}.type: Required value: must not be empty for specified "
                    "object fields")
    props = s.get("properties")
    ap = s.get("additionalProperties")
    if ap is not None and props and (ap is False or isinstance(ap, dict)):
        errs.append(f"{path}.additionalProperties: Forbidden: additionalProperties and "
                    "properties are mutual exclusive")
    if isinstance(props, dict):
        for name, sub in props.items():
            if isinstance(sub, dict):
                _node(sub, f"{path}.properties[{name}]", errs, in_junctor, unknown=unknown)
    if isinstance(ap, dict):
        _node(ap, f"{path}.additionalProperties", errs, in_junctor, unknown=unknown)
    items = s.get("items")
    if isinstance(items, list):
        errs.append(f"{path}.items: Forbidden: items must be a schema object and not an array")
    elif isinstance(items, dict):
        _node(items, f"{path}.items", errs, in_junctor, unknown=unknown)
    elif s.get("type") == "array" and not in_junctor:
        errs.append(f"{path}.items: Required value: must be specified")
    for j in JUNCTORS:
        for i, branch in enumerate(s.get(j) or []):
            if isinstance(branch, dict):
                _node(branch, f"{path}.{j}[{i}]", errs, in_junctor=True, unknown=unknown)
                _outside(branch, s, f"{path}.{j}[{i}]", errs)
    if isinstance(s.get("not"), dict):
        _node(s["not"], f"{path}.not", errs, in_junctor=True, unknown=unknown)
        _outside(s["not"], s, f"{path}.not", errs)
    if "default" in s and not in_junctor:
        default_errs = validate_value(copy.deepcopy(s["default"]),
                                      {k: v for k, v in s.items() if k != "default"}, path)
        for e in default_errs:
            errs.append(f"{path}.default: Invalid value: {json.dumps(s['default'])}: {e}")


def _is_int_or_string_branch(s: Schema) -> bool:
    return set(s) == {"type"} and s["type"] in ("integer", "string")


def _outside(branch: Schema, parent: Schema, path: str, errs: list[str]) -> None:
    """A property named inside a junctor must be specified outside it as well."""
    for name in branch.get("properties") or {}:
        if name not in (parent.get("properties") or {}):
            errs.append(f"{path}.properties[{name}]: Required value: must be specified "
                        "outside of the logical junctor")
    if "items" in branch and "items" not in parent:
        errs.append(f"{path}.items: Required value: must be specified outside of the "
                    "logical junctor")


def unknown_fields(unknown: list[str], kind: str, version: str) -> None:
    """Apply the request's fieldValidation to unknown fields (already pruned)."""
    if not unknown:
        return
    unknown = sorted(unknown)
    if REQUEST.mode == "Strict":
        fields = ", ".join(f'unknown field "{u}"' for u in unknown)
        raise ApiStatus(400, "BadRequest", f'{kind} in version "{version}" cannot be handled '
                        f"as a {kind}: strict decoding error: {fields}")
    if REQUEST.mode == "Warn":
        REQUEST.warnings += [f'unknown field "{u}"' for u in unknown]


# -- custom resources -------------------------------------------------------------------
def admit(schema: Schema | None, obj: dict[str, Any], kind: str, name: str,
          keep: tuple[str, ...] = (), group: str = "", version: str = "") -> dict[str, Any]:
    """Prune, default and validate a custom resource as the server stores it. ``keep``
    names top-level fields not judged here (``status`` on a main-resource write)."""
    if schema is None:
        return obj
    unknown: list[str] = []
    judged = {k: copy.deepcopy(v) for k, v in obj.items() if k not in keep}
    _prune(judged, schema, "", unknown, root=True)
    unknown_fields(unknown, kind, version)
    _default(judged, schema)
    errs = sorted(validate_value(judged, schema, "", root=True))
    if errs:
        msg = errs[0] if len(errs) == 1 else "[" + ", ".join(errs) + "]"
        qualified = f"{kind}.{group}" if group else kind
        raise ApiStatus(422, "Invalid", f'{qualified} "{name}" is invalid: {msg}',
                        {"name": name, "kind": kind,
                         "causes": [{"reason": "FieldValueInvalid", "message": e,
                                     "field": e.split(":", 1)[0]} for e in errs]})
    return {**judged, **{k: obj[k] for k in keep if k in obj}}


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _prune(v: Any, s: Schema, path: str, unknown: list[str], root: bool = False) -> None:
    if isinstance(v, dict):
        preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
        props = s.get("properties") or {}
        ap = s.get("additionalProperties")
        for k in list(v):
            if root and k in ("apiVersion", "kind", "metadata"):
                continue
            if k in props:
                _prune(v[k], props[k], _join(path, k), unknown)
            elif isinstance(ap, dict):
                _prune(v[k], ap, _join(path, k), unknown)
            elif not (preserve or ap is True or s.get("x-kubernetes-embedded-resource")):
                unknown.append(_join(path, k))
                del v[k]
    elif isinstance(v, list) and isinstance(s.get("items"), dict):
        for i, item in enumerate(v):
            _prune(item, s["items"], f"{path}[{i}]", unknown)


def _default(v: Any, s: Schema) -> None:
    if isinstance(v, dict):
        for k, sub in (s.get("properties") or {}).items():
            if k not in v and "default" in sub:
                v[k] = copy.deepcopy(sub["default"])
            if k in v:
                _default(v[k], sub)
        if isinstance(s.get("additionalProperties"), dict):
            for k in v:
                _default(v[k], s["additionalProperties"])
    elif isinstance(v, list) and isinstance(s.get("items"), dict):
        for item in v:
            _default(item, s["items"])


def _type_of(v: Any) -> str:
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return "null"


def _show(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, dict | list) else f"<{_type_of(v)}>"


def validate_value(v: Any, s: Schema, path: str, root: bool = False) -> list[str]:
    errs: list[str] = []
    _validate(v, s, path, errs, root)
    return errs


def _validate(v: Any, s: Schema, path: str, errs: list[str], root: bool = False) -> None:
    shown = path or "<root>"
    if v is None:
        if not s.get("nullable") and (s.get("type") or s.get("x-kubernetes-int-or-string")):
            want = s.get("type") or "integer-or-string"
            errs.append(f'{shown}: Invalid value: "null": {shown} in body must be of type '
                        f'{want}: "null"')
        return
    if s.get("x-kubernetes-int-or-string") and _type_of(v) not in ("integer", "string"):
        errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body must be of "
                    f"type integer,string: {json.dumps(_type_of(v))}")
        return
    t = s.get("type")
    if t:
        got = _type_of(v)
        if not (got == t or (t == "number" and got == "integer")):
            errs.append(f"{shown}: Invalid value: {json.dumps(got)}: {shown} in body must be "
                        f"of type {t}: {json.dumps(got)}")
            return
    if "enum" in s and v not in s["enum"]:
        errs.append(f"{shown}: Unsupported value: {_show(v)}: supported values: "
                    + ", ".join(_show(e) for e in s["enum"]))
    if isinstance(v, str):
        if "pattern" in s and not re.search(s["pattern"], v):
            errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body should match "
                        f"'{s['pattern']}'")
        if "maxLength" in s and len(v) > s["maxLength"]:
            errs.append(f"{shown}: Too long: may not be more than {s['maxLength']} bytes")
        if "minLength" in s and len(v) < s["minLength"]:
            errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body should be at "
                        f"least {s['minLength']} chars long")
    if isinstance(v, int | float) and not isinstance(v, bool):
        _bounds(v, s, shown, errs)
    if isinstance(v, list):
        if "maxItems" in s and len(v) > s["maxItems"]:
            errs.append(f"{shown}: Too many: {len(v)}: must have at most {s['maxItems']} items")
        if "minItems" in s and len(v) < s["minItems"]:
            errs.append(f"{shown}: Invalid value: {len(v)}: {shown} in body should have at "
                        f"least {s['minItems']} items")
        if isinstance(s.get("items"), dict):
            for i, item in enumerate(v):
                _validate(item, s["items"], f"{path}[{i}]", errs)
    if isinstance(v, dict):
        for req in s.get("required") or []:
            if req not in v:
                errs.append(f"{_join(path, req)}: Required value")
        props = s.get("properties") or {}
        for k, item in v.items():
            if root and k in ("apiVersion", "kind", "metadata"):
                continue
            if k in props:
                _validate(item, props[k], _join(path, k), errs)
            elif isinstance(s.get("additionalProperties"), dict):
                _validate(item, s["additionalProperties"], _join(path, k), errs)
    for j in JUNCTORS:
        branches = s.get(j) or []
        if not branches:
            continue
        ok = [not validate_value(v, b, path) for b in branches]
        if (j == "allOf" and not all(ok)) or (j == "anyOf" and not any(ok)) or (
                j == "oneOf" and sum(ok) != 1):
            how = {"allOf": "all", "anyOf": "at least one", "oneOf": "exactly one"}[j]
            errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body must match "
                        f"{how} schema")
    if isinstance(s.get("not"), dict) and not validate_value(v, s["not"], path):
        errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body must not match")


def _bounds(v: float, s: Schema, shown: str, errs: list[str]) -> None:
    if "minimum" in s:
        lo, excl = s["minimum"], s.get("exclusiveMinimum") is True
        if v < lo or (excl and v == lo):
            errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body should be "
                        f"greater than {'' if excl else 'or equal to '}{lo}")
    if "maximum" in s:
        hi, excl = s["maximum"], s.get("exclusiveMaximum") is True
        if v > hi or (excl and v == hi):
            errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body should be "
                        f"less than {'' if excl else 'or equal to '}{hi}")
    if "multipleOf" in s and s["multipleOf"] and v % s["multipleOf"]:
        errs.append(f"{shown}: Invalid value: {_show(v)}: {shown} in body should be a "
                    f"multiple of {s['multipleOf']}")
