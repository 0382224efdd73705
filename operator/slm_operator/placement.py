"""Placement: which hardware class, model variant, resources and scheduling constraints to use.

Pure: `place(spec, nodes, pods)` takes Node (and optionally Pod) objects as the API returns them and
decides, without I/O. It walks `spec.hardware.preference` in order; a class is chosen when

1. the spec offers a variant the class can run (see `sizing.LADDERS`: NPUs run ONNX only),
2. a variant fits `hardware.memoryBudget` (see `sizing` for the estimate), and
3. some node of the class has *room*: Ready, not cordoned, matches `hardware.nodeSelector`, all its
   NoSchedule/NoExecute taints tolerated (the class's own `<resource> Exists NoSchedule` toleration
   plus `hardware.tolerations`), allocatable ≥ the requested device count, CPU and memory once the
   requests of other pods already bound to it are subtracted (pass `pods`; callers leave out the
   SLMDeployment's own pods so that a running deployment does not crowd itself out), and the model
   fits its memory (GPU: `nvidia.com/gpu.memory` * count when labelled; CPU/NPU: allocatable memory).
   Pending pods (no `spec.nodeName` yet) are charged too, first-fit as a scheduler would bind them
   (oldest first, nodes by name, honouring their nodeSelector, tolerations and required node
   affinity): an SLMDeployment created a moment earlier holds the device it will get.

Every skipped class leaves a human-readable reason (`Placement.skipped`), which the reconciler puts
into the condition message and an Event. If no class qualifies, `PlacementError` carries all reasons
and is `retryable` when some class failed only for lack of free capacity right now.

Offline (an empty node list, e.g. `slm-operator render` without `--nodes`): the first preferred class
that can run an offered variant within the budget is chosen, with its default requests, and — for
NVIDIA GPUs — a node affinity on `nvidia.com/gpu.product Exists` only; nothing is checked against nodes.

Resources per pod (each key overridable by `spec.resources`): CPU request 2 cores on cpu, 1 on gpu/npu
(no CPU limit: throttling hurts latency); memory request = the estimate on cpu/npu, 1Gi + ¼ of the
estimate on gpu (weights live in device memory), 2Gi when the size is unknown; memory limit =
`memoryBudget` when set, else 1.25 * the request; the accelerator's resource = count (request = limit).
Runtime flags: threads = `runtime.threads` or the CPU request rounded down (≥1); gpuLayers =
`runtime.gpuLayers` or -1 (all) on gpu and 0 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from slm_operator.api import HardwareClass, ModelVariant, SLMDeploymentSpec
from slm_operator.errors import PlacementError
from slm_operator.hardware import (
    Accelerator,
    Node,
    accelerator,
    blocking_taints,
    known_resources,
    parse_nodes,
    pod_requests,
)
from slm_operator.quantity import GI, MI, format_bytes, format_cpu, parse_quantity
from slm_operator.sizing import FORMATS, Estimate, estimate, ranked

DEFAULT_CPU: dict[HardwareClass, Decimal] = {"cpu": Decimal(2), "gpu": Decimal(1), "npu": Decimal(1)}
DEFAULT_MEMORY = 2 * GI
MEMORY_LIMIT_FACTOR = 1.25


@dataclass(frozen=True)
class Placement:
    """The decision: where the model runs, which file it serves and what the pod asks for."""

    hardware: HardwareClass
    variant: ModelVariant
    resource_name: str | None
    accelerator_count: int
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    node_affinity: Mapping[str, Any] | None
    tolerations: tuple[Mapping[str, Any], ...]
    node_selector: Mapping[str, str]
    gpu_layers: int
    threads: int
    memory_estimate: int | None
    nodes: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()
    offline: bool = False

    @property
    def message(self) -> str:
        """One line for status.message, the condition and the Event."""
        where = f"on {self.hardware}" + (
            f" ({self.resource_name} x{self.accelerator_count})" if self.resource_name else ""
        )
        text = f"placed {self.variant.format} {self.variant.quantization} {where}"
        if self.memory_estimate is not None:
            text += f", ~{self.memory_estimate / GI:.1f} GiB estimated"
        else:
            text += ", model size unknown (memory not checked)"
        if self.offline:
            text += ", no node inventory (offline)"
        if self.skipped:
            text += "; skipped " + "; ".join(self.skipped)
        return text


@dataclass
class _Attempt:
    """Why one class was not chosen."""

    reason: str
    busy: bool = False
    notes: list[str] = field(default_factory=list)


def place(
    spec: SLMDeploymentSpec, nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]] = ()
) -> Placement:
    """Choose hardware, variant and pod resources for `spec` given the cluster's nodes (and pods)."""
    pods = list(pods)
    inventory = charge_pending(parse_nodes(nodes, pods), pods)
    skipped: list[str] = []
    busy = False
    for hardware in spec.hardware.preference:
        outcome = _try_class(spec, hardware, inventory)
        if isinstance(outcome, Placement):
            return Placement(**{**outcome.__dict__, "skipped": tuple(skipped)})
        skipped.append(f"{hardware}: {outcome.reason}")
        busy = busy or outcome.busy
    raise PlacementError(
        "no preferred hardware class can serve the model: " + "; ".join(skipped),
        tuple(skipped),
        retryable=busy,
    )


def charge_pending(inventory: Sequence[Node], pods: Iterable[Mapping[str, Any]]) -> list[Node]:
    """Subtract the requests of pending (unbound) pods from the first node each could be bound to."""
    pending = [
        p
        for p in pods
        if not (p.get("spec") or {}).get("nodeName")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    if not pending:
        return list(inventory)
    nodes = {n.name: n for n in inventory}
    free = {n.name: dict(n.free) for n in inventory}
    order = sorted(
        pending,
        key=lambda p: (
            str((p.get("metadata") or {}).get("creationTimestamp") or ""),
            str((p.get("metadata") or {}).get("namespace") or ""),
            str((p.get("metadata") or {}).get("name") or ""),
        ),
    )
    for pod in order:
        requests = pod_requests(pod)
        for name in sorted(nodes):
            node = nodes[name]
            room = free[name]
            if not _could_bind(node, pod):
                continue
            if all(room.get(k, node.allocatable.get(k, Decimal(0))) >= v for k, v in requests.items()):
                for k, v in requests.items():
                    room[k] = room.get(k, node.allocatable.get(k, Decimal(0))) - v
                break
    return [replace(n, free=free[n.name]) for n in inventory]


def _could_bind(node: Node, pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector") or {}
    if not (node.ready and node.schedulable) or any(node.labels.get(k) != v for k, v in selector.items()):
        return False
    if blocking_taints(node, spec.get("tolerations") or ()):
        return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or ()
    return not terms or any(
        all(_matches(node.labels, e) for e in t.get("matchExpressions") or ()) for t in terms
    )


def _matches(labels: Mapping[str, str], expression: Mapping[str, Any]) -> bool:
    """One node selector requirement (In, NotIn, Exists, DoesNotExist, Gt, Lt)."""
    key, op = str(expression.get("key")), expression.get("operator")
    values = [str(v) for v in expression.get("values") or ()]
    value = labels.get(key)
    if op == "Exists":
        return value is not None
    if op == "DoesNotExist":
        return value is None
    if op == "In":
        return value in values
    if op == "NotIn":
        return value not in values
    if op in ("Gt", "Lt") and value is not None and values:
        try:
            left, right = int(value), int(values[0])
        except ValueError:
            return False
        return left > right if op == "Gt" else left < right
    return False


def _try_class(
    spec: SLMDeploymentSpec, hardware: HardwareClass, inventory: Sequence[Node]
) -> Placement | _Attempt:
    candidates = ranked(spec.model.all_variants(), hardware)
    if not candidates:
        formats = "/".join(f.upper() for f in FORMATS[hardware])
        return _Attempt(f"no {formats} variant offered in a quantization it runs")
    budget = _budget(spec)
    sized = [(v, estimate(v, spec.model.parameters, spec.runtime)) for v in candidates]
    within = [(v, e) for v, e in sized if e is None or budget is None or e.total <= budget]
    if not within:
        smallest = min(e.total for _, e in sized if e is not None)
        limit = format_bytes(budget or 0)
        return _Attempt(f"no variant fits memoryBudget {limit} (smallest needs ~{format_bytes(smallest)})")
    resources = _resources(spec, hardware)
    if not inventory:
        variant, est = within[0]
        return _build(spec, hardware, variant, est, resource=resources[0], room=(), offline=True)
    return _search(spec, hardware, within, resources, inventory)


def _search(
    spec: SLMDeploymentSpec,
    hardware: HardwareClass,
    within: list[tuple[ModelVariant, Estimate | None]],
    resources: Sequence[str | None],
    inventory: Sequence[Node],
) -> Placement | _Attempt:
    found_nodes = fits_somewhere = False
    largest = 0
    for resource in resources:
        tolerations = _tolerations(spec, resource)
        eligible = [n for n in inventory if _eligible(n, spec, resource, tolerations)]
        found_nodes = found_nodes or bool(eligible)
        for variant, est in within:
            requests, _ = _resources_for(spec, hardware, est, resource)
            fit = [
                n
                for n in eligible
                if _fits(n, hardware=hardware, resource=resource, est=est, requests=requests, spec=spec)
            ]
            room = [n for n in fit if all(n.available(k) >= v for k, v in requests.items())]
            largest = max([largest, *(_capacity(n, hardware, resource, spec) or 0 for n in eligible)])
            if room:
                return _build(spec, hardware, variant, est, resource=resource, room=room)
            fits_somewhere = fits_somewhere or bool(fit)
    names = ", ".join(r for r in resources if r) or "cpu"
    if not found_nodes:
        what = f"offers {names}" if hardware != "cpu" else "is available"
        return _Attempt(f"no Ready, schedulable node that {what} (matching nodeSelector, taints tolerated)")
    if not fits_somewhere:
        need = min((e.total for _, e in within if e is not None), default=0)
        return _Attempt(
            f"the smallest usable variant needs ~{format_bytes(need)}, more than any {hardware} node has "
            f"(largest ~{format_bytes(largest)})"
        )
    scarce = f"{names} / cpu / memory" if hardware != "cpu" else "cpu / memory"
    return _Attempt(f"nodes that fit the model have no free {scarce} right now", busy=True)


def _budget(spec: SLMDeploymentSpec) -> int | None:
    if spec.hardware.memory_budget is None:
        return None
    return int(parse_quantity(spec.hardware.memory_budget))


def _resources(spec: SLMDeploymentSpec, hardware: HardwareClass) -> list[str | None]:
    """Extended resources to try: the spec's resourceName, else every known one of the class."""
    if hardware == "cpu":
        return [None]
    chosen = spec.hardware.gpu if hardware == "gpu" else spec.hardware.npu
    if chosen is not None and chosen.resource_name:
        return [chosen.resource_name]
    return list(known_resources(hardware))


def _count(spec: SLMDeploymentSpec, hardware: HardwareClass) -> int:
    chosen = spec.hardware.gpu if hardware == "gpu" else spec.hardware.npu if hardware == "npu" else None
    return chosen.count if chosen is not None else (1 if hardware != "cpu" else 0)


def _tolerations(spec: SLMDeploymentSpec, resource: str | None) -> tuple[Mapping[str, Any], ...]:
    own: list[Mapping[str, Any]] = []
    if resource:
        own.append({"key": resource, "operator": "Exists", "effect": "NoSchedule"})
    return tuple(own + [t.to_api() for t in spec.hardware.tolerations or ()])


def _eligible(
    node: Node, spec: SLMDeploymentSpec, resource: str | None, tolerations: Iterable[Mapping[str, Any]]
) -> bool:
    selector = spec.hardware.node_selector or {}
    return (
        node.ready
        and node.schedulable
        and all(node.labels.get(k) == v for k, v in selector.items())
        and not blocking_taints(node, tolerations)
        and (resource is None or node.has(resource))
    )


def _capacity(
    node: Node, hardware: HardwareClass, resource: str | None, spec: SLMDeploymentSpec
) -> int | None:
    """Memory the model can use on this node: device memory on gpu (when labelled), else RAM."""
    if hardware == "gpu" and resource:
        per_device = node.gpu_memory(accelerator(resource, hardware))
        if per_device is not None:
            return per_device * _count(spec, hardware)
        return None
    return int(node.allocatable.get("memory", Decimal(0)))


def _fits(
    node: Node,
    *,
    hardware: HardwareClass,
    resource: str | None,
    est: Estimate | None,
    requests: Mapping[str, Decimal],
    spec: SLMDeploymentSpec,
) -> bool:
    """Whether the node could hold the pod if it were empty (capacity, not current use)."""
    if any(node.allocatable.get(k, Decimal(0)) < v for k, v in requests.items()):
        return False
    if est is None:
        return True
    capacity = _capacity(node, hardware, resource, spec)
    return capacity is None or est.total <= capacity


def _resources_for(
    spec: SLMDeploymentSpec, hardware: HardwareClass, est: Estimate | None, resource: str | None
) -> tuple[dict[str, Decimal], dict[str, Decimal]]:
    """Requests and limits in base units, after applying `spec.resources` key by key."""
    if est is None:
        memory = Decimal(DEFAULT_MEMORY)
    elif hardware == "gpu":
        memory = Decimal(GI + est.total // 4)
    else:
        memory = Decimal(est.total)
    memory = Decimal(math.ceil(memory / MI) * MI)
    budget = _budget(spec)
    limit = (
        Decimal(budget)
        if budget is not None and budget >= memory
        else Decimal(math.ceil(memory * Decimal(MEMORY_LIMIT_FACTOR) / MI) * MI)
    )
    requests = {"cpu": DEFAULT_CPU[hardware], "memory": memory}
    limits = {"memory": limit}
    if resource:
        count = Decimal(_count(spec, hardware))
        requests[resource] = limits[resource] = count
    overrides = spec.resources
    if overrides is not None:
        requests.update({k: parse_quantity(v) for k, v in (overrides.requests or {}).items()})
        limits.update({k: parse_quantity(v) for k, v in (overrides.limits or {}).items()})
    return requests, limits


def _format(resources: Mapping[str, Decimal]) -> dict[str, str]:
    out = {}
    for key, value in sorted(resources.items()):
        if key == "cpu":
            out[key] = format_cpu(value)
        elif key in ("memory", "ephemeral-storage"):
            out[key] = format_bytes(int(value))
        else:
            out[key] = str(int(value)) if value == int(value) else str(value)
    return out


def _affinity(
    acc: Accelerator | None, est: Estimate | None, count: int, room: Sequence[Node], offline: bool
) -> Mapping[str, Any] | None:
    """Require the vendor's product label and, when known, enough device memory (`Gt` in MiB)."""
    if acc is None or acc.product_label is None:
        return None
    if not offline and not all(acc.product_label in n.labels for n in room):
        return None
    expressions: list[dict[str, Any]] = [{"key": acc.product_label, "operator": "Exists"}]
    labelled = acc.memory_label is not None and all(acc.memory_label in n.labels for n in room)
    if est is not None and not offline and labelled:
        need_mib = math.ceil(est.total / count / MI)
        expressions.append({"key": acc.memory_label, "operator": "Gt", "values": [str(need_mib - 1)]})
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": expressions}]
        }
    }


def _build(
    spec: SLMDeploymentSpec,
    hardware: HardwareClass,
    variant: ModelVariant,
    est: Estimate | None,
    *,
    resource: str | None,
    room: Sequence[Node],
    offline: bool = False,
) -> Placement:
    requests, limits = _resources_for(spec, hardware, est, resource)
    count = _count(spec, hardware)
    acc = accelerator(resource, hardware) if resource else None
    threads = spec.runtime.threads or max(1, int(requests.get("cpu", Decimal(1))))
    gpu_layers = (
        spec.runtime.gpu_layers if spec.runtime.gpu_layers is not None else (-1 if hardware == "gpu" else 0)
    )
    return Placement(
        hardware=hardware,
        variant=variant,
        resource_name=resource,
        accelerator_count=count if resource else 0,
        requests=_format(requests),
        limits=_format(limits),
        node_affinity=_affinity(acc, est, max(count, 1), room, offline),
        tolerations=_tolerations(spec, resource),
        node_selector=dict(spec.hardware.node_selector or {}),
        gpu_layers=gpu_layers,
        threads=threads,
        memory_estimate=est.total if est is not None else None,
        nodes=tuple(n.name for n in room),
        offline=offline,
    )
