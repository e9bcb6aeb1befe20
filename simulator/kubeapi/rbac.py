"""RBAC as the real API server evaluates it, for one authenticated subject (the token's).

From Roles, ClusterRoles and their bindings (the manifests a cluster would hold, e.g.
docs/kube/rbac.yaml), following the documented rules
(https://kubernetes.io/docs/reference/access-authn-authz/rbac/): rules only add
permissions; a Role's rules hold in its namespace; a ClusterRole's everywhere through a
ClusterRoleBinding, in the binding's namespace through a RoleBinding; ``*`` matches any
verb, group or resource; ``resource/subresource`` names a subresource (``*/status``
every status); ``resourceNames`` narrows a rule to named objects, so it never allows a
request without a name (create, list, watch, deletecollection); ``nonResourceURLs`` are
not modelled (discovery is open, as ``system:discovery`` makes it). Every authenticated
user may create SelfSubjectAccessReviews (``system:basic-user``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from simulator.kubeapi.errors import ApiStatus


@dataclass(frozen=True)
class Rule:
    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str]
    namespace: str | None
    """None: every namespace and cluster-scoped resources."""


@dataclass(frozen=True)
class Attributes:
    verb: str
    group: str
    resource: str
    subresource: str
    namespace: str | None
    name: str


def _matches(rule: Rule, a: Attributes) -> bool:
    if rule.namespace is not None and a.namespace != rule.namespace:
        return False
    if not ({"*", a.verb} & rule.verbs) or not ({"*", a.group} & rule.groups):
        return False
    full = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    if not ({"*", full} & rule.resources or (a.subresource and f"*/{a.subresource}"
                                               in rule.resources)):
        return False
    return not rule.names or a.name in rule.names


class Authorizer:
    def __init__(self, user: str, rules: list[Rule]) -> None:
        self.user, self.rules = user, rules

    @classmethod
    def from_manifests(cls, docs: list[dict[str, Any]], namespace: str,
                       service_account: str) -> Authorizer:
        """The rules bound to ``system:serviceaccount:NAMESPACE:NAME`` by these objects."""
        def ours(binding: dict[str, Any]) -> bool:
            return any(s.get("kind") == "ServiceAccount" and s.get("name") == service_account
                       and s.get("namespace", binding["metadata"].get("namespace"))
                       == namespace for s in binding.get("subjects") or [])

        roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
                 for d in docs if d.get("kind") in ("Role", "ClusterRole")}
        rules: list[Rule] = []
        for b in docs:
            if b.get("kind") not in ("RoleBinding", "ClusterRoleBinding") or not ours(b):
                continue
            ref = b["roleRef"]
            at = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
            role = roles.get((ref["kind"], at if ref["kind"] == "Role" else None,
                              ref["name"]))
            if role is None:
                continue  # a binding to a missing role grants nothing (as on a real server)
            for r in role.get("rules") or []:
                rules.append(Rule(frozenset(r.get("verbs") or []),
                                  frozenset(r.get("apiGroups") or []),
                                  frozenset(r.get("resources") or []),
                                  frozenset(r.get("resourceNames") or []), at))
        return cls(f"system:serviceaccount:{namespace}:{service_account}", rules)

    def allows(self, a: Attributes) -> bool:
        return any(_matches(r, a) for r in self.rules)

    def check(self, a: Attributes) -> None:
        """Raise the real server's 403 when the subject may not."""
        if self.allows(a):
            return
        what = a.resource + (f"/{a.subresource}" if a.subresource else "")
        qualified = f"{a.resource}.{a.group}" if a.group else a.resource
        named = f' "{a.name}"' if a.name else ""
        where = f' in the namespace "{a.namespace}"' if a.namespace else " at the cluster scope"
        raise ApiStatus(403, "Forbidden",
                        f'{qualified}{named} is forbidden: User "{self.user}" cannot {a.verb} '
                        f'resource "{what}" in API group "{a.group}"{where}',
                        {"name": a.name, "group": a.group, "kind": a.resource})


def verb_of(method: str, name: str | None, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else ("get" if name else "list")
    if method == "DELETE":
        return "delete" if name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "HEAD": "get"}.get(
        method, method.lower())


def access_review(auth: Authorizer | None, body: Any) -> dict[str, Any]:
    """A SelfSubjectAccessReview answered (authorization.k8s.io/v1)."""
    spec = body.get("spec") if isinstance(body, dict) else None
    attrs = spec.get("resourceAttributes") if isinstance(spec, dict) else None
    if not isinstance(attrs, dict):
        raise ApiStatus(422, "Invalid", "SelfSubjectAccessReview.authorization.k8s.io is "
                        "invalid: spec.resourceAttributes: Required value: exactly one of "
                        "nonResourceAttributes or resourceAttributes must be specified")
    a = Attributes(str(attrs.get("verb", "")), str(attrs.get("group", "")),
                   str(attrs.get("resource", "")), str(attrs.get("subresource", "")),
                   attrs.get("namespace") or None, str(attrs.get("name", "")))
    allowed = auth is None or auth.allows(a)
    status: dict[str, Any] = {"allowed": allowed}
    if allowed:
        status["reason"] = "RBAC: allowed" if auth is not None else "no authorizer"
    return {"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None}, "spec": spec, "status": status}
