"""The shipped MissionProfile CRD is generated from the pydantic model and structural."""

from __future__ import annotations

from typing import Any

import yaml

from agent.kube.crd import manifest, manifest_yaml
from agent.models import MissionProfile
from tests.conftest import REPO

CRD = REPO / "docs" / "kube" / "missionprofile-crd.yaml"


def test_the_shipped_crd_matches_the_model() -> None:
    assert CRD.read_text() == manifest_yaml(), "run: sortie kube crd > " + str(CRD)


def structural_problems(node: Any, path: str = "") -> list[str]:
    """Kubernetes' structural-schema rules, the ones a generated schema can break."""
    out: list[str] = []
    if not isinstance(node, dict):
        return out
    for banned in ("$ref", "$defs", "const", "title"):
        if banned in node:
            out.append(f"{path}: {banned}")
    special = node.get("x-kubernetes-int-or-string") or node.get(
        "x-kubernetes-preserve-unknown-fields")
    if "type" not in node and not special:
        out.append(f"{path}: no type")
    if isinstance(node.get("exclusiveMinimum"), int | float) and not isinstance(
            node.get("exclusiveMinimum"), bool):
        out.append(f"{path}: numeric exclusiveMinimum")
    for k, v in node.get("properties", {}).items():
        out += structural_problems(v, f"{path}.{k}")
    if isinstance(node.get("items"), dict):
        out += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += structural_problems(node["additionalProperties"], f"{path}{{}}")
    return out


def test_the_schema_is_structural() -> None:
    schema = manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []


def test_every_mission_field_is_in_the_crd() -> None:
    spec = manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(MissionProfile.model_fields) <= set(spec["properties"])
    part = spec["properties"]["partitions"]["items"]["properties"]
    assert part["budget"]["properties"]["quota_us"]["minimum"] == 0
    assert part["budget"]["properties"]["quota_us"]["exclusiveMinimum"] is True


def test_the_example_object_carries_a_valid_mission() -> None:
    doc = yaml.safe_load((REPO / "docs" / "kube" / "demo-missionprofile.yaml").read_text())
    spec = dict(doc["spec"])
    assert "nodeSelector" in spec.pop("target")
    assert MissionProfile.model_validate(spec).name == "demo"
