"""The Kubernetes source's pure parts: targeting, choice, spec errors, node resources,
the list/watch cache (never backwards) and the backoff."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ProfileError
from agent.models import HardwareProfile
from agent.sources.kube import objects as ko
from agent.sources.kube.watching import ProfileCache, backoff_s
from tests.helpers import mission_doc, partition


def mp(name: str, rv: int, created: str = "2026-01-01T00:00:00Z", target: Any = None,
       **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": str(rv),
                         "uid": f"uid-{name}", "generation": 1, "creationTimestamp": created},
            "spec": {"target": target if target is not None else {"nodeName": "b1"},
                     **mission_doc(partition("p"), name=name), **spec}}


def test_targets_by_name_by_names_or_by_every_label() -> None:
    labels = {"sortie.dev/board": "rpi4", "fleet": "blue"}
    assert ko.targets(mp("a", 1), "b1", labels)
    assert not ko.targets(mp("a", 1), "b2", labels)
    assert ko.targets(mp("a", 1, target={"nodeSelector": {"fleet": "blue"}}), "x", labels)
    assert not ko.targets(mp("a", 1, target={"nodeSelector": {"fleet": "blue", "gpu": "y"}}),
                          "x", labels)
    assert not ko.targets(mp("a", 1, target={"nodeSelector": {}}), "x", labels), \
        "an empty selector aims at nothing, not at every board"
    assert not ko.targets(mp("a", 1, target={}), "b1", labels)
    wave = mp("a", 1, target={"nodeNames": ["b1", "b7"]})
    assert ko.targets(wave, "b7", labels) and not ko.targets(wave, "b2", labels)
    assert not ko.targets(mp("a", 1, target={"nodeNames": []}), "b1", labels)


def test_the_newest_profile_flies() -> None:
    old, new = mp("a", 5, "2026-01-01T00:00:00Z"), mp("b", 3, "2026-01-02T00:00:00Z")
    assert ko.choose([old, new]) is new and ko.choose([]) is None


def test_spec_errors_name_the_field_under_spec() -> None:
    bad = mp("a", 1)
    bad["spec"]["partitions"][0]["budget"]["quota_us"] = -1
    with pytest.raises(ProfileError) as err:
        ko.mission_of(bad)
    paths = [v.path for v in err.value.violations]
    assert any(p.startswith("spec.partitions") and "quota_us" in p for p in paths), paths
    assert ko.mission_of(mp("ok", 1)).name == "ok", "target is not part of the mission"


def test_node_resources_keep_the_os_share_out_of_allocatable(rpi4: HardwareProfile) -> None:
    cap, alloc = ko.resources(rpi4)
    assert cap["cpu"] == str(len(rpi4.cores))
    assert alloc["cpu"] == str(len(rpi4.cores) - len(rpi4.reserved.cores))
    assert alloc["memory"] == f"{rpi4.memory_mib - rpi4.reserved.memory_mib}Mi"
    labels = ko.node_labels("n", rpi4, {"fleet": "blue"})
    assert labels["kubernetes.io/arch"] == "arm64" and labels["fleet"] == "blue"


def test_cache_never_moves_backwards() -> None:
    c = ProfileCache()
    c.reset([mp("a", 10)], "12")
    assert not c.apply("MODIFIED", mp("a", 9)), "an older version of a known object"
    assert c.objects["default/a"]["metadata"]["resourceVersion"] == "10"
    assert c.apply("MODIFIED", mp("a", 13)) and c.resource_version == "13"
    assert not c.apply("BOOKMARK", {"metadata": {"resourceVersion": "11"}})
    assert c.resource_version == "13", "a bookmark never takes the version back"
    assert not c.apply("BOOKMARK", {"metadata": {"resourceVersion": "20"}})
    assert c.resource_version == "20"
    assert c.apply("DELETED", mp("a", 21)) and not c.objects
    assert not c.apply("DELETED", mp("a", 22)), "deleting the unknown changes nothing"
    c.reset([mp("b", 30)], "30")
    assert list(c.objects) == ["default/b"], "a relist is the whole truth"


@given(st.lists(st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]),
                          st.integers(1, 50)), max_size=40))
def test_cache_resume_version_is_monotonic(events: list[tuple[str, int]]) -> None:
    c = ProfileCache()
    c.reset([], "1")
    seen = 1
    for etype, rv in events:
        c.apply(etype, mp("a", rv) if etype != "BOOKMARK"
                else {"metadata": {"resourceVersion": str(rv)}})
        assert int(c.resource_version) >= seen
        seen = int(c.resource_version)


def test_backoff_is_jittered_exponential_capped_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_s(a, 30.0, rng=rng) for a in range(12)]
    assert all(0.1 <= d <= 45.0 for d in delays)
    assert delays[0] < 0.31 and max(delays[8:]) > 14, delays
    assert backoff_s(0, 30.0, retry_after_s=7, rng=rng) >= 7
    assert len({round(backoff_s(3, 30.0), 6) for _ in range(20)}) > 1, "jitter"


def test_a_broken_kubeconfig_never_quotes_its_token(tmp_path: Path) -> None:
    from agent.errors import AgentError
    from agent.models.config import KubeConfig
    from agent.sources.kube.api import load_config
    kc = tmp_path / "kubeconfig"
    kc.write_text("apiVersion: v1\nusers:\n- name: board\n  user:\n"
                  "    token: s3cr3t-t0ken: [oops\n")
    with pytest.raises(AgentError) as exc:
        load_config(KubeConfig(kubeconfig=kc))
    assert "s3cr3t" not in str(exc.value) and "line 5" in str(exc.value)
    assert exc.value.__cause__ is None and exc.value.__context__ is not None
