"""The operator's own Prometheus metrics, in a registry owned by the running operator (no globals)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

if TYPE_CHECKING:
    from slm_operator.autoscale.decide import Decision


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
        self.scale_decisions = Counter(
            f"{prefix}_scale_decisions",
            "Replica changes the operator's autoscaler made, by reason (ScaledUp, ScaledDown, "
            "ScaledToZero, WokenByRequest, OutOfBounds).",
            ["reason"],
            registry=self.registry,
        )
        self.desired_replicas = Gauge(
            f"{prefix}_autoscaler_desired_replicas",
            "Pods the operator's autoscaler wants, per SLMDeployment.",
            ["namespace", "name"],
            registry=self.registry,
        )
        self.current_replicas = Gauge(
            f"{prefix}_autoscaler_current_replicas",
            "Pods the Deployment had at the autoscaler's last decision, per SLMDeployment.",
            ["namespace", "name"],
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

    def record_scale(self, owner: tuple[str, str], decision: Decision) -> None:
        """One autoscaler decision: the gauges always, the counter when replicas changed."""
        self.desired_replicas.labels(*owner).set(decision.desired)
        self.current_replicas.labels(*owner).set(decision.current)
        if decision.changes:
            self.scale_decisions.labels(reason=decision.reason).inc()

    def serve(self, port: int) -> None:
        """Expose /metrics on `port` (0 disables)."""
        if port:
            start_http_server(port, registry=self.registry)
