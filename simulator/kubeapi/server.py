"""The control-plane simulator: a Kubernetes API server test double on loopback HTTP.

It serves what the Sortie agent and kubectl use (discovery, OpenAPI, namespaces, nodes,
events, pods, leases, CRDs and their custom resources with status subresources) with the
real server's semantics where a client can notice them: CRDs held to the structural-
schema rules and custom resources pruned, defaulted and validated against them with
``fieldValidation`` (``schema.py``), resourceVersions, 409 on a stale version, 410 Gone
for watches older than the kept history, label and field selectors, server-rendered
tables for ``kubectl get``. It is not Kubernetes: no admission chain, no CEL rules, no
field ownership in server-side apply, no garbage collection. Faults (``Faults``) make it
misbehave on purpose.

    python -m simulator.kubeapi --port 6443 --kubeconfig /tmp/sim.kubeconfig
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import socket
import ssl
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from simulator.kubeapi import certs, discovery, rbac, schema, tables
from simulator.kubeapi.errors import ApiStatus
from simulator.kubeapi.selectors import exact_name, matches_fields, matches_labels
from simulator.kubeapi.store import Change, ResourceType, Store

NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclass
class Faults:
    """Misbehaviour on demand; every field is safe to change from another thread."""

    fail_codes: list[tuple[int, float | None, str]] = field(default_factory=list)
    """Queued failures: (HTTP code, Retry-After seconds, path substring) for the next
    matching requests, one each."""
    stall_until: float = 0.0
    """Watches send nothing (not even bookmarks) until this monotonic time."""
    garbage_lines: int = 0
    """The next N watch events are preceded by a line that is not JSON."""
    drops: int = 0
    """Bumped to cut every open watch stream mid-flight."""

    def fail(self, code: int, count: int = 1, retry_after: float | None = None,
             path: str = "") -> None:
        self.fail_codes.extend([(code, retry_after, path)] * count)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: KubeApiServer
    _consumed = False

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)  # a client that never finishes the handshake
            self.request.do_handshake()
            self.request.settimeout(None)
        super().setup()

    # -- plumbing ------------------------------------------------------------------------
    def _send(self, code: int, body: Any, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for w in schema.REQUEST.warnings:
            # RFC 7234 warn-code 299, no agent, the text quoted as Go's strconv.Quote does.
            self.send_header("Warning", f"299 - {json.dumps(w)}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.server.log.append((self.command, self.path, code))

    def _raw_body(self) -> bytes:
        if self._consumed:
            return b""
        self._consumed = True
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _body(self) -> Any:
        raw = self._raw_body()
        if not raw:
            return None
        ctype = self.headers.get("Content-Type", "")
        try:
            if "yaml" in ctype:
                return yaml.safe_load(raw)
            return json.loads(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiStatus(400, "BadRequest", f"the request body is not valid: {exc}") from exc

    def _handle(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        self._consumed = False
        schema.begin_request(query.get("fieldValidation"))
        try:
            self._authorize()
            self._inject_fault(url.path)
            self._route(url.path.rstrip("/") or "/", query)
        except ApiStatus as exc:
            headers = {}
            if exc.code == 429:
                headers["Retry-After"] = str(exc.details.get("retryAfterSeconds", 1))
            body = exc.body()
            self._raw_body()  # an unread body would be parsed as the next request
            if self.command != "HEAD":
                self._send(exc.code, body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def _authorize(self) -> None:
        """Authenticate: the admin token may do anything; a subject's token is held to its
        RBAC (``self.rbac``)."""
        self.rbac: rbac.Authorizer | None = None
        token = self.server.token
        if token is None or self.path in ("/healthz", "/readyz", "/livez"):
            return
        given = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if given in self.server.subjects:
            self.rbac = self.server.subjects[given]
        elif given != token:
            raise ApiStatus(401, "Unauthorized", "Unauthorized")

    def _inject_fault(self, path: str) -> None:
        faults = self.server.faults
        for i, (code, retry, match) in enumerate(faults.fail_codes):
            if match in path:
                del faults.fail_codes[i]
                if code == 0:  # reset the connection without an answer
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    raise ConnectionResetError
                details = {"retryAfterSeconds": int(retry)} if retry is not None else {}
                raise ApiStatus(code, {429: "TooManyRequests", 500: "InternalError",
                                       503: "ServiceUnavailable"}.get(code, "Unknown"),
                                f"injected fault {code}", details)

    # -- routing -----------------------------------------------------------------------
    def _route(self, path: str, query: dict[str, str]) -> None:
        store = self.server.store
        if path in ("/healthz", "/readyz", "/livez"):
            return self._send(200, b"ok", "text/plain")
        if path == "/version":
            return self._send(200, discovery.VERSION)
        types = list(store.types.values())
        if path == "/api":
            return self._send(200, discovery.api_versions())
        if path == "/apis":
            return self._send(200, discovery.group_list(types))
        if path == "/openapi/v2":
            if "protobuf" in self.headers.get("Accept", ""):
                return self._send(200, discovery.openapi_v2_protobuf(),
                                  "application/octet-stream")
            return self._send(200, discovery.OPENAPI_V2_JSON)
        if path == "/openapi/v3":
            return self._send(200, discovery.openapi_v3_root(types))
        if path.startswith("/openapi/v3/"):
            gv = path[len("/openapi/v3/"):].split("/")
            group, version = ("", gv[1]) if gv[0] == "api" else (gv[1], gv[2])
            rts = discovery.group_versions(types).get((group, version))
            if rts is None:
                raise ApiStatus(404, "NotFound", "the server could not find the requested "
                                "resource")
            return self._send(200, discovery.openapi_v3_doc(group, version, rts))
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" \
                and self.command == "POST":
            return self._send(201, rbac.access_review(self.rbac, self._body()))
        parts = path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 2:
            if len(parts) == 2:
                doc = discovery.group_doc(parts[1], types)
                if doc is None:
                    raise ApiStatus(404, "NotFound", "the server could not find the "
                                    "requested resource")
                return self._send(200, doc)
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if rest and self.rbac is not None:
            self._authorize_resource(group, rest, query)
        gv_types = discovery.group_versions(types).get((group, version))
        if gv_types is None:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return self._send(200, discovery.resource_list(group, version, gv_types))
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and any(
                t.plural == rest[2] and t.namespaced for t in gv_types):
            ns, rest = rest[1], rest[2:]
        rt = store.find(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rt.status):
            raise ApiStatus(404, "NotFound", f"the server could not find the requested "
                            f"resource ({rest[0]}/{sub})")
        self._verb(rt, ns, name, sub, query)

    def _authorize_resource(self, group: str, rest: list[str], query: dict[str, str]) -> None:
        """Before routing, as the real server's filter chain does: a request the subject
        may not make is 403 even for a resource that does not exist. The path is read as
        its RequestInfoFactory reads it: [namespaces/NS/]RESOURCE[/NAME[/SUBRESOURCE]]."""
        assert self.rbac is not None
        ns: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        verb = rbac.verb_of(self.command, name or None, query.get("watch") in ("true", "1"))
        if not name and verb in ("list", "watch"):
            name = exact_name(query.get("fieldSelector", "")) or ""
        self.rbac.check(rbac.Attributes(verb, group, rest[0], sub, ns, name))

    def _verb(self, rt: ResourceType, ns: str | None, name: str | None, sub: str | None,
              query: dict[str, str]) -> None:
        store, method = self.server.store, self.command
        if name is None:
            if method == "GET" and query.get("watch") in ("true", "1"):
                return self._watch(rt, ns, query)
            if method == "GET":
                items, rv = store.list(rt, ns, query.get("labelSelector", ""),
                                       query.get("fieldSelector", ""))
                if self._wants_table():
                    return self._send(200, tables.table(rt, items, rv, store.clock()))
                return self._send(200, {"kind": f"{rt.kind}List", "apiVersion": rt.api_version,
                                        "metadata": {"resourceVersion": rv}, "items": items})
            if method == "POST":
                return self._send(201, store.create(rt, ns, self._body()))
        else:
            if method == "GET":
                obj = store.get(rt, ns, name)
                if self._wants_table():
                    return self._send(200, tables.table(rt, [obj], obj["metadata"]
                                                        ["resourceVersion"], store.clock()))
                return self._send(200, obj)
            if method == "PUT":
                return self._send(200, store.replace(rt, ns, name, self._body(), sub))
            if method == "PATCH":
                created = False
                try:
                    store.get(rt, ns, name)
                except ApiStatus:
                    created = True
                obj = store.patch(rt, ns, name, self.headers.get("Content-Type", ""),
                                  self._body(), sub)
                return self._send(201 if created else 200, obj)
            if method == "DELETE":
                self._body()
                return self._send(200, store.delete(rt, ns, name))
        raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported here")

    def _wants_table(self) -> bool:
        return "as=Table" in self.headers.get("Accept", "")

    # -- watch -------------------------------------------------------------------------
    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, etype: str, obj: dict[str, Any]) -> None:
        faults = self.server.faults
        if faults.garbage_lines > 0:
            faults.garbage_lines -= 1
            self._chunk(b'{"type": "MODIFIED", "object": {not json\n')
        self._chunk(json.dumps({"type": etype, "object": obj}).encode() + b"\n")

    def _watch(self, rt: ResourceType, ns: str | None, query: dict[str, str]) -> None:
        store, faults = self.server.store, self.server.faults
        labels, fields_ = query.get("labelSelector", ""), query.get("fieldSelector", "")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        timeout = float(query.get("timeoutSeconds") or 1800)
        since = query.get("resourceVersion", "")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.server.log.append((self.command, self.path, 200))
        self.close_connection = True
        deadline = time.monotonic() + timeout
        drops = faults.drops

        def wanted(c: Change) -> bool:
            meta = c.obj.get("metadata", {})
            return (ns is None or meta.get("namespace") == ns) \
                and matches_labels(c.obj, labels) and matches_fields(c.obj, fields_)

        with store.cond:
            if since in ("", "0"):
                items, rv_s = store.list(rt, ns, labels, fields_)
                initial = [("ADDED", o) for o in items]
                last = int(rv_s)
            else:
                try:
                    last = int(since)
                    store.changes_after(rt.gr, last)
                except ValueError:
                    last = -1
                except ApiStatus as exc:
                    initial, last = [("ERROR", exc.body())], -1
                else:
                    initial = []
        try:
            for etype, obj in initial:
                self._event(etype, obj)
            if last < 0:
                if not initial:
                    self._event("ERROR", ApiStatus(400, "BadRequest", "resourceVersion: "
                                                   "invalid value").body())
                return self._chunk(b"")
            next_bookmark = time.monotonic() + self.server.bookmark_s
            while time.monotonic() < deadline and not self.server.stopping.is_set():
                if faults.drops != drops:
                    return  # cut without the closing chunk: the client sees a broken stream
                with store.cond:
                    if time.monotonic() < faults.stall_until:
                        batch: list[Change] = []
                    else:
                        try:
                            batch = [c for c in store.changes_after(rt.gr, last) if wanted(c)]
                            last = max([last, store.rv])
                        except ApiStatus as exc:
                            self._event("ERROR", exc.body())
                            return self._chunk(b"")
                    if not batch:
                        store.cond.wait(0.1)
                for c in batch:
                    self._event(c.type, c.obj)
                if bookmarks and time.monotonic() >= next_bookmark \
                        and time.monotonic() >= faults.stall_until:
                    self._event("BOOKMARK", {"kind": rt.kind, "apiVersion": rt.api_version,
                                             "metadata": {"resourceVersion": str(last)}})
                    next_bookmark = time.monotonic() + self.server.bookmark_s
            self._chunk(b"")
        except (BrokenPipeError, ConnectionResetError, OSError):
            return


class KubeApiServer(ThreadingHTTPServer):
    """``KubeApiServer(port=0)``; ``start()`` serves in a thread, ``stop()`` closes the
    socket and every stream (the cluster is gone), ``start()`` again on the same port."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0, token: str | None = None, history: int = 1000,
                 bookmark_s: float = 60.0, store: Store | None = None,
                 tls: bool | None = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.token = token
        """The admin's token: it may do anything (cluster-admin)."""
        self.subjects: dict[str, rbac.Authorizer] = {}
        """Other tokens, each held to its subject's RBAC (``add_subject``)."""
        self.ca_pem: bytes | None = None
        self._tls: ssl.SSLContext | None = None
        if tls if tls is not None else token is not None:
            # kubectl sends tokens only over TLS; a fresh CA per server.
            with tempfile.TemporaryDirectory() as tmp:
                ca, cert, key = certs.make(Path(tmp))
                self.ca_pem = ca.read_bytes()
                self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                self._tls.load_cert_chain(cert, key)
        self.store = store or Store(history=history)
        self.faults = Faults()
        self.bookmark_s = bookmark_s
        self.log: list[tuple[str, str, int]] = []
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.store.types:
            for rt in discovery.BUILTIN:
                self.store.register(rt)
            for ns in NAMESPACES:
                self.store.create(self.store.types[("", "namespaces")], None,
                                  {"metadata": {"name": ns}})

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self._tls is not None:
            # The handshake happens in the request's thread (Handler.setup).
            sock = self._tls.wrap_socket(sock, server_side=True,
                                         do_handshake_on_connect=False)
        return sock, addr

    def client_context(self) -> ssl.SSLContext | None:
        """An SSL context that trusts this server (for tests' own HTTP clients)."""
        if self.ca_pem is None:
            return None
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that go away mid-stream are normal here

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> KubeApiServer:
        self.stopping.clear()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kubeapi", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end every open stream; the store is kept."""
        self.stopping.set()
        self.faults.drops += 1
        with self.store.cond:
            self.store.cond.notify_all()
        self.shutdown()
        self.socket.close()
        if self._thread is not None:
            self._thread.join(5)

    def restart(self) -> KubeApiServer:
        """Serve again on the same port after ``stop()`` (the cluster is back)."""
        self.socket = socket.socket(self.address_family, self.socket_type)
        self.server_bind()
        self.server_activate()
        return self.start()

    def add_subject(self, token: str, authorizer: rbac.Authorizer) -> None:
        if self.token is None:
            raise ValueError("subjects need an admin token (a server without one is open)")
        self.subjects[token] = authorizer

    def kubeconfig(self, path: Path, namespace: str = "default",
                   token: str | None = None) -> Path:
        token = token or self.token
        user: dict[str, Any] = {"token": token} if token else {}
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "sim",
               "clusters": [{"name": "sim", "cluster": {"server": self.url} | (
                   {"certificate-authority-data": base64.b64encode(self.ca_pem).decode()}
                   if self.ca_pem else {})}],
               "users": [{"name": "sim", "user": user}],
               "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim",
                                                        "namespace": namespace}}]}
        path.write_text(yaml.safe_dump(doc))
        path.chmod(0o600)
        return path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m simulator.kubeapi",
                                 description="Kubernetes API server test double on loopback")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", help="require this bearer token")
    ap.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for it here")
    args = ap.parse_args()
    srv = KubeApiServer(args.port, args.token)
    if args.kubeconfig:
        srv.kubeconfig(args.kubeconfig)
    print(f"serving {srv.url}" + (f", kubeconfig {args.kubeconfig}" if args.kubeconfig
                                  else ""), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever()
