"""The operator's own autoscaler: every few seconds, read the gateway's demand and set the replica
count of each SLMDeployment that scales on requests in flight. The thin I/O around `decide`.

It is the only writer of `spec.replicas` for those Deployments (no HPA is rendered for them, the
operator's apply leaves the field out, the hand-over gives it up): a `kubectl scale` or an Argo CD
sync that sets replicas is corrected at the next tick. Only the active replica runs it (standbys
skip every tick). Per tick and deployment, at most: one status patch (only when the desired count,
the current count or the reason changed), one scale write, one Event.

Order matters for scale to zero: the status (`status.autoscaling.desiredReplicas: 0`) is written
before the Deployment is scaled, so that the status refresh triggered by the Deployment going to 0
already knows it is an idle model (Ready stays True, `ScaledToZeroOnIdle`) and GitOps health never
sees a Degraded model in between.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from slm_operator.api import AutoscalingSpec, SLMDeploymentSpec
from slm_operator.autoscale.decide import (
    SCALED_DOWN,
    SCALED_TO_ZERO,
    SCALED_UP,
    WOKEN,
    Decision,
    Demand,
    History,
    decide,
)
from slm_operator.autoscale.demand import parse_demand
from slm_operator.errors import SlmOperatorError
from slm_operator.reconcile.status import now_rfc3339
from slm_operator.render import DEPLOYMENT_LABEL

if TYPE_CHECKING:
    from slm_operator.reconcile.context import OperatorContext

log = logging.getLogger("slm_operator.autoscale")

Obj = dict[str, Any]
OwnerKey = tuple[str, str]
DemandSource = Callable[[], dict[str, Demand] | None]
"""Returns the demand per `namespace/name`, or None when the gateway could not be read."""

PENDING_SECONDS = 30.0
"""How long a written count is taken as current while the Deployment cache has not caught up."""


class ScaleCluster(Protocol):
    """The API calls the autoscaler makes."""

    def scale(self, namespace: str, name: str, replicas: int) -> None: ...
    def patch_status(self, namespace: str, name: str, status: Obj) -> Obj | None: ...
    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None: ...


class Sources(Protocol):
    """What the autoscaler reads from the operator's caches (`OperatorContext` provides it)."""

    def active(self) -> bool: ...
    def owners(self) -> list[Obj]: ...
    def deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...
    def written(self, patched: Obj) -> None: ...
    def scaled(self, namespace: str, name: str, replicas: int) -> None: ...


class ScaleMetrics(Protocol):
    def record_scale(self, owner: OwnerKey, decision: Decision) -> None: ...


@dataclass(frozen=True)
class ContextSources:
    """`Sources` from a running operator's caches: the SLMDeployment informer and the Deployments
    as last applied or watched; a status the autoscaler wrote goes through into the cache."""

    ctx: OperatorContext

    def active(self) -> bool:
        return self.ctx.active()

    def owners(self) -> list[Obj]:
        return [o for o in self.ctx.cache.owners.items() if not o["metadata"].get("deletionTimestamp")]

    def deployment(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self.ctx.applied.deployment(namespace, name)

    def written(self, patched: Obj) -> None:
        self.ctx.cache.owners.upsert(patched)

    def scaled(self, namespace: str, name: str, replicas: int) -> None:
        """Write the new count through into the Deployment cache, so that a reconcile that runs
        before the watch event (autoscaling switched off right now) keeps this count, not the old."""
        known = self.ctx.applied.deployment(namespace, name)
        if known is None:
            return
        meta = {**(known.get("metadata") or {}), "namespace": namespace, "labels": {DEPLOYMENT_LABEL: name}}
        spec = {**(known.get("spec") or {}), "replicas": replicas}
        self.ctx.applied.observe_deployment(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": meta,
                "spec": spec,
                "status": known.get("status"),
            }
        )


def http_demand(url: str, timeout: float = 2.0) -> DemandSource:
    """A `DemandSource` that GETs the gateway's `/demand` (None on any failure).

    httpx logs every request at INFO; once a second is noise in the operator's log."""
    logging.getLogger("httpx").setLevel(logging.WARNING)

    def fetch() -> dict[str, Demand] | None:
        try:
            response = httpx.get(url, timeout=timeout)
            response.raise_for_status()
            return parse_demand(response.json())
        except (httpx.HTTPError, ValueError) as err:
            log.info("cannot read demand from %s: %s", url, err)
            return None

    return fetch


def no_demand() -> dict[str, Demand] | None:
    """The `DemandSource` when no gateway runs: never any data."""
    return None


def status_patch(decision: Decision, old: Mapping[str, Any], timestamp: str) -> Obj | None:
    """The `status.autoscaling` patch for `decision`, or None when nothing it reports changed."""
    before = old.get("autoscaling") or {}
    now = {
        "desiredReplicas": decision.desired,
        "currentReplicas": decision.current,
        "reason": decision.reason,
    }
    if all(before.get(k) == v for k, v in now.items()):
        return None
    patch: Obj = {**now, "message": decision.message}
    patch["lastScaleTime"] = timestamp if decision.changes else before.get("lastScaleTime")
    return {"autoscaling": patch}


EVENT_REASONS = frozenset({SCALED_UP, SCALED_DOWN, SCALED_TO_ZERO, WOKEN})


@dataclass
class Autoscaler:
    """One tick per `interval` seconds in a daemon thread (`start`/`stop`: a `Background`)."""

    sources: Sources
    cluster: ScaleCluster
    demand: DemandSource
    metrics: ScaleMetrics | None = None
    interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _history: dict[OwnerKey, History] = field(default_factory=dict)
    _pending: dict[OwnerKey, tuple[int, float]] = field(default_factory=dict)
    _scaling: dict[OwnerKey, tuple[tuple[str, int], AutoscalingSpec | None]] = field(default_factory=dict)
    """Each owner's operator-scaled autoscaling spec by (uid, generation): a tick every few seconds
    re-validated every spec of the fleet, most of an idle operator's CPU (py-spy, 500
    SLMDeployments). Only that part is kept: whole parsed specs were 9 KB per owner."""
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="autoscaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a tick must never kill the loop; the next one retries
                log.exception("autoscaler tick failed")

    def _current(self, key: OwnerKey, deployment: Mapping[str, Any], now: float) -> int:
        seen = int((deployment.get("spec") or {}).get("replicas", 1))
        pending = self._pending.get(key)
        if pending is None:
            return seen
        wanted, at = pending
        if seen == wanted or now - at > PENDING_SECONDS:
            self._pending.pop(key, None)
            return seen
        return wanted

    def _scaled_by_us(self, key: OwnerKey, body: Mapping[str, Any]) -> AutoscalingSpec | None:
        """The owner's autoscaling spec if this operator scales it (`operator_scaled`), parsed once
        per generation; None otherwise, and for an invalid spec (its reconcile reports it)."""
        meta = body.get("metadata") or {}
        version = (str(meta.get("uid") or ""), int(meta.get("generation") or 0))
        known = self._scaling.get(key)
        if known is not None and known[0] == version and all(version):  # the API server sets both
            return known[1]
        try:
            scaling = SLMDeploymentSpec.model_validate(body.get("spec") or {}).autoscaling
        except ValueError:
            scaling = None
        kept = scaling if scaling is not None and scaling.operator_scaled else None
        self._scaling[key] = (version, kept)
        return kept

    def tick(self) -> list[tuple[OwnerKey, Decision]]:
        """One pass over the operator-scaled SLMDeployments; returns the decisions it made."""
        if not self.sources.active():
            return []
        scaled: list[tuple[Obj, OwnerKey, AutoscalingSpec]] = []
        present: set[OwnerKey] = set()
        for body in self.sources.owners():
            meta = body.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            present.add(key)
            scaling = self._scaled_by_us(key, body)
            if scaling is not None:
                scaled.append((body, key, scaling))
        for gone in set(self._scaling) - present:
            self._scaling.pop(gone, None)
        wanted = {key for _, key, _ in scaled}
        for gone in set(self._history) - wanted:
            self._history.pop(gone, None)
        if not scaled:
            return []
        demand = self.demand()
        now = self.clock()
        decisions: list[tuple[OwnerKey, Decision]] = []
        for body, key, scaling in scaled:
            deployment = self.sources.deployment(*key)
            if deployment is None:
                continue  # not created yet: the reconcile creates it, the next tick scales it
            current = self._current(key, deployment, now)
            found = None if demand is None else demand.get(f"{key[0]}/{key[1]}")
            decision = decide(scaling, current, found, self._history.get(key, ()), now)
            self._history[key] = decision.history
            try:
                self._execute(body, key, decision)
            except SlmOperatorError as err:
                log.warning("autoscaler: %s/%s: %s", key[0], key[1], err)
                continue
            decisions.append((key, decision))
        return decisions

    def _execute(self, body: Obj, key: OwnerKey, decision: Decision) -> None:
        timestamp = now_rfc3339()
        patch = status_patch(decision, body.get("status") or {}, timestamp)
        if patch is not None:
            patched = self.cluster.patch_status(key[0], key[1], patch)
            if patched is not None:
                self.sources.written(patched)
        if decision.changes:
            self.cluster.scale(key[0], key[1], decision.desired)
            self.sources.scaled(key[0], key[1], decision.desired)
            self._pending[key] = (decision.desired, self.clock())
            log.info(
                "autoscaler: %s/%s %d -> %d (%s: %s)",
                key[0],
                key[1],
                decision.current,
                decision.desired,
                decision.reason,
                decision.message,
            )
        if decision.changes and decision.reason in EVENT_REASONS:
            message = f"{decision.current} -> {decision.desired} replicas: {decision.message}"
            self.cluster.post_event(body, "Normal", decision.reason, message, timestamp)
        if self.metrics is not None:
            self.metrics.record_scale(key, decision)
