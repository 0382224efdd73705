"""The pure plan of a reconcile: desired children (with owner references), what to prune, and drift.

Desired state comes from `render.render_all`; observed state is whatever the cluster listed. The
plan never talks to the API; `reconciler` executes it. Pruning only ever touches objects that carry
the SLMDeployment's `slm.dev/deployment` label *and* a controller ownerReference to its uid.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from slm_operator.api import API_VERSION, KIND
from slm_operator.render import DEPLOYMENT_LABEL, MANAGED_BY

Obj = dict[str, Any]
Key = tuple[str, str, str, str]
"""(apiVersion, kind, namespace, name) of one object."""

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
)
"""Every kind the renderer may produce (and the operator may prune), in apply order."""


@dataclass(frozen=True)
class Owner:
    """The SLMDeployment that owns the children."""

    name: str
    namespace: str
    uid: str
    generation: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Owner:
        meta = body.get("metadata") or {}
        return cls(
            name=str(meta.get("name", "")),
            namespace=str(meta.get("namespace") or "default"),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation") or 0),
        )

    def reference(self) -> Obj:
        """Controller reference: GC deletes the child with its owner; blockOwnerDeletion orders it."""
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (
        str(obj.get("apiVersion")),
        str(obj.get("kind")),
        str(meta.get("namespace", "")),
        str(meta.get("name")),
    )


def owned(objects: Iterable[Obj], owner: Owner) -> list[Obj]:
    """Copies of `objects` placed in the owner's namespace with its controller reference."""
    result = []
    for obj in objects:
        child = copy.deepcopy(obj)
        child["metadata"]["namespace"] = owner.namespace
        child["metadata"]["ownerReferences"] = [owner.reference()]
        result.append(child)
    return result


def is_controlled_by(obj: Mapping[str, Any], owner: Owner) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(r.get("uid") == owner.uid and r.get("controller") for r in refs)


def prune_plan(desired: Sequence[Obj], existing: Iterable[Obj], owner: Owner) -> list[Obj]:
    """Existing children the spec no longer wants (e.g. the HPA after autoscaling is disabled)."""
    wanted = {key_of(o)[1:] for o in desired}
    stale = []
    for obj in existing:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(DEPLOYMENT_LABEL) != owner.name or not is_controlled_by(obj, owner):
            continue
        if key_of(obj)[1:] not in wanted:
            stale.append(obj)
    return sorted(stale, key=key_of)


def _is_own_pod(pod: Mapping[str, Any], owner: Owner) -> bool:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    return bool(meta.get("namespace") == owner.namespace and labels.get(DEPLOYMENT_LABEL) == owner.name)


def foreign_pods(pods: Iterable[Mapping[str, Any]], owner: Owner) -> list[Mapping[str, Any]]:
    """Pods that are not the owner's own, so that placement does not count them as competition."""
    return [pod for pod in pods if not _is_own_pod(pod, owner)]


def own_pods(pods: Iterable[Mapping[str, Any]], owner: Owner) -> list[Mapping[str, Any]]:
    """The owner's own model pods (their init containers tell whether the model could be fetched)."""
    return [pod for pod in pods if _is_own_pod(pod, owner)]


def drifted(desired: Any, live: Any) -> bool:
    """Whether `live` lacks or changed anything `desired` sets (fields the server adds are ignored).

    Lists must match element by element; maps only on the keys `desired` has. Used to decide whether
    an edit of a child (seen through a watch) needs a re-apply; a false positive costs one no-op apply.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return True
        return any(k not in live or drifted(v, live[k]) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(live, list) or len(desired) != len(live):
            return True
        return any(drifted(d, x) for d, x in zip(desired, live, strict=True))
    return bool(desired != live and str(desired) != str(live))


def child_owner(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, SLMDeployment name) of a child the operator manages, from its labels."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get("app.kubernetes.io/managed-by") != MANAGED_BY or not labels.get(DEPLOYMENT_LABEL):
        return None
    return str(meta.get("namespace") or "default"), str(labels[DEPLOYMENT_LABEL])


def comparable(obj: Mapping[str, Any]) -> Obj:
    """The parts of a desired object that drift detection compares (no ownerReferences: GC may edit)."""
    result = {k: v for k, v in obj.items() if k not in ("metadata", "status")}
    meta = obj.get("metadata") or {}
    result["metadata"] = {k: meta[k] for k in ("labels", "annotations") if k in meta}
    return result


def count_by_kind(objects: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in objects:
        kind = str(obj.get("kind"))
        counts[kind] = counts.get(kind, 0) + 1
    return counts
