"""InferencePools (Gateway API Inference Extension v1): the builder, the optional child kind in the
plan, discovery of whether the API server serves it, and RBAC.

Our pools are validated against the real CRD of `sigs.k8s.io/gateway-api-inference-extension`
(structural schema with jsonschema, CEL rules with cel-python), which `make bins` puts in bin/
(`hack/fetch-gie-crd.sh`); tests/e2e/operator/test_inference_pool.py has the real API server
accept them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from cel_support import validate as cel_validate
from op_support import ROOT, bed_nodes, gguf, spec

from slm_operator.placement import place
from slm_operator.rbac import rules
from slm_operator.reconcile.discovery import ServedKinds, crd_name, crd_serves, discover
from slm_operator.reconcile.plan import CHILDREN, OPTIONAL_KINDS, Observed, plan, served_children
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


def test_served_kinds_follow_the_crds_events() -> None:
    crd = _established(_gie_crd())
    served = ServedKinds()
    assert served.observe(None, crd) and served.kinds() == {"InferencePool"}
    assert not served.observe("MODIFIED", crd)  # no change: no re-plan
    assert not served.observe("ADDED", {"metadata": {"name": "other.example.com"}})
    assert served.kinds() == {"InferencePool"}
    assert served.observe("DELETED", crd) and served.kinds() == frozenset()
    assert served.replace(frozenset({"InferencePool"})) and not served.replace(frozenset({"InferencePool"}))


def test_discover_asks_once_per_optional_kind() -> None:
    asked: list[tuple[str, str]] = []

    def serves(api_version: str, plural: str) -> bool:
        asked.append((api_version, plural))
        return True

    assert discover(serves) == OPTIONAL_KINDS == {"InferencePool"}
    assert asked == [("inference.networking.k8s.io/v1", "inferencepools")]
    assert discover(lambda *_: False) == frozenset()


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
