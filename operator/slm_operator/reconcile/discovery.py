"""Which optional child kinds (`plan.CHILDREN` with `optional=True`) the API server serves.

An optional kind is a CRD of someone else's (the InferencePool of the Gateway API Inference
Extension): installed on some clusters, not on others, and installed or removed while the operator
runs. Rendering one where it is not served fails every apply with 404, so the operator learns it
by reading the kind's CRD (`ServedKinds.refresh`, one LIST by name per optional kind):
- at startup, before the first reconcile;
- on every watch event of that CRD (kopf already watches CRDs for its own scanning);
- when an apply of the kind answers 404 (`KindNotServedError`), or an earlier read failed
  (`mark_stale`; the resync loop refreshes within its retry period).

Level-triggered, not taken from the events' bodies: kopf handles each object (each uid) in its own
worker, so the events of a deleted CRD and of the one re-created under the same name reach the
handlers in any order, and a watch that restarts never reports what was deleted meanwhile. An
event only says "read again". No polling: a steady cluster costs nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from slm_operator.reconcile.plan import CHILDREN, ChildKind

OPTIONAL_CHILDREN: tuple[ChildKind, ...] = tuple(c for c in CHILDREN if c.optional)
ReadCrd = Callable[[str], Mapping[str, Any] | None]
"""A CRD by name, read now (None: there is none)."""


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


def served_now(read_crd: ReadCrd) -> frozenset[str]:
    """The optional kinds whose CRD, read now, serves them."""
    return frozenset(c.kind for c in OPTIONAL_CHILDREN if crd_serves(read_crd(crd_name(c)), c))


class ServedKinds:
    """The optional kinds served right now, shared by the handlers (kopf's threads), the resync
    loop and the plans."""

    def __init__(self, kinds: frozenset[str] = frozenset()) -> None:
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._kinds = kinds
        self._stale = False

    def kinds(self) -> frozenset[str]:
        with self._lock:
            return self._kinds

    @property
    def stale(self) -> bool:
        """Whether a refresh is owed (an apply met 404, or a read failed)."""
        with self._lock:
            return self._stale

    def mark_stale(self) -> None:
        with self._lock:
            self._stale = True

    def refresh(self, read_crd: ReadCrd) -> tuple[frozenset[str], frozenset[str]]:
        """Read the optional kinds' CRDs and take what they say; returns (before, now).

        Refreshes run one at a time, so the last one to set is the last one to read: it read after
        every change whose event asked for it, whatever order the events were handled in. A read
        that fails (`KubeError`) changes nothing and leaves the kinds stale."""
        with self._refreshing:
            with self._lock:
                self._stale = False
            try:
                now = served_now(read_crd)
            except Exception:
                self.mark_stale()
                raise
            with self._lock:
                before, self._kinds = self._kinds, now
        return before, now
