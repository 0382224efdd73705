"""Which optional child kinds (`plan.CHILDREN` with `optional=True`) the API server serves.

An optional kind is a CRD of someone else's (the InferencePool of the Gateway API Inference
Extension): installed on some clusters, not on others, and installed or removed while the operator
runs. Rendering one where it is not served fails every apply with 404, so the operator learns:
- at startup, by one discovery GET per optional kind (`discover`), before the first reconcile;
- afterwards, from the events of that kind's CRD (`ServedKinds.observe`), which kopf already
  watches for its own scanning; a change re-plans every SLMDeployment once.
No polling: a steady cluster costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from slm_operator.reconcile.plan import CHILDREN, ChildKind

OPTIONAL_CHILDREN: tuple[ChildKind, ...] = tuple(c for c in CHILDREN if c.optional)


def crd_name(child: ChildKind) -> str:
    """`<plural>.<group>`: the name the CRD of `child` must have."""
    return f"{child.plural}.{child.group}"


def crd_serves(crd: Mapping[str, Any] | None, child: ChildKind) -> bool:
    """Whether the CRD object `crd` (None: deleted) serves `child`'s group/version/plural now.

    Served means: the names match, the version is listed with `served: true`, the CRD is
    Established (its REST endpoint exists) and not being deleted (its objects are going away)."""
    if not crd:
        return False
    meta = crd.get("metadata") or {}
    spec = crd.get("spec") or {}
    if meta.get("deletionTimestamp") or meta.get("name") != crd_name(child):
        return False
    if spec.get("group") != child.group or (spec.get("names") or {}).get("plural") != child.plural:
        return False
    if not any(v.get("name") == child.version and v.get("served") for v in spec.get("versions") or ()):
        return False
    conditions = (crd.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def discover(serves: Callable[[str, str], bool]) -> frozenset[str]:
    """The optional kinds that `serves(api_version, plural)` (a discovery GET) says are served."""
    return frozenset(c.kind for c in OPTIONAL_CHILDREN if serves(c.api_version, c.plural))


class ServedKinds:
    """The optional kinds served right now, shared by the handlers (kopf's threads) and the plans."""

    def __init__(self, kinds: frozenset[str] = frozenset()) -> None:
        self._lock = threading.Lock()
        self._kinds = kinds

    def kinds(self) -> frozenset[str]:
        with self._lock:
            return self._kinds

    def replace(self, kinds: frozenset[str]) -> bool:
        """Set the served kinds; whether that changed them."""
        with self._lock:
            changed = kinds != self._kinds
            self._kinds = kinds
            return changed

    def observe(self, event_type: str | None, crd: Mapping[str, Any]) -> bool:
        """Take in one CRD watch event; whether it changed what is served (then re-plan).

        CRDs of other kinds change nothing."""
        name = (crd.get("metadata") or {}).get("name")
        child = next((c for c in OPTIONAL_CHILDREN if crd_name(c) == name), None)
        if child is None:
            return False
        served = event_type != "DELETED" and crd_serves(crd, child)
        with self._lock:
            kinds = self._kinds | {child.kind} if served else self._kinds - {child.kind}
            changed = kinds != self._kinds
            self._kinds = kinds
            return changed
