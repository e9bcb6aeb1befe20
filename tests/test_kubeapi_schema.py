"""The control-plane simulator holds CRDs and custom resources to the rules a real API
server applies (apiextensions.k8s.io/v1): the double is tested against those rules, and
the shipped CRD goes through them."""

from __future__ import annotations

import copy
import http.client
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.ground.crd import manifest
from simulator.kubeapi import schema
from tests.kubesim import CRD, Cluster, cluster
from tests.test_kubeapi import SPEC, TOKEN

ROOT = "spec.validation.openAPIV3Schema"


def errors(s: dict[str, Any]) -> list[str]:
    return schema.structural_errors(copy.deepcopy(s), ROOT)


def obj_schema(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"spec": {"type": "object", "properties": props}}}


# -- structural rules (pure) --------------------------------------------------------------
def test_the_shipped_crd_is_structural_with_no_unknown_keyword() -> None:
    doc = yaml.safe_load(CRD.read_text())
    unknown: list[str] = []
    (version,) = doc["spec"]["versions"]
    assert schema.structural_errors(version["schema"]["openAPIV3Schema"], ROOT, unknown) == []
    assert unknown == []


def test_additional_properties_beside_properties_is_refused_as_the_server_words_it() -> None:
    s = obj_schema(a={"type": "string"})
    s["properties"]["spec"]["additionalProperties"] = False
    assert errors(s) == [f"{ROOT}.properties[spec].additionalProperties: Forbidden: "
                         "additionalProperties and properties are mutual exclusive"]
    s["properties"]["spec"]["additionalProperties"] = {"type": "string"}
    assert len(errors(s)) == 1
    # A map (additionalProperties alone) is fine.
    assert errors(obj_schema(m={"type": "object", "additionalProperties": {"type": "string"}})
                  ) == []


@pytest.mark.parametrize(("node", "expect"), [
    ({}, "type: Required value: must not be empty for specified object fields"),
    ({"type": "null"}, "type cannot be set to null"),
    ({"type": "string", "$ref": "#/x"}, "$ref is not supported"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "quadratic"),
    ({"type": "array", "items": [{"type": "string"}]}, "items must be a schema object"),
    ({"type": "array"}, "items: Required value"),
    ({"type": "object", "x-kubernetes-preserve-unknown-fields": False}, "must be true or"),
    ({"type": "string", "patternProperties": {}}, "patternProperties is not supported"),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "anyOf": [{"type": "object"}]}, "anyOf[0].type: Forbidden: must be empty"),
    ({"type": "object", "properties": {"a": {"type": "string"}},
      "oneOf": [{"properties": {"b": {"type": "string"}}}]},
     "oneOf[0].properties[b]: Required value: must be specified outside"),
    ({"type": "integer", "minimum": 1, "default": 0}, "default: Invalid value: 0"),
])
def test_each_structural_rule(node: dict[str, Any], expect: str) -> None:
    found = errors(obj_schema(f=node))
    assert any(expect in e for e in found), found


def test_int_or_string_and_preserve_unknown_fields_need_no_type() -> None:
    assert errors(obj_schema(u={"x-kubernetes-int-or-string": True,
                                "anyOf": [{"type": "integer"}, {"type": "string"}]},
                             p={"x-kubernetes-preserve-unknown-fields": True})) == []


def test_metadata_may_only_restrict_name_and_generate_name() -> None:
    s = {"type": "object", "properties": {"metadata": {"type": "object", "properties": {
        "labels": {"type": "object"}}}}}
    assert any("must not specify anything other than name and generateName" in e
               for e in errors(s))


def test_unknown_keywords_are_dropped_without_a_word() -> None:
    # kube-apiserver 1.36 stored a CRD with propertyNames under fieldValidation=Strict,
    # the keyword gone: JSONSchemaProps decoding drops what it does not know.
    s = obj_schema(h={"type": "object", "propertyNames": {"enum": ["a"]},
                      "additionalProperties": {"type": "string"}})
    unknown: list[str] = []
    assert schema.structural_errors(s, ROOT, unknown) == []
    assert unknown == [f"{ROOT}.properties[spec].properties[h].propertyNames"]
    assert "propertyNames" not in s["properties"]["spec"]["properties"]["h"]


# -- custom resources (pure) ---------------------------------------------------------------
SCHEMA = manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def admit(spec: Any, mode: str = "Warn") -> dict[str, Any]:
    schema.begin_request(mode)
    return schema.admit(SCHEMA, {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                                 "metadata": {"name": "m"}, "spec": spec}, "MissionProfile", "m",
                        group="sortie.dev", version="v1alpha1")


def test_unknown_fields_are_pruned_with_a_warning() -> None:
    spec = copy.deepcopy(SPEC)
    spec["surprise"] = 1
    spec["partitions"][0]["budget"]["extra"] = "x"
    out = admit(spec)
    assert "surprise" not in out["spec"] and "extra" not in out["spec"]["partitions"][0]["budget"]
    assert schema.REQUEST.warnings == ['unknown field "spec.partitions[0].budget.extra"',
                                       'unknown field "spec.surprise"']
    admit(spec, "Ignore")
    assert schema.REQUEST.warnings == []
    with pytest.raises(schema.ApiStatus) as exc:
        admit(spec, "Strict")
    assert exc.value.code == 400
    # word for word what kube-apiserver 1.36 answered
    assert exc.value.message == (
        'MissionProfile in version "v1alpha1" cannot be handled as a MissionProfile: strict '
        'decoding error: unknown field "spec.partitions[0].budget.extra", unknown field '
        '"spec.surprise"')


def test_defaults_fill_what_exists() -> None:
    out = admit(copy.deepcopy(SPEC))
    w = out["spec"]["partitions"][0]["workloads"][0]
    assert w["user"] == "nobody" and w["working_dir"] == "/"
    assert out["spec"]["partitions"][0]["budget"]["mode"] == "cfs"
    assert "restart" not in w, "no default object is invented for an absent parent"


@pytest.mark.parametrize(("change", "expect"), [
    (lambda s: s.update(generation="one"),
     'spec.generation: Invalid value: "string": spec.generation in body must be of type '
     'integer: "string"'),
    (lambda s: s.pop("partitions"), "spec.partitions: Required value"),
    (lambda s: s["partitions"][0].update(criticality="Z"),
     'spec.partitions[0].criticality: Unsupported value: "Z": supported values: "A"'),
    (lambda s: s.update(name="Bad Name"),
     'spec.name: Invalid value: "Bad Name": spec.name in body should match'),
    (lambda s: s["partitions"][0]["budget"].update(quota_us=0),
     "spec.partitions[0].budget.quota_us: Invalid value: 0: spec.partitions[0].budget."
     "quota_us in body should be greater than 0"),
    (lambda s: s["partitions"][0].update(workloads=[]),
     "spec.partitions[0].workloads: Invalid value: 0: spec.partitions[0].workloads in body "
     "should have at least 1 items"),
    (lambda s: s.update(partitions=None), 'spec.partitions: Invalid value: "null"'),
])
def test_invalid_values_are_refused_with_the_servers_words(change: Any, expect: str) -> None:
    spec = copy.deepcopy(SPEC)
    change(spec)
    with pytest.raises(schema.ApiStatus) as exc:
        admit(spec)
    assert exc.value.code == 422 and expect in exc.value.message, exc.value.message


def test_every_cause_in_one_answer_as_the_real_server_gives_it() -> None:
    spec = copy.deepcopy(SPEC)
    spec.update(generation="one", name="Bad Name")
    spec["partitions"][0].update(criticality="Z")
    spec["partitions"][0]["budget"]["quota_us"] = 0
    with pytest.raises(schema.ApiStatus) as exc:
        admit(spec)
    # what kube-apiserver 1.36 answered for the same object (kubectl lists the causes)
    assert [c["message"] for c in exc.value.details["causes"]] == [
        'spec.generation: Invalid value: "string": spec.generation in body must be of type '
        'integer: "string"',
        "spec.name: Invalid value: \"Bad Name\": spec.name in body should match "
        "'^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'",
        "spec.partitions[0].budget.quota_us: Invalid value: 0: spec.partitions[0].budget."
        "quota_us in body should be greater than 0",
        'spec.partitions[0].criticality: Unsupported value: "Z": supported values: "A", "B", '
        '"C", "D", "E"']
    assert exc.value.message.startswith('MissionProfile.sortie.dev "m" is invalid: [')


def test_defaults_as_the_real_server_stored_them() -> None:
    out = admit(copy.deepcopy(SPEC))["spec"]
    # kube-apiserver 1.36 stored exactly this for the same spec
    assert out["description"] == "" and out["partitions"][0]["budget"] == {
        "burst_us": 0, "mode": "cfs", "period_us": 100_000, "quota_us": 20_000}
    assert out["partitions"][0]["pids_max"] == 64
    assert out["partitions"][0]["workloads"][0] == {
        "command": ["/bin/sleep", "3600"], "name": "w", "network": "none",
        "stop_grace_ms": 5000, "user": "nobody", "working_dir": "/"}


def test_nullable_fields_take_null() -> None:
    spec = copy.deepcopy(SPEC)
    spec["board"] = None
    assert admit(spec)["spec"]["board"] is None


# -- through HTTP and kubectl ---------------------------------------------------------------
def request(c: Cluster, method: str, path: str, body: Any, query: str = ""
            ) -> tuple[int, Any, list[str]]:
    conn = http.client.HTTPSConnection("127.0.0.1", c.server.port, timeout=10,
                                       context=c.server.client_context())
    conn.request(method, path + query, json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    data = resp.read()
    warnings = resp.headers.get_all("Warning") or []
    conn.close()
    return resp.status, json.loads(data) if data else None, warnings


def test_the_old_crd_is_refused_as_every_real_server_refused_it(tmp_path: Path) -> None:
    old = manifest()
    spec = old["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["additionalProperties"] = False  # what pydantic's extra="forbid" had put there
    with cluster(tmp_path) as c:
        res = c.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(old), check=False)
        assert res.returncode != 0
        assert (f"{ROOT}.properties[spec].additionalProperties: Forbidden: "
                "additionalProperties and properties are mutual exclusive") in res.stderr
        assert c.get_json("customresourcedefinitions")["items"] == []


def test_custom_resources_are_pruned_validated_and_status_is_separate(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kubectl("apply", "-f", str(CRD))
        base = "/apis/sortie.dev/v1alpha1/namespaces/default/missionprofiles"
        body = {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                "metadata": {"name": "m"}, "spec": {**SPEC, "surprise": 1}}
        code, _, _ = request(c, "POST", base, body, "?fieldValidation=Strict")
        assert code == 400
        code, obj, warnings = request(c, "POST", base, body)
        assert code == 201 and "surprise" not in obj["spec"]
        assert warnings == ['299 - "unknown field \\"spec.surprise\\""'], warnings
        # status through its subresource: preserved as written (the schema says so)
        obj["status"] = {"state": "Flying", "anything": {"goes": 1}}
        code, after, _ = request(c, "PUT", f"{base}/m/status", obj)
        assert code == 200 and after["status"]["anything"] == {"goes": 1}
        # a bad spec through the main resource is refused and nothing changes
        bad = copy.deepcopy(after)
        bad["spec"]["partitions"][0]["budget"]["quota_us"] = -1
        code, status, _ = request(c, "PUT", f"{base}/m", bad)
        assert code == 422 and status["reason"] == "Invalid"
        assert status["details"]["causes"][0]["field"] == "spec.partitions[0].budget.quota_us"
        assert c.get_json("missionprofile", "m")["spec"]["partitions"][0]["budget"][
            "quota_us"] == 20_000
