"""Per-deployment demand, as the operator's autoscaler reads it (`GET /demand`), and the hold.

The gateway sees every request for the fleet, including those for a model that has no pod at the
moment (scaled to zero, or its first pod still starting), so it is where demand is counted: the
requests in flight per deployment, the requests held for a first pod, and an idle clock (seconds
since a request for the deployment last arrived or finished). The operator polls this and writes
the replica count; the gateway itself stays read-only on the cluster (no RBAC beyond watching
SLMDeployments and EndpointSlices).

A held request is charged to one deployment of its model: the one with the highest priority
(ties by name), which is the one the operator wakes. Lives on the event loop only: no locks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

from slm_gateway.config import DeploymentConfig


@dataclass
class DemandBook:
    """Held requests and the last activity of each deployment (monotonic seconds)."""

    started: float
    held: dict[str, int] = field(default_factory=dict)
    last_activity: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set (and replaced) whenever the fleet changes: what held requests wait on."""

    def touch(self, deployment: str, now: float) -> None:
        self.last_activity[deployment] = now

    def hold(self, deployment: str, now: float) -> None:
        self.held[deployment] = self.held.get(deployment, 0) + 1
        self.touch(deployment, now)

    def release(self, deployment: str, now: float) -> None:
        left = self.held.get(deployment, 0) - 1
        if left > 0:
            self.held[deployment] = left
        else:
            self.held.pop(deployment, None)
        self.touch(deployment, now)

    def fleet_changed(self) -> None:
        """Wake every held request (each checks whether its model has a pod now)."""
        self.changed.set()
        self.changed = asyncio.Event()

    def report(
        self, deployments: Iterable[DeploymentConfig], in_flight: dict[str, int], now: float
    ) -> dict[str, object]:
        """The `/demand` document: {"deployments": {"ns/name": {inFlight, held, idleSeconds}}}."""
        out: dict[str, object] = {}
        for dep in deployments:
            held = self.held.get(dep.name, 0)
            busy = in_flight.get(dep.name, 0) + held
            last = self.last_activity.get(dep.name, self.started)
            idle = 0.0 if busy else max(0.0, now - last)
            out[dep.name] = {
                "model": dep.model,
                "inFlight": busy,
                "held": held,
                "idleSeconds": round(idle, 1),
            }
        return {"deployments": out}


def wake_target(deployments: Iterable[DeploymentConfig]) -> str | None:
    """The deployment a held request is charged to: highest priority, then name."""
    ranked = sorted(deployments, key=lambda d: (-d.priority, d.name))
    return ranked[0].name if ranked else None
