"""The control-plane simulator behaves as the API server where a client notices: versions,
conflicts, 410 Gone, selectors, patches, the status subresource, faults; and the real
kubectl (both versions this machine has) works against it."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.kubeapi.patching import json_patch, merge_patch, strategic_merge
from simulator.kubeapi.tables import age, jsonpath
from tests.conftest import REPO
from tests.kubesim import CRD, Cluster, board_rbac, cluster, kubectls

TOKEN = "sortie-test-token"


def call(c: Cluster, method: str, path: str, body: Any = None,
         ctype: str = "application/json", token: str | None = TOKEN,
         accept: str = "application/json") -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPSConnection("127.0.0.1", c.server.port, timeout=10,
                                       context=c.server.client_context())
    headers = {"Content-Type": ctype, "Accept": accept}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, None if body is None else json.dumps(body), headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, json.loads(data) if data else None, dict(resp.getheaders())


def watch_lines(c: Cluster, path: str, count: int, timeout: float = 5) -> list[dict[str, Any]]:
    conn = http.client.HTTPSConnection("127.0.0.1", c.server.port, timeout=timeout,
                                       context=c.server.client_context())
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    resp = conn.getresponse()
    out: list[dict[str, Any]] = []
    while len(out) < count:
        line = resp.readline()
        if not line:
            break
        out.append(json.loads(line))
    conn.close()
    return out


LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"


def lease(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40}}


@pytest.fixture
def sim(tmp_path: Path):
    with cluster(tmp_path, history=5) as c:
        yield c


def test_requests_without_the_token_are_refused(sim: Cluster) -> None:
    code, body, _ = call(sim, "GET", "/api/v1/nodes", token=None)
    assert code == 401 and body["reason"] == "Unauthorized"


def test_a_list_or_watch_narrowed_to_a_name_is_authorized_by_that_name(sim: Cluster) -> None:
    # As the real server's RequestInfoFactory: fieldSelector metadata.name=X makes the
    # request one for X, so RBAC resourceNames can allow a board to watch its own node
    # and nothing else.
    sim.server.add_subject("board", board_rbac("b1"))
    mine = "/api/v1/nodes?fieldSelector=metadata.name%3Db1"
    assert call(sim, "GET", mine, token="board")[0] == 200
    assert call(sim, "GET", mine + "&watch=true&timeoutSeconds=1", token="board")[0] == 200
    for path in ("/api/v1/nodes", "/api/v1/nodes?fieldSelector=metadata.name%3Db2",
                 "/api/v1/nodes?watch=true",
                 "/api/v1/nodes?fieldSelector=metadata.name%21%3Db2"):
        code, body, _ = call(sim, "GET", path, token="board")
        assert code == 403 and body["reason"] == "Forbidden", (path, body)


def test_a_write_with_a_stale_resource_version_is_a_conflict(sim: Cluster) -> None:
    code, first, _ = call(sim, "POST", LEASES, lease("b1"))
    assert code == 201
    code, _, _ = call(sim, "POST", LEASES, lease("b1"))
    assert code == 409
    newer = {**first, "spec": {**first["spec"], "renewTime": "2026-01-01T00:00:00.000000Z"}}
    code, second, _ = call(sim, "PUT", f"{LEASES}/b1", newer)
    assert code == 200
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    code, body, _ = call(sim, "PUT", f"{LEASES}/b1", newer)  # still the first version
    assert code == 409 and body["reason"] == "Conflict"


def test_watch_resumes_after_a_version_and_answers_410_once_it_fell_out_of_history(
        sim: Cluster) -> None:
    _, first, _ = call(sim, "POST", LEASES, lease("w1"))
    rv = first["metadata"]["resourceVersion"]
    for i in range(3):
        call(sim, "PATCH", f"{LEASES}/w1", {"spec": {"leaseDurationSeconds": 41 + i}},
             "application/merge-patch+json")
    events = watch_lines(sim, f"{LEASES}?watch=true&resourceVersion={rv}", 3)
    assert [e["type"] for e in events] == ["MODIFIED"] * 3
    assert [e["object"]["spec"]["leaseDurationSeconds"] for e in events] == [41, 42, 43]
    for i in range(6):  # history keeps 5 changes
        call(sim, "PATCH", f"{LEASES}/w1", {"spec": {"leaseDurationSeconds": 50 + i}},
             "application/merge-patch+json")
    gone = watch_lines(sim, f"{LEASES}?watch=true&resourceVersion={rv}", 1)
    assert gone[0]["type"] == "ERROR" and gone[0]["object"]["code"] == 410


def test_watch_without_a_version_starts_with_every_object_then_streams(sim: Cluster) -> None:
    call(sim, "POST", LEASES, lease("a"))
    call(sim, "POST", LEASES, lease("b"))
    import threading
    later = threading.Timer(0.3, lambda: call(sim, "DELETE", f"{LEASES}/a"))
    later.start()
    events = watch_lines(sim, f"{LEASES}?watch=true", 3)
    later.join()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_bookmarks_carry_the_latest_version(tmp_path: Path) -> None:
    with cluster(tmp_path, bookmark_s=0.2) as c:
        _, obj, _ = call(c, "POST", LEASES, lease("bk"))
        rv = obj["metadata"]["resourceVersion"]
        ev = watch_lines(c, f"{LEASES}?watch=true&resourceVersion={rv}"
                         "&allowWatchBookmarks=true", 1)
        assert ev[0]["type"] == "BOOKMARK"
        assert int(ev[0]["object"]["metadata"]["resourceVersion"]) >= int(rv)


def test_label_and_field_selectors(sim: Cluster) -> None:
    call(sim, "POST", LEASES, lease("x", {"tier": "a", "arch": "arm64"}))
    call(sim, "POST", LEASES, lease("y", {"tier": "b"}))
    call(sim, "POST", LEASES, lease("z"))

    def names(q: str) -> list[str]:
        _, body, _ = call(sim, "GET", f"{LEASES}?{q}")
        return [o["metadata"]["name"] for o in body["items"]]
    assert names("labelSelector=tier%3Da") == ["x"]
    assert names("labelSelector=tier%20in%20(a%2Cb)") == ["x", "y"]
    assert names("labelSelector=tier%20notin%20(a)") == ["y", "z"]
    assert names("labelSelector=!tier") == ["z"]
    assert names("labelSelector=tier%2Carch%3Darm64") == ["x"]
    assert names("fieldSelector=metadata.name%3Dy") == ["y"]
    assert names("fieldSelector=metadata.name!%3Dy") == ["x", "z"]


SPEC = {"name": "m", "generation": 1, "partitions": [
    {"name": "p", "criticality": "C", "budget": {"quota_us": 20_000, "period_us": 100_000},
     "memory_mib": 64, "workloads": [{"name": "w", "command": ["/bin/sleep", "3600"]}]}]}


def test_status_subresource_and_generation(sim: Cluster) -> None:
    sim.kubectl("apply", "-f", str(CRD))
    base = "/apis/sortie.dev/v1alpha1/namespaces/default/missionprofiles"
    code, obj, _ = call(sim, "POST", base, {
        "apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
        "metadata": {"name": "m"}, "spec": SPEC,
        "status": {"state": "ignored on create"}})
    assert code == 201 and "status" not in obj and obj["metadata"]["generation"] == 1
    obj["status"] = {"state": "Flying"}
    code, after, _ = call(sim, "PUT", f"{base}/m/status", obj)
    assert after["status"] == {"state": "Flying"} and after["metadata"]["generation"] == 1
    after["spec"]["generation"] = 2
    after["status"] = {"state": "changed through the main resource"}
    code, main, _ = call(sim, "PUT", f"{base}/m", after)
    assert main["status"] == {"state": "Flying"}, "the main resource ignores status"
    assert main["metadata"]["generation"] == 2, "a spec change raises the generation"
    code, _body, _ = call(sim, "PATCH", f"{base}/m", {"spec": {"x": 1}},
                         "application/strategic-merge-patch+json")
    assert code == 415, "custom resources take no strategic merge patch"


def test_injected_faults(sim: Cluster) -> None:
    sim.server.faults.fail(429, retry_after=3)
    code, _body, headers = call(sim, "GET", "/api/v1/nodes")
    assert code == 429 and headers["Retry-After"] == "3"
    sim.server.faults.fail(500, count=2, path="/nodes")
    assert call(sim, "GET", "/api/v1/namespaces")[0] == 200, "only matching paths fail"
    assert [call(sim, "GET", "/api/v1/nodes")[0] for _ in range(3)] == [500, 500, 200]
    sim.server.faults.fail(0)
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        call(sim, "GET", "/api/v1/nodes")


def test_patch_functions() -> None:
    doc = {"a": {"b": 1, "c": [1, 2]}, "conds": [{"type": "R", "status": "F"}]}
    assert merge_patch(doc, {"a": {"b": None, "d": 2}}) == {
        "a": {"c": [1, 2], "d": 2}, "conds": [{"type": "R", "status": "F"}]}
    assert json_patch(doc, [{"op": "add", "path": "/a/c/-", "value": 3},
                            {"op": "replace", "path": "/a/b", "value": 5},
                            {"op": "remove", "path": "/conds/0"}]) == {
        "a": {"b": 5, "c": [1, 2, 3]}, "conds": []}
    assert strategic_merge(doc, {"conds": [{"type": "R", "status": "T"},
                                           {"type": "D", "status": "F"}]})["conds"] == [
        {"type": "R", "status": "T"}, {"type": "D", "status": "F"}]


def test_printer_column_jsonpath_and_age() -> None:
    obj = {"status": {"conditions": [{"type": "A", "status": "True"},
                                     {"type": "B", "status": "False"}]}, "spec": {"g": 3}}
    assert jsonpath(obj, '.status.conditions[?(@.type=="B")].status') == ["False"]
    assert jsonpath(obj, ".spec.g") == [3]
    assert jsonpath(obj, ".status.conditions[*].type") == ["A", "B"]
    assert jsonpath(obj, ".missing.x") == []
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 3 * 3600))
    assert age(stamp, now) == "3h"


# -- the real kubectl ------------------------------------------------------------------------
MP = """apiVersion: sortie.dev/v1alpha1
kind: MissionProfile
metadata: {name: survey, namespace: default}
spec:
  target: {nodeName: board-1}
  name: survey
  generation: GEN
  partitions:
  - name: p
    criticality: C
    budget: {quota_us: 20000, period_us: 100000}
    memory_mib: 64
    pids_max: 16
    workloads: [{name: w, command: [/bin/sleep, "3600"], user: nobody}]
"""


@pytest.mark.parametrize(("label", "kubectl"), kubectls(), ids=[k[0] for k in kubectls()])
def test_kubectl_drives_the_simulator(tmp_path: Path, label: str, kubectl: str) -> None:
    with cluster(tmp_path, kubectl) as c:
        assert "customresourcedefinition.apiextensions.k8s.io/missionprofiles.sortie.dev " \
               "created" in c.kubectl("apply", "-f", str(CRD)).stdout
        assert "created" in c.kubectl("apply", "-f", "-", stdin=MP.replace("GEN", "1")).stdout
        assert "configured" in c.kubectl("apply", "-f", "-",
                                         stdin=MP.replace("GEN", "2")).stdout
        rv = c.get_json("missionprofile", "survey")["metadata"]["resourceVersion"]
        # The same document again changes nothing. kubectl says "configured" all the
        # same, as against a real server: the server defaulted fields inside the
        # partitions list, so kubectl's merge patch carries the whole list again.
        again = c.kubectl("apply", "-f", "-", stdin=MP.replace("GEN", "2")).stdout
        assert "configured" in again or "unchanged" in again
        obj = c.get_json("missionprofile", "survey")
        assert obj["metadata"]["resourceVersion"] == rv
        assert obj["spec"]["generation"] == 2 and obj["metadata"]["generation"] == 2
        # A board's status, written as the agent does, shows in get and describe.
        rt = c.server.store.types[("sortie.dev", "missionprofiles")]
        obj["status"] = {"state": "Flying", "conditions": [
            {"type": "Admitted", "status": "True", "reason": "Fits", "message": "ok"},
            {"type": "Applied", "status": "True", "reason": "Applied", "message": "gen 2"}]}
        c.server.store.replace(rt, "default", "survey", obj, "status")
        c.server.store.create(c.server.store.types[("", "events")], "default", {
            "metadata": {"name": "survey.1"}, "reason": "Applied", "type": "Normal",
            "message": "generation 2 applied on board-1", "count": 1,
            "involvedObject": {"apiVersion": "sortie.dev/v1alpha1", "kind": "MissionProfile",
                               "name": "survey", "namespace": "default",
                               "uid": obj["metadata"]["uid"]},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z",
            "source": {"component": "sortie", "host": "board-1"}})
        table = c.kubectl("get", "missionprofiles").stdout.splitlines()
        assert table[0].split()[:5] == ["NAME", "STATE", "GENERATION", "ADMITTED", "APPLIED"]
        assert table[1].split()[:5] == ["survey", "Flying", "2", "True", "True"]
        described = c.kubectl("describe", "mp", "survey").stdout
        assert "Admitted" in described and "Fits" in described
        assert "generation 2 applied on board-1" in described, described
        c.kubectl("delete", "-f", "-", stdin=MP.replace("GEN", "2"))
        assert c.get_json("missionprofiles")["items"] == []
        c.kubectl("create", "-f", "-", stdin=yaml.safe_dump({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "board-1", "labels": {"kubernetes.io/arch": "arm64"}},
            "status": {"conditions": [{"type": "Ready", "status": "True",
                                       "reason": "SortieReady", "message": "flying"}]}}))
        nodes = c.kubectl("get", "nodes", "-L", "kubernetes.io/arch").stdout.splitlines()
        assert nodes[1].split()[:2] == ["board-1", "Ready"] and nodes[1].split()[-1] == "arm64"


def test_the_rollout_crd_installs_and_kubectl_shows_its_progress(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        c.kubectl("apply", "-f", str(REPO / "docs" / "kube" / "missionrollout-crd.yaml"))
        c.kubectl("create", "namespace", "sortie-missions")
        c.kubectl("apply", "-f", str(REPO / "docs" / "kube" / "demo-missionrollout.yaml"))
        rt = c.server.store.types[("sortie.dev", "missionrollouts")]
        obj = c.get_json("missionrollout", "demo-gen2", "-n", "sortie-missions")
        obj["status"] = {"phase": "Soaking", "waveOf": "1/3", "boards": {
            "applied": 25, "held": 2, "pending": 0, "failed": 0, "rolledBack": 0}}
        c.server.store.replace(rt, "sortie-missions", "demo-gen2", obj, "status")
        head, row = c.kubectl("get", "mr", "-n", "sortie-missions").stdout.splitlines()
        assert head.split() == ["NAME", "PHASE", "WAVE", "APPLIED", "HELD", "PENDING",
                                "FAILED", "ROLLED-BACK", "AGE"]
        assert row.split()[:8] == ["demo-gen2", "Soaking", "1/3", "25", "2", "0", "0", "0"]
        # The server holds the spec to the schema: a wave that is not a string, a gate
        # criticality that is not a DAL.
        bad = yaml.safe_load((REPO / "docs" / "kube" / "demo-missionrollout.yaml")
                             .read_text())
        bad["metadata"]["name"] = "bad"
        bad["spec"]["gate"]["maxCriticality"] = "Z"
        r = c.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(bad), check=False)
        assert r.returncode != 0 and "spec.gate.maxCriticality" in r.stderr, r.stderr
