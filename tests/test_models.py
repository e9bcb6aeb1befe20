"""Documents: every bad input gets a path and a reason; schemas are exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import ProfileError
from agent.models import AgentConfig, HardwareProfile, MissionProfile, load_file, load_text
from tests.conftest import REPO


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ProfileError) as exc:
        load_text(MissionProfile, text, "t.yaml")
    return {v.path: v.reason for v in exc.value.violations}


GOOD = """
name: m
generation: 1
partitions:
  - name: p
    criticality: A
    budget: {quota_us: 2000, period_us: 10000}
    memory_mib: 16
    workloads: [{name: w, command: [/bin/true]}]
"""


def test_valid_profile_loads_with_defaults() -> None:
    m = load_text(MissionProfile, GOOD, "t.yaml")
    w = m.partitions[0].workloads[0]
    assert w.user == "nobody" and w.restart.policy == "always"
    assert m.partitions[0].cpu.dedicated_cores == []


def test_models_are_frozen() -> None:
    m = load_text(MissionProfile, GOOD, "t.yaml")
    with pytest.raises(Exception, match="frozen"):
        m.name = "x"  # type: ignore[misc]


def test_malformed_yaml_names_line() -> None:
    got = problems("name: m\npartitions: [\n  - {")
    (path, reason), = got.items()
    assert path.startswith("line ") and "malformed YAML" in reason


def test_unknown_field_is_named_with_its_path() -> None:
    got = problems(GOOD.replace("memory_mib: 16", "memory_mib: 16\n    colour: red"))
    assert got == {"partitions[0].colour": "unknown field"}


@pytest.mark.parametrize("field,value", [("quota_us", 0), ("quota_us", -5), ("period_us", 0)])
def test_zero_or_negative_budget_is_refused(field: str, value: int) -> None:
    text = GOOD.replace("{quota_us: 2000, period_us: 10000}",
                        f"{{quota_us: 2000, period_us: 10000, {field}: {value}}}")
    # duplicate keys in a flow mapping: YAML keeps the last, which is the bad one
    got = problems(text)
    assert f"partitions[0].budget.{field}" in got
    assert "greater than 0" in got[f"partitions[0].budget.{field}"]


def test_every_problem_is_reported_not_only_the_first() -> None:
    text = GOOD.replace("criticality: A", "criticality: Z").replace("memory_mib: 16",
                                                                    "memory_mib: lots")
    got = problems(text)
    assert {"partitions[0].criticality", "partitions[0].memory_mib"} <= got.keys()


def test_bad_names_and_wrong_types() -> None:
    got = problems(GOOD.replace("name: p", "name: Bad_Name").replace("generation: 1",
                                                                       "generation: soon"))
    assert "partitions[0].name" in got and "generation" in got


@pytest.mark.parametrize("text,reason", [("", "empty document"), ("- a\n- b", "a list")])
def test_non_mapping_documents(text: str, reason: str) -> None:
    assert reason in problems(text)[""]


def test_unreadable_file_is_a_profile_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read"):
        load_file(MissionProfile, tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "hwprofiles").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_hardware_profiles_validate(path: Path) -> None:
    hw = load_file(HardwareProfile, path)
    assert hw.datasheet, "every board names where its figures come from"
    assert set(hw.reserved.cores) <= hw.core_ids


def test_named_boards_have_their_data_sheet_core_counts() -> None:
    counts = {p.stem: len(load_file(HardwareProfile, p).cores)
              for p in (REPO / "hwprofiles").glob("*.yaml")}
    assert counts["raspberry-pi-4"] == 4 and counts["jetson-orin-nano"] == 6
    assert counts["imx8m-plus"] == 4 and counts["atom-x6425e"] == 4


def test_hardware_profile_cross_checks() -> None:
    with pytest.raises(ProfileError) as exc:
        load_text(HardwareProfile, """
name: b
arch: x86_64
cores: [{id: 0}, {id: 0}]
memory_mib: 100
reserved: {cores: [3], memory_mib: 100}
""", "hw.yaml")
    assert "duplicate core ids" in str(exc.value)


def test_schema_has_a_description_for_every_field() -> None:
    for model in (MissionProfile, HardwareProfile, AgentConfig):
        schema = model.model_json_schema()
        defs = [schema, *schema.get("$defs", {}).values()]
        for d in defs:
            for name, prop in d.get("properties", {}).items():
                assert prop.get("description"), f"{d.get('title')}.{name} has no docstring"
    json.dumps(MissionProfile.model_json_schema())


def test_the_flight_agent_skips_the_docstrings_and_validates_the_same() -> None:
    # `sortie run` starts with SORTIE_MODEL_DOCS=0: no source parsed for descriptions,
    # the same refusals and the same models.
    code = ("import json, sys\nfrom agent.models import MissionProfile, load_file\n"
            "from agent.errors import ProfileError\n"
            "m = load_file(MissionProfile, sys.argv[1])\n"
            "try:\n    MissionProfile.model_validate({'name': 'x', 'generation': 0})\n"
            "except Exception as e:\n    err = str(e)\n"
            "props = MissionProfile.model_json_schema()['properties'].values()\n"
            "print(json.dumps({'docs': sum('description' in p for p in props), "
            "'name': m.name, 'err': err}))")
    out = {}
    for flag in ("0", "1"):
        r = subprocess.run([sys.executable, "-c", code, str(REPO / "schedules" / "demo.yaml")],
                           capture_output=True, text=True, cwd=REPO, check=True,
                           env={**os.environ, "SORTIE_MODEL_DOCS": flag})
        out[flag] = json.loads(r.stdout)
    assert out["0"]["docs"] == 0 and out["1"]["docs"] > 3
    assert out["0"]["name"] == out["1"]["name"] and out["0"]["err"] == out["1"]["err"]
