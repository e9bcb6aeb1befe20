"""The MissionProfile CustomResourceDefinition, generated from the pydantic model so the
API server validates exactly what the agent accepts.

pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema:
no ``$ref``/``$defs`` (inlined here), ``nullable: true`` instead of a ``null`` branch,
boolean ``exclusiveMinimum`` next to ``minimum``, only JSONSchemaProps keywords (no
``title``, ``const``, ``propertyNames``), and no ``additionalProperties`` beside
``properties``: pydantic's ``extra="forbid"`` says ``additionalProperties: false``, which
every real API server refuses. The server prunes unknown fields instead (or refuses them
under kubectl's strict field validation); the board's own parse stays strict.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from agent.models import MissionProfile
from agent.sources.kube.names import (
    GROUP,
    KIND,
    PLURAL,
    ROLLOUT_KIND,
    ROLLOUT_PLURAL,
    VERSION,
)

TARGET = {
    "type": "object",
    "description": "Which boards fly this mission: a node by name, nodes by name, or by "
                   "labels.",
    "properties": {
        "nodeName": {"type": "string", "description": "The board's node name."},
        "nodeNames": {"type": "array", "items": {"type": "string"}, "maxItems": 5000,
                      "description": "Boards by node name (what a MissionRollout's wave "
                                     "targets)."},
        "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "Node labels the board must carry."},
    },
}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs", "const", "propertyNames"):
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead
        if key == "default" and value is None:
            continue  # a null default says nothing a missing default does not
        if key == "anyOf":
            branches = [b for b in value if b.get("type") != "null"]
            nullable = len(branches) < len(value)
            if len(branches) == 1:
                out.update(_structural(branches[0], defs))
                if nullable:
                    out["nullable"] = True
                continue
            if all(set(b) <= {"type"} for b in branches):
                # int | str (user ids): structural schemas need one type
                out["x-kubernetes-int-or-string"] = True
                if nullable:
                    out["nullable"] = True
                continue
            out["anyOf"] = _structural(branches, defs)
            if nullable:
                out["nullable"] = True
            continue
        if key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
            continue
        if key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
            continue
        out[key] = _structural(value, defs)
    return out


def spec_schema() -> dict[str, Any]:
    raw = MissionProfile.model_json_schema()
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    schema["properties"]["target"] = TARGET
    schema["description"] = ("A Sortie mission profile (the same document as a file or an "
                             "MQTT push) and the boards it targets.")
    return schema


STATUS = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "description": "Written by the boards: observed generation, conditions (Admitted, "
                   "Applied, Degraded), measured usage per partition.",
}


def _crd(kind: str, plural: str, short: str, spec: dict[str, Any], status: dict[str, Any],
         columns: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower(),
                      "shortNames": [short]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    *columns,
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"}, "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec, "status": status,
                    }}},
            }],
        },
    }


def manifest() -> dict[str, Any]:
    return _crd(KIND, PLURAL, "mp", spec_schema(), STATUS, [
        {"name": "State", "type": "string", "jsonPath": ".status.state"},
        {"name": "Generation", "type": "integer", "jsonPath": ".spec.generation"},
        {"name": "Admitted", "type": "string",
         "jsonPath": '.status.conditions[?(@.type=="Admitted")].status'},
        {"name": "Applied", "type": "string",
         "jsonPath": '.status.conditions[?(@.type=="Applied")].status'}])


ROLLOUT_STATUS = {
    "type": "object",
    "x-kubernetes-preserve-unknown-fields": True,
    "description": "Written by the rollout controller: phase, the wave in flight, boards "
                   "applied / held / offline / pending / failed / rolled back, conditions "
                   "(Progressing, Complete, Paused), and the state it resumes from.",
}


def rollout_spec_schema() -> dict[str, Any]:
    from agent.ground.rollout.model import RolloutSpec

    raw = RolloutSpec.model_json_schema(by_alias=True)
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    schema["description"] = ("A mission rolled out to boards in health-gated waves "
                             "(docs/fleet.md).")
    return schema


def rollout_manifest() -> dict[str, Any]:
    return _crd(ROLLOUT_KIND, ROLLOUT_PLURAL, "mr", rollout_spec_schema(), ROLLOUT_STATUS, [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Wave", "type": "string", "jsonPath": ".status.waveOf"},
        {"name": "Applied", "type": "integer", "jsonPath": ".status.boards.applied"},
        {"name": "Held", "type": "integer", "jsonPath": ".status.boards.held"},
        {"name": "Pending", "type": "integer", "jsonPath": ".status.boards.pending"},
        {"name": "Failed", "type": "integer", "jsonPath": ".status.boards.failed"},
        {"name": "Rolled-Back", "type": "integer",
         "jsonPath": ".status.boards.rolledBack"}])


def manifest_yaml(which: str = "missionprofile") -> str:
    if which == "missionrollout":
        header = ("# Generated from agent/ground/rollout/model.py by `sortie kube crd "
                  "missionrollout`; tests/test_kube_crd.py keeps it in sync.\n")
        return header + yaml.safe_dump(rollout_manifest(), sort_keys=False, width=100)
    header = ("# Generated from agent/models/mission.py by `sortie kube crd`; "
              "tests/test_kube_crd.py keeps it in sync.\n")
    return header + yaml.safe_dump(manifest(), sort_keys=False, width=100)
