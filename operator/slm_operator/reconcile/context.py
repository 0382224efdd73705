"""State the running operator shares between handlers, held in kopf's memo (never module globals).

- `FleetCache`: nodes, pods, SLMDeployments (and the peering object), kept by informers;
- `AppliedCache`: every child as last applied or seen by a watch, by owner, plus the owned
  Deployment's last known status, so a reconcile knows what exists without listing;
- `OwnerLocks`: one reconcile at a time per SLMDeployment;
- `Leadership`: whether this replica is the active one (kopf peering), so that a standby's own
  loops (the resync, the pod listener) do nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from slm_operator.metrics import Metrics
from slm_operator.reconcile.cache import FleetCache
from slm_operator.reconcile.discovery import ServedKinds
from slm_operator.reconcile.kopf_state import KopfState
from slm_operator.reconcile.plan import (
    Key,
    Obj,
    Observed,
    Owner,
    RenderMemo,
    key_of,
    observed_form,
    pack,
    reservations,
    served_children,
    unpack,
)
from slm_operator.reconcile.reconciler import Cluster
from slm_operator.render import DEPLOYMENT_LABEL, MANAGED_BY
from slm_operator.render.metadata import MANAGED_BY_LABEL
from slm_operator.settings import Settings

OwnerKey = tuple[str, str]
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
TERMINATING_SECONDS = 60.0
"""How long a namespace that refused a create as terminating is left alone by drift correction and
the resync (renewed by every such refusal, ended by any successful apply there)."""


class Background(Protocol):
    """Something the operator starts at startup and stops at cleanup (an informer)."""

    def start(self) -> None: ...
    def stop(self) -> None: ...


class OperatorCluster(Cluster, Protocol):
    """The reconcile calls plus the lookups the event handlers make."""

    def get_slmdeployment(self, namespace: str, name: str) -> Obj | None: ...
    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None: ...
    def read(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = False
    ) -> Obj | None: ...
    def read_crd(self, name: str) -> Obj | None: ...


def _slim_deployment(obj: Mapping[str, Any]) -> Obj:
    """What status (replicas, generations) and reservations (requests, scheduling) read of a
    Deployment."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    pod = ((spec.get("template") or {}).get("spec")) or {}
    kept: Obj = {
        key: [{"resources": c.get("resources") or {}} for c in pod.get(key) or ()]
        for key in ("containers", "initContainers")
    }
    kept.update({k: pod[k] for k in ("nodeSelector", "tolerations", "affinity") if pod.get(k)})
    slim_spec: Obj = {"template": {"spec": kept}}
    if "replicas" in spec:
        slim_spec["replicas"] = spec["replicas"]
    return {
        "metadata": {k: meta[k] for k in ("name", "generation", "resourceVersion") if k in meta},
        "spec": slim_spec,
        "status": obj.get("status") or {},
    }


class AppliedCache:
    """Last applied (or watched) form of every child, by owner, so that a reconcile knows what
    exists and what it says without listing, and a watch event can tell an edit from noise.

    The forms are kept packed (`plan.pack`): read once per reconcile and per drift check, held
    for every child of the fleet all the time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, bytes] = {}
        self._versions: dict[Key, str] = {}
        self._by_owner: dict[OwnerKey, set[Key]] = {}
        self._deployments: dict[OwnerKey, Obj] = {}
        self._listed: set[OwnerKey] = set()
        self._wanting: set[OwnerKey] = set()
        self.primed = False
        self.version = 0
        """Bumped when a remembered child or a Deployment's spec changes (the resync's fingerprint)."""

    def remember(
        self, desired: Iterable[Mapping[str, Any]], applied: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        """Store what was applied and the resourceVersion (and Deployment status) each apply left."""
        with self._lock:
            for obj in desired:
                key = key_of(obj)
                form = pack(observed_form(obj))
                if self._objects.get(key) != form:
                    self._objects[key] = form
                    self.version += 1
                self._by_owner.setdefault(_owner_of(key, obj), set()).add(key)
            for obj in applied:
                key = key_of(obj)
                self._versions[key] = str((obj.get("metadata") or {}).get("resourceVersion", ""))
                if obj.get("kind") == "Deployment":
                    self._set_deployment(_owner_of(key, obj), _slim_deployment(obj))

    def _set_deployment(self, owner: OwnerKey, slim: Obj) -> None:
        before = self._deployments.get(owner)
        if before is None or before.get("spec") != slim.get("spec"):
            self.version += 1
        self._deployments[owner] = slim
        if slim["spec"].get("replicas", 1) != 0:
            self._wanting.add(owner)
        else:
            self._wanting.discard(owner)

    def seed(self, owner: Owner, children: Mapping[Key, Obj]) -> None:
        """The children a list found (the first reconcile of an owner in this process)."""
        with self._lock:
            for key, obj in children.items():
                self._objects.setdefault(key, pack(obj))
                self._by_owner.setdefault((owner.namespace, owner.name), set()).add(key)
            self._listed.add((owner.namespace, owner.name))

    def seed_all(self, children: Iterable[Mapping[str, Any]]) -> None:
        """Every managed child a startup list found: from now on every owner is known (a child
        created later was created by this process, which remembers it)."""
        with self._lock:
            for obj in children:
                key = key_of(obj)
                self._objects.setdefault(key, pack(observed_form(obj)))
                self._by_owner.setdefault(_owner_of(key, obj), set()).add(key)
            self.primed = True

    def known(self, owner: Owner) -> bool:
        """Whether this process has listed or applied the owner's children already."""
        with self._lock:
            return self.primed or (owner.namespace, owner.name) in self._listed

    def observe_deployment(self, obj: Mapping[str, Any]) -> None:
        """A Deployment watch event: its status is what the next status computation reads."""
        key = key_of(obj)
        with self._lock:
            self._set_deployment(_owner_of(key, obj), _slim_deployment(obj))

    def children(self, namespace: str, name: str) -> dict[Key, Obj]:
        with self._lock:
            keys = self._by_owner.get((namespace, name), ())
            packed = {k: self._objects[k] for k in keys if k in self._objects}
        return {k: unpack(v) for k, v in packed.items()}

    def deployment(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._deployments.get((namespace, name))

    def wanting(self) -> dict[OwnerKey, Obj]:
        """The remembered Deployments that want pods (replicas unset or above 0)."""
        with self._lock:
            return {k: self._deployments[k] for k in self._wanting}

    def is_own_write(self, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` is exactly the version the operator's last apply produced."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            return version is not None and self._versions.get(key_of(obj)) == str(version)

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            packed = self._objects.get(key)
        return None if packed is None else unpack(packed)

    def forget(self, key: Key) -> None:
        """The child is gone (or its state unknown): the next plan applies it again."""
        with self._lock:
            if self._objects.pop(key, None) is not None:
                self.version += 1
            self._versions.pop(key, None)

    def forget_kind(self, kinds: frozenset[str]) -> None:
        """Every remembered child of `kinds`: their CRD went away, and its objects with it."""
        with self._lock:
            gone = [key for key in self._objects if key[1] in kinds]
            for key in gone:
                self._objects.pop(key, None)
                self._versions.pop(key, None)
            if gone:
                self.version += 1

    def forget_owner(self, namespace: str, name: str) -> None:
        with self._lock:
            for key in self._by_owner.pop((namespace, name), set()):
                self._objects.pop(key, None)
                self._versions.pop(key, None)
            self._deployments.pop((namespace, name), None)
            self._wanting.discard((namespace, name))
            self._listed.discard((namespace, name))
            self.version += 1


def _owner_of(key: Key, obj: Mapping[str, Any]) -> OwnerKey:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return key[2], str(labels.get(DEPLOYMENT_LABEL) or key[3])


class OwnerLocks:
    """One lock per SLMDeployment: triggers for the same object reconcile one at a time."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.RLock] = {}

    @contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        """Reentrant: a drift check holds it across the reconcile it runs."""
        with self._guard:
            lock = self._locks.setdefault((namespace, name), threading.RLock())
        with lock:
            yield


def is_leader(
    peers: Mapping[str, Any] | None, identity: str, priority: int, now: datetime | None = None
) -> bool:
    """kopf's own rule, from the peering object's status: this replica works unless another live
    peer has a higher priority, or the same one (kopf then pauses both)."""
    moment = now or datetime.now(UTC)
    for peer_id, info in (peers or {}).items():
        if peer_id == identity or not isinstance(info, Mapping):
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")))
            lifetime = float(info.get("lifetime") or 60)
            other = int(info.get("priority") or 0)
        except (TypeError, ValueError):
            continue
        if seen.tzinfo is None:
            seen = seen.replace(tzinfo=UTC)
        if (moment - seen).total_seconds() >= lifetime:
            continue  # dead: kopf cleans it up
        if other >= priority:
            return False
    return True


@dataclass
class Leadership:
    """Whether this replica is the active one; always true when running standalone."""

    peering: str | None = None
    identity: str = ""
    priority: int = 0

    def active(self, cache: FleetCache) -> bool:
        if self.peering is None:
            return True
        if not cache.peering.synced.is_set():
            return False
        found = [o for o in cache.peering.items() if (o.get("metadata") or {}).get("name") == self.peering]
        return all(is_leader(o.get("status"), self.identity, self.priority) for o in found)


@dataclass
class OperatorContext:
    """Settings, the API access, metrics and caches of one running operator."""

    settings: Settings
    cluster: OperatorCluster
    metrics: Metrics = field(default_factory=Metrics)
    applied: AppliedCache = field(default_factory=AppliedCache)
    locks: OwnerLocks = field(default_factory=OwnerLocks)
    cache: FleetCache = field(default_factory=FleetCache)
    leadership: Leadership = field(default_factory=Leadership)
    background: list[Background] = field(default_factory=list)
    render: RenderMemo = field(default_factory=RenderMemo)
    kopf_state: KopfState = field(default_factory=KopfState)
    """kopf's per-SLMDeployment state, in memory: no write of kopf's per change."""
    served: ServedKinds = field(default_factory=ServedKinds)
    """The optional child kinds (InferencePool) the API server serves (`reconcile.discovery`)."""
    _children_counted: dict[OwnerKey, dict[str, int]] = field(default_factory=dict)
    _prime_lock: threading.Lock = field(default_factory=threading.Lock)
    _terminating: dict[str, float] = field(default_factory=dict)
    api_failures: set[OwnerKey] = field(default_factory=set)
    """Owners whose last reconcile, by any trigger, failed on an API error: the resync retries them
    every few seconds, also those it otherwise leaves to kopf (never reconciled yet), so that an
    API server or etcd outage ends in seconds rather than after kopf's growing backoff."""

    def active(self) -> bool:
        return self.leadership.active(self.cache)

    def mark_terminating(self, namespace: str, terminating: bool = True) -> None:
        """The API refused a create in `namespace` because it is being deleted (or, `False`, an
        apply there succeeded). While it is terminating, a child that its deletion removes is not
        restored: every re-apply would fail and cost two reads and a refused write."""
        if terminating:
            self._terminating[namespace] = time.monotonic()
        else:
            self._terminating.pop(namespace, None)

    def namespace_terminating(self, namespace: str) -> bool:
        since = self._terminating.get(namespace)
        if since is None:
            return False
        if time.monotonic() - since > TERMINATING_SECONDS:
            self._terminating.pop(namespace, None)
            return False
        return True

    def record_children(self, owner: OwnerKey, counts: dict[str, int]) -> None:
        """Publish an owner's child counts (the gauge), only when they changed: republishing
        costs a pass over every owner."""
        if self._children_counted.get(owner) == counts:
            return
        if counts:
            self._children_counted[owner] = counts
        else:
            self._children_counted.pop(owner, None)
        self.metrics.record_children(owner, counts)

    def prime(self) -> None:
        """List every managed child once (per kind, per watched namespace or cluster-wide) and
        remember them, instead of listing each owner's children at its first reconcile."""
        with self._prime_lock:
            if self.applied.primed:
                return
            scopes: list[str | None] = list(self.settings.namespaces) or [None]
            found: list[Obj] = []
            for namespace in scopes:
                for child in served_children(self.served.kinds()):
                    found += self.cluster.list_labelled(
                        child.api_version, child.kind, namespace, MANAGED_SELECTOR
                    )
            self.applied.seed_all(found)

    def owner_body(self, namespace: str, name: str) -> Obj | None:
        """The SLMDeployment from the cache once its informer has listed (absent there: gone, so
        that the child events of a deleted namespace cost no request each), else from the API."""
        if self.background and self.cache.owners.synced.wait(timeout=30):
            return self.cache.owners.get(namespace, name)
        cached = self.cache.owners.get(namespace, name)
        if cached is not None:
            return cached
        return self.cluster.get_slmdeployment(namespace, name)

    def freshest(self, body: Obj) -> Obj:
        """`body`, or the cached SLMDeployment when that is a newer version of the same object
        (a status this process wrote meanwhile): a trigger that carries an older copy must not
        report the placement again or rewrite a status that is already there."""
        meta = body.get("metadata") or {}
        cached = self.cache.owners.get(str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if cached is None or (cached.get("metadata") or {}).get("uid") != meta.get("uid"):
            return body
        mine = str(meta.get("resourceVersion") or "")
        theirs = str((cached.get("metadata") or {}).get("resourceVersion") or "")
        if mine.isdigit() and theirs.isdigit() and int(theirs) > int(mine):
            return {
                **body,
                "metadata": {**meta, **cached["metadata"]},
                "spec": cached["spec"],
                "status": cached["status"],
            }
        return body

    def observed(self, owner: Owner) -> Observed:
        """What the caches say about `owner`'s world: no API call."""
        own = (owner.namespace, owner.name)
        wanting = {k: d for k, d in self.applied.wanting().items() if k != own}
        counts = {k: self.cache.pods.count_owned(*k) for k in wanting}
        return Observed(
            nodes=self.cache.nodes.items(),
            pods=[*self.cache.pods.items(), *reservations(wanting, counts)],
            children=self.applied.children(owner.namespace, owner.name),
            deployment=self.applied.deployment(owner.namespace, owner.name),
        )


__all__ = [
    "AppliedCache",
    "Leadership",
    "OperatorCluster",
    "OperatorContext",
    "OwnerLocks",
    "is_leader",
]
