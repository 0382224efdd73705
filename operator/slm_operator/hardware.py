"""Accelerator resources the operator recognises, and a typed view of cluster nodes.

| Extended resource           | Class | Vendor                          | Node labels read            |
|-----------------------------|-------|---------------------------------|-----------------------------|
| `nvidia.com/gpu`            | gpu   | NVIDIA                          | `nvidia.com/gpu.product`,   |
|                             |       |                                 | `nvidia.com/gpu.memory` MiB |
| `amd.com/gpu`               | gpu   | AMD                             | —                           |
| `gpu.intel.com/i915`        | gpu   | Intel (i915 driver)             | —                           |
| `gpu.intel.com/xe`          | gpu   | Intel (Xe driver)               | —                           |
| `npu.intel.com/accel`       | npu   | Intel NPU                       | `intel.feature.node.kuber-  |
|                             |       |                                 | netes.io/npu` (NFD)         |
| `aws.amazon.com/neuroncore` | npu   | AWS Inferentia/Trainium (core)  | —                           |
| `aws.amazon.com/neuron`     | npu   | AWS Inferentia/Trainium (device)| —                           |
| `huawei.com/Ascend910`      | npu   | Huawei Ascend 910               | —                           |
| `huawei.com/Ascend310P`     | npu   | Huawei Ascend 310P              | —                           |
| `qualcomm.com/qaic`         | npu   | Qualcomm Cloud AI 100           | —                           |

The table order is the detection order when `spec.hardware.{gpu,npu}.resourceName` is unset; a
resourceName in the spec overrides detection (and may name a resource not listed here). A node's
accelerator taint is assumed to be keyed by the resource name (as the NVIDIA GPU operator and the
test bed do: `nvidia.com/gpu=present:NoSchedule`); the pods tolerate `key Exists, effect NoSchedule`.
Memory available to the model is the GPU memory label times the device count on gpu, and the node's
allocatable memory (minus other pods' requests) on cpu and npu.

ONNX models run on the onnxruntime-genai execution provider for the placed accelerator's vendor
(`execution_providers`); the runtime falls back to CPU when it cannot load, and says so:

| Placed on                                   | Execution provider | Options              |
|---------------------------------------------|--------------------|----------------------|
| gpu `nvidia.com/*`                          | cuda               | —                    |
| gpu `gpu.intel.com/*`                       | openvino (plugin)  | `device_type: GPU`   |
| npu `npu.intel.com/*`                       | openvino (plugin)  | `device_type: NPU`   |
| npu `qualcomm.com/*`                        | qnn                | `backend_path: libQnnHtp.so` |
| npu `amd.com/*`, `xilinx.com/*`             | vitisai            | —                    |
| anything else (AMD GPU, AWS Neuron, Ascend) | cpu                | —                    |
| cpu                                         | cpu                | —                    |

`spec.hardware.{gpu,npu}.executionProvider` replaces the table's choice for that class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from slm_operator.api import HardwareClass
from slm_operator.quantity import MI, parse_quantity


@dataclass(frozen=True)
class Accelerator:
    """A recognised extended resource and the node labels that describe it."""

    resource: str
    hardware: HardwareClass
    vendor: str
    product_label: str | None = None
    memory_label: str | None = None


ACCELERATORS: tuple[Accelerator, ...] = (
    Accelerator("nvidia.com/gpu", "gpu", "NVIDIA", "nvidia.com/gpu.product", "nvidia.com/gpu.memory"),
    Accelerator("amd.com/gpu", "gpu", "AMD"),
    Accelerator("gpu.intel.com/i915", "gpu", "Intel"),
    Accelerator("gpu.intel.com/xe", "gpu", "Intel"),
    Accelerator("npu.intel.com/accel", "npu", "Intel", "intel.feature.node.kubernetes.io/npu"),
    Accelerator("aws.amazon.com/neuroncore", "npu", "AWS"),
    Accelerator("aws.amazon.com/neuron", "npu", "AWS"),
    Accelerator("huawei.com/Ascend910", "npu", "Huawei"),
    Accelerator("huawei.com/Ascend310P", "npu", "Huawei"),
    Accelerator("qualcomm.com/qaic", "npu", "Qualcomm"),
)


def accelerator(resource: str, hardware: HardwareClass) -> Accelerator:
    """The table entry for `resource`, or a bare entry for a resource named only in the spec."""
    for acc in ACCELERATORS:
        if acc.resource == resource:
            return acc
    return Accelerator(resource, hardware, "unknown")


@dataclass(frozen=True)
class ProviderChoice:
    """An onnxruntime-genai execution provider and its options (names as in the runtime config)."""

    name: str
    options: Mapping[str, str] = field(default_factory=dict)


# (class, resource-name prefix) -> provider; the first matching row wins.
_PROVIDER_TABLE: tuple[tuple[HardwareClass, str, ProviderChoice], ...] = (
    ("gpu", "nvidia.com/", ProviderChoice("cuda")),
    ("gpu", "gpu.intel.com/", ProviderChoice("openvino", {"device_type": "GPU"})),
    ("npu", "npu.intel.com/", ProviderChoice("openvino", {"device_type": "NPU"})),
    ("npu", "qualcomm.com/", ProviderChoice("qnn", {"backend_path": "libQnnHtp.so"})),
    ("npu", "amd.com/", ProviderChoice("vitisai")),
    ("npu", "xilinx.com/", ProviderChoice("vitisai")),
)
CPU_PROVIDER = ProviderChoice("cpu")


def execution_providers(
    hardware: HardwareClass, resource: str | None, override: ProviderChoice | None = None
) -> list[ProviderChoice]:
    """Providers the runtime tries, in order, for an ONNX model placed on `resource`; ends with CPU.

    The pod holds only the accelerator it was placed on, so the fallback after it is the CPU.
    """
    choice = override
    if choice is None and resource is not None:
        choice = next(
            (c for cls, prefix, c in _PROVIDER_TABLE if cls == hardware and resource.startswith(prefix)), None
        )
    if hardware == "cpu" or choice is None or choice.name == "cpu":
        return [CPU_PROVIDER]
    return [choice, CPU_PROVIDER]


def known_resources(hardware: HardwareClass) -> tuple[str, ...]:
    """Resources of one class, in detection order."""
    return tuple(a.resource for a in ACCELERATORS if a.hardware == hardware)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str | None
    effect: str


@dataclass(frozen=True)
class Node:
    """What placement needs to know about one node, with other pods' requests already subtracted."""

    name: str
    labels: Mapping[str, str]
    ready: bool
    schedulable: bool
    taints: tuple[Taint, ...]
    allocatable: Mapping[str, Decimal]
    free: Mapping[str, Decimal] = field(default_factory=dict)

    def has(self, resource: str) -> bool:
        return self.allocatable.get(resource, Decimal(0)) > 0

    def available(self, resource: str) -> Decimal:
        return self.free.get(resource, self.allocatable.get(resource, Decimal(0)))

    def gpu_memory(self, acc: Accelerator) -> int | None:
        """Memory of one device in bytes, from the vendor's node label (None when unlabelled)."""
        if acc.memory_label is None or acc.memory_label not in self.labels:
            return None
        try:
            return int(self.labels[acc.memory_label]) * MI
        except ValueError:
            return None


def parse_nodes(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]] = ()) -> list[Node]:
    """Parse Node objects (API JSON) and subtract the requests of running pods bound to them."""
    used = _requests_by_node(pods)
    parsed = []
    for raw in nodes:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        status = raw.get("status") or {}
        name = str(meta.get("name", ""))
        allocatable = {k: _quantity(v) for k, v in (status.get("allocatable") or {}).items()}
        taken = used.get(name, {})
        free = {k: v - taken.get(k, Decimal(0)) for k, v in allocatable.items()}
        parsed.append(
            Node(
                name=name,
                labels=dict(meta.get("labels") or {}),
                ready=_is_ready(status),
                schedulable=not spec.get("unschedulable", False),
                taints=tuple(
                    Taint(str(t.get("key", "")), t.get("value"), str(t.get("effect", "")))
                    for t in spec.get("taints") or ()
                ),
                allocatable=allocatable,
                free=free,
            )
        )
    return sorted(parsed, key=lambda n: n.name)


def _quantity(value: object) -> Decimal:
    try:
        return parse_quantity(str(value))
    except ValueError:
        return Decimal(0)


def _is_ready(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """Effective requests of a pod: max(sum of containers, largest init container) per resource."""
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or ():
        for key, value in _container_requests(container).items():
            total[key] = total.get(key, Decimal(0)) + value
    for container in spec.get("initContainers") or ():
        for key, value in _container_requests(container).items():
            total[key] = max(total.get(key, Decimal(0)), value)
    return total


def _container_requests(container: Mapping[str, Any]) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    # A limit without a request means request == limit (how the API server defaults it).
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    return {k: _quantity(v) for k, v in merged.items()}


def _requests_by_node(pods: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Decimal]]:
    used: dict[str, dict[str, Decimal]] = {}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if not node or phase in ("Succeeded", "Failed"):
            continue
        bucket = used.setdefault(str(node), {})
        for key, value in pod_requests(pod).items():
            bucket[key] = bucket.get(key, Decimal(0)) + value
    return used


def tolerates(taint: Taint, tolerations: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any toleration matches the taint (Kubernetes semantics, tolerationSeconds ignored)."""
    for tol in tolerations:
        effect = tol.get("effect")
        if effect and effect != taint.effect:
            continue
        key = tol.get("key")
        operator = tol.get("operator") or "Equal"
        if not key and operator == "Exists":
            return True
        if key != taint.key:
            continue
        if operator == "Exists" or (tol.get("value") or "") == (taint.value or ""):
            return True
    return False


def blocking_taints(node: Node, tolerations: Iterable[Mapping[str, Any]]) -> list[Taint]:
    """Taints that keep a pod with these tolerations off the node (PreferNoSchedule never blocks)."""
    tols = list(tolerations)
    return [t for t in node.taints if t.effect in ("NoSchedule", "NoExecute") and not tolerates(t, tols)]
