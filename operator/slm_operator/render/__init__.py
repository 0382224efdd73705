"""Pure builders: an SLMDeployment spec plus its placement become the child objects (plain dicts).

No I/O happens here; the runtime image default is passed in (`RenderContext.default_image`), never
read from the environment. Order of `render_all` is the apply order (config before the workload).
"""

from __future__ import annotations

from typing import Any

from slm_operator.render.config import build_config_map, config_hash, runtime_config
from slm_operator.render.context import DEFAULT_IMAGE, IN_FLIGHT_METRIC, RenderContext, model_file_name
from slm_operator.render.inference_pool import build_inference_pool
from slm_operator.render.metadata import DEPLOYMENT_LABEL, MANAGED_BY, selector_labels, standard_labels
from slm_operator.render.network import build_network_policy, build_service, endpoints
from slm_operator.render.scaling import build_autoscaler, build_disruption_budget
from slm_operator.render.workload import build_cache_claim, build_deployment, build_service_account

__all__ = [
    "DEFAULT_IMAGE",
    "DEPLOYMENT_LABEL",
    "IN_FLIGHT_METRIC",
    "MANAGED_BY",
    "RenderContext",
    "config_hash",
    "endpoints",
    "model_file_name",
    "render_all",
    "runtime_config",
    "selector_labels",
    "standard_labels",
]


def render_all(ctx: RenderContext) -> list[dict[str, Any]]:
    """Every child object the SLMDeployment wants, in apply order."""
    built = [
        build_service_account(ctx),
        build_config_map(ctx),
        build_cache_claim(ctx),
        build_service(ctx),
        build_deployment(ctx),
        build_autoscaler(ctx),
        build_disruption_budget(ctx),
        build_network_policy(ctx),
        build_inference_pool(ctx),
    ]
    return [obj for obj in built if obj is not None]
