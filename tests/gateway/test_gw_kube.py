"""Kubernetes mode's pure mapping: SLMDeployments + EndpointSlices → the fleet."""

from __future__ import annotations

from typing import Any

from slm_gateway.kube import deployments_from, ready_urls


def slmd(
    name: str, model: str, *, ns: str = "demo", hardware: str | None = None, **extra: Any
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, **extra.pop("meta", {})},
        "spec": {"model": {"name": model}, **extra},
    }
    if hardware:
        obj["status"] = {"hardware": hardware}
    return obj


def eps(service: str, *addresses: tuple[str, bool], ns: str = "demo", port: int = 8080) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{service}-abc",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": r}} for a, r in addresses],
    }


def test_each_slmd_gets_its_ready_pods_priority_and_capacity() -> None:
    deps = deployments_from(
        [
            slmd("phi-gpu", "phi4-mini", hardware="gpu", runtime={"parallel": 8}),
            slmd("phi-cpu", "phi4-mini", hardware="cpu"),
            slmd(
                "tiny",
                "tiny",
                meta={"annotations": {"slm.dev/gateway-priority": "50"}},
                auth={"apiKeySecretRef": {"name": "k"}},
            ),
            slmd("other-ns", "tiny", ns="prod"),
        ],
        [
            eps("phi-gpu", ("10.0.0.1", True), ("10.0.0.2", False)),
            eps("phi-cpu", ("10.0.1.1", True)),
            eps("tiny", ("fd00::7", True)),
            eps("phi-gpu", ("10.9.9.9", True), ns="prod"),  # same name, other namespace: not ours
        ],
    )
    by_name = {d.name: d for d in deps}
    assert list(by_name) == ["demo/phi-cpu", "demo/phi-gpu", "demo/tiny", "prod/other-ns"]
    gpu, cpu = by_name["demo/phi-gpu"], by_name["demo/phi-cpu"]
    assert gpu.endpoints == ["http://10.0.0.1:8080"] and gpu.capacity == 8 and gpu.priority == 10
    assert cpu.endpoints == ["http://10.0.1.1:8080"] and cpu.priority == 0 and cpu.capacity == 4
    assert gpu.model == cpu.model == "phi4-mini"
    assert by_name["demo/tiny"].endpoints == ["http://[fd00::7]:8080"]
    assert by_name["demo/tiny"].priority == 50
    assert by_name["prod/other-ns"].endpoints == []


def test_terminating_and_portless_slices_give_no_urls() -> None:
    s = eps("x", ("10.0.0.1", True))
    s["endpoints"][0]["conditions"]["terminating"] = True
    assert ready_urls(s) == []
    assert ready_urls({"ports": [], "endpoints": [{"addresses": ["10.0.0.1"]}]}) == []
    # no conditions at all means ready (the API's default)
    assert ready_urls({"ports": [{"port": 9000}], "endpoints": [{"addresses": ["10.0.0.3"]}]}) == [
        "http://10.0.0.3:9000"
    ]


def test_objects_without_a_model_are_skipped() -> None:
    assert deployments_from([{"metadata": {"name": "x", "namespace": "d"}, "spec": {}}], []) == []
