"""The pure plan, table-driven: desired against observed -> what to apply and delete (with reasons),
the Events and whether the status changes. Each case is planned again with its inputs shuffled, as
KubeAI tests its pod plan: the plan must not depend on the order the caches return things in."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from op_support import bed_nodes, cpu_scaled, gguf, pod_on, spec
from test_op_api import VALID

from slm_operator.api import SLMDeploymentSpec
from slm_operator.errors import PlacementError
from slm_operator.placement import place
from slm_operator.reconcile import plan as plan_module
from slm_operator.reconcile.plan import (
    CHILDREN,
    Observed,
    Plan,
    RenderMemo,
    apply_waves,
    fingerprint,
    key_of,
    observed_form,
    pack,
    plan,
    reservations,
    unpack,
)
from slm_operator.render import RenderContext, render_all

Obj = dict[str, Any]
UID = "uid-1"
SHUFFLES = 50


def _body(spec: Obj | None = None, *, status: Obj | None = None, generation: int = 1) -> Obj:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "demo", "namespace": "ns", "uid": UID, "generation": generation},
        "spec": spec or {"model": {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}},
        "status": status or {},
    }


def _plan(body: Obj, observed: Observed) -> Plan:
    return plan(body, observed, image="img:1", timestamp="t0")


def _steady() -> tuple[Obj, Observed]:
    """An SLMDeployment whose children exist exactly as planned and whose status says so."""
    fresh = _plan(_body(), Observed(nodes=bed_nodes()))
    children = {key_of(o): observed_form(o) for o in fresh.desired}
    deployment = next(o for o in fresh.desired if o["kind"] == "Deployment")
    live = {**copy.deepcopy(deployment), "status": {"observedGeneration": 1, "replicas": 0}}
    live["metadata"]["generation"] = 1
    status = fresh.status(live)
    return _body(status=status), Observed(nodes=bed_nodes(), children=children, deployment=live)


def _edit(observed: Observed, kind: str, change: Callable[[Obj], None]) -> Observed:
    children = copy.deepcopy(dict(observed.children))
    key = next(k for k in children if k[1] == kind)
    change(children[key])
    return Observed(
        nodes=observed.nodes, pods=observed.pods, children=children, deployment=observed.deployment
    )


def _with_child(observed: Observed, kind: str, *, uid: str = UID) -> Observed:
    child = next(c for c in CHILDREN if c.kind == kind)
    obj = {
        "metadata": {
            "labels": {"slm.dev/deployment": "demo"},
            "ownerReferences": [{"uid": uid, "controller": True}],
        },
        "spec": {},
    }
    children = {**observed.children, (child.api_version, kind, "ns", "demo"): obj}
    return Observed(
        nodes=observed.nodes, pods=observed.pods, children=children, deployment=observed.deployment
    )


def _service_port(port: int) -> Callable[[Obj], None]:
    def change(obj: Obj) -> None:
        obj["spec"]["ports"][0]["port"] = port

    return change


@dataclass(frozen=True)
class Case:
    name: str
    inputs: Callable[[], tuple[Obj, Observed]]
    apply: dict[str, str]
    """kind -> reason"""
    delete: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    hardware: str = "gpu"
    noop: bool = False


def _fresh() -> tuple[Obj, Observed]:
    return _body(), Observed(nodes=bed_nodes())


def _steady_edited() -> tuple[Obj, Observed]:
    body, observed = _steady()
    return body, _edit(observed, "Service", _service_port(9999))


def _steady_with_stale_hpa() -> tuple[Obj, Observed]:
    body, observed = _steady()
    return body, _with_child(observed, "HorizontalPodAutoscaler")


def _steady_with_foreign_hpa() -> tuple[Obj, Observed]:
    body, observed = _steady()
    return body, _with_child(observed, "HorizontalPodAutoscaler", uid="someone-else")


def _gpus_held_by_others() -> tuple[Obj, Observed]:
    pods = [pod_on(f"gpu-node-{i}", {"nvidia.com/gpu": "1"}, name=f"other-{i}") for i in (1, 2)]
    return _body(), Observed(nodes=bed_nodes(), pods=pods)


def _gpus_held_by_itself() -> tuple[Obj, Observed]:
    own = {"slm.dev/deployment": "demo"}
    pods = [pod_on(f"gpu-node-{i}", {"nvidia.com/gpu": "1"}, name=f"own-{i}", labels=own) for i in (1, 2)]
    for pod in pods:
        pod["metadata"]["namespace"] = "ns"
    return _body(), Observed(nodes=bed_nodes(), pods=pods)


def _gpus_wanted_by_pending_pods() -> tuple[Obj, Observed]:
    """Two other SLMDeployments created a moment ago: their pods are not bound yet."""
    pods = []
    for i in (1, 2):
        pod = pod_on("", {"nvidia.com/gpu": "1", "cpu": "1", "memory": "1Gi"}, name=f"pending-{i}")
        del pod["spec"]["nodeName"]
        pod["spec"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        pod["status"] = {"phase": "Pending"}
        pods.append(pod)
    return _body(), Observed(nodes=bed_nodes(), pods=pods)


ALL = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "NetworkPolicy"}
CASES = [
    Case("fresh: every child is missing", _fresh, dict.fromkeys(ALL, "missing"), events=["Placed"]),
    Case("steady: nothing to do, no call", _steady, {}, noop=True),
    Case(
        "an edited Service is applied again, nothing else",
        _steady_edited,
        {"Service": "differs from what was last applied"},
    ),
    Case(
        "an owned HPA no longer wanted is pruned",
        _steady_with_stale_hpa,
        {},
        ["HorizontalPodAutoscaler"],
        ["Pruned"],
    ),
    Case("an HPA controlled by another owner stays", _steady_with_foreign_hpa, {}, noop=True),
    Case(
        "GPUs held by other pods: falls back to cpu",
        _gpus_held_by_others,
        dict.fromkeys(ALL, "missing"),
        events=["Placed", "FallbackPlacement"],
        hardware="cpu",
    ),
    Case(
        "its own pods do not crowd it out",
        _gpus_held_by_itself,
        dict.fromkeys(ALL, "missing"),
        events=["Placed"],
    ),
    Case(
        "GPUs promised to pending pods: falls back to cpu",
        _gpus_wanted_by_pending_pods,
        dict.fromkeys(ALL, "missing"),
        events=["Placed", "FallbackPlacement"],
        hardware="cpu",
    ),
]


def _summary(p: Plan) -> tuple[Any, ...]:
    return (
        [(s.key, s.reason) for s in p.apply],
        [(s.key, s.reason) for s in p.delete],
        list(p.events),
        p.status(),
        p.placement,
    )


def _shuffled(observed: Observed, rng: random.Random) -> Observed:
    nodes, pods, children = list(observed.nodes), list(observed.pods), list(observed.children.items())
    rng.shuffle(nodes)
    rng.shuffle(pods)
    rng.shuffle(children)
    return Observed(nodes=nodes, pods=pods, children=dict(children), deployment=observed.deployment)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_plan(case: Case) -> None:
    body, observed = case.inputs()
    result = _plan(body, observed)
    assert {s.obj["kind"]: s.reason for s in result.apply} == case.apply
    assert [s.obj["kind"] for s in result.delete] == case.delete
    assert all(s.reason == "no longer wanted by the spec" for s in result.delete)
    assert [reason for _, reason, _ in result.events] == case.events
    assert result.placement.hardware == case.hardware
    assert result.is_noop == case.noop
    rng = random.Random(case.name)
    expected = _summary(result)
    for _ in range(SHUFFLES):
        assert _summary(_plan(body, _shuffled(observed, rng))) == expected


def test_apply_order_follows_the_desired_order() -> None:
    """Config before the workload: the ConfigMap a Deployment mounts is applied first."""
    result = _plan(*_fresh())
    kinds = [s.obj["kind"] for s in result.apply]
    assert kinds.index("ConfigMap") < kinds.index("Deployment")
    assert kinds.index("ServiceAccount") < kinds.index("Deployment")


def test_a_new_generation_changes_the_status_only_where_it_must() -> None:
    body, observed = _steady()
    body["metadata"]["generation"] = 2
    result = _plan(body, observed)
    assert result.apply == () and not result.is_noop
    assert result.status()["observedGeneration"] == 2


def test_reservations_stand_in_for_pods_a_deployment_still_wants() -> None:
    template = {
        "spec": {
            "containers": [{"name": "rt", "resources": {"requests": {"nvidia.com/gpu": "1"}}}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        }
    }
    deployments = {
        ("ns", "a"): {"spec": {"replicas": 2, "template": template}},
        ("ns", "b"): {"spec": {"replicas": 1, "template": template}},
        ("ns", "c"): {"spec": {"replicas": 0, "template": template}},
    }
    stand_ins = reservations(deployments, {("ns", "a"): 1, ("ns", "b"): 1})
    assert [p["metadata"]["name"] for p in stand_ins] == ["a-reserved-0"]
    assert stand_ins[0]["metadata"]["labels"] == {"slm.dev/deployment": "a"}
    assert stand_ins[0]["spec"]["containers"][0]["resources"]["requests"] == {"nvidia.com/gpu": "1"}
    assert "nodeName" not in stand_ins[0]["spec"] and stand_ins[0]["status"]["phase"] == "Pending"


def test_the_render_memo_renders_again_only_when_an_input_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    renders: list[str] = []

    def counted(ctx: RenderContext) -> list[Obj]:
        renders.append(ctx.image)
        return render_all(ctx)

    monkeypatch.setattr(plan_module, "render_all", counted)
    memo = RenderMemo()
    body, observed = _fresh()
    first = plan(body, observed, image="img:1", timestamp="t0", render=memo)
    again = plan(body, observed, image="img:1", timestamp="t1", render=memo)
    assert again.desired == first.desired and renders == ["img:1"]  # not rendered again
    again.desired[0]["metadata"]["name"] = "edited"  # a copy: the memo's next answer is intact
    assert plan(body, observed, image="img:1", timestamp="t1", render=memo).desired == first.desired
    other_image = plan(body, observed, image="img:2", timestamp="t2", render=memo)
    images = {
        c["image"]
        for o in other_image.desired
        if o["kind"] == "Deployment"
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"img:2"}
    assert _summary(plan(body, observed, image="img:1", timestamp="t0")) == _summary(first)


def _context_of(the_spec: SLMDeploymentSpec) -> RenderContext:
    """A context built from scratch, as every plan builds one (raises `PlacementError`)."""
    return RenderContext(name="m", namespace="ns", spec=the_spec, placement=place(the_spec, bed_nodes(), []))


def _context(**spec_overrides: Any) -> RenderContext:
    return _context_of(
        spec(model={"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}, **spec_overrides)
    )


def test_equal_contexts_built_anew_share_one_fingerprint_and_any_change_parts_them() -> None:
    first = _context()
    assert fingerprint(_context()) == fingerprint(first)
    _ = first.config_yaml  # a cached property read: the object's state grows, its inputs do not
    assert fingerprint(first) == fingerprint(_context())
    assert fingerprint(_context(replicas=2)) != fingerprint(first)
    assert fingerprint(_context(runtime={"contextLength": 8192})) != fingerprint(first)
    assert fingerprint(dataclasses.replace(first, default_image="img:2")) != fingerprint(first)


def _built(case: str) -> RenderContext | None:
    """A context for the valid spec `case`, built from scratch as every plan builds one (None: it
    does not fit on the test bed's nodes)."""
    try:
        return _context_of(SLMDeploymentSpec.model_validate(copy.deepcopy(VALID[case])))
    except PlacementError:
        return None


PLACED = sorted(case for case in VALID if _built(case) is not None)


@pytest.mark.parametrize("case", PLACED)
def test_every_valid_spec_has_one_fingerprint_however_often_its_context_is_built(case: str) -> None:
    """The memo hits only if a context built anew digests the same, whichever of its parts share
    one object (the placement's variant is one of the spec's; a copy of each field is not)."""
    built = [ctx for ctx in (_built(case) for _ in range(3)) if ctx is not None]
    unshared = [
        dataclasses.replace(ctx, spec=copy.deepcopy(ctx.spec), placement=copy.deepcopy(ctx.placement))
        for ctx in built
    ]
    assert len({fingerprint(ctx) for ctx in built + unshared}) == 1


def test_packed_objects_come_back_equal_and_equal_objects_pack_equal() -> None:
    objs = render_all(_context())
    assert unpack(pack(objs)) == objs
    reordered = [dict(reversed(list(o.items()))) for o in objs]
    assert pack(reordered) == pack(objs)
    assert len(pack(objs)) * 3 < len(json.dumps(objs))  # compressed, not only compact


def test_apply_waves_put_the_deployment_after_what_its_pods_need_and_the_hpa_last() -> None:
    fresh = _plan(_body(cpu_scaled()), Observed(nodes=bed_nodes()))
    steps = list(fresh.apply)
    for _ in range(SHUFFLES):
        random.shuffle(steps)
        waves = apply_waves(steps)
        kinds = [[s.obj["kind"] for s in wave] for wave in waves]
        assert kinds[1:] == [["Deployment"], ["HorizontalPodAutoscaler"]]
        assert set(kinds[0]) == {
            "ServiceAccount",
            "ConfigMap",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
        }
        assert [
            s
            for wave in waves
            for s in wave
            if s.obj["kind"] not in {"Deployment", "HorizontalPodAutoscaler"}
        ] == [
            s for s in steps if s.obj["kind"] not in {"Deployment", "HorizontalPodAutoscaler"}
        ]  # within a wave, the order given


def test_apply_waves_of_nothing_is_no_wave() -> None:
    assert apply_waves([]) == []
