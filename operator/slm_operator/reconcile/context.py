"""State the running operator shares between handlers, held in kopf's memo (never module globals)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from slm_operator.metrics import Metrics
from slm_operator.reconcile.plan import Key, Obj, comparable, key_of
from slm_operator.reconcile.reconciler import Cluster
from slm_operator.settings import Settings


class OperatorCluster(Cluster, Protocol):
    """The reconcile calls plus the lookups the event handlers and the resync loop make."""

    def get_slmdeployment(self, namespace: str, name: str) -> Obj | None: ...
    def list_slmdeployments(self, namespace: str | None = None) -> list[Obj]: ...
    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None: ...
    def read(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None: ...


class AppliedCache:
    """Last applied form of every child, so a watch event can tell an edit (drift) from noise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Key, Obj] = {}
        self._versions: dict[Key, str] = {}

    def remember(
        self, desired: Iterable[Mapping[str, Any]], applied: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        """Store what was applied and the resourceVersion each apply left."""
        with self._lock:
            for obj in desired:
                self._objects[key_of(obj)] = comparable(obj)
            for obj in applied:
                self._versions[key_of(obj)] = str((obj.get("metadata") or {}).get("resourceVersion", ""))

    def is_own_write(self, obj: Mapping[str, Any]) -> bool:
        """Whether `obj` is exactly the version the operator's last apply produced."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            return version is not None and self._versions.get(key_of(obj)) == str(version)

    def get(self, key: Key) -> Obj | None:
        with self._lock:
            return self._objects.get(key)

    def forget(self, key: Key) -> None:
        with self._lock:
            self._objects.pop(key, None)


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


@dataclass
class OperatorContext:
    """Settings, the API access, metrics and caches of one running operator."""

    settings: Settings
    cluster: OperatorCluster
    metrics: Metrics = field(default_factory=Metrics)
    applied: AppliedCache = field(default_factory=AppliedCache)
    locks: OwnerLocks = field(default_factory=OwnerLocks)
