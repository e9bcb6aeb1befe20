"""The control-plane simulator and the real kubectl, for tests."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simulator.kubeapi.rbac import Authorizer
from simulator.kubeapi.server import KubeApiServer

REPO = Path(__file__).resolve().parents[1]
CRD = REPO / "docs" / "kube" / "missionprofile-crd.yaml"


def board_rbac(node: str) -> Authorizer:
    """What docs/kube/rbac.yaml grants the board NODE's ServiceAccount."""
    docs = list(yaml.safe_load_all((REPO / "docs" / "kube" / "rbac.yaml").read_text()
                                   .replace("BOARD", node)))
    return Authorizer.from_manifests(docs, "sortie-missions", f"sortie-board-{node}")


def kubectls() -> list[tuple[str, str]]:
    """Every kubectl this machine has: its own (1.32) and Debian's 1.20 from the cache."""
    found = []
    if (own := shutil.which("kubectl")) is not None:
        found.append(("system", own))
    old = REPO / ".cache" / "kubectl-1.20" / "usr" / "bin" / "kubectl"
    if old.exists():
        found.append(("1.20", str(old)))
    return found


@dataclass
class Cluster:
    server: KubeApiServer
    kubeconfig: Path
    kubectl_bin: str

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        res = subprocess.run([self.kubectl_bin, *args], input=stdin, capture_output=True,
                             text=True, env=env, timeout=timeout, check=False)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}):\n"
                                 f"{res.stdout}\n{res.stderr}")
        return res

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


@contextlib.contextmanager
def cluster(tmp: Path, kubectl_bin: str | None = None, **server_kw: Any) -> Iterator[Cluster]:
    srv = KubeApiServer(token="sortie-test-token", **server_kw).start()
    try:
        kc = srv.kubeconfig(tmp / "kubeconfig")
        yield Cluster(srv, kc, kubectl_bin or kubectls()[0][1])
    finally:
        srv.stop()
        srv.server_close()
