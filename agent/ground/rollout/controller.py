"""The rollout controller (cluster side, never on a board): carries out the rollout's
decisions (``policy.py``) for every MissionRollout in its namespace.

Level-triggered: each pass reads the rollouts, their profiles, the nodes and their
leases, decides, writes the rollout's status, and only then makes the profiles say what
the status says (a wave's MissionProfile aimed at its boards by name; a rollback
profile per previous mission). The status is the truth: a restarted controller, or a
new leader, resumes from it, never sends a wave again nor takes one back. One replica
acts at a time: a coordination.k8s.io Lease, renewed every pass.

lightkube directly rather than kopf: the controller is one reconcile of two kinds whose
truth is in the status, through the same tested API boundary the boards use
(``agent.sources.kube.api``); kopf would bring aiohttp, its own peering objects instead
of a Lease, and handler state in annotations, none of which this needs."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agent.ground.rollout.model import RolloutSpec
from agent.ground.rollout.policy import (
    Health,
    Judged,
    Report,
    State,
    advance,
    dry_run,
    judge,
    tally,
    waves_of,
)
from agent.sources.kube import objects as ko
from agent.sources.kube.api import KubeApi, KubeError
from agent.sources.kube.names import GROUP, KIND, ROLLOUT_KIND, VERSION

log = logging.getLogger("sortie.rollout")
Obj = dict[str, Any]
LEASE = "sortie-rollout-controller"
ACTIVE = ("Progressing", "Soaking")
ONLINE_S = 40.0
"""A board whose node lease was renewed this recently is online (a board's lease lasts
40 s, renewed every 10 s, as a kubelet's)."""


def wave_name(rollout: str) -> str:
    return f"{rollout}-wave"


def rollback_name(rollout: str, previous: str) -> str:
    return f"{rollout}-rollback-{hashlib.sha256(previous.encode()).hexdigest()[:8]}"


@dataclass
class Fleet:
    """What one pass read."""

    rollouts: list[Obj]
    profiles: dict[str, Obj]
    nodes: dict[str, Obj]
    renewed: dict[str, float]
    """Each node's lease renewal time (epoch seconds)."""


def _epoch(stamp: str | None) -> float | None:
    if not stamp:
        return None
    try:
        return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Controller:
    def __init__(self, api: KubeApi, namespace: str, identity: str,
                 clock: Callable[[], float] = time.time, lease_s: int = 15) -> None:
        self.api, self.ns, self.identity, self.clock = api, namespace, identity, clock
        self.lease_s = lease_s
        self.leading = False
        self.requests = 0
        """API requests made (the control plane's load: bench/fleet)."""

    # -- leadership ----------------------------------------------------------------------
    async def lead(self) -> bool:
        """Hold the Lease: take it when free or expired, renew it when ours."""
        now = self.clock()
        cur = await self.api.get("Lease", LEASE, self.ns)
        self.requests += 1
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s,
                "renewTime": ko.micro_time(now)}
        if cur is None:
            try:
                await self.api.create({"apiVersion": "coordination.k8s.io/v1",
                                       "kind": "Lease", "metadata": {
                                           "name": LEASE, "namespace": self.ns},
                                       "spec": spec | {"acquireTime": ko.micro_time(now)}})
            except KubeError as exc:
                if exc.code != 409:
                    raise
                self.leading = False
                return False  # another replica created it first
            self.requests += 1
            self.leading = True
            return True
        held = cur.get("spec") or {}
        renewed = _epoch(held.get("renewTime")) or 0.0
        mine = held.get("holderIdentity") == self.identity
        if not mine and now - renewed < float(held.get("leaseDurationSeconds") or 0):
            self.leading = False
            return False
        body = dict(cur)
        body["spec"] = {**held, **spec}
        if not mine:
            body["spec"]["acquireTime"] = ko.micro_time(now)
            body["spec"]["leaseTransitions"] = int(held.get("leaseTransitions") or 0) + 1
        try:
            await self.api.replace(body)
        except KubeError as exc:
            if exc.code != 409:
                raise
            self.leading = False
            return False  # someone renewed or took it in between
        self.requests += 1
        self.leading = True
        return True

    # -- one pass ------------------------------------------------------------------------
    async def read(self) -> Fleet:
        rollouts = await self.api.list_all(ROLLOUT_KIND, self.ns)
        profiles = {p["metadata"]["name"]: p for p in await self.api.list_all(KIND, self.ns)}
        nodes = {n["metadata"]["name"]: n for n in await self.api.list_all("Node")}
        leases = await self.api.list_all("Lease", "kube-node-lease")
        self.requests += 4
        renewed = {ls["metadata"]["name"]: _epoch((ls.get("spec") or {}).get("renewTime"))
                   or 0.0 for ls in leases}
        return Fleet(rollouts, profiles, nodes, renewed)

    async def pass_once(self) -> None:
        """Lead, then reconcile every rollout once."""
        if not await self.lead():
            return
        fleet = await self.read()
        for ro in fleet.rollouts:
            try:
                await self.reconcile(ro, fleet)
            except KubeError as exc:
                log.warning("rollout %s: %s (retried next pass)", ro["metadata"]["name"], exc)

    async def reconcile(self, ro: Obj, fleet: Fleet) -> None:
        name = ro["metadata"]["name"]
        status = ro.get("status") or {}
        try:
            spec = RolloutSpec.model_validate(ro.get("spec"))
        except ValidationError as exc:
            if status.get("phase") != "Failed":
                why = "; ".join(f"spec.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                for e in exc.errors()[:5])
                await self._write(ro, {"phase": "Failed", "message": f"invalid: {why}"})
            return
        if "state" not in status:
            await self._start(ro, spec, fleet)
            return
        try:
            state = State.from_dict(status["state"])
        except ValueError as exc:
            await self._write(ro, status | {"phase": "Failed",
                                            "message": f"status.state: {exc}"})
            return
        previous: dict[str, str] = dict(status.get("previous") or {})
        started = list(status.get("waveStarted") or [])
        if state.phase in ACTIVE:
            judged = self._judge(spec, state, fleet, started, name)
            was = (state.phase, state.wave)
            step = advance(state, judged, spec.gate, spec.soak_seconds, spec.on_failure,
                           self.clock())
            state = step.state
            if state.wave >= len(started):
                started.append(self.clock())
            await self._write(ro, self._status(state, judged, previous, started))
            if (state.phase, state.wave) != was:
                await self._event(ro, state)
        await self._effect(ro, spec, state, previous, fleet)

    async def _event(self, ro: Obj, state: State) -> None:
        """Kubernetes Events on the rollout at each step (kubectl describe shows them)."""
        reason = {"Progressing": "WaveStarted", "Soaking": "WaveApplied",
                  "Complete": "Complete", "Paused": "Paused", "Failed": "Failed"}[state.phase]
        try:
            await self.api.create(ko.event(ro, self.identity, reason, state.message,
                                           state.phase in ("Paused", "Failed"), self.clock(),
                                           kind=ROLLOUT_KIND))
            self.requests += 1
        except KubeError as exc:  # an Event is a courtesy: never the rollout's end
            log.warning("event %s on rollout %s refused: %s", reason,
                        ro["metadata"]["name"], exc)

    async def _start(self, ro: Obj, spec: RolloutSpec, fleet: Fleet) -> None:
        name, uid = ro["metadata"]["name"], ro["metadata"].get("uid", "")
        boards = sorted(spec.node_names) if spec.node_names else sorted(
            n for n, obj in fleet.nodes.items()
            if all(((obj["metadata"].get("labels") or {}).get(k) == v)
                   for k, v in spec.node_selector.items()))
        waves, bad = waves_of(boards, spec.waves, uid or name)
        reasons = [str(v) for v in bad]
        for other in fleet.rollouts:
            ost = other.get("status") or {}
            if other["metadata"]["name"] == name or ost.get("phase") not in ACTIVE:
                continue
            theirs = {b for w in (ost.get("state") or {}).get("waves", []) for b in w}
            both = sorted(theirs & set(boards))
            if both:
                reasons.append(f"spec: boards {both[:5]} are in rollout "
                               f"{other['metadata']['name']}, still in progress")
        facts = {b: ((fleet.nodes.get(b) or {}).get("metadata", {}).get("annotations")
                     or {}).get(ko.ADMISSION_FACTS) for b in boards}
        refused, unchecked = dry_run(spec.mission, facts)
        if refused:
            reasons.append(f"admission refuses the mission on {len(refused)} of "
                           f"{len(boards)} boards: " + "; ".join(
                               f"{b}: {', '.join(why[:2])}"
                               for b, why in list(refused.items())[:10]))
        if reasons:
            await self._write(ro, {"phase": "Failed", "message": "refused: "
                                   + "; ".join(reasons), "boards": {},
                                   "refusedBoards": refused})
            await self._event(ro, State((("",),), phase="Failed",
                                        message="refused: " + "; ".join(reasons)))
            return
        if unchecked:
            log.warning("rollout %s: %d board(s) publish no admission facts, not dry-run: "
                        "%s", name, len(unchecked), unchecked[:10])
        previous = {}
        for b in boards:
            flown = _flying(b, fleet.profiles, exclude=wave_name(name))
            if flown is not None:
                previous[b] = flown
        state = State(tuple(tuple(w) for w in waves),
                      message=f"wave 1 of {len(waves)} started: {len(waves[0])} board(s)")
        await self._write(ro, self._status(state, {}, previous, [self.clock()])
                          | {"notDryRun": unchecked})
        await self._event(ro, state)
        await self._effect(ro, spec, state, previous, fleet)

    async def run_forever(self, resync_s: float = 5.0) -> None:
        """A pass every ``resync_s``; API errors are retried at the next pass. Reaction
        time is bounded by the resync (seconds, against soaks of minutes)."""
        while True:
            try:
                await self.pass_once()
            except KubeError as exc:
                log.warning("pass failed: %s (retried in %g s)", exc, resync_s)
            await asyncio.sleep(resync_s)

    def _judge(self, spec: RolloutSpec, state: State, fleet: Fleet, started: list[float],
               name: str) -> dict[str, Judged]:
        wave = fleet.profiles.get(wave_name(name))
        entries = ((wave or {}).get("status") or {}).get("boards") or {}
        now = self.clock()
        out = {}
        for i, boards in enumerate(state.waves[: state.wave + 1]):
            for b in boards:
                if b in state.rolled_back:
                    continue
                e = entries.get(b) or {}
                mission = e.get("mission") or {}
                online = now - fleet.renewed.get(b, 0.0) < ONLINE_S
                report = Report(
                    e.get("state"), mission.get("generation")
                    if mission.get("name") == spec.mission.name else None,
                    str(e.get("message") or ""),
                    tuple(Health(str(h.get("partition")), h.get("criticality"),
                                 str(h.get("kind"))) for h in e.get("health") or []),
                    tuple(e.get("shed") or ()), online,
                    now - (started[i] if i < len(started) else now))
                out[b] = judge(report, spec.mission.generation, spec.gate)
        return out

    def _status(self, state: State, judged: dict[str, Judged], previous: dict[str, str],
                started: list[float]) -> Obj:
        counts = tally(judged, state)
        return {"phase": state.phase, "waveOf": f"{state.wave + 1}/{len(state.waves)}",
                "message": state.message, "boards": counts,
                "failedBoards": dict(state.failed),
                "heldBoards": sorted(b for b, j in judged.items() if j.verdict == "held"),
                "state": state.to_dict(), "previous": previous, "waveStarted": started,
                "updated": ko.timestamp(self.clock())}

    async def _write(self, ro: Obj, status: Obj) -> None:
        body = dict(ro)
        body["status"] = status
        ro["status"] = status
        await self.api.replace(body, status=True)
        self.requests += 1

    # -- effects: the profiles say what the status says ------------------------------------
    async def _effect(self, ro: Obj, spec: RolloutSpec, state: State,
                      previous: dict[str, str], fleet: Fleet) -> None:
        name = ro["metadata"]["name"]
        owner = [{"apiVersion": f"{GROUP}/{VERSION}", "kind": ROLLOUT_KIND, "name": name,
                  "uid": ro["metadata"].get("uid", ""), "controller": True}]
        await self._ensure(fleet, wave_name(name), owner,
                           spec.mission.model_dump(mode="json"), state.sent())
        groups: dict[str, list[str]] = {}
        for b in state.rolled_back:
            if b in previous:
                groups.setdefault(previous[b], []).append(b)
        for prev, boards in groups.items():
            old = fleet.profiles.get(prev)
            if old is None:
                log.warning("rollout %s: %s, which %s flew before, is gone: nothing to "
                            "return them to", name, prev, boards)
                continue
            mission = {k: v for k, v in (old.get("spec") or {}).items() if k != "target"}
            # A board never goes back to a lower generation: the old mission returns as
            # a new one.
            mission["generation"] = max(int(mission.get("generation") or 0),
                                        spec.mission.generation) + 1
            await self._ensure(fleet, rollback_name(name, prev), owner, mission,
                               sorted(boards))

    async def _ensure(self, fleet: Fleet, name: str, owner: list[Obj], mission: Obj,
                      boards: list[str]) -> None:
        want = {**mission, "target": {"nodeNames": boards}}
        cur = fleet.profiles.get(name)
        if cur is None:
            created = await self.api.create({
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": name, "namespace": self.ns, "ownerReferences": owner,
                             "labels": {"sortie.dev/rollout": owner[0]["name"]}},
                "spec": want})
            fleet.profiles[name] = created
            self.requests += 1
            return
        if cur.get("spec") != want:
            body = dict(cur)
            body["spec"] = want
            fleet.profiles[name] = await self.api.replace(body)
            self.requests += 1


def _flying(board: str, profiles: dict[str, Obj], exclude: str) -> str | None:
    """The profile the board reports flying (other than the rollout's own)."""
    for name, p in profiles.items():
        if name == exclude:
            continue
        entry = ((p.get("status") or {}).get("boards") or {}).get(board) or {}
        if entry.get("state") == "Flying":
            return name
    return None
