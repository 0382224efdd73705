"""HorizontalPodAutoscaler and PodDisruptionBudget.

Exactly one thing writes a model Deployment's replica count (`docs/autoscaling.md`):
- autoscaling off: the operator's apply (`spec.replicas`);
- `targetCPUUtilizationPercentage`: the HPA rendered here (Resource metric, fed by metrics-server);
- `targetInFlightRequests`: the operator's own autoscaler (`slm_operator.autoscale`), driven by the
  gateway's per-deployment demand and able to scale to zero; no HPA is rendered, so nothing else
  (no custom-metrics adapter) is needed and the HPA never fights it.
"""

from __future__ import annotations

from typing import Any

from slm_operator.render.context import RenderContext
from slm_operator.render.metadata import object_meta, selector_labels


def build_autoscaler(ctx: RenderContext) -> dict[str, Any] | None:
    scaling = ctx.spec.autoscaling
    if scaling is None or not scaling.enabled or scaling.operator_scaled:
        return None
    metrics: list[dict[str, Any]] = []
    if scaling.target_cpu_utilization_percentage is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": scaling.target_cpu_utilization_percentage,
                    },
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_meta(ctx),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": ctx.name},
            "minReplicas": scaling.min_replicas,
            "maxReplicas": scaling.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": scaling.scale_down_stabilization_seconds}
            },
        },
    }


def build_disruption_budget(ctx: RenderContext) -> dict[str, Any] | None:
    """At most one pod down at a time during voluntary disruptions, once there is more than one."""
    if ctx.spec.min_pods <= 1:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(ctx),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(ctx.name)}},
    }
