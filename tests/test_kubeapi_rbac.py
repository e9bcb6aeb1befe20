"""The control-plane simulator's RBAC against the rules the Kubernetes documentation
states (access-authn-authz/rbac), and its SelfSubjectAccessReview as kubectl reads it."""

from __future__ import annotations

from typing import Any

import pytest

from simulator.kubeapi.errors import ApiStatus
from simulator.kubeapi.rbac import Attributes, Authorizer, access_review, verb_of

SA = {"kind": "ServiceAccount", "name": "sa", "namespace": "ns"}


def role(kind: str, name: str, rules: list[dict[str, Any]], ns: str | None = None
         ) -> dict[str, Any]:
    meta = {"name": name} | ({"namespace": ns} if ns else {})
    return {"kind": kind, "metadata": meta, "rules": rules}


def binding(kind: str, role_kind: str, role_name: str, ns: str | None = None,
            subjects: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta = {"name": f"b-{role_name}"} | ({"namespace": ns} if ns else {})
    return {"kind": kind, "metadata": meta, "subjects": subjects or [SA],
            "roleRef": {"kind": role_kind, "name": role_name}}


def a(verb: str, resource: str, ns: str | None = "ns", name: str = "", group: str = "",
      sub: str = "") -> Attributes:
    return Attributes(verb, group, resource, sub, ns, name)


def test_a_role_holds_in_its_namespace_only_and_a_cluster_role_where_it_is_bound() -> None:
    auth = Authorizer.from_manifests([
        role("Role", "r", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}], "ns"),
        binding("RoleBinding", "Role", "r", "ns"),
        role("ClusterRole", "view", [{"apiGroups": [""], "resources": ["configmaps"],
                                      "verbs": ["list"]}]),
        binding("RoleBinding", "ClusterRole", "view", "other"),
        role("ClusterRole", "nodes", [{"apiGroups": [""], "resources": ["nodes"],
                                       "verbs": ["get"]}]),
        binding("ClusterRoleBinding", "ClusterRole", "nodes"),
    ], "ns", "sa")
    assert auth.allows(a("get", "pods")) and not auth.allows(a("get", "pods", "other"))
    assert not auth.allows(a("list", "pods"))  # verbs are exact
    assert auth.allows(a("list", "configmaps", "other"))  # bound in "other" only
    assert not auth.allows(a("list", "configmaps", "ns"))
    assert auth.allows(a("get", "nodes", None)) and auth.allows(a("get", "nodes", "x"))
    assert not auth.allows(a("get", "pods", None))  # a Role never reaches cluster scope


def test_resource_names_subresources_and_wildcards() -> None:
    auth = Authorizer.from_manifests([
        role("ClusterRole", "c", [
            {"apiGroups": [""], "resources": ["nodes"], "resourceNames": ["me"],
             "verbs": ["get", "patch", "create", "list"]},
            {"apiGroups": ["x.dev"], "resources": ["things/status"], "verbs": ["*"]},
            {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["get"]}]),
        binding("ClusterRoleBinding", "ClusterRole", "c")], "ns", "sa")
    assert auth.allows(a("patch", "nodes", None, "me"))
    assert not auth.allows(a("patch", "nodes", None, "you"))
    # resourceNames never allow a request without a name: create, list.
    assert not auth.allows(a("create", "nodes", None))
    assert not auth.allows(a("list", "nodes", None))
    assert not auth.allows(a("get", "nodes", None, "me", sub="status"))  # not the subresource
    assert auth.allows(a("update", "things", "ns", "t", "x.dev", "status"))
    assert not auth.allows(a("update", "things", "ns", "t", "x.dev"))
    assert auth.allows(a("get", "deployments", "ns", "d", "apps", "scale"))


def test_bindings_to_others_or_to_missing_roles_grant_nothing() -> None:
    other = {"kind": "ServiceAccount", "name": "sa", "namespace": "elsewhere"}
    auth = Authorizer.from_manifests([
        role("ClusterRole", "all", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]),
        binding("ClusterRoleBinding", "ClusterRole", "all", subjects=[other]),
        binding("ClusterRoleBinding", "ClusterRole", "missing")], "ns", "sa")
    assert not auth.allows(a("get", "pods"))


def test_a_refusal_reads_as_the_real_servers() -> None:
    auth = Authorizer("system:serviceaccount:ns:sa", [])
    with pytest.raises(ApiStatus) as exc:
        auth.check(a("get", "secrets", "ns", "token"))
    assert exc.value.code == 403 and exc.value.reason == "Forbidden"
    assert exc.value.message == ('secrets "token" is forbidden: User '
                                 '"system:serviceaccount:ns:sa" cannot get resource "secrets" '
                                 'in API group "" in the namespace "ns"')


def test_verbs_from_requests_and_access_reviews() -> None:
    assert [verb_of("GET", "n", False), verb_of("GET", None, False), verb_of("GET", None, True),
            verb_of("POST", None, False), verb_of("PUT", "n", False),
            verb_of("PATCH", "n", False), verb_of("DELETE", "n", False),
            verb_of("DELETE", None, False)] == ["get", "list", "watch", "create", "update",
                                                 "patch", "delete", "deletecollection"]
    auth = Authorizer.from_manifests([
        role("Role", "r", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}], "ns"),
        binding("RoleBinding", "Role", "r", "ns")], "ns", "sa")
    yes = access_review(auth, {"spec": {"resourceAttributes": {
        "namespace": "ns", "verb": "get", "resource": "pods"}}})
    no = access_review(auth, {"spec": {"resourceAttributes": {
        "namespace": "ns", "verb": "delete", "resource": "pods"}}})
    assert yes["status"]["allowed"] is True and no["status"]["allowed"] is False
    with pytest.raises(ApiStatus) as exc:
        access_review(auth, {"spec": {}})
    assert exc.value.code == 422
