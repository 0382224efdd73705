"""The operator's autoscaler and the replicas hand-over, below the cluster.

`decide` (pure) table by table; the hand-over (which partial Deployment the reconcile applies under
the second field manager, and that it runs before the apply that leaves `spec.replicas` out); the
loop's tick against a fake API (one writer: it corrects a foreign count, writes status before
scaling to zero, stays quiet when steady); the API rules that keep one writer per Deployment.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
from op_support import bed_nodes
from test_op_reconcile import FakeCluster, _body

from slm_operator.api import SLMDeploymentSpec
from slm_operator.api.spec import AutoscalingSpec, duration_seconds
from slm_operator.autoscale.decide import (
    NO_DEMAND,
    SCALED_DOWN,
    SCALED_TO_ZERO,
    SCALED_UP,
    STEADY,
    WOKEN,
    Demand,
    decide,
)
from slm_operator.autoscale.demand import demand_url, parse_demand
from slm_operator.autoscale.handover import KEPT_ANNOTATION, keep_replicas, replicas_hand_overs
from slm_operator.autoscale.loop import Autoscaler, status_patch
from slm_operator.metrics import Metrics
from slm_operator.reconcile.plan import Observed, key_of, observed_form, plan
from slm_operator.reconcile.reconciler import execute
from slm_operator.reconcile.status import SCALED_TO_ZERO_ON_IDLE, deployment_conditions, reconciled_status

Obj = dict[str, Any]
MODEL = {
    "name": "m",
    "parameters": 0.5,
    "variants": [{"format": "gguf", "quantization": "Q4_K_M", "uri": "https://x/m.gguf"}],
}


def scaling(**kw: Any) -> AutoscalingSpec:
    base: dict[str, Any] = {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2}
    return AutoscalingSpec.model_validate({**base, **kw})


def idle(seconds: float = 0.0) -> Demand:
    return Demand(in_flight=0, held=0, idle_seconds=seconds)


# --- decide ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_flight", "current", "desired", "reason"),
    [
        (0, 1, 1, STEADY),
        (2, 1, 1, STEADY),
        (3, 1, 2, SCALED_UP),
        (9, 1, 5, SCALED_UP),  # capped at maxReplicas
        (100, 5, 5, STEADY),
        (4, 2, 2, STEADY),
    ],
)
def test_in_flight_over_target_gives_the_pods(
    in_flight: int, current: int, desired: int, reason: str
) -> None:
    d = decide(scaling(), current, Demand(in_flight, 0, 0.0), (), now=100.0)
    assert (d.desired, d.reason) == (desired, reason)


def test_scale_down_waits_for_the_stabilization_window() -> None:
    spec = scaling(scaleDownStabilizationSeconds=60)
    busy = decide(spec, 1, Demand(8, 0, 0.0), (), now=0.0)
    assert busy.desired == 4
    quiet = decide(spec, 4, idle(), busy.history, now=30.0)
    assert (quiet.desired, quiet.reason) == (4, STEADY)  # 4 was recommended 30s ago
    later = decide(spec, 4, idle(), quiet.history, now=61.0)
    assert (later.desired, later.reason) == (1, SCALED_DOWN)


def test_scale_up_is_immediate_whatever_the_history() -> None:
    spec = scaling(scaleDownStabilizationSeconds=300)
    history = ((0.0, 1), (10.0, 1))
    assert decide(spec, 1, Demand(10, 0, 0.0), history, now=20.0).desired == 5


def test_no_demand_keeps_the_count_within_bounds() -> None:
    spec = scaling(minReplicas=2, maxReplicas=3)
    assert decide(spec, 2, None, (), now=0.0).reason == NO_DEMAND
    assert decide(spec, 2, None, (), now=0.0).desired == 2
    assert decide(spec, 7, None, (), now=0.0).desired == 3  # kubectl scale 7: back within bounds
    assert decide(spec, 0, None, (), now=0.0).desired == 2


def test_no_demand_never_scales_to_zero() -> None:
    spec = scaling(minReplicas=0, scaleToZeroAfter="1m")
    assert decide(spec, 1, None, (), now=1e6).desired == 1


def test_scale_to_zero_after_the_idle_period_only() -> None:
    spec = scaling(minReplicas=0, scaleToZeroAfter="10m")
    assert decide(spec, 1, idle(599), (), now=0.0).desired == 1
    zero = decide(spec, 1, idle(600), (), now=0.0)
    assert (zero.desired, zero.reason) == (0, SCALED_TO_ZERO)
    assert "600s" in zero.message
    assert decide(spec, 0, idle(10), (), now=0.0).desired == 0  # at zero, no requests: stays


def test_a_held_request_wakes_a_model_at_zero_at_once() -> None:
    spec = scaling(minReplicas=0, scaleToZeroAfter="10m", scaleDownStabilizationSeconds=300)
    woken = decide(spec, 0, Demand(in_flight=1, held=1, idle_seconds=0), (), now=0.0)
    assert (woken.desired, woken.reason) == (1, WOKEN)
    assert "1 request(s) held" in woken.message


def test_min_replicas_above_zero_is_a_floor() -> None:
    spec = scaling(minReplicas=3)
    assert decide(spec, 3, idle(1e6), (), now=0.0).desired == 3


def test_durations() -> None:
    assert [duration_seconds(v) for v in ("90s", "10m", "2h")] == [90, 600, 7200]
    assert scaling(minReplicas=0, scaleToZeroAfter="90s").scale_to_zero_seconds == 90


# --- the API keeps one writer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({"targetCPUUtilizationPercentage": 50, "targetInFlightRequests": 2}, "not both"),
        (
            {"minReplicas": 0, "targetCPUUtilizationPercentage": 50, "targetInFlightRequests": None},
            "minReplicas 0",
        ),
        ({"scaleToZeroAfter": "10 minutes"}, "scaleToZeroAfter"),
    ],
)
def test_the_api_refuses_two_writers_and_bad_durations(autoscaling: Obj, message: str) -> None:
    body: Obj = {"enabled": True, "maxReplicas": 3, "targetInFlightRequests": 2, **autoscaling}
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        AutoscalingSpec.model_validate(body)


def test_in_flight_scaling_renders_no_hpa_and_no_replicas() -> None:
    from slm_operator.placement import place
    from slm_operator.render import RenderContext, render_all

    spec = SLMDeploymentSpec.model_validate(
        {"model": MODEL, "autoscaling": {"enabled": True, "maxReplicas": 3, "targetInFlightRequests": 2}}
    )
    ctx = RenderContext(name="m", namespace="ns", spec=spec, placement=place(spec, bed_nodes(), []))
    objs = render_all(ctx)
    assert "HorizontalPodAutoscaler" not in {o["kind"] for o in objs}
    deployment = next(o for o in objs if o["kind"] == "Deployment")
    assert "replicas" not in deployment["spec"]


# --- the hand-over --------------------------------------------------------------------------------


def _spec(autoscaling: Obj | None = None, replicas: int = 3, image: str = "img:1") -> Obj:
    spec: Obj = {"model": MODEL, "replicas": replicas, "image": image}
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return spec


class HandOverCluster(FakeCluster):
    """FakeCluster that records the order of hand-overs and applies, and keeps replicas like SSA:
    a field survives an apply that leaves it out only while another manager holds it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, Obj]] = []
        self.held_by_handover: int | None = None
        self.remembered: dict[Any, Obj] = {}

    def observed(self) -> Observed:
        """Children as the operator remembers them (`AppliedCache`: the applied form)."""
        return Observed(**{**super().observed().__dict__, "children": dict(self.remembered)})

    def hand_over(self, obj: Obj) -> bool:
        self.calls.append(("hand_over", copy.deepcopy(obj)))
        self.held_by_handover = obj["spec"]["replicas"]
        return True

    def apply(self, obj: Obj) -> Obj:
        self.calls.append(("apply", copy.deepcopy(obj)))
        self.remembered[key_of(obj)] = observed_form(obj)
        if (
            obj["kind"] == "Deployment"
            and "replicas" not in obj["spec"]
            and self.held_by_handover is not None
        ):
            obj = {**obj, "spec": {**obj["spec"], "replicas": self.held_by_handover}}
        return super().apply(obj)


def _run(cluster: HandOverCluster, spec: Obj) -> None:
    from slm_operator.reconcile.reconciler import reconcile

    body = _body(spec=spec)
    cluster.owner = body
    reconcile(body, cluster, cluster.observed(), timestamp="2026-12-01T00:00:00Z")


def test_switching_autoscaling_on_hands_the_live_count_over_before_the_apply() -> None:
    cluster = HandOverCluster()
    _run(cluster, _spec())
    dep = next(o for o in cluster.objects.values() if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3
    cluster.calls.clear()

    # autoscaling on alone changes nothing else of the Deployment, so nothing is applied (and
    # nothing dropped) yet; the hand-over comes with the first apply that leaves replicas out
    _run(cluster, _spec({"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2}))
    assert not [c for c, o in cluster.calls if o["kind"] == "Deployment"]
    _run(
        cluster,
        _spec(
            {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2}, image="img:2"
        ),
    )
    kinds = [(c, o["kind"]) for c, o in cluster.calls]
    assert kinds.index(("hand_over", "Deployment")) < kinds.index(("apply", "Deployment"))
    handed = next(o for c, o in cluster.calls if c == "hand_over")
    assert handed == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo", "namespace": "ns"},
        "spec": {"replicas": 3},
    }
    applied = next(o for c, o in cluster.calls if c == "apply" and o["kind"] == "Deployment")
    assert "replicas" not in applied["spec"]
    dep = next(o for o in cluster.objects.values() if o["kind"] == "Deployment")
    assert dep["spec"]["replicas"] == 3

    cluster.calls.clear()
    _run(
        cluster,
        _spec(
            {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2}, image="img:3"
        ),
    )
    assert [o["kind"] for c, o in cluster.calls if c == "apply"].count("Deployment") == 1
    assert not [c for c, _ in cluster.calls if c == "hand_over"]  # once only: the operator let go


def test_no_hand_over_for_a_new_deployment_or_without_autoscaling() -> None:
    cluster = HandOverCluster()
    _run(cluster, _spec({"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2}))
    _run(cluster, _spec(replicas=2))
    assert not [c for c, _ in cluster.calls if c == "hand_over"]


def test_hand_overs_are_pure_and_use_the_live_count() -> None:
    autoscaled = _body(
        spec=_spec({"enabled": True, "maxReplicas": 5, "targetCPUUtilizationPercentage": 50}, image="img:2")
    )
    fixed = _body(spec=_spec())
    cluster = FakeCluster()
    first = plan(fixed, cluster.observed(), image="img", timestamp="t")
    execute(first, cluster)
    live = next(o for o in cluster.objects.values() if o["kind"] == "Deployment")
    live["spec"]["replicas"] = 4  # the count moved since (kubectl scale)
    observed = cluster.observed()
    the_plan = plan(autoscaled, observed, image="img", timestamp="t")
    assert [o["spec"] for o in replicas_hand_overs(the_plan, observed.children)] == [{"replicas": 4}]
    # the operator's remembered form has no replicas once it applied without them
    children = {k: observed_form(o) for k, o in observed.children.items()}
    for key, form in children.items():
        if key[1] == "Deployment":
            form["spec"].pop("replicas", None)
    assert replicas_hand_overs(the_plan, children) == []
    assert replicas_hand_overs(the_plan, {}) == []
    assert (
        replicas_hand_overs(plan(autoscaled, Observed(nodes=observed.nodes), image="i", timestamp="t"), {})
        == []
    )


# --- status ---------------------------------------------------------------------------------------


def _deployment(replicas: int) -> Obj:
    return {
        "metadata": {"generation": 2},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": 2, "replicas": replicas},
    }


def test_a_model_at_zero_on_idle_stays_ready() -> None:
    conds, desired, _ = deployment_conditions(_deployment(0), 1, idle=True)
    ready = next(c for c in conds if c["type"] == "Ready")
    assert (desired, ready["status"], ready["reason"]) == (0, "True", SCALED_TO_ZERO_ON_IDLE)
    progressing = next(c for c in conds if c["type"] == "Progressing")
    assert progressing["status"] == "False"
    conds, _, _ = deployment_conditions(_deployment(0), 1)  # replicas: 0 by hand: not serving
    assert next(c for c in conds if c["type"] == "Ready")["status"] == "False"


def test_reconciled_status_reads_idle_from_the_autoscaler_status() -> None:
    from slm_operator.placement import place

    spec = SLMDeploymentSpec.model_validate({"model": MODEL})
    old = {"autoscaling": {"desiredReplicas": 0, "currentReplicas": 1, "reason": SCALED_TO_ZERO}}
    status = reconciled_status(
        name="m",
        namespace="ns",
        generation=1,
        port=8080,
        placement=place(spec, bed_nodes(), []),
        deployment=_deployment(0),
        old=old,
        timestamp="t",
    )
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", SCALED_TO_ZERO_ON_IDLE)


# --- demand ---------------------------------------------------------------------------------------


def test_demand_url_and_document() -> None:
    assert demand_url("http://gw.slm-system.svc:8080/v1") == "http://gw.slm-system.svc:8080/demand"
    assert demand_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/demand"
    parsed = parse_demand(
        {
            "deployments": {
                "ns/a": {"model": "a", "inFlight": 3, "held": 1, "idleSeconds": 0},
                "ns/b": {"inFlight": "x", "idleSeconds": 1},
                "ns/c": "nonsense",
            }
        }
    )
    assert parsed == {"ns/a": Demand(3, 1, 0.0)}
    assert parse_demand([]) == {} and parse_demand({"deployments": 3}) == {}


# --- the loop -------------------------------------------------------------------------------------


class Caches:
    def __init__(self, owners: list[Obj], deployments: dict[tuple[str, str], Obj]) -> None:
        self._owners, self.deployments, self.is_active = owners, deployments, True
        self.writes: list[Obj] = []

    def active(self) -> bool:
        return self.is_active

    def owners(self) -> list[Obj]:
        return self._owners

    def deployment(self, namespace: str, name: str) -> Obj | None:
        return self.deployments.get((namespace, name))

    def written(self, patched: Obj) -> None:
        self.writes.append(patched)

    def scaled(self, namespace: str, name: str, replicas: int) -> None:
        self.writes.append({"scaled": replicas})


class ScaleApi:
    def __init__(self, caches: Caches) -> None:
        self.caches = caches
        self.calls: list[tuple[str, Any]] = []

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        self.calls.append(("scale", replicas))
        self.caches.deployments[(namespace, name)]["spec"]["replicas"] = replicas

    def patch_status(self, namespace: str, name: str, status: Obj) -> Obj | None:
        self.calls.append(("status", status))
        owner = self.caches.owners()[0]
        owner.setdefault("status", {}).update(copy.deepcopy(status))
        return owner

    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None:
        self.calls.append(("event", reason))


def _loop(
    autoscaling: Obj, replicas: int, demand: dict[str, Demand] | None
) -> tuple[Autoscaler, Caches, ScaleApi]:
    owner = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
        "spec": {
            "model": MODEL,
            "autoscaling": {"enabled": True, "maxReplicas": 4, "targetInFlightRequests": 2, **autoscaling},
        },
        "status": {},
    }
    caches = Caches([owner], {("ns", "m"): {"spec": {"replicas": replicas}}})
    api = ScaleApi(caches)
    clock = iter(float(i) for i in range(1000))
    return Autoscaler(caches, api, lambda: demand, metrics=Metrics(), clock=lambda: next(clock)), caches, api


def test_tick_corrects_a_foreign_count_as_the_one_writer() -> None:
    scaler, caches, api = _loop({"scaleDownStabilizationSeconds": 0}, 4, {"ns/m": idle(5)})
    [(_, decision)] = scaler.tick()
    assert (decision.current, decision.desired, decision.reason) == (4, 1, SCALED_DOWN)
    assert [c for c, _ in api.calls] == ["status", "scale", "event"]
    assert caches.owners()[0]["status"]["autoscaling"]["desiredReplicas"] == 1
    api.calls.clear()
    scaler.tick()
    assert [c for c, _ in api.calls] == ["status"]  # the reason changed to Steady, no write
    api.calls.clear()
    scaler.tick()
    assert api.calls == []  # steady: no API call at all


def test_tick_parses_a_spec_once_per_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    scaler, caches, _ = _loop({"scaleDownStabilizationSeconds": 0}, 1, {"ns/m": idle(5)})
    owner = caches.owners()[0]
    owner["metadata"]["generation"] = 1
    parsed: list[object] = []
    original = SLMDeploymentSpec.model_validate

    def counting(value: Any, *args: Any, **kwargs: Any) -> SLMDeploymentSpec:
        parsed.append(value)
        return original(value, *args, **kwargs)

    monkeypatch.setattr(SLMDeploymentSpec, "model_validate", counting)
    assert len(scaler.tick()) == 1 and len(scaler.tick()) == 1
    assert len(parsed) == 1  # the second tick used the parsed spec of generation 1
    (kept,) = [scaling for _, scaling in scaler._scaling.values()]
    assert isinstance(kept, AutoscalingSpec)  # only the autoscaling part is held, not the spec
    # a new generation is parsed again: autoscaling switched off, the owner is no longer scaled
    owner["spec"] = {"model": MODEL}
    owner["metadata"]["generation"] = 2
    assert scaler.tick() == [] and len(parsed) == 2
    caches._owners.clear()
    scaler.tick()
    assert scaler._scaling == {}  # a deleted owner's parsed spec is forgotten


def test_tick_writes_status_before_scaling_to_zero_and_wakes_on_a_held_request() -> None:
    scaler, caches, api = _loop({"minReplicas": 0, "scaleToZeroAfter": "60s"}, 1, {"ns/m": idle(61)})
    scaler.tick()
    assert [c for c, _ in api.calls] == ["status", "scale", "event"]
    assert api.calls[0][1]["autoscaling"]["desiredReplicas"] == 0
    assert ("event", SCALED_TO_ZERO) in api.calls
    assert caches.deployments[("ns", "m")]["spec"]["replicas"] == 0
    api.calls.clear()
    scaler.demand = lambda: {"ns/m": Demand(1, 1, 0.0)}
    scaler.tick()
    assert ("scale", 1) in api.calls and ("event", WOKEN) in api.calls


def test_tick_leaves_hpa_and_fixed_deployments_alone_and_standbys_do_nothing() -> None:
    scaler, caches, api = _loop({}, 4, {"ns/m": idle(5)})
    caches.owners()[0]["spec"]["autoscaling"] = {
        "enabled": True,
        "maxReplicas": 4,
        "targetCPUUtilizationPercentage": 50,
    }
    assert scaler.tick() == [] and api.calls == []
    caches.owners()[0]["spec"].pop("autoscaling")
    assert scaler.tick() == [] and api.calls == []
    scaler2, caches2, api2 = _loop({}, 4, {"ns/m": idle(5)})
    caches2.is_active = False
    assert scaler2.tick() == [] and api2.calls == []


def test_status_patch_only_when_the_decision_changes() -> None:
    d = decide(scaling(), 1, Demand(3, 0, 0.0), (), now=0.0)
    patch = status_patch(d, {}, "2026-12-01T00:00:00Z")
    assert patch is not None and patch["autoscaling"]["lastScaleTime"] == "2026-12-01T00:00:00Z"
    assert status_patch(d, patch, "later") is None


def test_metrics_record_scale_decisions() -> None:
    metrics = Metrics()
    d = decide(scaling(), 1, Demand(3, 0, 0.0), (), now=0.0)
    metrics.record_scale(("ns", "m"), d)
    assert metrics.registry.get_sample_value("slm_operator_scale_decisions_total", {"reason": SCALED_UP}) == 1
    assert (
        metrics.registry.get_sample_value(
            "slm_operator_autoscaler_desired_replicas", {"namespace": "ns", "name": "m"}
        )
        == 2
    )


# --- switching autoscaling off keeps the count until spec.replicas says otherwise -----------------


def _stored_deployment(cluster: FakeCluster) -> Obj:
    return next(o for o in cluster.objects.values() if o["kind"] == "Deployment")


def test_switching_autoscaling_off_keeps_the_live_count_until_spec_replicas_changes() -> None:
    cluster = HandOverCluster()
    scaled = {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetInFlightRequests": 2}
    _run(cluster, _spec(scaled, replicas=3))
    assert "replicas" not in _stored_deployment(cluster)["spec"]
    _stored_deployment(cluster)["spec"]["replicas"] = 4  # what the autoscaler left

    _run(cluster, _spec({"enabled": False}, replicas=3))
    dep = _stored_deployment(cluster)
    assert dep["spec"]["replicas"] == 4
    assert dep["metadata"]["annotations"][KEPT_ANNOTATION] == "4/3"
    _run(cluster, _spec({"enabled": False}, replicas=3, image="img:2"))  # any other change: still 4
    assert _stored_deployment(cluster)["spec"]["replicas"] == 4

    _run(cluster, _spec({"enabled": False}, replicas=2, image="img:2"))  # spec.replicas says otherwise
    dep = _stored_deployment(cluster)
    assert dep["spec"]["replicas"] == 2
    assert KEPT_ANNOTATION not in (dep["metadata"].get("annotations") or {})


def test_keep_replicas_is_pure_and_leaves_plain_deployments_alone() -> None:
    rendered = [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 3}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "d"}, "spec": {}},
    ]
    key = ("apps/v1", "Deployment", "ns", "d")
    live = {"spec": {"replicas": 5}}
    assert keep_replicas(rendered, "ns", {}, live) == rendered  # new Deployment: spec.replicas
    assert (
        keep_replicas(rendered, "ns", {key: {"spec": {"replicas": 3}}}, live) == rendered
    )  # never autoscaled
    kept = keep_replicas(rendered, "ns", {key: {"spec": {}}}, live)
    assert kept[0]["spec"]["replicas"] == 5 and rendered[0]["spec"]["replicas"] == 3
    assert keep_replicas(rendered, "ns", {key: {"spec": {}}}, {"spec": {"replicas": 3}}) == rendered


def test_context_sources_write_a_scale_through_into_the_deployment_cache() -> None:
    """A reconcile right after a scale (autoscaling switched off) must see the new count."""
    from slm_operator.autoscale.loop import ContextSources
    from slm_operator.reconcile.context import OperatorContext
    from slm_operator.settings import Settings

    ctx = OperatorContext(settings=Settings(), cluster=FakeCluster())  # type: ignore[arg-type]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "labels": {"slm.dev/deployment": "m"},
            "resourceVersion": "7",
        },
        "spec": {"replicas": 3, "template": {"spec": {"containers": []}}},
        "status": {"readyReplicas": 3},
    }
    ctx.applied.observe_deployment(deployment)
    ContextSources(ctx).scaled("ns", "m", 4)
    cached = ctx.applied.deployment("ns", "m")
    assert cached is not None and cached["spec"]["replicas"] == 4
    assert cached["status"] == {"readyReplicas": 3}
    ContextSources(ctx).scaled("ns", "unknown", 2)  # never seen: nothing to write through
    assert ctx.applied.deployment("ns", "unknown") is None
