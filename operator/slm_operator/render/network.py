"""The Service and the NetworkPolicy in front of the model pods.

The NetworkPolicy admits ingress to the runtime port only from `networking.allowedClients` (every
pod of the same namespace when unset) and from the slm-gateway pods in
`RenderContext.gateway_namespace` (the fleet's one endpoint, which also reads the metrics port);
scrapers (`networking.metricsNamespaceSelector`) reach the `metrics` port and nothing else.

Egress exists only for the model download of the fetch init container (the runtime needs no
network once the file is there; a NetworkPolicy cannot tell the pod's containers apart): DNS plus
the model source's port (443 for `hf://` and `https://`, the URI's own port otherwise) to the
destinations in `networking.egress`, or to any address when that is unset; `file://` and `tiny://`
models get no egress at all.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from slm_operator.api.spec import EgressDestination
from slm_operator.render.context import METRICS_PORT, RUNTIME_PORT, RenderContext
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


DNS_PORTS = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]


def source_ports(uri: str) -> list[int]:
    """The TCP ports the fetch step connects to for `uri`; [] when it needs no network at all.

    `hf://` goes to huggingface.co and its CDN over https (443); an `https://` URI to its own port.
    """
    parts = urlsplit(uri)
    if parts.scheme in ("file", "tiny"):
        return []
    if parts.scheme == "hf":
        return [443]
    try:
        port = parts.port
    except ValueError:  # not a number: the fetch fails on its own, so open nothing for it
        return []
    return [port or (80 if parts.scheme == "http" else 443)]


def _tcp(ports: list[int]) -> list[dict[str, Any]]:
    return [{"port": p, "protocol": "TCP"} for p in ports]


def _destination(dest: EgressDestination) -> dict[str, Any]:
    if dest.cidr is not None:
        return {"ipBlock": {"cidr": dest.cidr}}
    peer: dict[str, Any] = {}
    if dest.namespace_selector is not None:
        peer["namespaceSelector"] = dest.namespace_selector.to_api()
    if dest.pod_selector is not None:
        peer["podSelector"] = dest.pod_selector.to_api()
    return peer


def egress_rules(ctx: RenderContext) -> list[dict[str, Any]]:
    """What the pods may connect to: DNS and the model source, or nothing when the model needs no
    download. Explicit `networking.egress` destinations replace "any address"; an entry without
    `ports` takes the source's ports (every port when the source has none, e.g. file://)."""
    ports = source_ports(ctx.placement.variant.uri)
    destinations = ctx.spec.networking.egress
    if destinations is None:
        return [{"ports": list(DNS_PORTS)}, {"ports": _tcp(ports)}] if ports else []
    rules: list[dict[str, Any]] = [{"ports": list(DNS_PORTS)}]
    for dest in destinations:
        rule: dict[str, Any] = {"to": [_destination(dest)]}
        dest_ports = list(dest.ports) if dest.ports else ports
        if dest_ports:
            rule["ports"] = _tcp(sorted(set(dest_ports)))
        rules.append(rule)
    return rules


def build_network_policy(ctx: RenderContext) -> dict[str, Any]:
    api = [{"port": RUNTIME_PORT, "protocol": "TCP"}]
    metrics = [{"port": METRICS_PORT, "protocol": "TCP"}]
    ingress: list[dict[str, Any]] = []
    clients = _clients(ctx)
    if clients:
        ingress.append({"from": clients, "ports": api})
    scrapers = ctx.spec.networking.metrics_namespace_selector
    if scrapers is not None:
        ingress.append({"from": [{"namespaceSelector": scrapers.to_api()}], "ports": metrics})
    if ctx.gateway_namespace:
        # the gateway routes requests (API) and reads each pod's queue depth (metrics)
        ingress.append({"from": [gateway_peer(ctx.gateway_namespace)], "ports": api + metrics})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(ctx),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(ctx.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress_rules(ctx),
        },
    }
