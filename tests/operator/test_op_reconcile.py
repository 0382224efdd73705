"""The reconciler without a cluster: the pure plan, status computation, and one reconcile against a
fake API (the same protocol `slm_operator.kube.Kube` implements)."""

from __future__ import annotations

import copy
import threading
import time
from itertools import accumulate
from typing import Any

import kopf
import pytest
from op_support import bed_nodes, cpu_scaled, gguf, pod_on

from slm_operator.errors import KubeError, PlacementError, SecretNotFoundError, SpecError
from slm_operator.metrics import Metrics
from slm_operator.reconcile.children import child_event
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.handlers import build_registry, kopf_error, plain, run_reconcile
from slm_operator.reconcile.plan import (
    Observed,
    Owner,
    apply_waves,
    comparable,
    drifted,
    foreign_pods,
    key_of,
    observed_form,
    owned,
    prune_plan,
)
from slm_operator.reconcile.reconciler import Outcome, reconcile, report_failure
from slm_operator.reconcile.status import deployment_conditions, merge_conditions, observed_status
from slm_operator.settings import Settings

Obj = dict[str, Any]
UID = "0000-1111"


def _body(
    spec: Obj | None = None, *, name: str = "demo", generation: int = 1, status: Obj | None = None
) -> Obj:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": generation},
        "spec": spec or {"model": {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}},
        **({"status": status} if status is not None else {}),
    }


class FakeCluster:
    """In-memory API: apply stores objects (the Deployment gets a status), delete removes them."""

    def __init__(self, nodes: list[Obj] | None = None, pods: list[Obj] | None = None) -> None:
        self.nodes = bed_nodes() if nodes is None else nodes
        self.pods = pods or []
        self.objects: dict[tuple[str, str, str, str], Obj] = {}
        self.secrets: dict[tuple[str, str], Obj] = {}
        self.status_patches: list[Obj] = []
        self.applies: list[Obj] = []
        self.deletes: list[Obj] = []
        self.hand_overs: list[Obj] = []
        self.owner: Obj | None = None
        self.version = 100
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()  # execute applies a wave's objects from several threads

    def list_nodes(self) -> list[Obj]:
        return copy.deepcopy(self.nodes)

    def list_pods(self) -> list[Obj]:
        return copy.deepcopy(self.pods)

    def read_secret(self, namespace: str, name: str) -> Obj | None:
        return self.secrets.get((namespace, name))

    def apply(self, obj: Obj) -> Obj:
        """Like server-side apply: a no-op apply keeps the resourceVersion, a change bumps it."""
        with self._lock:
            return self._apply(obj)

    def _apply(self, obj: Obj) -> Obj:
        self.applies.append(obj)
        previous = self.objects.get(key_of(obj))
        stored = copy.deepcopy(obj)
        stored["metadata"]["generation"] = 1
        if obj["kind"] == "Deployment":
            stored["status"] = {"observedGeneration": 1, "replicas": 0}
        if previous is not None and drifted(comparable(stored), comparable(previous)) is False:
            return copy.deepcopy(previous)
        self.version += 1
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[key_of(obj)] = stored
        return copy.deepcopy(stored)

    def list_labelled(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[Obj]:
        key, _, value = selector.partition("=")
        return [
            copy.deepcopy(o)
            for (av, k, ns, _n), o in self.objects.items()
            if (av, k) == (api_version, kind)
            and namespace in (None, ns)
            and o["metadata"]["labels"].get(key) == value
        ]

    def delete(self, obj: Obj) -> None:
        self.deletes.append(obj)
        self.objects.pop(key_of(obj), None)

    def hand_over(self, obj: Obj) -> bool:
        """The replicas hand-over (autoscaling switched on); the stored object keeps its count."""
        self.hand_overs.append(obj)
        return True

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        self.status_patches.append(status)
        if self.owner is not None:
            self.owner.setdefault("status", {}).update(copy.deepcopy(status))

    def get_slmdeployment(self, namespace: str, name: str) -> Obj | None:
        return copy.deepcopy(self.owner)

    def list_slmdeployments(self, namespace: str | None = None) -> list[Obj]:
        return [copy.deepcopy(self.owner)] if self.owner else []

    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None:
        assert involved["metadata"]["uid"] == UID and timestamp
        self.events.append((type, reason, message))

    def read(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = False
    ) -> Obj | None:
        found = self.objects.get((api_version, kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def kinds(self) -> list[str]:
        return sorted(k for _, k, _, _ in self.objects)

    def observed(self) -> Observed:
        """What the operator's caches would hold: these nodes and pods, the stored children."""
        deployment = next((o for o in self.objects.values() if o["kind"] == "Deployment"), None)
        return Observed(
            nodes=self.list_nodes(),
            pods=self.list_pods(),
            children={k: observed_form(o) for k, o in self.objects.items()},
            deployment=copy.deepcopy(deployment),
        )


def _reconcile(body: Obj, cluster: FakeCluster, **kwargs: Any) -> Outcome:
    return reconcile(body, cluster, cluster.observed(), **kwargs)


# --- plan ---------------------------------------------------------------------------------------


def test_owned_children_carry_a_controller_reference() -> None:
    owner = Owner.from_body(_body())
    children = owned([{"kind": "Service", "apiVersion": "v1", "metadata": {"name": "demo"}}], owner)
    assert children[0]["metadata"]["namespace"] == "ns"
    assert children[0]["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "SLMDeployment",
            "name": "demo",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _child(kind: str, name: str = "demo", *, uid: str = UID, label: str = "demo") -> Obj:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {"slm.dev/deployment": label},
            "ownerReferences": [{"uid": uid, "controller": True}],
        },
    }


def test_prune_plan_only_removes_unwanted_owned_children() -> None:
    owner = Owner.from_body(_body())
    desired = [_child("Service"), _child("ConfigMap", "demo-runtime")]
    existing = [
        *desired,
        _child("PodDisruptionBudget"),
        _child("HorizontalPodAutoscaler"),
        _child("ConfigMap", "other", uid="someone-else"),
        _child("Secret", "x", label="another"),
    ]
    stale = prune_plan(desired, existing, owner)
    assert [o["kind"] for o in stale] == ["HorizontalPodAutoscaler", "PodDisruptionBudget"]


def test_foreign_pods_leave_out_the_owners_pods() -> None:
    owner = Owner.from_body(_body())
    mine = pod_on("gpu-node-1", {"nvidia.com/gpu": "1"}, labels={"slm.dev/deployment": "demo"})
    mine["metadata"]["namespace"] = "ns"
    theirs = pod_on("gpu-node-2", {"nvidia.com/gpu": "1"}, labels={"slm.dev/deployment": "demo"})
    assert foreign_pods([mine, theirs], owner) == [theirs]


def test_drift_detection() -> None:
    desired = {"spec": {"ports": [{"port": 8080, "name": "http"}], "selector": {"a": "b"}}}
    live = {
        "spec": {"ports": [{"port": 8080, "name": "http", "protocol": "TCP"}], "selector": {"a": "b"}, "x": 1}
    }
    assert not drifted(desired, live)
    assert drifted(desired, {"spec": {"ports": [{"port": 9090, "name": "http"}], "selector": {"a": "b"}}})
    assert drifted(desired, {"spec": {"ports": [], "selector": {"a": "b"}}})
    assert drifted(desired, {"spec": {"ports": [{"port": 8080, "name": "http"}]}})
    assert not drifted({"cpu": "2"}, {"cpu": 2})


# --- status -------------------------------------------------------------------------------------


def _deployment(wanted: int = 2, *, generation: int = 3, **status: int) -> Obj:
    return {
        "metadata": {"generation": generation},
        "spec": {"replicas": wanted},
        "status": {"observedGeneration": status.pop("observed", generation), **status},
    }


@pytest.mark.parametrize(
    ("deployment", "ready", "progressing"),
    [
        (
            _deployment(2, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2),
            "True",
            "False",
        ),
        (
            _deployment(2, replicas=3, updatedReplicas=1, readyReplicas=2, availableReplicas=2),
            "False",
            "True",
        ),
        (
            _deployment(2, replicas=2, updatedReplicas=2, readyReplicas=1, availableReplicas=1),
            "False",
            "True",
        ),
        (
            _deployment(2, observed=2, replicas=2, updatedReplicas=2, readyReplicas=2, availableReplicas=2),
            "False",
            "True",
        ),
        (_deployment(0), "False", "False"),
        (None, "False", "True"),
    ],
)
def test_deployment_conditions(deployment: Obj | None, ready: str, progressing: str) -> None:
    conds, _, _ = deployment_conditions(deployment, 5)
    by_type = {c["type"]: c for c in conds}
    assert by_type["Ready"]["status"] == ready
    assert by_type["Progressing"]["status"] == progressing
    assert all(c["observedGeneration"] == 5 for c in conds)


def test_progress_deadline_is_degraded() -> None:
    deployment = _deployment(1, replicas=1, updatedReplicas=1, availableReplicas=0)
    deployment["status"]["conditions"] = [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
    ]
    conds, _, _ = deployment_conditions(deployment, 1)
    assert {c["type"]: c["status"] for c in conds} == {
        "Ready": "False",
        "Progressing": "False",
        "Degraded": "True",
    }


def test_transition_time_kept_while_status_unchanged() -> None:
    first = merge_conditions([], [{"type": "Ready", "status": "False", "reason": "A"}], "t1")
    second = merge_conditions(first, [{"type": "Ready", "status": "False", "reason": "B"}], "t2")
    third = merge_conditions(second, [{"type": "Ready", "status": "True", "reason": "C"}], "t3")
    assert [c["lastTransitionTime"] for c in (first[0], second[0], third[0])] == ["t1", "t1", "t3"]


def test_observed_status_is_quiet_when_nothing_changes() -> None:
    deployment = _deployment(1, replicas=1, updatedReplicas=1, readyReplicas=1, availableReplicas=1)
    update = observed_status(deployment, {"observedGeneration": 4}, "t1")
    assert update is not None and update["readyReplicas"] == 1
    assert {c["type"]: c["observedGeneration"] for c in update["conditions"]} == {
        "Ready": 4,
        "Progressing": 4,
    }
    assert observed_status(deployment, {"observedGeneration": 4, **update}, "t2") is None


# --- reconcile ----------------------------------------------------------------------------------


def test_reconcile_applies_children_and_reports_status() -> None:
    cluster = FakeCluster()
    outcome = _reconcile(_body(), cluster, image="img:1", timestamp="t0")
    assert cluster.kinds() == ["ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    for obj in cluster.applies:
        assert obj["metadata"]["ownerReferences"][0]["uid"] == UID
        assert obj["metadata"]["namespace"] == "ns"
    status = cluster.status_patches[-1]
    assert status["observedGeneration"] == 1
    assert status["hardware"] == "gpu" and status["variant"]["quantization"] == "Q4_K_M"
    assert status["endpoints"] == {
        "openai": "http://demo.ns.svc.cluster.local:8080/v1",
        "ollama": "http://demo.ns.svc.cluster.local:8080",
    }
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "False" and conditions["Progressing"]["status"] == "True"
    assert conditions["Degraded"]["status"] == "False" and conditions["Degraded"]["reason"] == "Reconciled"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert [e[1] for e in outcome.events] == ["Placed"]


def test_fallback_is_reported_in_condition_and_event() -> None:
    busy = [pod_on(f"gpu-node-{i}", {"nvidia.com/gpu": "1"}) for i in (1, 2)]
    cluster = FakeCluster(pods=busy)
    outcome = _reconcile(_body(), cluster)
    assert outcome.status["hardware"] == "cpu"
    degraded = next(c for c in outcome.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False" and degraded["reason"] == "FallbackPlacement"
    assert "gpu: nodes that fit the model have no free" in degraded["message"]
    assert [e[1] for e in outcome.events] == ["Placed", "FallbackPlacement"]


def test_reconcile_is_idempotent_and_quiet() -> None:
    cluster = FakeCluster()
    first = _reconcile(_body(), cluster, timestamp="t0")
    again = _reconcile(_body(status=first.status), cluster, timestamp="t1")
    assert again.desired == first.desired and again.pruned == [] and again.events == []
    assert cluster.status_patches[-1]["conditions"] == first.status["conditions"]


def test_reconcile_prunes_hpa_and_pdb_when_no_longer_wanted() -> None:
    cluster = FakeCluster()
    model = {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}
    _reconcile(_body(cpu_scaled(model)), cluster)
    assert {"HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(cluster.kinds())
    outcome = _reconcile(_body({"model": model}, generation=2), cluster)
    assert sorted(o["kind"] for o in outcome.pruned) == ["HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert "HorizontalPodAutoscaler" not in cluster.kinds()


class WaveCluster(FakeCluster):
    """Records which applies overlap: each apply waits (up to 2 s) for the others of its wave."""

    def __init__(self, wave_sizes: list[int]) -> None:
        super().__init__()
        self.barriers = [threading.Barrier(n, timeout=2) for n in wave_sizes]
        self.ends = list(accumulate(wave_sizes))  # applies answered once each wave is done
        self.log: list[tuple[str, str]] = []  # ("start" | "end", kind)
        self.fail_kind: str | None = None

    def apply(self, obj: Obj) -> Obj:
        with self._lock:
            self.log.append(("start", obj["kind"]))
            answered = sum(1 for event, _ in self.log if event == "end")
        wave = next(i for i, end in enumerate(self.ends) if answered < end)
        self.barriers[wave].wait()  # a sequential apply never meets the others: BrokenBarrierError
        if obj["kind"] == self.fail_kind:
            with self._lock:
                self.log.append(("end", obj["kind"]))
            raise KubeError(f"apply {obj['kind']}: boom", 500)
        stored = super().apply(obj)
        with self._lock:
            self.log.append(("end", obj["kind"]))
        return stored


def test_children_are_applied_in_waves_each_wave_at_once() -> None:
    # ServiceAccount, ConfigMap, Service, PDB, NetworkPolicy; then the Deployment; then the HPA
    cluster = WaveCluster([5, 1, 1])
    outcome = _reconcile(_body(cpu_scaled()), cluster)
    kinds = [kind for event, kind in cluster.log if event == "start"]
    assert set(kinds[:5]) == {
        "ServiceAccount",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert kinds[5:] == ["Deployment", "HorizontalPodAutoscaler"]
    started_deployment = cluster.log.index(("start", "Deployment"))
    assert [e for e, _ in cluster.log[:started_deployment]].count("end") == 5  # wave 0 all answered
    assert cluster.log.index(("end", "Deployment")) < cluster.log.index(("start", "HorizontalPodAutoscaler"))
    # the outcome lists the applied objects wave by wave, whatever order the answers came in
    assert outcome.plan is not None
    waves = apply_waves(outcome.plan.apply)
    assert [o["kind"] for o in outcome.applied] == [s.obj["kind"] for wave in waves for s in wave]


def test_a_failed_apply_ends_its_wave_and_applies_nothing_after_it() -> None:
    cluster = WaveCluster([5, 1, 1])
    cluster.fail_kind = "Service"
    with pytest.raises(KubeError, match="apply Service: boom"):
        _reconcile(_body(cpu_scaled()), cluster)
    assert sorted(cluster.kinds()) == ["ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "ServiceAccount"]
    assert ("start", "Deployment") not in cluster.log and cluster.status_patches == []


def test_missing_secret_applies_nothing() -> None:
    cluster = FakeCluster()
    spec = {"model": {"name": "m", "variants": gguf("Q4_K_M")}, "auth": {"apiKeySecretRef": {"name": "keys"}}}
    with pytest.raises(SecretNotFoundError) as caught:
        _reconcile(_body(spec), cluster)
    assert cluster.applies == []
    events = report_failure(_body(spec), caught.value, cluster, timestamp="t")
    degraded = next(c for c in cluster.status_patches[-1]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "SecretNotFound"
    assert events == [("Warning", "SecretNotFound", str(caught.value))]
    # The same failure again: status refreshed, no new Event.
    assert report_failure(_body(spec, status=cluster.status_patches[-1]), caught.value, cluster) == []
    cluster.secrets[("ns", "keys")] = {"data": {"api-key": "c2VjcmV0"}}
    _reconcile(_body(spec), cluster)
    assert "Deployment" in cluster.kinds()


def test_unsatisfiable_spec_applies_nothing() -> None:
    cluster = FakeCluster()
    spec = {"model": {"name": "m", "variants": gguf("Q4_K_M")}, "hardware": {"preference": ["npu"]}}
    with pytest.raises(PlacementError) as caught:
        _reconcile(_body(spec), cluster)
    assert cluster.applies == [] and not caught.value.retryable
    assert isinstance(kopf_error(caught.value), kopf.PermanentError)


def test_invalid_spec_is_permanent() -> None:
    with pytest.raises(SpecError, match="invalid spec"):
        _reconcile(_body({"model": {"name": "m"}}), FakeCluster())
    with pytest.raises(SpecError, match="at most 52"):
        _reconcile(_body(name="x" * 60), FakeCluster())


def test_kopf_error_mapping() -> None:
    assert isinstance(kopf_error(SpecError("x")), kopf.PermanentError)
    busy = kopf_error(PlacementError("x", retryable=True))
    assert isinstance(busy, kopf.TemporaryError) and busy.delay == 60
    assert isinstance(kopf_error(SecretNotFoundError("x")), kopf.TemporaryError)
    assert isinstance(kopf_error(KubeError("x", 500)), kopf.TemporaryError)


# --- handlers -----------------------------------------------------------------------------------


def _ctx(cluster: FakeCluster) -> OperatorContext:
    """A context whose caches hold the fake's nodes and pods, as the informers would."""
    ctx = OperatorContext(settings=Settings(runtime_image="img:2"), cluster=cluster, metrics=Metrics())
    ctx.cache.nodes.replace(cluster.list_nodes())
    ctx.cache.pods.replace(cluster.list_pods())
    return ctx


class _Memo:
    def __init__(self, ctx: OperatorContext) -> None:
        self.ctx = ctx


def test_registry_builds() -> None:
    assert isinstance(build_registry(), kopf.OperatorRegistry)


def test_deleted_child_is_restored() -> None:
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    cluster.owner = _body()
    run_reconcile(ctx, plain(cluster.owner), "change")
    service = next(o for o in cluster.objects.values() if o["kind"] == "Service")
    cluster.delete(service)
    assert "Service" not in cluster.kinds()
    child_event(ctx, "DELETED", service)
    assert "Service" in cluster.kinds()
    assert cluster.applies[-1]["metadata"]["ownerReferences"][0]["uid"] == UID
    assert ctx.applied.is_own_write(next(o for o in cluster.objects.values() if o["kind"] == "Service"))


def test_edited_child_is_reverted_and_unchanged_is_left_alone() -> None:
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    cluster.owner = _body()
    run_reconcile(ctx, plain(cluster.owner), "change")
    applies = len(cluster.applies)
    service = next(o for o in cluster.objects.values() if o["kind"] == "Service")
    child_event(ctx, "MODIFIED", service)
    assert len(cluster.applies) == applies
    edited = copy.deepcopy(service)
    edited["spec"]["ports"][0]["port"] = 9999
    edited["metadata"]["resourceVersion"] = "999"
    cluster.objects[key_of(edited)] = copy.deepcopy(edited)
    child_event(ctx, "MODIFIED", edited)
    assert len(cluster.applies) > applies
    restored = cluster.objects[key_of(edited)]
    assert restored["spec"]["ports"][0]["port"] == 8080 and ctx.applied.is_own_write(restored)


def test_deployment_event_updates_ready() -> None:
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    cluster.owner = _body()
    run_reconcile(ctx, plain(cluster.owner), "change")
    deployment = copy.deepcopy(next(o for o in cluster.objects.values() if o["kind"] == "Deployment"))
    deployment["status"] = {
        "observedGeneration": 1,
        "replicas": 1,
        "updatedReplicas": 1,
        "readyReplicas": 1,
        "availableReplicas": 1,
    }
    child_event(ctx, "MODIFIED", deployment)
    status = cluster.owner["status"]
    assert status["readyReplicas"] == 1
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"


def test_failures_are_counted() -> None:
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    body = _body({"model": {"name": "m", "variants": gguf("Q4_K_M")}, "hardware": {"preference": ["npu"]}})
    with pytest.raises(kopf.PermanentError):
        run_reconcile(ctx, body, "change")
    assert ctx.metrics.errors.labels(reason="PlacementFailed")._value.get() == 1
    assert cluster.applies == []


def test_events_outside_a_kopf_handler_go_through_the_api() -> None:
    """The resync loop is no kopf handler (kopf.event has no posting context there): its Events,
    e.g. a placement change or a Secret deleted later, are posted through the API instead."""
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    cluster.owner = _body()
    run_reconcile(ctx, plain(cluster.owner), "resync")
    assert [(t, r) for t, r, _ in cluster.events] == [("Normal", "Placed")]
    cluster.owner["spec"]["auth"] = {"apiKeySecretRef": {"name": "keys", "key": "api-key"}}
    with pytest.raises(kopf.TemporaryError):
        run_reconcile(ctx, plain(cluster.owner), "resync")
    assert cluster.events[-1][:2] == ("Warning", "SecretNotFound")
    assert "ns/keys" in cluster.events[-1][2]


def test_event_posting_failure_never_fails_a_reconcile() -> None:
    class NoEvents(FakeCluster):
        def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None:
            raise KubeError("post event: 403 Forbidden", status=403)

    cluster = NoEvents()
    cluster.owner = _body()
    run_reconcile(_ctx(cluster), plain(cluster.owner), "resync")
    assert "Deployment" in cluster.kinds()


def _edit_service(cluster: FakeCluster, port: int) -> Obj:
    """A hand edit of the Service, as the API stores it and a watch delivers it."""
    service = copy.deepcopy(next(o for o in cluster.objects.values() if o["kind"] == "Service"))
    service["spec"]["ports"][0]["port"] = port
    cluster.version += 1
    service["metadata"]["resourceVersion"] = str(cluster.version)
    cluster.objects[key_of(service)] = copy.deepcopy(service)
    return service


def _drift_events(cluster: FakeCluster) -> int:
    return sum(1 for _, reason, _ in cluster.events if reason == "DriftCorrected")


def test_every_correction_is_reported_once() -> None:
    """Two edits, two corrections, two Events; the stale event of an edit that is already corrected
    (the live object is fine again) neither re-applies nor reports."""
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    cluster.owner = _body()
    run_reconcile(ctx, plain(cluster.owner), "change")
    first = _edit_service(cluster, 9999)
    child_event(ctx, "MODIFIED", first)
    second = _edit_service(cluster, 7777)
    child_event(ctx, "MODIFIED", second)
    assert _drift_events(cluster) == 2
    applies = len(cluster.applies)
    child_event(ctx, "MODIFIED", first)  # stale: already corrected
    assert len(cluster.applies) == applies
    assert _drift_events(cluster) == 2


def test_own_write_seen_before_it_is_remembered_is_not_drift() -> None:
    """The watch event of an apply arrives (on kopf's worker thread) while that reconcile still
    runs and has not remembered what it applied: the drift check waits for the owner's lock and
    then recognises the operator's own write, with no extra reconcile."""
    cluster = FakeCluster()
    ctx = _ctx(cluster)
    cluster.owner = _body()
    run_reconcile(ctx, plain(cluster.owner), "change")
    cluster.owner["spec"]["runtime"] = {"contextLength": 2048}
    cluster.owner["metadata"]["generation"] = 2
    original = cluster.apply
    workers: list[threading.Thread] = []

    def apply_and_deliver(obj: Obj) -> Obj:
        result = original(obj)
        if obj["kind"] == "ConfigMap":
            event = copy.deepcopy(result)
            worker = threading.Thread(target=child_event, args=(ctx, "MODIFIED", event))
            worker.start()
            workers.append(worker)
            time.sleep(0.1)  # let the event handler get going while this reconcile is in flight
        return result

    cluster.apply = apply_and_deliver  # type: ignore[method-assign]
    run_reconcile(ctx, plain(cluster.owner), "change")
    for worker in workers:
        worker.join(timeout=10)
        assert not worker.is_alive()
    assert ctx.metrics.reconciles.labels(trigger="drift")._value.get() == 0
    assert _drift_events(cluster) == 0


# --- a model that cannot be fetched -------------------------------------------------------------


def _pod_with_fetch(name: str, exit_code: int, message: str, *, last: bool = True) -> Obj:
    terminated = {"exitCode": exit_code, "reason": "Error", "message": message}
    st = {"name": "fetch-model", "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {}}
    if last:
        st["lastState"] = {"terminated": terminated}
    else:
        st["state"] = {"terminated": terminated}
    return {"metadata": {"name": name, "namespace": "ns"}, "status": {"initContainerStatuses": [st]}}


def test_fetch_failure_reports_the_last_log_line_of_the_failed_init_container() -> None:
    from slm_operator.reconcile.status import fetch_failure

    log = "fetch: downloading 12 MB\nerror: sha256 mismatch: expected 0000, got abcd\n"
    message = fetch_failure([_pod_with_fetch("m-1", 3, log)])
    assert (
        message
        == "model fetch failed in pod m-1 (exit code 3): error: sha256 mismatch: expected 0000, got abcd"
    )
    assert fetch_failure([_pod_with_fetch("m-1", 3, log, last=False)]) == message


def test_fetch_failure_ignores_successful_and_other_init_containers() -> None:
    from slm_operator.reconcile.status import fetch_failure

    assert fetch_failure([_pod_with_fetch("m-1", 0, "done")]) is None
    other = _pod_with_fetch("m-1", 1, "boom")
    other["status"]["initContainerStatuses"][0]["name"] = "istio-init"
    assert fetch_failure([other]) is None
    assert fetch_failure([{"metadata": {"name": "pending"}, "status": {}}]) is None


def _pod_with_refused_runtime(name: str, message: str, *, ready: bool = False) -> Obj:
    """A pod whose runtime container keeps exiting 2 (CrashLoopBackOff), as the pod informer sees it."""
    from slm_operator.reconcile.cache import slim_pod

    st = {
        "name": "runtime",
        "ready": ready,
        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": message, "startedAt": "x"}},
    }
    pod = {"metadata": {"name": name, "namespace": "ns"}, "spec": {}, "status": {"containerStatuses": [st]}}
    return slim_pod(pod)


def test_a_runtime_that_refuses_to_start_makes_the_deployment_degraded_with_its_reason() -> None:
    """Issue 13 item 1: a key file with no usable key makes `slm-runtime serve` exit 2 and say so
    in its termination message; the SLMDeployment must say why instead of PodsNotReady forever."""
    from slm_operator.reconcile.status import fetch_failure_events, observed_status, runtime_failure

    why = "error: the API key file /etc/slm/auth/api-key holds no usable key: refusing to serve without auth"
    pod = _pod_with_refused_runtime("m-1", f"starting\n{why}\n")
    assert runtime_failure([pod]) == f"the runtime in pod m-1 exited (exit code 2): {why}"
    # a runtime that restarted once and serves again is not a failure, nor is a pod being stopped
    assert runtime_failure([_pod_with_refused_runtime("m-1", why, ready=True)]) is None
    stopping = _pod_with_refused_runtime("m-1", why)
    stopping["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert runtime_failure([stopping]) is None
    unavailable = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1},
    }
    old = {"observedGeneration": 1, "conditions": []}
    update = observed_status(unavailable, old, "2026-01-01T00:00:00Z", [pod])
    assert update is not None
    conds = {c["type"]: c for c in update["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "RuntimeStartFailed"
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "RuntimeStartFailed"
    assert "no usable key" in conds["Degraded"]["message"]
    assert [(t, r) for t, r, _ in fetch_failure_events(old, update)] == [("Warning", "RuntimeStartFailed")]
    assert fetch_failure_events(update, update) == []


def test_a_runtime_that_starts_again_clears_runtime_start_failed() -> None:
    """Once the key file is fixed and the runtime serves, a status refresh from the pods (no
    reconcile runs: nothing in the spec changed) makes Ready True and Degraded False; before,
    Degraded stayed True with RuntimeStartFailed beside Ready=True."""
    from slm_operator.reconcile.status import observed_status

    why = "refusing to start with unusable API keys: auth.apiKeyFile /etc/slm/auth/k holds no usable key"
    unavailable = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1},
    }
    old = {"observedGeneration": 1, "conditions": []}
    failed = observed_status(
        unavailable, old, "2026-01-01T00:00:00Z", [_pod_with_refused_runtime("m-1", why)]
    )
    assert failed is not None
    healthy = {**unavailable, "status": {**unavailable["status"], "availableReplicas": 1, "readyReplicas": 1}}
    serving = _pod_with_refused_runtime("m-1", why, ready=True)  # the restarted container is ready
    fixed = observed_status(healthy, failed, "2026-01-01T00:01:00Z", [serving])
    assert fixed is not None
    conds = {c["type"]: c for c in fixed["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Degraded"]["status"] == "False" and conds["Degraded"]["reason"] == "Recovered"


def test_a_failed_fetch_makes_ready_false_and_degraded_with_the_reason_and_one_event() -> None:
    from slm_operator.reconcile.status import fetch_failure_events, observed_status

    unavailable = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1},
    }
    old = {"observedGeneration": 1, "conditions": []}
    pods = [_pod_with_fetch("m-1", 3, "sha256 mismatch: expected 0000, got abcd")]
    update = observed_status(unavailable, old, "2026-01-01T00:00:00Z", pods)
    assert update is not None
    conds = {c["type"]: c for c in update["conditions"]}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "ModelFetchFailed"
    assert "sha256 mismatch" in conds["Ready"]["message"]
    assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "ModelFetchFailed"
    events = fetch_failure_events(old, update)
    assert [(t, r) for t, r, _ in events] == [("Warning", "ModelFetchFailed")]
    assert "sha256 mismatch" in events[0][2]
    # the next resync sees the same failure: no second Event
    assert fetch_failure_events(update, update) == []
    # once the pod fetched its model and is available, Ready returns and Degraded recovers
    healthy = {**unavailable, "status": {**unavailable["status"], "availableReplicas": 1, "readyReplicas": 1}}
    fixed = observed_status(healthy, update, "2026-01-01T00:01:00Z", [_pod_with_fetch("m-2", 0, "ok")])
    assert fixed is not None
    conds = {c["type"]: c for c in fixed["conditions"]}
    assert conds["Ready"]["status"] == "True"
    assert conds["Degraded"]["status"] == "False" and conds["Degraded"]["reason"] == "Recovered"
