"""The Service and the NetworkPolicy in front of the model pods.

The NetworkPolicy admits ingress to the runtime port only from `networking.allowedClients` (every
pod of the same namespace when unset), from `networking.metricsNamespaceSelector` (scrapers) and
from the slm-gateway pods in `RenderContext.gateway_namespace` (the fleet's one endpoint); egress
is limited to DNS (53/UDP+TCP) and HTTPS (443/TCP) for the model download.
"""

from __future__ import annotations

from typing import Any

from slm_operator.render.context import RUNTIME_PORT, RenderContext
from slm_operator.render.metadata import object_meta, selector_labels


def build_service(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(ctx),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ctx.name),
            "ports": [
                {"name": "http", "port": ctx.spec.networking.port, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def endpoints(name: str, namespace: str, port: int) -> dict[str, str]:
    """The in-cluster URLs published in status.endpoints."""
    base = f"http://{name}.{namespace}.svc.cluster.local:{port}"
    return {"openai": f"{base}/v1", "ollama": base}


def _clients(ctx: RenderContext) -> list[dict[str, Any]]:
    allowed = ctx.spec.networking.allowed_clients
    if allowed is None:
        return [{"podSelector": {}}]
    return [peer.to_api() for peer in allowed]


GATEWAY_POD_LABELS = {"app.kubernetes.io/name": "slm-gateway"}
"""Labels of the gateway's pods (charts/slm-operator/templates/gateway-deployment.yaml)."""


def gateway_peer(namespace: str) -> dict[str, Any]:
    """The slm-gateway pods of `namespace`, and no other pods there or elsewhere."""
    return {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
        "podSelector": {"matchLabels": dict(GATEWAY_POD_LABELS)},
    }


def build_network_policy(ctx: RenderContext) -> dict[str, Any]:
    port = [{"port": RUNTIME_PORT, "protocol": "TCP"}]
    ingress: list[dict[str, Any]] = []
    clients = _clients(ctx)
    if clients:
        ingress.append({"from": clients, "ports": port})
    scrapers = ctx.spec.networking.metrics_namespace_selector
    if scrapers is not None:
        ingress.append({"from": [{"namespaceSelector": scrapers.to_api()}], "ports": port})
    if ctx.gateway_namespace:
        ingress.append({"from": [gateway_peer(ctx.gateway_namespace)], "ports": port})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(ctx),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(ctx.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                {"ports": [{"port": 443, "protocol": "TCP"}]},
            ],
        },
    }
