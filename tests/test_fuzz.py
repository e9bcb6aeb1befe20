"""Fuzzing, bounded: every input surface (tests/fuzzing.py) fed random bytes, mutated
valid inputs and generated documents; each must answer or refuse in its own terms.
``SORTIE_FUZZ_EXAMPLES`` sets the number per strategy (default 150); bench/fuzz.py runs
the same surfaces coverage-guided, for much longer."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.errors import ProfileError
from tests.fuzzing import Rig, Surface, seeds

EXAMPLES = int(os.environ.get("SORTIE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEEDS = seeds()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=6),
    max_leaves=40)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_documents(draw: st.DrawFn, seed: bytes) -> bytes:
    """A valid document with one subtree replaced by an arbitrary value (or removed)."""
    try:
        doc = json.loads(seed)
        dump = json.dumps
    except ValueError:
        doc = yaml.safe_load(seed)
        dump = yaml.safe_dump  # type: ignore[assignment]
    paths = list(_paths(doc))
    where = draw(st.sampled_from(paths))
    new = draw(json_values)
    if not where:
        doc = new
    else:
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        if draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(where[-1], None)
        else:
            parent[where[-1]] = new
    try:
        return dump(doc).encode()
    except (TypeError, ValueError, OverflowError):
        return json.dumps(doc, default=str).encode()


@st.composite
def mutated_bytes(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "splice"]))
        pos = draw(st.integers(0, max(0, len(data))))
        if op == "flip" and data:
            data[min(pos, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            data[pos:pos] = draw(st.sampled_from([b"[" * 200, b"&a [*a]", b"9" * 5000,
                                                  b"\x00", b"\xff\xfe", b"\n- \n", b"{"]))
    return bytes(data)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


def surface(rig: Rig, name: str) -> Surface:
    return next(s for s in rig.surfaces() if s.name == name)


NAMES = list(SEEDS)


def feed(s: Surface, data: bytes) -> None:
    with contextlib.suppress(*s.refusals):
        s.run(data)


def test_every_surface_has_seeds(rig: Rig) -> None:
    assert {s.name for s in rig.surfaces()} == set(NAMES)
    for s in rig.surfaces():  # each seed is answered (or refused) cleanly, too
        for seed in SEEDS[s.name]:
            feed(s, seed)


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_random_bytes(rig: Rig, name: str, data: st.DataObject) -> None:
    feed(surface(rig, name), data.draw(st.binary(max_size=4096)))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_mutated_inputs(rig: Rig, name: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(SEEDS[name]))
    feed(surface(rig, name), data.draw(mutated_bytes(seed)))


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("oci-tar", "report-datagram")])
@FUZZ
@given(data=st.data())
def test_mutated_documents(rig: Rig, name: str, data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from([s for s in SEEDS[name] if s.lstrip()[:1] in b"{nabv"]
                                     or SEEDS[name]))
    try:
        doc = data.draw(mutated_documents(seed))
    except (ValueError, yaml.YAMLError):
        return
    feed(surface(rig, name), doc)


# -- Kubernetes objects through the control-plane simulator --------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.kubesim import CRD, cluster
    with cluster(tmp_path_factory.mktemp("fuzz-kube")) as c:
        c.kubectl("apply", "-f", str(CRD))
        yield c


@FUZZ
@given(data=st.data())
def test_kube_objects_through_the_simulator(sim: Any, rig: Rig, data: st.DataObject) -> None:
    """Whatever is written to the API server is answered (never a 5xx); what it stores
    (pruned, defaulted, validated) is what a board reads, and the board's decision on it is
    a mission or a refusal, never an exception."""
    from agent.sources.kube import objects as ko
    from agent.sources.kube.names import PLURAL
    from tests.test_kubeapi import call
    seed = SEEDS["kube-object"][0]
    doc = json.loads(data.draw(mutated_documents(seed)))
    if not isinstance(doc, dict):
        return
    doc.setdefault("metadata", {})
    if isinstance(doc["metadata"], dict):
        doc["metadata"]["name"] = f"f{data.draw(st.integers(0, 10**9))}"
        doc["metadata"].pop("namespace", None)
        doc["metadata"].pop("resourceVersion", None)
    code, obj, _ = call(sim, "POST", f"/apis/sortie.dev/v1alpha1/namespaces/default/{PLURAL}",
                        doc)
    assert code < 500, (code, obj)
    if code != 201:
        assert obj["kind"] == "Status" and obj["message"]
        return
    assert ko.well_formed(obj)
    with contextlib.suppress(ProfileError):
        ko.mission_of(obj)
    rig.cache.apply("ADDED", obj)
