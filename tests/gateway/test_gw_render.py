"""Operator side of the gateway: the model pods' NetworkPolicy admits the gateway's pods, only them."""

from __future__ import annotations

from slm_operator.api import SLMDeploymentSpec
from slm_operator.placement import Placement, place
from slm_operator.render import RenderContext, render_all

NODE = {
    "metadata": {"name": "cpu-1", "labels": {"kubernetes.io/os": "linux"}},
    "status": {
        "allocatable": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    },
}


def _policy(gateway_namespace: str | None, **spec: object) -> dict[str, object]:
    the_spec = SLMDeploymentSpec.model_validate(
        {
            "model": {
                "name": "m",
                "parameters": 0.1,
                "variants": [{"format": "gguf", "quantization": "Q8_0", "uri": "tiny://gguf"}],
            },
            **spec,
        }
    )
    placement: Placement = place(the_spec, [NODE])
    ctx = RenderContext(
        name="demo", namespace="ns", spec=the_spec, placement=placement, gateway_namespace=gateway_namespace
    )
    return next(o for o in render_all(ctx) if o["kind"] == "NetworkPolicy")["spec"]  # type: ignore[no-any-return]


def test_gateway_pods_of_their_namespace_are_admitted_beside_the_clients() -> None:
    ingress = _policy("slm-system")["ingress"]
    assert ingress == [
        {"from": [{"podSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]},
        {
            "from": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "slm-system"}},
                    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "slm-gateway"}},
                }
            ],
            # the API, and the metrics port its scraper reads the queue depth from
            "ports": [{"port": 8080, "protocol": "TCP"}, {"port": 9090, "protocol": "TCP"}],
        },
    ]


def test_with_restricted_clients_the_gateway_rule_is_still_there() -> None:
    ingress = _policy("gw", networking={"allowedClients": [{"podSelector": {"matchLabels": {"app": "x"}}}]})[
        "ingress"
    ]
    froms = [rule["from"] for rule in ingress]  # type: ignore[index]
    assert [{"podSelector": {"matchLabels": {"app": "x"}}}] in froms
    assert any(
        peer[0].get("podSelector") == {"matchLabels": {"app.kubernetes.io/name": "slm-gateway"}}
        for peer in froms
    )


def test_no_gateway_namespace_no_rule() -> None:
    assert len(_policy(None)["ingress"]) == 1  # type: ignore[arg-type]


def test_the_operator_learns_the_gateway_namespace_from_the_chart_env() -> None:
    from slm_operator.settings import gateway_namespace_from_env

    assert gateway_namespace_from_env({"SLM_GATEWAY_NAMESPACE": "slm-system"}) == "slm-system"
    assert gateway_namespace_from_env({"SLM_GATEWAY_NAMESPACE": ""}) is None
    assert gateway_namespace_from_env({}) is None


def test_status_shows_the_fleet_endpoint_beside_the_deployments_own() -> None:
    from slm_operator.reconcile.status import reconciled_status
    from slm_operator.settings import gateway_url_from_env

    the_spec = SLMDeploymentSpec.model_validate(
        {
            "model": {
                "name": "m",
                "parameters": 0.1,
                "variants": [{"format": "gguf", "quantization": "Q8_0", "uri": "tiny://gguf"}],
            }
        }
    )
    placement = place(the_spec, [NODE])
    fleet = "http://slm-operator-gateway.slm-system.svc.cluster.local:8080/v1"
    common = {
        "name": "demo",
        "namespace": "ns",
        "generation": 1,
        "port": 8080,
        "placement": placement,
        "deployment": None,
        "old": None,
        "timestamp": "2026-12-01T00:00:00Z",
    }
    with_gateway = reconciled_status(**common, fleet_endpoint=fleet)  # type: ignore[arg-type]
    assert with_gateway["endpoints"] == {
        "openai": "http://demo.ns.svc.cluster.local:8080/v1",
        "ollama": "http://demo.ns.svc.cluster.local:8080",
        "fleet": fleet,
    }
    assert "fleet" not in reconciled_status(**common)["endpoints"]  # type: ignore[arg-type]
    assert gateway_url_from_env({"SLM_GATEWAY_URL": fleet}) == fleet
    assert gateway_url_from_env({}) is None
