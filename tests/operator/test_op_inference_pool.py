"""InferencePools (Gateway API Inference Extension v1): the builder, the optional child kind in the
plan, discovery of whether the API server serves it, and RBAC.

Our pools are validated against the real CRD of `sigs.k8s.io/gateway-api-inference-extension`
(structural schema with jsonschema, CEL rules with cel-python), which `make bins` puts in bin/
(`hack/fetch-gie-crd.sh`); tests/e2e/operator/test_inference_pool.py has the real API server
accept them.
"""

from __future__ import annotations

import copy
import threading
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cel_support import validate as cel_validate
from op_support import ROOT, bed_nodes, gguf, spec
from test_op_fleet import CountingCluster, reconciled_before
from test_op_reconcile import FakeCluster, _ctx

from slm_operator.errors import KubeError
from slm_operator.placement import place
from slm_operator.rbac import rules
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.discovery import ServedKinds, crd_name, crd_serves
from slm_operator.reconcile.plan import CHILDREN, OPTIONAL_KINDS, Observed, plan, served_children
from slm_operator.reconcile.resync import refresh_served, resync_once
from slm_operator.render import RenderContext, render_all
from slm_operator.render.inference_pool import INFERENCE_POOL_CRD, build_inference_pool

GIE_CRD = ROOT / "bin" / "gie-inferencepools.yaml"
POOL = next(c for c in CHILDREN if c.kind == "InferencePool")
UID = "uid-1"


def _gie_crd() -> dict[str, Any]:
    if not GIE_CRD.exists():
        pytest.fail(f"{GIE_CRD} is missing: run `make bins` (hack/fetch-gie-crd.sh)")
    crd: dict[str, Any] = yaml.safe_load(Path(GIE_CRD).read_text())
    return crd


def _schema() -> dict[str, Any]:
    version = next(v for v in _gie_crd()["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def _rendered(*, served: bool, **overrides: Any) -> dict[str, dict[str, Any]]:
    the_spec = spec(model={"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}, **overrides)
    ctx = RenderContext(
        name="demo",
        namespace="ns",
        spec=the_spec,
        placement=place(the_spec, bed_nodes()),
        inference_pools=served,
    )
    return {obj["kind"]: obj for obj in render_all(ctx)}


def _established(crd: dict[str, Any]) -> dict[str, Any]:
    crd = copy.deepcopy(crd)
    crd["status"] = {"conditions": [{"type": "Established", "status": "True"}]}
    return crd


def test_the_pool_selects_the_services_pods_on_the_containers_port() -> None:
    objs = _rendered(served=True, networking={"port": 80})
    pool = objs["InferencePool"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["metadata"]["name"] == "demo"
    assert pool["metadata"]["labels"]["slm.dev/deployment"] == "demo"
    # the same pods as the Service, by the labels every pod template carries
    assert pool["spec"]["selector"]["matchLabels"] == objs["Service"]["spec"]["selector"]
    template_labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
    # the pods' own port (the Service's 80 maps to it), since a pool addresses pods directly
    container = objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    http = next(p for p in container["ports"] if p["name"] == "http")
    assert pool["spec"]["targetPorts"] == [{"number": http["containerPort"]}]
    assert http["containerPort"] != 80


def test_no_pool_where_the_kind_is_not_served() -> None:
    assert "InferencePool" not in _rendered(served=False)
    ctx = RenderContext(name="x", spec=spec(), placement=place(spec(), bed_nodes()))
    assert build_inference_pool(ctx) is None  # the default: not served


def test_the_pool_is_valid_against_the_gie_crd_schema_and_cel_rules() -> None:
    schema = _schema()
    pool = _rendered(served=True)["InferencePool"]
    jsonschema.validate(pool["spec"], schema["properties"]["spec"])
    assert cel_validate(schema, {"spec": pool["spec"]}) == []
    # the checks bite: a duplicated port breaks a CEL rule, an empty selector the schema
    broken = copy.deepcopy(pool["spec"])
    broken["targetPorts"] *= 2
    assert any("unique" in msg for _, msg in cel_validate(schema, {"spec": broken}))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**pool["spec"], "selector": {"matchLabels": {}}}, schema["properties"]["spec"])


def test_our_crd_name_and_kind_match_the_gie_crd() -> None:
    crd = _gie_crd()
    assert crd["metadata"]["name"] == INFERENCE_POOL_CRD == crd_name(POOL)
    assert crd["spec"]["group"] == POOL.group and crd["spec"]["names"]["plural"] == POOL.plural
    assert crd["spec"]["names"]["kind"] == POOL.kind
    assert any(v["name"] == POOL.version and v["served"] for v in crd["spec"]["versions"])
    assert crd_serves(_established(crd), POOL)


# --- the optional kind in the plan ----------------------------------------------------------------


def _body() -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": "demo", "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"model": {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")}},
    }


def _plan(observed: Observed, optional_kinds: frozenset[str]) -> Any:
    return plan(
        _body(), observed, image="img", timestamp="2026-01-01T00:00:00Z", optional_kinds=optional_kinds
    )


def test_the_plan_applies_a_pool_only_where_served() -> None:
    without = _plan(Observed(nodes=bed_nodes()), frozenset())
    assert "InferencePool" not in {o["kind"] for o in without.desired}
    served = _plan(Observed(nodes=bed_nodes()), OPTIONAL_KINDS)
    (step,) = [s for s in served.apply if s.obj["kind"] == "InferencePool"]
    assert step.reason == "missing"
    assert step.obj["metadata"]["ownerReferences"][0]["uid"] == UID
    assert [o["kind"] for o in served.desired][-1] == "InferencePool"  # applied last (pods first)


def _with_pool(observed: Observed) -> Observed:
    pool = {
        "metadata": {
            "labels": {"slm.dev/deployment": "demo"},
            "ownerReferences": [{"uid": UID, "controller": True}],
        },
        "spec": {},
    }
    return Observed(nodes=observed.nodes, children={(POOL.api_version, POOL.kind, "ns", "demo"): pool})


def test_a_pool_is_not_pruned_when_its_kind_is_no_longer_served() -> None:
    """Its CRD went away (and took the pools with it): deleting would only fail with 404."""
    observed = _with_pool(Observed(nodes=bed_nodes()))
    assert not [s for s in _plan(observed, frozenset()).delete if s.obj["kind"] == "InferencePool"]
    # while served, a pool that differs from the desired one is re-applied, not pruned
    served = _plan(observed, OPTIONAL_KINDS)
    assert not served.delete
    assert [s.reason for s in served.apply if s.obj["kind"] == "InferencePool"] == [
        "differs from what was last applied"
    ]


def test_served_children_leave_out_unserved_optional_kinds() -> None:
    assert POOL not in served_children(frozenset())
    assert served_children(OPTIONAL_KINDS) == CHILDREN
    assert all(not c.optional for c in served_children(frozenset()))


# --- discovery ------------------------------------------------------------------------------------


def test_crd_serves_needs_names_served_version_and_established() -> None:
    crd = _established(_gie_crd())
    assert crd_serves(crd, POOL)
    assert not crd_serves(None, POOL)
    assert not crd_serves({**crd, "status": {}}, POOL)  # not Established yet: no REST endpoint
    deleting = copy.deepcopy(crd)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not crd_serves(deleting, POOL)
    unserved = copy.deepcopy(crd)
    for version in unserved["spec"]["versions"]:
        version["served"] = False
    assert not crd_serves(unserved, POOL)
    other = copy.deepcopy(crd)
    other["spec"]["group"] = "inference.networking.x-k8s.io"
    assert not crd_serves(other, POOL)


def test_a_refresh_takes_what_the_crd_says_when_read() -> None:
    crd = _established(_gie_crd())
    live: dict[str, dict[str, Any]] = {}
    reads: list[str] = []

    def read(name: str) -> dict[str, Any] | None:
        reads.append(name)
        return copy.deepcopy(live.get(name))

    served = ServedKinds()
    assert served.refresh(read) == (frozenset(), frozenset())
    live[crd_name(POOL)] = crd
    assert served.refresh(read) == (frozenset(), OPTIONAL_KINDS) and served.kinds() == {"InferencePool"}
    assert served.refresh(read) == (OPTIONAL_KINDS, OPTIONAL_KINDS)  # no change: no re-plan
    del live[crd_name(POOL)]
    assert served.refresh(read) == (OPTIONAL_KINDS, frozenset())
    assert reads == [crd_name(POOL)] * 4  # one read by name per optional kind


def test_crossed_crd_events_end_as_the_cluster_is() -> None:
    """kopf handles the events of a deleted CRD and of its re-created namesake in two workers (one
    per uid): the old one's handler can read before the CRD is back and finish after the new one's.
    Whichever order they run in, the kinds end as the cluster is."""
    crd = _established(_gie_crd())
    live: dict[str, Any] = {"crd": None}
    first_read, second_waits = threading.Event(), threading.Event()

    def slow_read(name: str) -> dict[str, Any] | None:  # the deleted CRD's handler
        found = copy.deepcopy(live["crd"])
        first_read.set()
        second_waits.wait(5)  # the CRD is re-created and its handler runs meanwhile
        return found

    served = ServedKinds(frozenset({"InferencePool"}))
    old = threading.Thread(target=served.refresh, args=(slow_read,))
    old.start()
    assert first_read.wait(5)
    live["crd"] = crd
    new = threading.Thread(target=served.refresh, args=(lambda _: copy.deepcopy(live["crd"]),))
    new.start()
    new.join(0.2)  # had refreshes not run one at a time, the new one would finish now, first
    second_waits.set()
    old.join(5)
    new.join(5)
    assert served.kinds() == {"InferencePool"}


def test_a_failed_read_changes_nothing_and_leaves_the_kinds_stale() -> None:
    served = ServedKinds(frozenset({"InferencePool"}))

    def down(name: str) -> dict[str, Any] | None:
        raise KubeError("read CRD: connection refused")

    with pytest.raises(KubeError):
        served.refresh(down)
    assert served.stale and served.kinds() == {"InferencePool"}
    served.refresh(lambda _: None)
    assert not served.stale and served.kinds() == frozenset()


class CrdCluster(CountingCluster):
    """The fake API with the InferencePool CRD installed or not: an apply of a pool without it
    answers 404, as the API server does for a kind it does not serve."""

    def __init__(self) -> None:
        super().__init__()
        self.crds: dict[str, dict[str, Any]] = {crd_name(POOL): _established(_gie_crd())}

    def read_crd(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.crds.get(name))

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == POOL.kind and crd_name(POOL) not in self.crds:
            raise KubeError(f"apply InferencePool {obj['metadata']['name']}: 404 Not Found", 404)
        return super().apply(obj)

    def remove_crd(self) -> None:
        """Delete the CRD, and with it every pool (what the API server's CRD finalizer does)."""
        del self.crds[crd_name(POOL)]
        self.objects = {k: o for k, o in self.objects.items() if o["kind"] != POOL.kind}


def _pools(cluster: FakeCluster) -> list[str]:
    return sorted(o["metadata"]["name"] for o in cluster.objects.values() if o["kind"] == POOL.kind)


def _owners(ctx: OperatorContext, names: list[str]) -> None:
    ctx.cache.owners.replace([reconciled_before(name) for name in names])


def test_a_pool_apply_that_meets_404_rereads_the_crd_and_the_retry_goes_on_without_it() -> None:
    """The CRD went while the operator did not see it go (a watch that restarted reports no
    deletion): the next pool apply's 404 makes it read the CRD, and every owner goes on without."""
    cluster = CrdCluster()
    ctx = _ctx(cluster)
    refresh_served(ctx)  # what the startup does
    assert ctx.served.kinds() == {"InferencePool"}
    _owners(ctx, ["a", "b"])
    done: dict[tuple[str, str], Any] = {}
    failed: set[tuple[str, str]] = set()
    assert resync_once(ctx, done, failed, full=True) == 2 and _pools(cluster) == ["a", "b"]

    cluster.remove_crd()  # no event reaches the operator
    _owners(ctx, ["a", "b", "c"])  # a new SLMDeployment: its first reconcile applies a pool
    resync_once(ctx, done, failed, full=True)
    assert failed == {("ns", "c")} and ctx.served.stale
    assert ctx.served.kinds() == {"InferencePool"}  # not yet re-read: the reconcile does not

    refresh_served(ctx)  # the resync loop's next turn
    assert not ctx.served.stale and ctx.served.kinds() == frozenset()
    assert resync_once(ctx, done, failed, full=False) == 1 and not failed  # the retry passes
    assert _pools(cluster) == []


def test_a_crd_installed_later_gives_every_owner_its_pool() -> None:
    cluster = CrdCluster()
    crd = cluster.crds.pop(crd_name(POOL))
    ctx = _ctx(cluster)
    refresh_served(ctx)
    _owners(ctx, ["a", "b"])
    assert resync_once(ctx, {}, set(), full=True) == 2 and _pools(cluster) == []
    cluster.crds[crd_name(POOL)] = crd
    refresh_served(ctx)  # what the CRD's watch event does
    assert ctx.served.kinds() == {"InferencePool"} and _pools(cluster) == ["a", "b"]


def test_rbac_grants_the_pool_to_the_operator() -> None:
    granted = {
        (g, r, v)
        for rule in rules()
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    for verb in ("get", "list", "watch", "create", "patch", "delete"):
        assert ("inference.networking.k8s.io", "inferencepools", verb) in granted
