"""The four examples (cpu, gpu, npu, tiny) applied to one `restricted` namespace, reconciled by the
operator running as the chart's ServiceAccount, scheduled by the real scheduler onto the KWOK pools.

Tests run in file order and share the namespace: children, scheduling, readiness and status, Pod
Security, a rollout, and last the NPU fallback (it cordons npu-node-1 and moves the npu example).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
from kubernetes import client

from ..helpers import create_namespace, kubectl, unique_name, wait_for
from . import support
from .conftest import RESTRICTED, OperatorProcess

# name, the children it must have, hardware it lands on, node prefix, variant (format, quantization)
EXAMPLES = {
    "cpu": ("qwen-cpu", {"PodDisruptionBudget"}, "cpu", "cpu-node-", ("gguf", "Q4_K_M"), 2),
    "gpu": ("phi4-mini", set(), "gpu", "gpu-node-", ("gguf", "F16"), 1),  # in-flight: no HPA
    "npu": ("phi35-npu", set(), "npu", "npu-node-", ("onnx", "INT4"), 1),
    "tiny": ("tiny", set(), "cpu", "cpu-node-", ("gguf", "Q8_0"), 1),
}
ALWAYS = {"Deployment", "Service", "ServiceAccount", "ConfigMap", "NetworkPolicy"}
OPTIONAL = {"HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim"}


@pytest.fixture(scope="module")
def examples_ns(kube_api: client.ApiClient, operator: OperatorProcess) -> Iterator[str]:
    name = create_namespace(kube_api, unique_name("e2e-examples"), labels=RESTRICTED)
    try:
        for example in EXAMPLES:
            support.create(kube_api, name, support.example(example))
        yield name
    finally:
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(kube_api).delete_namespace(name)


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_children_exist_with_controller_owner_references(
    kube_api: client.ApiClient, examples_ns: str, example: str
) -> None:
    name, extra, *_ = EXAMPLES[example]
    uid = support.get(kube_api, examples_ns, name)["metadata"]["uid"]
    wanted = ALWAYS | extra

    def complete() -> dict[str, list[object]] | None:
        found = support.children(kube_api, examples_ns, name)
        return found if all(found[kind] for kind in wanted) else None

    found = wait_for(complete, 60, f"children of {example}")
    for kind in OPTIONAL - extra:
        assert found[kind] == [], f"{example}: unexpected {kind}"
    for kind in wanted:
        (obj,) = found[kind]
        refs = obj.metadata.owner_references
        assert [(r.kind, r.name, r.uid, r.controller) for r in refs] == [("SLMDeployment", name, uid, True)]


@pytest.mark.parametrize("example", ["cpu", "gpu", "npu", "tiny"])
def test_scheduler_binds_pods_to_the_placed_pool(
    kube_api: client.ApiClient, examples_ns: str, example: str
) -> None:
    name, _, _, prefix, _, replicas = EXAMPLES[example]

    def bound() -> list[str] | None:
        nodes = [p.spec.node_name for p in support.pods(kube_api, examples_ns, name)]
        return nodes if len(nodes) == replicas and all(nodes) else None

    nodes = wait_for(bound, 60, f"{replicas} pod(s) of {example} bound to nodes")
    assert all(n.startswith(prefix) for n in nodes), nodes


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_ready_with_status(kube_api: client.ApiClient, examples_ns: str, example: str) -> None:
    name, _, hardware, _, (fmt, quantization), replicas = EXAMPLES[example]
    obj = support.wait_condition(kube_api, examples_ns, name, "Ready", "True", timeout=90)
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["hardware"] == hardware
    assert (status["variant"]["format"], status["variant"]["quantization"]) == (fmt, quantization)
    assert status["variant"]["uri"].startswith(("hf://", "tiny://"))
    base = f"http://{name}.{examples_ns}.svc.cluster.local:8080"
    assert status["endpoints"] == {"openai": f"{base}/v1", "ollama": base}
    assert (status["replicas"], status["readyReplicas"]) == (replicas, replicas)
    degraded = support.condition(obj, "Degraded")
    assert degraded is not None
    assert degraded["status"] == "False"
    for cond in status["conditions"]:
        assert cond["observedGeneration"] == obj["metadata"]["generation"], cond


def test_pod_security_restricted_admits_the_pods(kube_api: client.ApiClient, examples_ns: str) -> None:
    """No FailedCreate on any ReplicaSet, every pod exists, and a server-side dry run of each
    Deployment into the restricted namespace draws no PodSecurity warning."""
    apps = client.AppsV1Api(kube_api)
    for example, (name, *_, replicas) in EXAMPLES.items():
        selector = f"{support.DEPLOYMENT_LABEL}={name}"
        sets = wait_for(
            lambda s=selector: apps.list_namespaced_replica_set(examples_ns, label_selector=s).items,
            30,
            f"ReplicaSets of {example}",
        )
        for rs in sets:
            reasons = {
                e.reason for e in support.events_for(kube_api, examples_ns, "ReplicaSet", rs.metadata.name)
            }
            assert "FailedCreate" not in reasons, (example, rs.metadata.name)
        assert len(support.pods(kube_api, examples_ns, name)) == replicas, example


def test_deployments_draw_no_pod_security_warning(
    kubeconfig: str, kube_api: client.ApiClient, examples_ns: str
) -> None:
    for name, *_ in EXAMPLES.values():
        live = client.AppsV1Api(kube_api).read_namespaced_deployment(name, examples_ns)
        body = kube_api.sanitize_for_serialization(live)
        body["metadata"] = {"name": f"{name}-psa-check", "namespace": examples_ns}
        body.pop("status", None)
        result = kubectl(kubeconfig, "create", "--dry-run=server", "-f", "-", input=json.dumps(body))
        assert "Warning" not in result.stderr, result.stderr
        assert "PodSecurity" not in result.stderr, result.stderr


def test_spec_change_rolls_out(kube_api: client.ApiClient, examples_ns: str) -> None:
    name = "qwen-cpu"
    before = support.wait_condition(kube_api, examples_ns, name, "Ready", "True", timeout=90)
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    old_hash = support.deployment(kube_api, examples_ns, name).spec.template.metadata.annotations[
        support.CONFIG_HASH
    ]
    old_config = core.read_namespaced_config_map(f"{name}-runtime", examples_ns).data["config.yaml"]
    assert "contextLength: 4096" in old_config

    support.patch_spec(
        kube_api,
        examples_ns,
        name,
        {"runtime": {"contextLength": 2048}, "prompt": {"system": "You answer in one short sentence."}},
    )

    def rolled() -> client.V1Deployment | None:
        dep = support.deployment(kube_api, examples_ns, name)
        changed = dep.spec.template.metadata.annotations[support.CONFIG_HASH] != old_hash
        return dep if changed else None

    dep = wait_for(rolled, 30, "a new config-hash on the Deployment's pod template")
    new_hash = dep.spec.template.metadata.annotations[support.CONFIG_HASH]
    config = core.read_namespaced_config_map(f"{name}-runtime", examples_ns).data["config.yaml"]
    assert "contextLength: 2048" in config
    assert "You answer in one short sentence." in config
    assert config != old_config

    def new_replica_set() -> list[client.V1ReplicaSet] | None:
        sets = apps.list_namespaced_replica_set(
            examples_ns, label_selector=f"{support.DEPLOYMENT_LABEL}={name}"
        ).items
        hashes = {rs.spec.template.metadata.annotations[support.CONFIG_HASH] for rs in sets}
        return sets if hashes >= {old_hash, new_hash} else None

    wait_for(new_replica_set, 30, "a new ReplicaSet for the changed pod template")
    after = support.wait_condition(kube_api, examples_ns, name, "Ready", "True", timeout=120)
    assert after["metadata"]["generation"] > before["metadata"]["generation"]
    assert after["status"]["observedGeneration"] == after["metadata"]["generation"]

    def rolled_pods() -> bool:
        current = support.pods(kube_api, examples_ns, name)
        fresh = [p for p in current if p.metadata.annotations.get(support.CONFIG_HASH) != old_hash]
        return len(current) == 2 and len(fresh) == 2

    wait_for(rolled_pods, 60, "both pods replaced by the new template")


def test_npu_example_falls_back_when_the_npu_node_is_cordoned(
    kube_api: client.ApiClient, examples_ns: str
) -> None:
    name = "phi35-npu"
    core = client.CoreV1Api(kube_api)
    obj = support.wait_condition(kube_api, examples_ns, name, "Ready", "True", timeout=90)
    assert obj["status"]["hardware"] == "npu"
    assert [p.spec.node_name for p in support.pods(kube_api, examples_ns, name)] == ["npu-node-1"]

    core.patch_node("npu-node-1", {"spec": {"unschedulable": True}})
    try:
        # A spec change triggers a reconcile at once (the resync would too, later).
        support.patch_spec(kube_api, examples_ns, name, {"runtime": {"parallel": 3}})
        moved = support.wait_condition(
            kube_api, examples_ns, name, "Degraded", "False", reason="FallbackPlacement", timeout=60
        )
        assert moved["status"]["hardware"] == "gpu"
        assert moved["status"]["variant"]["format"] == "gguf"
        assert moved["status"]["variant"]["quantization"] == "Q4_K_M"
        message = support.condition(moved, "Degraded")["message"]  # type: ignore[index]
        assert "npu:" in message and "no Ready, schedulable node" in message, message
        assert "skipped npu" in moved["status"]["message"]

        def fallback_event() -> list[client.CoreV1Event]:
            events = support.events_for(kube_api, examples_ns, "SLMDeployment", name)
            return [e for e in events if e.reason == "FallbackPlacement" and "npu" in (e.message or "")]

        (event, *_) = wait_for(fallback_event, 30, "a FallbackPlacement Event")
        assert event.type == "Warning"

        def on_gpu() -> list[str] | None:
            nodes = [p.spec.node_name for p in support.pods(kube_api, examples_ns, name)]
            return nodes if nodes and all(n and n.startswith("gpu-node-") for n in nodes) else None

        wait_for(on_gpu, 90, "the npu example's pod rescheduled onto a gpu node")
        support.wait_condition(kube_api, examples_ns, name, "Ready", "True", timeout=90)
    finally:
        core.patch_node("npu-node-1", {"spec": {"unschedulable": False}})
