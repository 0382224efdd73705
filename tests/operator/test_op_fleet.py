"""The operator at fleet scale, without a cluster: the informers' stores, pending-pod accounting,
leadership from the peering object, and the resync that re-plans from the caches and makes no API
call when nothing differs (a standby's makes none at all)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
from op_support import bed_nodes, cpu_scaled, gguf, pod_on
from test_op_reconcile import UID, FakeCluster, _body, _ctx

from slm_operator.api import SLMDeploymentSpec
from slm_operator.errors import KubeError, NamespaceTerminatingError
from slm_operator.hardware import parse_nodes
from slm_operator.placement import charge_pending, place
from slm_operator.rbac import rules
from slm_operator.reconcile import heap
from slm_operator.reconcile.cache import Store, slim_node, slim_pod
from slm_operator.reconcile.context import AppliedCache, Leadership, OperatorContext, is_leader
from slm_operator.reconcile.handlers import plain, run_reconcile
from slm_operator.reconcile.plan import CHILDREN, served_children
from slm_operator.reconcile.resync import resync_once

Obj = dict[str, Any]


def _pod(
    name: str, *, namespace: str = "ns", owner: str | None = None, rv: str = "1", node: str = "n"
) -> Obj:
    labels = {"slm.dev/deployment": owner} if owner else {}
    return {
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "resourceVersion": rv,
            "managedFields": [{"manager": "x"}],
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "big", "resources": {}}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }


# --- stores ---------------------------------------------------------------------------------------


def test_store_indexes_by_owner_and_keeps_slim_copies() -> None:
    store = Store(slim_pod)
    seen: list[tuple[str, str]] = []
    store.listen(lambda kind, obj: seen.append((kind, obj["metadata"]["name"])))
    store.replace([_pod("a-1", owner="a"), _pod("a-2", owner="a"), _pod("x")])
    assert [p["metadata"]["name"] for p in store.owned_by("ns", "a")] == ["a-1", "a-2"]
    assert store.owned_by("other", "a") == []
    kept = store.get("ns", "a-1")
    assert kept is not None and "managedFields" not in kept["metadata"] and "podIP" not in kept["status"]
    assert "image" not in kept["spec"]["containers"][0]
    version = store.version
    store.upsert(_pod("a-1", owner="a"))  # the same again: no change, no version bump
    assert store.version == version
    store.upsert(_pod("a-1", owner="b", rv="2"))  # relabelled: moves between owners
    assert [p["metadata"]["name"] for p in store.owned_by("ns", "b")] == ["a-1"]
    assert store.version == version + 1
    store.remove(_pod("a-2"))
    assert store.owned_by("ns", "a") == [] and len(store) == 2
    assert ("DELETED", "a-2") in seen


def test_the_applied_cache_keeps_forms_packed_and_hands_out_copies() -> None:
    cache = AppliedCache()
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "m", "namespace": "ns", "labels": {"slm.dev/deployment": "m"}},
        "data": {"config.yaml": "a: 1\n", "b": "2"},
    }
    cache.remember([child])
    version = cache.version
    reordered = {**child, "data": {"b": "2", "config.yaml": "a: 1\n"}}
    cache.remember([reordered])
    assert cache.version == version  # the same form in another key order is no change
    key = ("v1", "ConfigMap", "ns", "m")
    got = cache.get(key)
    assert got is not None and got["data"] == child["data"]
    got["data"]["b"] = "changed"  # a reader's copy, not the cache's
    assert cache.children("ns", "m")[key]["data"]["b"] == "2"
    cache.remember([{**child, "data": {"b": "3"}}])
    assert cache.version == version + 1
    assert cache.children("ns", "m")[key]["data"] == {"b": "3"}


def test_an_older_watch_event_does_not_undo_a_written_through_update() -> None:
    store = Store(slim_pod)
    store.upsert(_pod("p", rv="10"))
    store.upsert({**_pod("p", rv="9"), "status": {"phase": "Pending"}})
    kept = store.get("ns", "p")
    assert kept is not None and kept["status"]["phase"] == "Running"


def test_a_relist_drops_what_was_deleted_while_away_only_in_its_namespace() -> None:
    store = Store(slim_pod)
    store.replace([_pod("a", namespace="one"), _pod("b", namespace="one")], "one")
    store.replace([_pod("c", namespace="two")], "two")
    gone: list[str] = []
    store.listen(lambda kind, obj: gone.append(obj["metadata"]["name"]) if kind == "DELETED" else None)
    store.replace([_pod("a", namespace="one")], "one")
    assert sorted(p["metadata"]["name"] for p in store.items()) == ["a", "c"]
    assert gone == ["b"]
    assert store.synced.is_set()


def test_slim_nodes_place_like_full_nodes() -> None:
    spec = SLMDeploymentSpec.model_validate(
        {"model": {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}}
    )
    full = bed_nodes()
    assert place(spec, [slim_node(n) for n in full]) == place(spec, full)


# --- pending pods ---------------------------------------------------------------------------------


def _pending(name: str, requests: dict[str, str], created: str, **spec: Any) -> Obj:
    pod = pod_on("", requests, name=name)
    del pod["spec"]["nodeName"]
    pod["spec"].update(spec)
    pod["metadata"]["creationTimestamp"] = created
    pod["status"] = {"phase": "Pending"}
    return pod


GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_pending_pods_are_charged_first_fit_oldest_first() -> None:
    nodes = parse_nodes(bed_nodes())
    pods = [
        _pending("late", {"nvidia.com/gpu": "1"}, "2026-01-01T00:00:02Z", tolerations=GPU_TOLERATION),
        _pending("early", {"nvidia.com/gpu": "1"}, "2026-01-01T00:00:01Z", tolerations=GPU_TOLERATION),
        _pending("third", {"nvidia.com/gpu": "1"}, "2026-01-01T00:00:03Z", tolerations=GPU_TOLERATION),
    ]
    free = {n.name: n.available("nvidia.com/gpu") for n in charge_pending(nodes, pods)}
    assert free["gpu-node-1"] == 0 and free["gpu-node-2"] == 0  # the third one stays pending


def test_pending_pods_go_only_where_they_could_be_bound() -> None:
    nodes = parse_nodes(bed_nodes())
    untolerated = _pending("p", {"nvidia.com/gpu": "1"}, "t")  # the GPU taint keeps it off
    selected = _pending("q", {"cpu": "8"}, "t", nodeSelector={"kubernetes.io/hostname": "cpu-node-2"})
    affine = _pending(
        "r",
        {"cpu": "1"},
        "t",
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["1"]}
                            ]
                        }
                    ]
                }
            }
        },
        tolerations=GPU_TOLERATION,
    )
    charged = {n.name: n for n in charge_pending(nodes, [untolerated, selected, affine])}
    before = {n.name: n for n in nodes}
    assert charged["gpu-node-1"].available("nvidia.com/gpu") == 1
    if "kubernetes.io/hostname" in before["cpu-node-2"].labels:
        assert charged["cpu-node-2"].available("cpu") == before["cpu-node-2"].available("cpu") - 8
    gpu_cpu = [charged[n].available("cpu") for n in ("gpu-node-1", "gpu-node-2")]
    assert sorted(gpu_cpu) != sorted(before[n].available("cpu") for n in ("gpu-node-1", "gpu-node-2"))


# --- leadership -----------------------------------------------------------------------------------


def _peer(priority: int, seconds_ago: float, lifetime: int = 60) -> Obj:
    seen = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_leadership_follows_kopfs_rule() -> None:
    me = "me"
    assert is_leader({}, me, 5)
    assert is_leader({me: _peer(5, 0), "b": _peer(3, 0)}, me, 5)
    assert not is_leader({me: _peer(5, 0), "b": _peer(7, 0)}, me, 5)
    assert not is_leader({me: _peer(5, 0), "b": _peer(5, 0)}, me, 5)  # kopf pauses both
    assert is_leader({me: _peer(5, 0), "b": _peer(7, 61)}, me, 5)  # the higher one died
    assert is_leader({me: _peer(5, 0), "b": {"priority": "x"}}, me, 5)


def test_standalone_is_always_active_and_a_peer_waits_for_its_peering_object() -> None:
    ctx = _ctx(FakeCluster())
    assert ctx.active()
    ctx.leadership = Leadership("slm", "me", 5)
    assert not ctx.active()  # the peering store has not listed yet
    ctx.cache.peering.replace(
        [{"metadata": {"name": "slm"}, "status": {"me": _peer(5, 0), "b": _peer(9, 1)}}]
    )
    assert not ctx.active()
    ctx.cache.peering.replace([{"metadata": {"name": "slm"}, "status": {"me": _peer(5, 0)}}])
    assert ctx.active()


# --- the resync -----------------------------------------------------------------------------------


class CountingCluster(FakeCluster):
    """The fake API, counting every call a reconcile makes."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def apply(self, obj: Obj) -> Obj:
        self.calls.append("apply")
        return super().apply(obj)

    def delete(self, obj: Obj) -> None:
        self.calls.append("delete")
        super().delete(obj)

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        self.calls.append("patch_status")
        super().patch_status(namespace, name, status)

    def list_labelled(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[Obj]:
        self.calls.append("list")
        return super().list_labelled(api_version, kind, namespace, selector)

    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None:
        self.calls.append("event")
        self.events.append((type, reason, message))

    def read_secret(self, namespace: str, name: str) -> Obj | None:
        self.calls.append("read_secret")
        return super().read_secret(namespace, name)


def reconciled_before(name: str) -> Obj:
    """An SLMDeployment with a uid of its own and a status: reconciled before, by an older
    process, so the resync (not kopf's create handler) takes it."""
    body = _body(name=name)
    body["metadata"]["uid"] = f"{UID}-{name}"
    body["status"] = {"observedGeneration": 0}
    return body


def _fleet(n: int) -> tuple[CountingCluster, OperatorContext, list[Obj]]:
    cluster = CountingCluster()
    ctx = _ctx(cluster)
    bodies = [reconciled_before(f"m{i}") for i in range(n)]
    ctx.cache.owners.replace(bodies)
    return cluster, ctx, bodies


def _sync_status(ctx: OperatorContext, cluster: CountingCluster, bodies: list[Obj]) -> None:
    """What the SLMDeployment watch would deliver after the status patches."""
    patched = iter(cluster.status_patches)
    for body in bodies:
        body["status"] = copy.deepcopy(next(patched))
    ctx.cache.owners.replace(bodies)


def test_a_steady_fleet_resyncs_without_api_calls() -> None:
    cluster, ctx, bodies = _fleet(5)
    done: dict[tuple[str, str], Any] = {}
    failed: set[tuple[str, str]] = set()
    assert resync_once(ctx, done, failed, full=True) == 5
    # one list per child kind for the whole fleet (what a previous process left), not per owner
    assert cluster.calls.count("apply") == 5 * 5 and cluster.calls.count("list") == len(
        served_children(frozenset())
    )
    # pending accounting: the first two take the two GPUs, the others fall back to cpu
    assert [s["hardware"] for s in cluster.status_patches] == ["gpu", "gpu", "cpu", "cpu", "cpu"]
    _sync_status(ctx, cluster, bodies)
    cluster.calls.clear()
    assert resync_once(ctx, done, failed, full=True) == 5  # the applied children changed the inputs once
    assert cluster.calls == []
    assert resync_once(ctx, done, failed, full=True) == 0  # nothing changed: not even planned
    # a node changes (a label): everything is re-planned, and still nothing differs
    nodes = bed_nodes()
    nodes[0]["metadata"].setdefault("labels", {})["example.com/rack"] = "r2"
    ctx.cache.nodes.replace(nodes)
    assert resync_once(ctx, done, failed, full=True) == 5
    assert cluster.calls == []


def test_the_resync_of_a_standby_does_nothing() -> None:
    cluster, ctx, _ = _fleet(3)
    ctx.leadership = Leadership("slm", "me", 1)
    ctx.cache.peering.replace(
        [{"metadata": {"name": "slm"}, "status": {"me": _peer(1, 0), "b": _peer(2, 0)}}]
    )
    assert resync_once(ctx, {}, set(), full=True) == 0
    assert cluster.calls == [] and cluster.applies == []


def test_a_deleted_child_is_noticed_and_restored_without_listing() -> None:
    cluster, ctx, bodies = _fleet(1)
    run_reconcile(ctx, plain(bodies[0]), "change")
    cluster.calls.clear()
    service = next(o for o in cluster.objects.values() if o["kind"] == "Service")
    cluster.owner = bodies[0]
    cluster.delete(service)
    from slm_operator.reconcile.children import child_event

    class Memo:
        def __init__(self, ctx: OperatorContext) -> None:
            self.ctx = ctx

    child_event(ctx, "DELETED", service)
    assert "Service" in cluster.kinds()
    assert "list" not in cluster.calls and cluster.calls.count("apply") == 1


def test_rbac_follows_the_child_table_and_lets_the_informers_watch() -> None:
    granted = {
        (g, r, v)
        for rule in rules()
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for child in CHILDREN:
        for verb in ("get", "list", "watch", "create", "patch", "delete"):
            assert (child.group, child.plural, verb) in granted
    for resource in ("nodes", "pods"):
        assert {("", resource, "list"), ("", resource, "watch")} <= granted
    assert ("slm.dev", "slmdeployments", "watch") in granted


def test_a_restarted_operator_lists_once_and_prunes_what_the_last_one_left() -> None:
    cluster, ctx, bodies = _fleet(2)
    scaled = cpu_scaled()
    for body in bodies:
        body["spec"] = copy.deepcopy(scaled)
        run_reconcile(ctx, plain(body), "change")
    assert cluster.kinds().count("HorizontalPodAutoscaler") == 2
    # a new process (empty memory) meets the same children after the spec dropped autoscaling
    restarted = _ctx(cluster)
    cluster.calls.clear()
    for body in bodies:
        body["spec"].pop("autoscaling")
        body["metadata"]["generation"] = 2
        run_reconcile(restarted, plain(body), "resync")
    assert "HorizontalPodAutoscaler" not in cluster.kinds()
    assert cluster.calls.count("list") == len(served_children(frozenset()))
    assert cluster.calls.count("delete") == 4  # the HPA and the PDB of each


def test_a_stale_trigger_body_does_not_report_the_placement_again() -> None:
    """kopf's create event can carry an older copy than the cache (whose status this process wrote
    meanwhile, e.g. from a resync): the reconcile uses the newer one, so no second Placed."""
    cluster, ctx, bodies = _fleet(1)
    stale = copy.deepcopy(bodies[0])
    stale["metadata"]["resourceVersion"] = "5"
    run_reconcile(ctx, plain(stale), "resync")
    assert [r for _, r, _ in cluster.events] == ["Placed"]
    fresher = copy.deepcopy(stale)
    fresher["metadata"]["resourceVersion"] = "6"
    fresher["status"] = copy.deepcopy(cluster.status_patches[-1])
    ctx.cache.owners.upsert(fresher)
    cluster.calls.clear()
    run_reconcile(ctx, plain(stale), "change")
    assert [r for _, r, _ in cluster.events] == ["Placed"]
    assert cluster.calls == []


def test_a_node_heartbeat_does_not_change_the_node_store() -> None:
    store = Store(slim_node)
    nodes = bed_nodes()
    store.replace(nodes)
    version = store.version
    beat = copy.deepcopy(nodes[0])
    beat["metadata"]["resourceVersion"] = "999"
    for cond in beat["status"].get("conditions") or ():
        cond["lastHeartbeatTime"] = "2026-12-01T00:00:09Z"
    store.upsert(beat)
    assert store.version == version


def test_a_status_update_by_another_controller_is_not_drift() -> None:
    """The Deployment controller's status writes give the Deployment new versions; what the
    operator set is unchanged, so no drift reconcile (the remembered form carries the
    ownerReferences pruning needs, which the comparison must not count)."""
    cluster, ctx, bodies = _fleet(1)
    cluster.owner = bodies[0]
    run_reconcile(ctx, plain(bodies[0]), "change")
    deployment = copy.deepcopy(next(o for o in cluster.objects.values() if o["kind"] == "Deployment"))
    deployment["metadata"]["resourceVersion"] = "9999"
    deployment["status"] = {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1}
    from slm_operator.reconcile.children import child_event

    class Memo:
        def __init__(self, ctx: OperatorContext) -> None:
            self.ctx = ctx

    child_event(ctx, "MODIFIED", deployment)
    assert ctx.metrics.reconciles.labels(trigger="drift")._value.get() == 0


def test_the_resync_leaves_never_reconciled_owners_to_kopf() -> None:
    """An owner without any status has its create handler queued in kopf: during a burst the
    resync must not reconcile it a second time."""
    cluster, ctx, bodies = _fleet(3)
    del bodies[1]["status"]
    ctx.cache.owners.replace(bodies)
    assert resync_once(ctx, {}, set(), full=True) == 2
    assert sorted(s["hardware"] for s in cluster.status_patches) == ["gpu", "gpu"]
    assert not [o for o in cluster.objects.values() if o["metadata"]["name"].startswith("m1")]


class TerminatingCluster(CountingCluster):
    """A namespace being deleted: the API refuses every create in it."""

    def __init__(self) -> None:
        super().__init__()
        self.terminating = True

    def apply(self, obj: Obj) -> Obj:
        if self.terminating:
            self.calls.append("apply refused")
            raise NamespaceTerminatingError("403 Forbidden: namespace ns is being terminated", 403)
        return super().apply(obj)


def test_a_terminating_namespace_is_not_fought() -> None:
    cluster = TerminatingCluster()
    ctx = _ctx(cluster)
    body = _body(name="m0")
    body["status"] = {"observedGeneration": 0}
    ctx.cache.owners.replace([body])
    cluster.owner = body
    with pytest.raises(kopf.TemporaryError):
        run_reconcile(ctx, plain(body), "drift")
    assert ctx.namespace_terminating("ns") and not ctx.namespace_terminating("other")
    # the namespace's deletion removes a child: nothing is read, applied or reported
    from slm_operator.reconcile.children import child_event

    class Memo:
        def __init__(self, ctx: OperatorContext) -> None:
            self.ctx = ctx

    cluster.calls.clear()
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "m0",
            "namespace": "ns",
            "labels": {"app.kubernetes.io/managed-by": "slm-operator", "slm.dev/deployment": "m0"},
            "ownerReferences": [{"uid": UID, "controller": True}],
        },
    }
    child_event(ctx, "DELETED", service)
    assert resync_once(ctx, {}, set(), full=True) == 0
    assert cluster.calls == [] and cluster.events == []
    # the same name again, accepting writes: one successful apply ends the pause
    cluster.terminating = False
    run_reconcile(ctx, plain(body), "change")
    assert not ctx.namespace_terminating("ns") and "Service" in cluster.kinds()


def test_the_heap_controls_work_on_this_libc() -> None:
    if not Path("/lib/x86_64-linux-gnu/libc.so.6").exists() and not Path("/usr/lib64/libc.so.6").exists():
        pytest.skip("not glibc")
    assert heap.limit_arenas(2) is True
    assert heap.limit_arenas(0) is False
    assert isinstance(heap.trim(), bool)


class FlakyCluster(CountingCluster):
    """The API is away for the first `outage` applies (an etcd restart)."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage

    def apply(self, obj: Obj) -> Obj:
        if self.outage > 0:
            self.outage -= 1
            raise KubeError("apply: connection refused")
        return super().apply(obj)


def test_an_owner_whose_first_reconcile_met_an_outage_is_retried_by_the_resync() -> None:
    """kopf's handler failed on the API: the resync retries it at its short cadence (not only
    kopf after its growing backoff), even though the owner has no status yet."""
    cluster = FlakyCluster(outage=1)
    ctx = _ctx(cluster)
    body = _body(name="m0")
    ctx.cache.owners.replace([body])
    with pytest.raises(kopf.TemporaryError):
        run_reconcile(ctx, plain(body), "change", created=True)
    assert resync_once(ctx, {}, set(), full=False) == 1
    assert "Deployment" in cluster.kinds() and not ctx.api_failures
    assert resync_once(ctx, {}, set(), full=False) == 0


def test_the_heap_is_trimmed_after_work_and_released_once_the_burst_has_settled() -> None:
    after = heap.AfterBurst(version=7)
    # (the pass reconciled something, the applied cache's version after it)
    passes = [(False, 7), (True, 8), (False, 9), (False, 9), (False, 9), (True, 9), (False, 9)]
    steps = [after.step(found, version) for found, version in passes]
    # the third pass found nothing itself, but kopf's handlers had changed children: still busy
    assert steps == [None, heap.trim, heap.trim, heap.release, None, heap.trim, heap.release]
