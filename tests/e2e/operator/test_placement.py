"""Placement against the cluster's real usage: a pod that holds the only NPU makes the npu example
fall back to a GPU at creation; once the NPU is free, the periodic resync moves it back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from kubernetes import client

from ..helpers import wait_deleted, wait_for
from . import support
from .conftest import RESYNC_SECONDS, OperatorProcess

NPU = "npu.intel.com/accel"
PAUSE = "registry.k8s.io/pause:3.10"


@pytest.fixture
def npu_holder(kube_api: client.ApiClient, slm_namespace: str) -> Iterator[str]:
    """A pod (bound by the real scheduler) that requests the NPU node's only device."""
    core = client.CoreV1Api(kube_api)
    restricted = client.V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=client.V1Capabilities(drop=["ALL"]),
        run_as_non_root=True,
        run_as_user=65532,
        seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
    )
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="npu-holder"),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image=PAUSE,
                    resources=client.V1ResourceRequirements(limits={NPU: "1"}),
                    security_context=restricted,
                )
            ],
            tolerations=[client.V1Toleration(key=NPU, operator="Exists", effect="NoSchedule")],
            termination_grace_period_seconds=0,
        ),
    )
    core.create_namespaced_pod(slm_namespace, pod)
    try:
        # The examples module's npu pod may still be going away with its namespace.
        wait_for(
            lambda: core.read_namespaced_pod("npu-holder", slm_namespace).spec.node_name == "npu-node-1",
            90,
            "the NPU holder bound to npu-node-1",
        )
        yield "npu-holder"
    finally:
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_pod("npu-holder", slm_namespace, grace_period_seconds=0)


def test_busy_npu_falls_back_then_returns_when_free(
    kube_api: client.ApiClient, slm_namespace: str, npu_holder: str, operator: OperatorProcess
) -> None:
    name = "phi35-npu"
    support.create(kube_api, slm_namespace, support.example("npu"))
    obj = support.wait_condition(
        kube_api, slm_namespace, name, "Degraded", "False", reason="FallbackPlacement", timeout=60
    )
    assert obj["status"]["hardware"] == "gpu"
    message = obj["status"]["message"]
    assert f"npu: nodes that fit the model have no free {NPU}" in message, message

    def bound_to(prefix: str) -> list[str] | None:
        nodes = [p.spec.node_name for p in support.pods(kube_api, slm_namespace, name)]
        return nodes if len(nodes) == 1 and all(n and n.startswith(prefix) for n in nodes) else None

    wait_for(lambda: bound_to("gpu-node-"), 60, "the npu example on a gpu node")

    core = client.CoreV1Api(kube_api)
    core.delete_namespaced_pod(npu_holder, slm_namespace, grace_period_seconds=0)
    wait_deleted(lambda: core.read_namespaced_pod(npu_holder, slm_namespace), 30, "the NPU holder")

    # No spec change: the resync notices the free NPU and places the model there again.
    back = support.wait_condition(
        kube_api,
        slm_namespace,
        name,
        "Degraded",
        "False",
        reason="Reconciled",
        timeout=RESYNC_SECONDS * 3 + 30,
    )
    assert back["status"]["hardware"] == "npu"
    assert back["status"]["variant"]["format"] == "onnx"
    wait_for(lambda: bound_to("npu-node-"), 60, "the npu example back on npu-node-1")

    # The move is announced like any placement change, though the resync (no kopf handler) made it.
    def placed_on_npu() -> list[str]:
        events = support.events_for(kube_api, slm_namespace, "SLMDeployment", name)
        return [e.message for e in events if e.reason == "Placed" and "on npu" in (e.message or "")]

    wait_for(placed_on_npu, 15, "a Placed Event for the move back to the NPU")
