"""Placement, table-driven over node inventories shaped like the e2e test bed."""

from __future__ import annotations

import random
from typing import Any

import pytest
from op_support import bed_nodes, example, gguf, nodes_named, onnx, pod_on, spec

from slm_operator.api import SLMDeployment
from slm_operator.errors import PlacementError
from slm_operator.placement import place

PHI = {"name": "phi", "parameters": 3.8, "variants": gguf("F16", "Q8_0", "Q4_K_M")}


def _cordoned(nodes: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    for node in nodes:
        if node["metadata"]["name"].startswith(prefix):
            node["spec"]["unschedulable"] = True
    return nodes


def _not_ready(nodes: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    for node in nodes:
        if node["metadata"]["name"].startswith(prefix):
            node["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    return nodes


def _gpu_memory(nodes: list[dict[str, Any]], mib: int) -> list[dict[str, Any]]:
    for node in nodes:
        if "nvidia.com/gpu.memory" in node["metadata"]["labels"]:
            node["metadata"]["labels"]["nvidia.com/gpu.memory"] = str(mib)
    return nodes


GPU_BUSY = [pod_on("gpu-node-1", {"nvidia.com/gpu": "1"}), pod_on("gpu-node-2", {"nvidia.com/gpu": "1"})]

# name -> (spec overrides, nodes, pods, expected (hardware, format, quantization, resource), skipped prefixes)
CASES: dict[
    str, tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], tuple[Any, ...], list[str]]
] = {
    "gpu-f16-fits-l4": ({"model": PHI}, bed_nodes(), [], ("gpu", "gguf", "F16", "nvidia.com/gpu"), []),
    "gpu-busy-falls-back-to-cpu": (
        {"model": PHI},
        bed_nodes(),
        GPU_BUSY,
        ("cpu", "gguf", "Q4_K_M", None),
        ["gpu: nodes that fit the model have no free"],
    ),
    "gpu-cordoned-falls-back": (
        {"model": PHI},
        _cordoned(bed_nodes(), "gpu"),
        [],
        ("cpu", "gguf", "Q4_K_M", None),
        ["gpu: no Ready, schedulable node"],
    ),
    "gpu-not-ready-falls-back": (
        {"model": PHI},
        _not_ready(bed_nodes(), "gpu"),
        [],
        ("cpu", "gguf", "Q4_K_M", None),
        ["gpu: no Ready"],
    ),
    "no-gpu-nodes": (
        {"model": PHI},
        nodes_named("cpu"),
        [],
        ("cpu", "gguf", "Q4_K_M", None),
        ["gpu: no Ready"],
    ),
    "small-gpu-takes-q8": (
        {"model": PHI},
        _gpu_memory(bed_nodes(), 8192),
        [],
        ("gpu", "gguf", "Q8_0", "nvidia.com/gpu"),
        [],
    ),
    "tiny-gpu-takes-q4": (
        {"model": PHI},
        _gpu_memory(bed_nodes(), 5120),
        [],
        ("gpu", "gguf", "Q4_K_M", "nvidia.com/gpu"),
        [],
    ),
    "budget-forces-q4-on-gpu": (
        {"model": PHI, "hardware": {"memoryBudget": "6Gi"}},
        bed_nodes(),
        [],
        ("gpu", "gguf", "Q4_K_M", "nvidia.com/gpu"),
        [],
    ),
    "explicit-single-variant-wins-on-cpu": (
        {
            "model": {"name": "m", "parameters": 0.5, "variants": gguf("Q8_0")},
            "hardware": {"preference": ["cpu"]},
        },
        bed_nodes(),
        [],
        ("cpu", "gguf", "Q8_0", None),
        [],
    ),
    "explicit-single-variant-wins-on-gpu": (
        {"model": {"name": "m", "parameters": 3.8, "variants": gguf("Q4_K_M")}},
        bed_nodes(),
        [],
        ("gpu", "gguf", "Q4_K_M", "nvidia.com/gpu"),
        [],
    ),
    "npu-onnx-int4": (
        {
            "model": {"name": "m", "parameters": 3.8, "variants": onnx("INT4") + gguf("Q4_K_M")},
            "hardware": {"preference": ["npu", "gpu", "cpu"]},
        },
        bed_nodes(),
        [],
        ("npu", "onnx", "INT4", "npu.intel.com/accel"),
        [],
    ),
    "npu-without-onnx-skips-to-gpu": (
        {"model": PHI, "hardware": {"preference": ["npu", "gpu", "cpu"]}},
        bed_nodes(),
        [],
        ("gpu", "gguf", "F16", "nvidia.com/gpu"),
        ["npu: no ONNX variant offered"],
    ),
    "npu-busy-gpu-gets-gguf": (
        {
            "model": {"name": "m", "parameters": 3.8, "variants": onnx("INT4") + gguf("Q4_K_M")},
            "hardware": {"preference": ["npu", "gpu", "cpu"]},
        },
        bed_nodes(),
        [pod_on("npu-node-1", {"npu.intel.com/accel": "1"})],
        ("gpu", "gguf", "Q4_K_M", "nvidia.com/gpu"),
        ["npu: nodes that fit the model have no free npu.intel.com/accel"],
    ),
    "cpu-onnx-only": (
        {
            "model": {"name": "m", "parameters": 3.8, "variants": onnx("INT4")},
            "hardware": {"preference": ["cpu"]},
        },
        bed_nodes(),
        [],
        ("cpu", "onnx", "INT4", None),
        [],
    ),
    "amd-detected": (
        {"model": PHI, "hardware": {"preference": ["gpu"]}},
        [
            {
                "metadata": {"name": "amd-1", "labels": {}},
                "spec": {"taints": [{"key": "amd.com/gpu", "effect": "NoSchedule"}]},
                "status": {
                    "allocatable": {"cpu": "16", "memory": "64Gi", "amd.com/gpu": "1"},
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        ],
        [],
        ("gpu", "gguf", "F16", "amd.com/gpu"),
        [],
    ),
    "node-selector-filters": (
        {"model": PHI, "hardware": {"nodeSelector": {"topology.kubernetes.io/zone": "zone-b"}}},
        bed_nodes(),
        [pod_on("gpu-node-2", {"nvidia.com/gpu": "1"})],
        ("cpu", "gguf", "Q4_K_M", None),
        ["gpu: nodes that fit the model have no free"],
    ),
    "own-pods-are-not-counted-by-the-caller": (
        {"model": PHI},
        bed_nodes(),
        [pod_on("gpu-node-1", {"nvidia.com/gpu": "1"})],
        ("gpu", "gguf", "F16", "nvidia.com/gpu"),
        [],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_placement_table(case: str) -> None:
    overrides, nodes, pods, expected, skipped = CASES[case]
    placement = place(spec(**overrides), nodes, pods)
    got = (
        placement.hardware,
        placement.variant.format,
        placement.variant.quantization,
        placement.resource_name,
    )
    assert got == expected
    assert len(placement.skipped) == len(skipped)
    for reason, prefix in zip(placement.skipped, skipped, strict=True):
        assert reason.startswith(prefix), reason
    for reason in skipped:
        assert reason.split(":")[0] in placement.message


def test_gpu_placement_details() -> None:
    placement = place(spec(model=PHI), bed_nodes())
    assert placement.requests["nvidia.com/gpu"] == placement.limits["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in placement.tolerations
    terms = placement.node_affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]  # type: ignore[index]
    expressions = terms[0]["matchExpressions"]
    assert expressions[0] == {"key": "nvidia.com/gpu.product", "operator": "Exists"}
    assert expressions[1]["key"] == "nvidia.com/gpu.memory" and expressions[1]["operator"] == "Gt"
    assert int(expressions[1]["values"][0]) < 23034
    assert placement.gpu_layers == -1 and placement.threads == 1
    assert placement.nodes == ("gpu-node-1", "gpu-node-2")


def test_cpu_placement_details() -> None:
    placement = place(spec(model=PHI, hardware={"preference": ["cpu"]}), bed_nodes())
    assert placement.resource_name is None and placement.node_affinity is None
    assert placement.tolerations == ()
    assert placement.gpu_layers == 0 and placement.threads == 2
    assert placement.requests["cpu"] == "2"
    assert placement.nodes == ("cpu-node-1", "cpu-node-2")  # tainted accelerator nodes excluded


def test_threads_and_layers_overrides() -> None:
    placement = place(
        spec(model=PHI, resources={"requests": {"cpu": "6"}}, runtime={"gpuLayers": 20}), bed_nodes()
    )
    assert placement.threads == 6 and placement.gpu_layers == 20 and placement.requests["cpu"] == "6"
    explicit = place(spec(model=PHI, runtime={"threads": 3}), bed_nodes())
    assert explicit.threads == 3


def test_nothing_fits_anywhere_is_permanent() -> None:
    huge = {"name": "big", "parameters": 70, "variants": gguf("F16")}
    with pytest.raises(PlacementError) as caught:
        place(spec(model=huge), bed_nodes())
    assert not caught.value.retryable
    assert [r.split(":")[0] for r in caught.value.reasons] == ["gpu", "cpu"]
    assert "more than any gpu node has" in caught.value.reasons[0]


def test_only_gguf_on_npu_only_is_impossible() -> None:
    with pytest.raises(PlacementError, match="npu: no ONNX variant"):
        place(spec(model=PHI, hardware={"preference": ["npu"]}), bed_nodes())
    with pytest.raises(PlacementError, match="no ONNX variant"):
        place(spec(model=PHI, hardware={"preference": ["npu"]}), [])


def test_no_room_right_now_is_retryable() -> None:
    pods = [pod_on(n, {"memory": "30Gi"}) for n in ("cpu-node-1", "cpu-node-2")]
    with pytest.raises(PlacementError) as caught:
        place(spec(model=PHI, hardware={"preference": ["cpu"]}), bed_nodes(), pods)
    assert caught.value.retryable and caught.value.reason == "NoCapacity"


def test_budget_below_every_variant() -> None:
    with pytest.raises(PlacementError, match="no variant fits memoryBudget 1Gi"):
        place(spec(model=PHI, hardware={"memoryBudget": "1Gi"}), bed_nodes())


def test_offline_picks_first_preferred_class() -> None:
    placement = place(spec(model=PHI), [])
    assert placement.offline and placement.hardware == "gpu" and placement.resource_name == "nvidia.com/gpu"
    assert placement.variant.quantization == "F16"
    assert placement.node_affinity == {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "Exists"}]}
            ]
        }
    }
    npu = place(spec(model={"name": "m", "variants": onnx("INT4")}, hardware={"preference": ["npu"]}), [])
    assert npu.resource_name == "npu.intel.com/accel" and "offline" in npu.message


def test_unknown_size_skips_memory_checks() -> None:
    placement = place(spec(model={"name": "m", "variants": gguf("F16")}), bed_nodes())
    assert placement.memory_estimate is None and placement.requests["memory"] == "2Gi"
    assert "model size unknown" in placement.message


def test_size_bytes_stands_in_for_parameters() -> None:
    variants = [{**gguf("Q4_K_M")[0], "sizeBytes": 400_000_000}]
    placement = place(spec(model={"name": "m", "variants": variants}, hardware={"preference": ["cpu"]}), [])
    assert placement.memory_estimate is not None and 400_000_000 < placement.memory_estimate < 1_500_000_000


def test_spec_tolerations_open_tainted_nodes() -> None:
    nodes = nodes_named("cpu")
    for node in nodes:
        node["spec"]["taints"] = [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    with pytest.raises(PlacementError):
        place(spec(hardware={"preference": ["cpu"]}), nodes)
    tolerated = place(
        spec(hardware={"preference": ["cpu"], "tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
        nodes,
    )
    assert tolerated.hardware == "cpu"
    assert {"key": "dedicated", "operator": "Exists"} in tolerated.tolerations


def test_examples_place_on_the_test_bed() -> None:
    results = {}
    for name in ("cpu", "gpu", "npu", "tiny"):
        resource = SLMDeployment.model_validate(example(name))
        placed = place(resource.spec, bed_nodes())
        results[name] = (placed.hardware, placed.variant.quantization)
    assert results == {
        "cpu": ("cpu", "Q4_K_M"),
        "gpu": ("gpu", "F16"),
        "npu": ("npu", "INT4"),
        "tiny": ("cpu", "Q8_0"),
    }


def test_node_order_does_not_matter() -> None:
    rng = random.Random(7)
    nodes = bed_nodes()
    reference = place(spec(model=PHI), nodes, GPU_BUSY[:1])
    for _ in range(200):
        rng.shuffle(nodes)
        assert place(spec(model=PHI), nodes, GPU_BUSY[:1]) == reference
