"""The scaling decision for one SLMDeployment on requests in flight: a pure function of the spec,
the current replica count, the gateway's demand and the recent recommendations.

Like the HPA's algorithm for an `AverageValue` target: `ceil(inFlight / target)` pods, clamped to
[minReplicas, maxReplicas]; up at once, down only to the highest recommendation of the last
`scaleDownStabilizationSeconds` (a model pod is slow to start again, so flapping is expensive).
Scale to zero is separate: with `minReplicas: 0`, a model with nothing in flight for
`scaleToZeroAfter` (the gateway's own idle clock, not sampled here, so a short request between two
ticks still counts) goes to 0; the idle period is its stabilization window. A request held at the
gateway for a model at zero counts as in flight, so it wakes the model to at least one pod at once.
Without demand data (the gateway unreachable, or it has not seen the deployment yet) the count
stays where it is, clamped to the bounds: no data never scales anything to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from slm_operator.api.spec import AutoscalingSpec

History = tuple[tuple[float, int], ...]
"""(monotonic time, recommended replicas) of the recent ticks, oldest first."""

# Reasons, as they appear in status.autoscaling.reason, Events and the operator's metrics.
SCALED_UP = "ScaledUp"
SCALED_DOWN = "ScaledDown"
SCALED_TO_ZERO = "ScaledToZero"
WOKEN = "WokenByRequest"
STEADY = "Steady"
NO_DEMAND = "NoDemandData"
BOUNDS = "OutOfBounds"


@dataclass(frozen=True)
class Demand:
    """What the gateway reports for one deployment."""

    in_flight: int
    """Requests being answered by its pods plus requests held while it is at zero."""
    held: int
    """Of those, requests waiting for a first pod."""
    idle_seconds: float
    """Seconds since a request for it last arrived or finished (0 while one is in flight)."""


@dataclass(frozen=True)
class Decision:
    """What the autoscaler wants now, and why (a value: the loop executes it)."""

    desired: int
    current: int
    reason: str
    message: str
    history: History

    @property
    def changes(self) -> bool:
        return self.desired != self.current


def decide(
    scaling: AutoscalingSpec,
    current: int,
    demand: Demand | None,
    history: History,
    now: float,
) -> Decision:
    """The replica count `scaling` wants for `current` pods under `demand` (None: no data)."""
    low, high = scaling.min_replicas, scaling.max_replicas or scaling.min_replicas
    window = scaling.scale_down_stabilization_seconds
    recent = tuple((t, r) for t, r in history if now - t < window)
    if demand is None:
        bounded = min(max(current, low), high)
        reason = BOUNDS if bounded != current else NO_DEMAND
        return Decision(bounded, current, reason, "no demand data from the gateway", recent)
    target = scaling.target_in_flight_requests or 1
    wanted = math.ceil(demand.in_flight / target)
    summary = f"{demand.in_flight} in flight for a target of {target} per pod"
    if wanted == 0 and low == 0:
        idle_for = scaling.scale_to_zero_seconds
        if demand.idle_seconds >= idle_for:
            message = f"no requests for {int(demand.idle_seconds)}s (scaleToZeroAfter {idle_for}s)"
            return Decision(0, current, SCALED_TO_ZERO if current else STEADY, message, ())
        if current == 0:
            return Decision(0, current, STEADY, "scaled to zero, no requests", ())
        wanted = 1  # not idle long enough: keep one pod warm
    recommendation = min(max(wanted, low, 1 if current > 0 or demand.held else 0), high)
    recent = (*recent, (now, recommendation))
    desired = recommendation
    if recommendation < current:
        desired = min(current, max(r for _, r in recent))
    if current == 0 and desired > 0:
        message = f"{demand.held} request(s) held at the gateway; {summary}"
        return Decision(desired, current, WOKEN, message, recent)
    if desired > current:
        return Decision(desired, current, SCALED_UP, summary, recent)
    if desired < current:
        return Decision(desired, current, SCALED_DOWN, summary, recent)
    return Decision(desired, current, STEADY, summary, recent)
