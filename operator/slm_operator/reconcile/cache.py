"""In-memory caches of what the operator watches: nodes, pods and SLMDeployments.

An informer (`slm_operator.kube.Informer`: one list, then one watch per resource and scope) keeps
each `Store` current; every reconcile reads the stores instead of listing the cluster, so the cost
of a reconcile no longer grows with the size of the cluster and a namespaced install (Roles only)
never asks for more than it may read.

Objects are kept *slim* (`slim_node`, `slim_pod`, `slim_owner`): only the fields placement, status
and the resync read, so 1,000 SLMDeployments with their pods fit in a few MB. Every change bumps the
store's `version`; the resync compares versions to skip owners whose inputs did not change.

Pure data structures (a lock, no I/O); the informer calls `replace` after a list and `upsert` /
`remove` for watch events.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from slm_operator.render import DEPLOYMENT_LABEL

Obj = dict[str, Any]
ObjKey = tuple[str, str]
"""(namespace, name); namespace "" for cluster-scoped objects."""

Slim = Callable[[Mapping[str, Any]], Obj]
Listener = Callable[[str, Obj], None]
"""Called with ("ADDED" | "MODIFIED" | "DELETED", slim object) after the store changed."""


def _meta(obj: Mapping[str, Any], *keys: str) -> Obj:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in keys if meta.get(k) is not None}


def slim_node(node: Mapping[str, Any]) -> Obj:
    """What placement reads of a Node: labels, taints, unschedulable, allocatable, Ready.

    Without the resourceVersion: a node's heartbeat (a new version every few seconds) changes
    nothing placement reads, so it must not change the store's version and wake every re-plan."""
    spec = node.get("spec") or {}
    status = node.get("status") or {}
    ready = [
        {"type": "Ready", "status": c.get("status")}
        for c in status.get("conditions") or ()
        if c.get("type") == "Ready"
    ]
    return {
        "metadata": _meta(node, "name", "labels"),
        "spec": {k: spec[k] for k in ("unschedulable", "taints") if k in spec},
        "status": {"allocatable": dict(status.get("allocatable") or {}), "conditions": ready},
    }


def _slim_container(container: Mapping[str, Any]) -> Obj:
    return {"name": container.get("name"), "resources": container.get("resources") or {}}


def slim_pod(pod: Mapping[str, Any]) -> Obj:
    """What placement (requests, node, scheduling constraints of pending pods) and status (the model
    fetch container's termination) read of a Pod."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    kept_spec: Obj = {
        "containers": [_slim_container(c) for c in spec.get("containers") or ()],
        "initContainers": [_slim_container(c) for c in spec.get("initContainers") or ()],
    }
    for key in ("nodeName", "nodeSelector", "tolerations", "affinity"):
        if spec.get(key):
            kept_spec[key] = spec[key]
    kept_status: Obj = {"phase": status.get("phase")}
    if status.get("initContainerStatuses"):
        kept_status["initContainerStatuses"] = status["initContainerStatuses"]
    failed = [run for run in map(_failed_run, status.get("containerStatuses") or ()) if run]
    if failed:
        kept_status["containerStatuses"] = failed
    return {
        "metadata": _meta(
            pod, "name", "namespace", "labels", "resourceVersion", "creationTimestamp", "deletionTimestamp"
        ),
        "spec": kept_spec,
        "status": kept_status,
    }


def _failed_run(st: Mapping[str, Any]) -> Obj | None:
    """A container status, only when it is not ready and its last run failed (status reads why)."""
    if st.get("ready"):
        return None
    out: Obj = {"name": st.get("name"), "ready": False}
    for key in ("state", "lastState"):
        term = (st.get(key) or {}).get("terminated")
        if term and int(term.get("exitCode") or 0) != 0:
            out[key] = {"terminated": {k: term.get(k) for k in ("exitCode", "reason", "message")}}
    return out if len(out) > 2 else None


def slim_owner(body: Mapping[str, Any]) -> Obj:
    """An SLMDeployment without managedFields and kopf's bookkeeping annotations."""
    meta = _meta(
        body, "name", "namespace", "uid", "generation", "resourceVersion", "labels", "deletionTimestamp"
    )
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": meta,
        "spec": body.get("spec") or {},
        "status": body.get("status") or {},
    }


def _older(new: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether `new` is an older version than `current` (a watch event of a change this process
    already wrote through into the store). resourceVersions are etcd revisions in practice; when
    either is not a number, nothing is considered older."""
    a = str((new.get("metadata") or {}).get("resourceVersion") or "")
    b = str((current.get("metadata") or {}).get("resourceVersion") or "")
    return a.isdigit() and b.isdigit() and int(a) < int(b)


def object_key(obj: Mapping[str, Any]) -> ObjKey:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Store:
    """Slim copies of one kind of object, indexed by node (`spec.nodeName`) and by owner (the
    `slm.dev/deployment` label), with a version that changes whenever the content does."""

    def __init__(self, slim: Slim) -> None:
        self._slim = slim
        self._lock = threading.Lock()
        self._items: dict[ObjKey, Obj] = {}
        self._by_owner: dict[ObjKey, set[ObjKey]] = {}
        self._listeners: list[Listener] = []
        self.version = 0
        self.synced = threading.Event()

    # writes (the informer) --------------------------------------------------------------------

    def replace(self, objects: Iterable[Mapping[str, Any]], namespace: str | None = None) -> None:
        """The result of a (re)list: everything not in it is gone (deletes missed while away).

        With `namespace`, the list covered that namespace only and the rest of the store stays.
        """
        fresh = {object_key(o): self._slim(o) for o in objects}
        with self._lock:
            scope = {k for k in self._items if namespace is None or k[0] == namespace}
            gone = [self._items[k] for k in scope - fresh.keys()]
            changed = [o for k, o in fresh.items() if self._items.get(k) != o]
            for key in scope - fresh.keys():
                self._unindex(key, self._items.pop(key))
            for key, obj in fresh.items():
                before = self._items.get(key)
                if before is not None:
                    self._unindex(key, before)
                self._items[key] = obj
                self._index(key, obj)
            if gone or changed:
                self.version += 1
        self.synced.set()
        for obj in gone:
            self._notify("DELETED", obj)
        for obj in changed:
            self._notify("MODIFIED", obj)

    def upsert(self, obj: Mapping[str, Any]) -> None:
        slim = self._slim(obj)
        key = object_key(slim)
        with self._lock:
            before = self._items.get(key)
            if before == slim or (before is not None and _older(slim, before)):
                return
            if before is not None:
                self._unindex(key, before)
            self._items[key] = slim
            self._index(key, slim)
            self.version += 1
        self._notify("ADDED" if before is None else "MODIFIED", slim)

    def remove(self, obj: Mapping[str, Any]) -> None:
        key = object_key(obj)
        with self._lock:
            before = self._items.pop(key, None)
            if before is None:
                return
            self._unindex(key, before)
            self.version += 1
        self._notify("DELETED", before)

    def listen(self, listener: Listener) -> None:
        self._listeners.append(listener)

    # reads (every reconcile) -------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._items.get((namespace, name))

    def items(self, namespace: str | None = None) -> list[Obj]:
        with self._lock:
            if namespace is None:
                return list(self._items.values())
            return [o for (ns, _), o in self._items.items() if ns == namespace]

    def owned_by(self, namespace: str, name: str) -> list[Obj]:
        """Objects labelled `slm.dev/deployment=<name>` in `namespace` (an SLMDeployment's pods)."""
        with self._lock:
            return [self._items[k] for k in sorted(self._by_owner.get((namespace, name), ()))]

    def count_owned(self, namespace: str, name: str) -> int:
        with self._lock:
            return len(self._by_owner.get((namespace, name), ()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    # internals ---------------------------------------------------------------------------------

    def _index(self, key: ObjKey, obj: Obj) -> None:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(DEPLOYMENT_LABEL)
        if owner:
            self._by_owner.setdefault((key[0], str(owner)), set()).add(key)

    def _unindex(self, key: ObjKey, obj: Obj) -> None:
        owner = ((obj.get("metadata") or {}).get("labels") or {}).get(DEPLOYMENT_LABEL)
        if owner:
            keys = self._by_owner.get((key[0], str(owner)))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_owner[(key[0], str(owner))]

    def _notify(self, kind: str, obj: Obj) -> None:
        for listener in self._listeners:
            listener(kind, obj)


class FleetCache:
    """The stores every reconcile reads: nodes (cluster-wide), pods and SLMDeployments (per
    watched namespace, or cluster-wide), and the kopf peering object when running with peering."""

    def __init__(self) -> None:
        self.nodes = Store(slim_node)
        self.pods = Store(slim_pod)
        self.owners = Store(slim_owner)
        self.peering = Store(lambda o: {"metadata": _meta(o, "name", "namespace"), "status": o.get("status")})

    def placement_version(self) -> tuple[int, int]:
        """Changes whenever anything placement reads changes (nodes or pods)."""
        return self.nodes.version, self.pods.version

    def synced(self) -> bool:
        return self.nodes.synced.is_set() and self.pods.synced.is_set() and self.owners.synced.is_set()
