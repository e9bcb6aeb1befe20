"""The shipped MissionProfile CRD is generated from the pydantic model and structural."""

from __future__ import annotations

import yaml

from agent.ground.crd import manifest, manifest_yaml, rollout_manifest
from agent.ground.rollout.model import RolloutSpec
from agent.models import MissionProfile
from simulator.kubeapi.schema import structural_errors
from tests.conftest import REPO

CRD = REPO / "docs" / "kube" / "missionprofile-crd.yaml"


def test_the_shipped_crd_matches_the_model() -> None:
    assert CRD.read_text() == manifest_yaml(), "run: sortie kube crd > " + str(CRD)


def test_the_schema_is_structural() -> None:
    # The API server's rules, as the control-plane simulator encodes them
    # (tests/test_kubeapi_schema.py holds the double to them).
    schema = manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unknown: list[str] = []
    assert structural_errors(schema, "openAPIV3Schema", unknown) == []
    assert unknown == []


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


ROLLOUT_CRD = REPO / "docs" / "kube" / "missionrollout-crd.yaml"


def test_the_shipped_rollout_crd_matches_its_model_and_is_structural() -> None:
    assert ROLLOUT_CRD.read_text() == manifest_yaml("missionrollout"), \
        "run: sortie kube crd missionrollout > " + str(ROLLOUT_CRD)
    schema = rollout_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    unknown: list[str] = []
    assert structural_errors(schema, "openAPIV3Schema", unknown) == []
    assert unknown == []
    spec = schema["properties"]["spec"]["properties"]
    assert {"mission", "nodeNames", "nodeSelector", "waves", "soakSeconds", "gate",
            "onFailure"} <= set(spec)
    assert spec["gate"]["properties"]["maxCriticality"]["enum"] == list("ABCDE")


def test_the_example_rollout_is_valid() -> None:
    doc = yaml.safe_load((REPO / "docs" / "kube" / "demo-missionrollout.yaml").read_text())
    spec = RolloutSpec.model_validate(doc["spec"])
    assert spec.mission.generation == 2 and spec.waves == ["5%", "25%", "100%"]
