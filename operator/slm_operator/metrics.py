"""The operator's own Prometheus metrics, in a registry owned by the running operator (no globals)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """reconciles_total, reconcile_duration_seconds, reconcile_errors_total, managed_objects."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        prefix = "slm_operator"
        self.reconciles = Counter(
            f"{prefix}_reconciles",
            "Reconciles of SLMDeployments by trigger.",
            ["trigger"],
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{prefix}_reconcile_duration_seconds",
            "Time to reconcile one SLMDeployment.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.errors = Counter(
            f"{prefix}_reconcile_errors", "Failed reconciles by reason.", ["reason"], registry=self.registry
        )
        self.managed = Gauge(
            f"{prefix}_managed_objects",
            "Child objects the operator manages, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._by_owner: dict[tuple[str, str], dict[str, int]] = {}
        self._kinds: set[str] = set()

    def record_children(self, owner: tuple[str, str], counts: Mapping[str, int]) -> None:
        """Remember one owner's children per kind and republish the totals."""
        with self._lock:
            if counts:
                self._by_owner[owner] = dict(counts)
            else:
                self._by_owner.pop(owner, None)
            totals: dict[str, int] = {}
            for per_kind in self._by_owner.values():
                for kind, count in per_kind.items():
                    totals[kind] = totals.get(kind, 0) + count
            self._kinds |= set(totals)
            for kind in self._kinds:
                self.managed.labels(kind=kind).set(totals.get(kind, 0))

    def serve(self, port: int) -> None:
        """Expose /metrics on `port` (0 disables)."""
        if port:
            start_http_server(port, registry=self.registry)
