"""The board as a Kubernetes node: registered (labels from the board, the Sortie taint),
its status written when its readiness changes (and every few minutes), its lease renewed
every few seconds (the heartbeat, as a kubelet's)."""

from __future__ import annotations

import asyncio
import contextlib
import platform
from collections.abc import Callable
from dataclasses import dataclass, field

from agent import __version__
from agent.engine.port import EnginePort
from agent.models.config import KubeConfig
from agent.sources.kube import objects as ko
from agent.sources.kube.api import KubeApi, KubeError
from agent.sources.kube.watching import backoff_s

NODE_STATUS_EVERY_S = 300.0
"""Full node status at least this often (the lease is the heartbeat, as for a kubelet)."""
HOLD_ANNOTATION = "sortie.dev/hold"
"""On the board's node: an operator's hold from the cluster, its value the reason
(``kubectl annotate node BOARD sortie.dev/hold="..."``; ``sortie.dev/hold-`` releases)."""
MAX_REASON = 256


@dataclass
class Counters:
    lists: int = 0
    gone: int = 0
    stalls: int = 0
    errors: int = 0
    status_writes: int = 0
    conflicts: int = 0
    events_sent: int = 0
    events_dropped: int = 0
    lease_renewals: int = 0
    decisions: dict[str, int] = field(default_factory=dict)


class NodeKeeper:
    def __init__(self, cfg: KubeConfig, node_name: str, engine: EnginePort, api: KubeApi,
                 count: Counters) -> None:
        self.cfg, self.node_name, self.engine, self.api = cfg, node_name, engine, api
        self.count = count
        self.node_uid: str | None = None
        self._since = engine.platform.wall()
        self._written: tuple[float, str] = (0.0, "")
        self._lease: ko.Obj | None = None
        """The lease as the last write returned it (its resourceVersion is current)."""

    def readiness(self) -> ko.Readiness:
        m = self.engine.flying()
        if m is None:
            return ko.Readiness(True, "SortieReady", "agent running; no mission")
        shed = f"; degraded, shed {list(m.shed)}" if m.shed else ""
        return ko.Readiness(True, "SortieReady",
                            f"flying {m.name} generation {m.generation}{shed}")

    async def register(self) -> None:
        want = ko.node(self.node_name, self.engine.board, self.cfg.node_labels,
                       self.engine.admission_facts())
        cur = await self.api.get("Node", self.node_name)
        if cur is None:
            cur = await self.api.create(want)
            self.engine.events.emit("kube.registered", "kube",
                                    f"node {self.node_name} registered")
        else:
            taints = [t for t in (cur.get("spec") or {}).get("taints") or []
                      if t.get("key") != ko.TAINT["key"]] + [ko.TAINT]
            cur = await self.api.merge_patch("Node", self.node_name, {
                "metadata": {"labels": want["metadata"]["labels"],
                             "annotations": want["metadata"]["annotations"]},
                "spec": {"taints": taints}})
        self.node_uid = cur["metadata"].get("uid")
        await self.write_status(force=True)

    async def write_status(self, force: bool = False) -> None:
        ready = self.readiness()
        now = self.engine.platform.wall()
        last_at, last_msg = self._written
        if not force and ready.message == last_msg and now - last_at < NODE_STATUS_EVERY_S:
            return
        if ready.message != last_msg:
            self._since = now
        status = ko.node_status(self.engine.board, ready, now, platform.release(),
                                __version__, self._since)
        await self.api.merge_patch("Node", self.node_name, {"status": status}, status=True)
        self._written = (now, ready.message)

    async def renew_lease(self) -> None:
        """One write per renewal, as a kubelet's: the lease as the last write returned
        it, read again only when that fails (409: someone wrote in between; 404)."""
        now = self.engine.platform.wall()
        want = ko.lease(self.node_name, self.node_uid, self.cfg.lease_duration_s, now)
        cur = self._lease
        if cur is None:
            cur = await self.api.get("Lease", self.node_name, "kube-node-lease")
        if cur is None:
            self._lease = await self.api.create(want)
        else:
            body = dict(cur)
            body["spec"] = {**(cur.get("spec") or {}), **want["spec"]}
            try:
                self._lease = await self.api.replace(body)
            except KubeError as exc:
                self._lease = None
                if exc.code not in (404, 409):
                    raise
                return  # changed or gone meanwhile: the next tick reads it again
        self.count.lease_renewals += 1

    async def holds_forever(self, failed: Callable[[str, KubeError], None]) -> None:
        """Follow the node's hold annotation: read it, then watch the node (one stream,
        no polling, as a kubelet watches its node). Unreachable, the hold last seen stays
        in force (kept in holds.json): the safe side."""
        attempt = 0
        while True:
            try:
                cur = await self.api.get("Node", self.node_name)
                if cur is None:  # not registered yet
                    await asyncio.sleep(self.cfg.lease_renew_s)
                    continue
                await self._hold_from(cur)
                await self._watch_node(str(cur["metadata"].get("resourceVersion", "")))
                attempt = 0
            except KubeError as exc:
                if exc.code == 410:
                    continue  # fell out of history: read it again
                failed("node-hold", exc)
                await asyncio.sleep(backoff_s(attempt, self.cfg.backoff_max_s,
                                              exc.retry_after_s))
                attempt += 1

    async def _watch_node(self, rv: str) -> None:
        stream = self.api.watch_node(self.node_name, rv, self.cfg.watch_timeout_s)
        try:
            while True:
                try:
                    async with asyncio.timeout(2 * self.cfg.watch_timeout_s):
                        etype, obj = await anext(stream)
                except (StopAsyncIteration, TimeoutError):
                    return  # ended by the server, or stalled: read and watch again
                if etype in ("ADDED", "MODIFIED"):
                    await self._hold_from(obj)
                elif etype == "DELETED":
                    await self._hold_from({})
        finally:
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _hold_from(self, node: ko.Obj) -> None:
        meta = node.get("metadata")
        notes = meta.get("annotations") if isinstance(meta, dict) else None
        reason = notes.get(HOLD_ANNOTATION) if isinstance(notes, dict) else None
        if isinstance(reason, str) and reason.strip():
            await self.engine.hold("kube", f"node annotation {HOLD_ANNOTATION}: "
                                   f"{reason.strip()[:MAX_REASON]}")
        else:
            await self.engine.release("kube")

    async def forever(self, failed: Callable[[str, KubeError], None]) -> None:
        attempt = 0
        while True:
            try:
                await self.register()
                attempt = 0
                while True:
                    t0 = self.engine.platform.monotonic()
                    await self.renew_lease()
                    await self.write_status()
                    await asyncio.sleep(max(0.0, self.cfg.lease_renew_s
                                            - (self.engine.platform.monotonic() - t0)))
            except KubeError as exc:
                failed("node", exc)
                await asyncio.sleep(backoff_s(attempt, self.cfg.backoff_max_s,
                                              exc.retry_after_s))
                attempt += 1
