"""Execution providers for ONNX models: chosen from placement, overridable in the spec, rendered
into the runtime config with a `select-provider` init container, and a fallback the pod reports
surfaced as Degraded/ProviderFallback."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from op_support import bed_nodes, example, onnx, spec

from slm_operator.api import SLMDeploymentSpec
from slm_operator.hardware import ProviderChoice, execution_providers
from slm_operator.placement import place
from slm_operator.reconcile.status import deployment_conditions, observed_status, provider_fallback
from slm_operator.render import RenderContext, render_all
from slm_runtime.config import RuntimeConfig


@pytest.mark.parametrize(
    ("hardware", "resource", "expected"),
    [
        ("npu", "npu.intel.com/accel", [("openvino", {"device_type": "NPU"}), ("cpu", {})]),
        ("gpu", "gpu.intel.com/xe", [("openvino", {"device_type": "GPU"}), ("cpu", {})]),
        ("gpu", "nvidia.com/gpu", [("cuda", {}), ("cpu", {})]),
        ("npu", "qualcomm.com/qaic", [("qnn", {"backend_path": "libQnnHtp.so"}), ("cpu", {})]),
        ("npu", "amd.com/xdna", [("vitisai", {}), ("cpu", {})]),
        ("npu", "aws.amazon.com/neuron", [("cpu", {})]),
        ("gpu", "amd.com/gpu", [("cpu", {})]),
        ("cpu", None, [("cpu", {})]),
    ],
)
def test_provider_table(
    hardware: Any, resource: str | None, expected: list[tuple[str, dict[str, str]]]
) -> None:
    assert [(p.name, dict(p.options)) for p in execution_providers(hardware, resource)] == expected


def test_override_replaces_the_table_but_cpu_stays_last() -> None:
    chain = execution_providers("npu", "npu.intel.com/accel", ProviderChoice("qnn"))
    assert [p.name for p in chain] == ["qnn", "cpu"]
    assert [p.name for p in execution_providers("cpu", None, ProviderChoice("cuda"))] == ["cpu"]


def _render(the_spec: SLMDeploymentSpec) -> dict[str, Any]:
    ctx = RenderContext(name="demo", namespace="ns", spec=the_spec, placement=place(the_spec, bed_nodes()))
    return {obj["kind"]: obj for obj in render_all(ctx)}


def _runtime_config(objs: dict[str, Any]) -> RuntimeConfig:
    return RuntimeConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"]))


def _init(objs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["initContainers"]} | {"runtime": pod["containers"][0]}


def test_npu_example_renders_openvino_npu_and_the_select_provider_container() -> None:
    objs = _render(SLMDeploymentSpec.model_validate(example("npu")["spec"]))
    config = _runtime_config(objs)
    assert config.hardware == "npu"
    chain = [(p.name, p.options) for p in config.runtime.execution_providers]
    assert chain == [("openvino", {"device_type": "NPU"}), ("cpu", {})]
    containers = _init(objs)
    assert list(containers) == ["fetch-model", "select-provider", "runtime"]
    assert "--folder" in containers["fetch-model"]["args"]  # an hf:// ONNX variant is a folder
    select = containers["select-provider"]
    assert select["args"][:3] == ["select-provider", "--config", "/etc/slm/config.yaml"]
    assert select["resources"] == containers["runtime"]["resources"]
    assert "npu.intel.com/accel" in select["resources"]["limits"]
    assert select["securityContext"]["readOnlyRootFilesystem"] is True


def test_spec_override_and_formats_without_providers() -> None:
    npu = {"preference": ["npu"], "npu": {"executionProvider": {"name": "qnn", "options": {"x": "1"}}}}
    model = {"name": "m", "parameters": 0.5, "variants": onnx("INT4")}
    objs = _render(spec(model=model, hardware=npu))
    assert [(p.name, p.options) for p in _runtime_config(objs).runtime.execution_providers] == [
        ("qnn", {"x": "1"}),
        ("cpu", {}),
    ]
    gguf_objs = _render(spec(hardware={"preference": ["gpu"]}))  # GGUF: llama.cpp, no providers
    assert _runtime_config(gguf_objs).runtime.execution_providers == []
    assert list(_init(gguf_objs)) == ["fetch-model", "runtime"]
    assert "--folder" not in _init(gguf_objs)["fetch-model"]["args"]
    cpu_objs = _render(spec(model=model, hardware={"preference": ["cpu"]}))
    assert _runtime_config(cpu_objs).runtime.execution_providers == []
    assert "select-provider" not in _init(cpu_objs)


def test_bad_provider_name_is_rejected_by_the_schema() -> None:
    with pytest.raises(ValueError, match="executionProvider"):
        spec(hardware={"npu": {"executionProvider": {"name": "tpu"}}})


def _pod(report: dict[str, Any] | str, exit_code: int = 0) -> dict[str, Any]:
    message = report if isinstance(report, str) else json.dumps(report)
    return {
        "metadata": {"name": "demo-1"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "select-provider",
                    "state": {"terminated": {"exitCode": exit_code, "message": message}},
                }
            ]
        },
    }


FALLBACK = {
    "provider": "cpu",
    "requested": "openvino",
    "fallback": True,
    "summary": "openvino failed: no NPU",
}
AVAILABLE = {
    "metadata": {"generation": 1},
    "spec": {"replicas": 1},
    "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
}


def test_fallback_is_degraded_provider_fallback_while_ready() -> None:
    conds, _, _ = deployment_conditions(AVAILABLE, 4, [_pod(FALLBACK)])
    by_type = {c["type"]: c for c in conds}
    assert by_type["Ready"]["status"] == "True"
    assert by_type["Degraded"]["status"] == "True"
    assert by_type["Degraded"]["reason"] == "ProviderFallback"
    assert by_type["Degraded"]["message"] == "pod demo-1: openvino failed: no NPU"


@pytest.mark.parametrize(
    "pod",
    [
        _pod({**FALLBACK, "fallback": False}),
        _pod(FALLBACK, exit_code=1),
        _pod("Traceback: not json"),
        {"metadata": {"name": "x"}, "status": {}},
    ],
)
def test_no_fallback_reported(pod: dict[str, Any]) -> None:
    assert provider_fallback([pod]) is None


def test_fallback_clears_when_the_pod_runs_on_its_provider() -> None:
    conds, _, _ = deployment_conditions(AVAILABLE, 4, [_pod(FALLBACK)])
    old = {"observedGeneration": 4, "conditions": conds, "replicas": 1, "readyReplicas": 0}
    update = observed_status(AVAILABLE, old, "2026-01-01T00:00:00Z", [_pod({**FALLBACK, "fallback": False})])
    assert update is not None
    degraded = next(c for c in update["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("False", "Recovered")
