"""The boundary to the Kubernetes API: lightkube underneath, plain dicts and ``KubeError``
above. Every object is handled as a generic resource so what the server sends comes
back unchanged (no typed model drops or reshapes a field)."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
import httpcore2
import httpx2 as httpx
import lightkube
import yaml
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import PatchType, on_error_raise

from agent.errors import AgentError
from agent.models.config import KubeConfig as KubeSettings
from agent.sources.kube.names import GROUP, KIND, PLURAL, ROLLOUT_KIND, ROLLOUT_PLURAL, VERSION

Obj = dict[str, Any]

RESOURCES: dict[str, Any] = {
    "Node": create_global_resource("", "v1", "Node", "nodes"),
    "Lease": create_namespaced_resource("coordination.k8s.io", "v1", "Lease", "leases"),
    "Event": create_namespaced_resource("", "v1", "Event", "events"),
    KIND: create_namespaced_resource(GROUP, VERSION, KIND, PLURAL),
    "SelfSubjectAccessReview": create_global_resource(
        "authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews"),
    ROLLOUT_KIND: create_namespaced_resource(GROUP, VERSION, ROLLOUT_KIND, ROLLOUT_PLURAL),
}

GLOBAL = frozenset({"Node", "SelfSubjectAccessReview"})


class KubeError(AgentError):
    """The API server answered with an error, or could not be reached (``code`` 0)."""

    def __init__(self, code: int, reason: str, message: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(f"{code or 'unreachable'} {reason}: {message}")
        self.code, self.reason, self.message = code, reason, message
        self.retry_after_s = retry_after_s


def _translate(exc: Exception) -> KubeError:
    if isinstance(exc, ApiError):
        retry: float | None = None
        header = exc.response.headers.get("Retry-After") if exc.response is not None else None
        if header is not None:
            try:
                retry = float(header)
            except ValueError:
                retry = None
        st = exc.status
        return KubeError(int(st.code or 0), str(st.reason or ""), str(st.message or ""), retry)
    if isinstance(exc, httpx.HTTPStatusError):
        return KubeError(exc.response.status_code, "HTTPError", str(exc))
    if isinstance(exc, (httpx.HTTPError, OSError)):
        return KubeError(0, type(exc).__name__, str(exc) or repr(exc))
    if isinstance(exc, (ValueError, TypeError, lightkube.LoadResourceError)):
        # Malformed answers (a watch line that is not JSON, an object of the wrong shape).
        return KubeError(0, "MalformedResponse", str(exc)[:300])
    raise exc


def load_config(cfg: KubeSettings) -> SingleConfig:
    where = cfg.kubeconfig or "the in-cluster service account"
    try:
        if cfg.kubeconfig is not None:
            single = KubeConfig.from_file(Path(cfg.kubeconfig)).get(cfg.context)
        else:
            single = KubeConfig.from_service_account().get()
    except yaml.YAMLError as exc:
        # Never the YAML library's own message: it quotes the offending line, and in a
        # kubeconfig that line may be the bearer token.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise AgentError(f"kube.kubeconfig: cannot load {where}: malformed YAML{at}") \
            from None
    except Exception as exc:  # lightkube raises plain exceptions for bad files
        raise AgentError(f"kube.kubeconfig: cannot load {where}: "
                         f"{type(exc).__name__}") from None
    if single is None:
        raise AgentError(f"kube.context: {cfg.context!r} is not in {where}")
    return single


# The ``timeout`` parameters below are httpcore2's interface (ASYNC109 is for our own).
class _ClosingStream(httpcore2.AsyncNetworkStream):
    """A connection whose TLS handshake closes the socket however it ends. httpcore2's
    anyio stream closes it only when the handshake fails with an ``Exception``: one that
    is cancelled (the agent stopping, a task's timeout) left the TCP connection open
    until the garbage collector found it."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self.inner = inner

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self.inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore2.AsyncNetworkStream:  # noqa: ASYNC109
        try:
            return await self.inner.start_tls(ssl_context, server_hostname, timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.inner.aclose()
            raise

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _ClosingBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self) -> None:
        self.inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore2.AsyncNetworkStream:
        return _ClosingStream(await self.inner.connect_tcp(host, port, timeout, local_address,
                                                           socket_options))

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Any = None) -> httpcore2.AsyncNetworkStream:
        return _ClosingStream(await self.inner.connect_unix_socket(path, timeout,
                                                                   socket_options))

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def _transport(single: SingleConfig) -> httpx.AsyncHTTPTransport:
    """httpx's transport with the cluster's TLS settings (as lightkube builds them) over
    ``_ClosingBackend``. httpx2 takes no network backend: its pool's is replaced (pinned
    with lightkube; tests/test_kube_client.py fails if that stops working)."""
    if single.user is None:
        raise AgentError("kube.kubeconfig: its context names no user")
    try:
        verify = verify_cluster(single.cluster, single.user, single.abs_file)
    except Exception as exc:  # a CA or client certificate that cannot be read
        files = [f"{name} {single.abs_file(f)}" for name, f in (
            ("certificate-authority", single.cluster.certificate_auth),
            ("client-certificate", single.user.client_cert),
            ("client-key", single.user.client_key)) if f]
        raise AgentError(f"kube.kubeconfig: cannot use its TLS settings "
                         f"({', '.join(files) or 'inline data'}): {type(exc).__name__}"
                         + (f": {exc.strerror}" if isinstance(exc, OSError) else "")) from None
    transport = httpx.AsyncHTTPTransport(verify=verify)
    transport._pool._network_backend = _ClosingBackend()
    return transport


class KubeApi:
    def __init__(self, cfg: KubeSettings, timeout_s: float = 10.0) -> None:
        self.single = load_config(cfg)
        # Typed as Any: its overloads do not cover generic resources built at run time.
        self.client: Any = AsyncClient(self.single, field_manager="sortie",
                                       timeout=httpx.Timeout(timeout_s),
                                       transport=_transport(self.single))
        # One namespace: watched alone (namespaced RBAC suffices); several: cluster-wide,
        # the source keeps what is in scope.
        self.namespace = cfg.namespaces[0] if len(cfg.namespaces) == 1 else None

    async def close(self) -> None:
        await self.client.close()

    @staticmethod
    def _dict(obj: Any) -> Obj:
        out: Obj = json.loads(json.dumps(obj.to_dict() if hasattr(obj, "to_dict")
                                         else dict(obj)))
        return out

    async def get(self, kind: str, name: str, namespace: str | None = None) -> Obj | None:
        try:
            return self._dict(await self.client.get(RESOURCES[kind], name,
                                                    namespace=namespace))
        except Exception as exc:
            err = _translate(exc)
            if err.code == 404:
                return None
            raise err from exc

    async def create(self, obj: Obj) -> Obj:
        res = RESOURCES[obj["kind"]]
        try:
            return self._dict(await self.client.create(
                res.from_dict(obj), namespace=obj["metadata"].get("namespace")))
        except Exception as exc:
            raise _translate(exc) from exc

    async def replace(self, obj: Obj, status: bool = False) -> Obj:
        """PUT with the object's resourceVersion: 409 when someone wrote in between."""
        res = RESOURCES[obj["kind"]]
        meta = obj["metadata"]
        try:
            if status:
                return self._dict(await self.client.replace(
                    res.Status.from_dict(obj), meta["name"], namespace=meta.get("namespace")))
            return self._dict(await self.client.replace(res.from_dict(obj),
                                                        namespace=meta.get("namespace")))
        except Exception as exc:
            raise _translate(exc) from exc

    async def merge_patch(self, kind: str, name: str, patch: Obj,
                          namespace: str | None = None, status: bool = False) -> Obj:
        res = RESOURCES[kind].Status if status else RESOURCES[kind]
        try:
            return self._dict(await self.client.patch(res, name, patch, namespace=namespace,
                                                      patch_type=PatchType.MERGE))
        except Exception as exc:
            raise _translate(exc) from exc

    async def access_review(self, attributes: dict[str, str]) -> bool:
        """May these credentials do this (a SelfSubjectAccessReview; `sortie audit`)?"""
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": attributes}}
        try:
            got = self._dict(await self.client.create(
                RESOURCES["SelfSubjectAccessReview"].from_dict(review)))
        except Exception as exc:
            raise _translate(exc) from exc
        return bool((got.get("status") or {}).get("allowed"))

    async def list_all(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Every object of a kind: in ``namespace`` (None: every namespace), or
        cluster-wide for a cluster-scoped kind."""
        if kind in GLOBAL:
            it = self.client.list(RESOURCES[kind])
        else:
            it = self.client.list(RESOURCES[kind], namespace=namespace or ALL_NS)
        try:
            return [self._dict(o) async for o in it]
        except Exception as exc:
            raise _translate(exc) from exc

    async def delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            await self.client.delete(RESOURCES[kind], name, namespace=namespace)
        except Exception as exc:
            err = _translate(exc)
            if err.code != 404:
                raise err from exc

    async def list_profiles(self) -> tuple[list[Obj], str]:
        it = self.client.list(RESOURCES[KIND], namespace=self.namespace or ALL_NS)
        try:
            items = [self._dict(o) async for o in it]
            return items, str(it.resourceVersion)
        except Exception as exc:
            raise _translate(exc) from exc

    def watch_node(self, name: str, resource_version: str,
                   timeout_s: int) -> AsyncGenerator[tuple[str, Obj], None]:
        """The board's own node, changes after ``resource_version`` (a watch narrowed to
        its name: what RBAC's resourceNames allows)."""
        return self._watch(RESOURCES["Node"], None, {
            "resourceVersion": resource_version, "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_s, "fieldSelector": f"metadata.name={name}"})

    def watch_profiles(self, resource_version: str,
                       timeout_s: int) -> AsyncGenerator[tuple[str, Obj], None]:
        """Events after ``resource_version``, bookmarks included; ends when the server
        ends the stream, raises KubeError (410 included) otherwise."""
        return self._watch(RESOURCES[KIND], self.namespace or ALL_NS, {
            "resourceVersion": resource_version, "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_s})

    async def _watch(self, res: Any, namespace: str | None,
                     params: dict[str, Any]) -> AsyncGenerator[tuple[str, Obj], None]:
        # lightkube's public watch() cannot ask for bookmarks: build the same request
        # with allowWatchBookmarks through its generic client (pinned: lightkube ~= 1.0).
        generic = self.client._client
        br = generic.prepare_request("list", res=res, namespace=namespace, watch=True,
                                     params=params)
        stream = generic.watch(br, on_error=on_error_raise)
        try:
            async for etype, obj in stream:
                yield str(etype), self._dict(obj)
        except Exception as exc:
            raise _translate(exc) from exc
        finally:
            await stream.aclose()
