"""HorizontalPodAutoscaler and PodDisruptionBudget.

The HPA scales on CPU utilisation (Resource metric) and/or requests in flight per pod (Pods metric
`vllm_num_requests_running`). The Pods metric comes through the custom metrics API, so a metrics
adapter (e.g. prometheus-adapter or KEDA) must serve the runtime's in-flight gauge under that name;
without one the HPA reports the metric as unavailable and scales on CPU only.
"""

from __future__ import annotations

from typing import Any

from slm_operator.render.context import IN_FLIGHT_METRIC, RenderContext
from slm_operator.render.metadata import object_meta, selector_labels


def build_autoscaler(ctx: RenderContext) -> dict[str, Any] | None:
    scaling = ctx.spec.autoscaling
    if scaling is None or not scaling.enabled:
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
    if scaling.target_in_flight_requests is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": IN_FLIGHT_METRIC},
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(scaling.target_in_flight_requests),
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
