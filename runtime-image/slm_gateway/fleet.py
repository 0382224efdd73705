"""The fleet as the gateway knows it: deployments per model name and each endpoint's live state.

Static mode fills it once from the config file; Kubernetes mode replaces the deployments whenever
SLMDeployments or EndpointSlices change (`Fleet.replace`), keeping the state of endpoints that stay.
Lives on the event loop only: no locks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from slm_gateway.config import DeploymentConfig
from slm_gateway.picking import AffinityTable, Candidate, effective_load


@dataclass
class EndpointState:
    """What the gateway tracks for one pod URL."""

    url: str
    deployment: DeploymentConfig
    outstanding: int = 0
    scraped: int | None = None
    outstanding_at_scrape: int = 0
    failures: int = 0
    ejected_until: float = 0.0
    served: int = 0

    def load(self) -> int:
        return effective_load(self.outstanding, self.scraped, self.outstanding_at_scrape)


def eject_seconds(base: float, failures: int) -> float:
    """Back-off for an endpoint that failed `failures` times in a row: doubling, at most 8 times `base`."""
    return base * float(1 << min(max(failures - 1, 0), 3))


@dataclass
class Fleet:
    """Deployments by model and endpoint state by URL."""

    eject_base: float
    affinity: AffinityTable
    by_model: dict[str, list[DeploymentConfig]] = field(default_factory=dict)
    endpoints: dict[str, EndpointState] = field(default_factory=dict)

    def replace(self, deployments: Iterable[DeploymentConfig]) -> None:
        by_model: dict[str, list[DeploymentConfig]] = {}
        endpoints: dict[str, EndpointState] = {}
        for dep in deployments:
            by_model.setdefault(dep.model, []).append(dep)
            for url in dep.endpoints:
                state = self.endpoints.get(url)
                if state is None:
                    state = EndpointState(url, dep)
                state.deployment = dep
                endpoints[url] = state
        for gone in self.endpoints.keys() - endpoints.keys():
            self.affinity.forget(gone)
        self.by_model, self.endpoints = by_model, endpoints

    def models(self) -> list[str]:
        return sorted(self.by_model)

    def endpoints_of(self, model: str) -> list[EndpointState]:
        return [self.endpoints[u] for dep in self.by_model.get(model, []) for u in dep.endpoints]

    def candidates(self, model: str, now: float) -> list[Candidate]:
        return [
            Candidate(
                url=s.url,
                deployment=s.deployment.name,
                priority=s.deployment.priority,
                capacity=s.deployment.capacity,
                load=s.load(),
                healthy=s.ejected_until <= now,
            )
            for s in self.endpoints_of(model)
        ]

    def failed(self, url: str, now: float) -> None:
        state = self.endpoints.get(url)
        if state is not None:
            state.failures += 1
            state.ejected_until = now + eject_seconds(self.eject_base, state.failures)

    def succeeded(self, url: str) -> None:
        state = self.endpoints.get(url)
        if state is not None:
            state.failures = 0
            state.ejected_until = 0.0
