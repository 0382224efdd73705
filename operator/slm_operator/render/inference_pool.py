"""The InferencePool (Gateway API Inference Extension, `inference.networking.k8s.io/v1`).

Rendered only when the API server serves that kind (`RenderContext.inference_pools`, which the
operator learns by discovery at startup and from CRD events): clusters with a GIE-capable Gateway
(Envoy Gateway, kgateway, Istio, GKE) can then route an HTTPRoute to the pool and let their own
endpoint picker choose among our pods, which export the model-server protocol's metrics.

The schema follows the CRD of `sigs.k8s.io/gateway-api-inference-extension` v1.6.0 (the version
`hack/gie-crd.sh` installs in the test bed): `selector.matchLabels` (1..64 labels), `targetPorts`
(1..8 unique port numbers, the pods' own ports, not the Service's) and an optional
`endpointPickerRef`, which we leave to the user's Gateway setup (no picker of ours speaks ext-proc).
"""

from __future__ import annotations

from typing import Any

from slm_operator.render.context import RUNTIME_PORT, RenderContext
from slm_operator.render.metadata import object_meta, selector_labels

INFERENCE_POOL_API_VERSION = "inference.networking.k8s.io/v1"
INFERENCE_POOL_KIND = "InferencePool"
INFERENCE_POOL_PLURAL = "inferencepools"
INFERENCE_POOL_CRD = f"{INFERENCE_POOL_PLURAL}.inference.networking.k8s.io"
"""The CRD's name, whose events tell the operator that the kind appeared or went away."""


def build_inference_pool(ctx: RenderContext) -> dict[str, Any] | None:
    """One pool per SLMDeployment: the same pods as its Service, on the runtime's container port.

    None when the cluster does not serve InferencePools (an apply would fail with 404)."""
    if not ctx.inference_pools:
        return None
    return {
        "apiVersion": INFERENCE_POOL_API_VERSION,
        "kind": INFERENCE_POOL_KIND,
        "metadata": object_meta(ctx),
        "spec": {
            "selector": {"matchLabels": selector_labels(ctx.name)},
            "targetPorts": [{"number": RUNTIME_PORT}],
            "appProtocol": "http",
        },
    }
