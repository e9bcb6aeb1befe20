"""The agent's Kubernetes client (agent/sources/kube/api.py) at the socket level: what it
leaves behind when a request is cut short."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.errors import AgentError
from agent.models.config import KubeConfig
from agent.sources.kube.api import KubeApi


@contextlib.contextmanager
def silent_tls_server() -> Iterator[tuple[socket.socket, int]]:
    """A server that accepts TCP and never answers the TLS handshake (an API server
    that hangs, or a board shutting down while it connects)."""
    srv = socket.create_server(("127.0.0.1", 0))
    try:
        yield srv, srv.getsockname()[1]
    finally:
        srv.close()


def kubeconfig(path: Path, port: int) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}",
                                                  "insecure-skip-tls-verify": True}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    path.write_text(yaml.safe_dump(doc))
    return path


async def test_a_request_cancelled_during_the_tls_handshake_closes_its_socket(
        tmp_path: Path) -> None:
    # httpcore2 closes the socket of a failed handshake only when the failure is an
    # Exception: a cancelled one (the agent stopping, a timeout of ours) left the TCP
    # connection open until the garbage collector found it, warning.
    with silent_tls_server() as (srv, port):
        api = KubeApi(KubeConfig(kubeconfig=str(kubeconfig(tmp_path / "kc", port)),
                                 namespaces=["default"]))
        gc.disable()  # a leaked socket must not be closed by a collection meanwhile
        try:
            request = asyncio.get_running_loop().create_task(api.list_profiles())
            srv.settimeout(5)
            conn, _ = await asyncio.to_thread(srv.accept)
            with conn:
                conn.settimeout(5)
                hello = await asyncio.to_thread(conn.recv, 1)  # the ClientHello began
                assert hello
                request.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await request
                conn.settimeout(2)

                def drain_to_eof() -> bool:
                    while True:
                        try:
                            if not conn.recv(65536):
                                return True
                        except TimeoutError:
                            return False

                closed = await asyncio.to_thread(drain_to_eof)
                assert closed, "the cancelled request left its connection open"
            await api.close()
        finally:
            gc.enable()


def test_a_certificate_authority_that_cannot_be_read_is_named_at_start(tmp_path: Path) -> None:
    kc = kubeconfig(tmp_path / "kc", 6443)
    doc = yaml.safe_load(kc.read_text())
    doc["clusters"][0]["cluster"] = {"server": "https://127.0.0.1:6443",
                                     "certificate-authority": str(tmp_path / "no-ca.pem")}
    kc.write_text(yaml.safe_dump(doc))
    with pytest.raises(AgentError, match=r"kube\.kubeconfig: cannot use its TLS settings.*"
                       r"no-ca\.pem"):
        KubeApi(KubeConfig(kubeconfig=str(kc), namespaces=["default"]))
