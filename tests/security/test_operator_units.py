"""Issue 13, operator half, below the cluster: the pure pieces each attack runs into.

The same attacks run against the real API server in test_operator_admission.py and
test_operator_attacks.py; these pin the decisions (which field is named, what is redacted, what a
plan refuses to take over) without a cluster, in well under a second each.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
from pydantic import ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from cel_support import failures
from op_support import bed_nodes

from slm_operator import redact
from slm_operator.api import SLMDeploymentSpec
from slm_operator.api.crd import root_schema
from slm_operator.errors import ApplyError, KubeError, NameConflictError, PolicyError, SpecError
from slm_operator.policy import Policy, check, violations
from slm_operator.reconcile.plan import (
    Observed,
    conflicts_of,
    drifted,
    key_of,
    observed_form,
    parse_spec,
    plan,
    unverified_keys,
)
from slm_operator.reconcile.reconciler import check_names, execute
from slm_operator.reconcile.runs import kopf_error
from slm_operator.reconcile.status import fetch_failure, reconciled_status

UID = "uid-1"
SHA = "a" * 64
TINY = {
    "name": "tiny",
    "variants": [{"format": "gguf", "quantization": "Q8_0", "uri": "tiny://gguf?quantization=q8_0"}],
}
IMAGE = "ghcr.io/slm-operator/slm-runtime:0.1.0"


def _body(name: str = "m", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": UID, "generation": 1},
        "spec": {"model": copy.deepcopy(TINY), **spec},
    }


def _cel(body: dict[str, Any]) -> list[str]:
    return [message for _, message in failures(root_schema(), body)]


# --- item 10: what the API server would reject later is rejected at admission --------------------

BAD_SPECS = {
    "name-with-dot-qwen2.5": ("qwen2.5", {}, "DNS-1035"),
    "name-starting-with-digit-7b-model": ("7b-model", {}, "DNS-1035"),
    "name-uppercase": ("Qwen", {}, "DNS-1035"),
    "pod-label-value-with-space": ("m", {"podLabels": {"team": "a b"}}, "podLabels values"),
    "pod-label-key-with-space": ("m", {"podLabels": {"my team": "a"}}, "podLabels keys"),
    "pod-label-value-too-long": ("m", {"podLabels": {"team": "a" * 64}}, "podLabels values"),
    "pod-label-selector-key-hijack": ("m", {"podLabels": {"app.kubernetes.io/instance": "x"}}, "reserved"),
    "pod-label-operator-key": ("m", {"podLabels": {"slm.dev/deployment": "other"}}, "reserved"),
    "pod-label-kubernetes-domain": ("m", {"podLabels": {"kubernetes.io/metadata.name": "x"}}, "reserved"),
    "pod-annotation-config-hash": ("m", {"podAnnotations": {"slm.dev/config-hash": "x"}}, "reserved"),
    "pod-annotation-bad-key": ("m", {"podAnnotations": {"a/b/c": "x"}}, "podAnnotations keys"),
    "node-selector-value-with-space": ("m", {"hardware": {"nodeSelector": {"pool": "a b"}}}, "nodeSelector"),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_admission_rules_reject(case: str) -> None:
    name, spec, words = BAD_SPECS[case]
    body = _body(name, **spec)
    messages = _cel(body)
    assert any(words in m for m in messages), messages
    with pytest.raises((SpecError, ValidationError)):  # the reconciler's own check agrees
        parse_spec(body)


def test_admission_rules_accept_valid_labels() -> None:
    body = _body(
        "qwen2-5",
        podLabels={"team": "a-b", "example.com/tier": "gold", "empty": ""},
        podAnnotations={"prometheus.io/scrape": "true", "note": "free text, with spaces"},
        hardware={"nodeSelector": {"kubernetes.io/arch": "amd64"}},
    )
    assert _cel(body) == []
    parse_spec(body)


# --- item 9 and 5: the operator's policy ---------------------------------------------------------


def _spec(**spec: Any) -> SLMDeploymentSpec:
    return SLMDeploymentSpec.model_validate({"model": copy.deepcopy(TINY), **spec})


POLICY_CASES = {
    "image-outside-allowed-prefix": (
        {"image": "evil.example/miner:1"},
        Policy(allowed_image_prefixes=("ghcr.io/slm-operator/",)),
        "spec.image",
    ),
    "toleration-exists-without-key": (
        {"hardware": {"tolerations": [{"operator": "Exists"}]}},
        Policy(),
        "spec.hardware.tolerations[0]",
    ),
    "toleration-control-plane": (
        {
            "hardware": {
                "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
            }
        },
        Policy(),
        "spec.hardware.tolerations[0]",
    ),
    "node-selector-control-plane": (
        {"hardware": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}},
        Policy(),
        "spec.hardware.nodeSelector[node-role.kubernetes.io/control-plane]",
    ),
    "annotation-apparmor-unconfined": (
        {"podAnnotations": {"container.apparmor.security.beta.kubernetes.io/runtime": "unconfined"}},
        Policy(),
        "spec.podAnnotations[container.apparmor.security.beta.kubernetes.io/runtime]",
    ),
    "model-without-sha256": (
        {"model": {"name": "m", "variants": [{"quantization": "Q4_K_M", "uri": "hf://o/r/m.gguf"}]}},
        Policy(),
        "spec.model.variants[0].sha256",
    ),
    "uri-template-without-sha256": (
        {"model": {"name": "m", "uriTemplate": "hf://o/r/m-{quantization}.gguf", "quantizations": ["Q8_0"]}},
        Policy(),
        "spec.model.sha256[Q8_0]",
    ),
}


@pytest.mark.parametrize("case", sorted(POLICY_CASES))
def test_policy_refuses(case: str) -> None:
    raw, policy, field = POLICY_CASES[case]
    spec = _spec(**raw)
    found = violations(spec, policy, default_image=IMAGE)
    assert len(found) == 1 and found[0].startswith(field), found
    with pytest.raises(PolicyError) as caught:
        check(spec, policy, default_image=IMAGE)
    assert caught.value.reason == "PolicyViolation"
    assert isinstance(kopf_error(caught.value), kopf.PermanentError)


def test_policy_allows_what_the_flags_allow() -> None:
    spec = _spec(
        image="ghcr.io/slm-operator/slm-runtime:dev",
        hardware={"tolerations": [{"operator": "Exists"}], "nodeSelector": {"kubernetes.io/arch": "amd64"}},
        podAnnotations={"prometheus.io/scrape": "true"},
        model={"name": "m", "variants": [{"quantization": "Q4_K_M", "uri": "hf://o/r/m.gguf"}]},
    )
    permissive = Policy(
        allowed_image_prefixes=("ghcr.io/slm-operator/",),
        allow_control_plane=True,
        allow_unverified_models=True,
    )
    assert violations(spec, permissive, default_image=IMAGE) == []
    pinned = _spec(
        model={"name": "m", "variants": [{"quantization": "Q4_K_M", "uri": "hf://o/r/m", "sha256": SHA}]}
    )
    assert violations(pinned, Policy(), default_image=IMAGE) == []
    assert violations(_spec(), Policy(), default_image=IMAGE) == []  # tiny:// is generated in the pod


# --- item 7: no takeover -------------------------------------------------------------------------


class _Cluster:
    """Just enough API for `check_names`/`execute`: GETs from `objects`, applies recorded."""

    def __init__(self, objects: dict[Any, dict[str, Any]] | None = None, reject: int | None = None) -> None:
        self.objects = objects or {}
        self.reads: list[Any] = []
        self.applies: list[dict[str, Any]] = []
        self.reject = reject

    def read(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = False
    ) -> dict[str, Any] | None:
        self.reads.append((api_version, kind, namespace, name))
        return self.objects.get((api_version, kind, namespace, name))

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.reject is not None:
            raise KubeError(f"apply {obj['kind']}: {self.reject} Unprocessable: invalid", status=self.reject)
        self.applies.append(obj)
        return obj

    def delete(self, obj: dict[str, Any]) -> None:
        raise AssertionError("nothing is deleted here")

    def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        return None


def _plan(body: dict[str, Any], observed: Observed | None = None) -> Any:
    return plan(body, observed or Observed(nodes=bed_nodes()), image=IMAGE, timestamp="2026-01-01T00:00:00Z")


@pytest.mark.parametrize(
    ("attack", "kind", "api_version", "owner_name", "victim"),
    [
        ("service-redis", "Service", "v1", "redis", "redis"),
        (
            "networkpolicy-default-deny",
            "NetworkPolicy",
            "networking.k8s.io/v1",
            "default-deny",
            "default-deny",
        ),
        ("serviceaccount-default", "ServiceAccount", "v1", "default", "default"),
        ("configmap-runtime", "ConfigMap", "v1", "m", "m-runtime"),
    ],
)
def test_takeover_refused(attack: str, kind: str, api_version: str, owner_name: str, victim: str) -> None:
    body = _body(owner_name)
    the_plan = _plan(body)
    foreign = {"apiVersion": api_version, "kind": kind, "metadata": {"name": victim, "namespace": "ns"}}
    cluster = _Cluster({key_of(foreign): foreign})
    with pytest.raises(NameConflictError) as caught:
        check_names(the_plan, Observed(nodes=bed_nodes()), cluster)
    assert f"{kind} ns/{victim} already exists (not owned)" in str(caught.value)
    assert cluster.applies == []  # nothing was applied
    assert len(cluster.reads) == len(the_plan.apply)  # one GET per child the caches do not know
    assert isinstance(kopf_error(caught.value), kopf.TemporaryError)


def test_known_children_cost_no_get_and_a_stranger_with_our_labels_is_refused() -> None:
    body = _body("m")
    first = _plan(body)
    owned = {key_of(o): observed_form(o) for o in first.desired}
    again = _plan(body, Observed(nodes=bed_nodes(), children=owned))
    assert unverified_keys(again, Observed(nodes=bed_nodes(), children=owned)) == []
    # A listed object with our labels but another controller (or none) is not ours.
    service = next(o for o in first.desired if o["kind"] == "Service")
    stranger = copy.deepcopy(observed_form(service))
    stranger["metadata"]["ownerReferences"] = [
        {"kind": "SLMDeployment", "name": "other", "uid": "other", "controller": True}
    ]
    stranger["spec"]["selector"] = {"app": "x"}
    observed = Observed(nodes=bed_nodes(), children={**owned, key_of(service): stranger})
    conflicts = conflicts_of(_plan(body, observed), observed, {})
    assert [c.message for c in conflicts] == [
        "Service ns/m already exists (controlled by SLMDeployment other)"
    ]
    assert not conflicts[0].passing  # someone else's: retried slowly
    # A child of an earlier SLMDeployment of the same name (deleted, created again) passes by itself.
    stranger["metadata"]["ownerReferences"][0].update(name="m", uid="earlier")
    (earlier,) = conflicts_of(_plan(body, observed), observed, {})
    assert earlier.passing and "garbage collector" in earlier.message
    err = NameConflictError(earlier.message, passing=True)
    assert kopf_error(err).delay < kopf_error(NameConflictError("x")).delay  # type: ignore[attr-defined]


# --- item 10: an apply the server rejects reaches the status --------------------------------------


@pytest.mark.parametrize("status", [400, 403, 422])
def test_rejected_apply_becomes_apply_failed_and_backs_off_when_it_repeats(status: int) -> None:
    with pytest.raises(ApplyError) as caught:
        execute(_plan(_body()), _Cluster(reject=status))
    assert caught.value.reason == "ApplyFailed" and f"{status} Unprocessable: invalid" in str(caught.value)
    first = kopf_error(caught.value, retry=9)  # kopf's count includes an outage's connection errors
    again = kopf_error(caught.value, retry=1, repeated=True)  # the status already says this
    assert (first.delay, again.delay) == (2, 60)  # type: ignore[attr-defined]


def test_transient_api_errors_stay_quiet_retries() -> None:
    with pytest.raises(KubeError):
        execute(_plan(_body()), _Cluster(reject=503))


# --- item 11: PVC access mode kept, quantities compared by value ----------------------------------


def test_pvc_access_mode_is_kept_when_replicas_grow() -> None:
    one = _body("m", replicas=1, cache={"type": "pvc", "size": "1024Mi"})
    first = _plan(one)
    claim = next(o for o in first.desired if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    children = {key_of(o): observed_form(o) for o in first.desired}
    two = {**one, "spec": {**one["spec"], "replicas": 2}}
    second = _plan(two, Observed(nodes=bed_nodes(), children=children))
    kinds = {s.obj["kind"]: s.obj for s in second.apply}
    assert "PersistentVolumeClaim" not in kinds  # unchanged: kept as created
    assert kinds["Deployment"]["spec"]["replicas"] == 2
    fresh = next(o for o in _plan(two).desired if o["kind"] == "PersistentVolumeClaim")
    assert fresh["spec"]["accessModes"] == ["ReadWriteMany"]  # a new claim for 2 pods is shared


def test_quantities_in_another_spelling_are_not_drift() -> None:
    assert not drifted({"storage": "1024Mi"}, {"storage": "1Gi"})
    assert not drifted({"cpu": "1000m"}, {"cpu": "1"})
    assert drifted({"storage": "1024Mi"}, {"storage": "2Gi"})
    assert drifted({"name": "a"}, {"name": "b"})


# --- item 3 (operator part): credentials in a model URI -------------------------------------------

SECRET_URI = "https://alice:hunter2@models.example/m.gguf?X-Amz-Signature=sig-secret&token=tok-secret"


def test_credentials_never_reach_status_events_or_messages() -> None:
    body = _body(
        "m", model={"name": "m", "variants": [{"quantization": "Q4_K_M", "uri": SECRET_URI, "sha256": SHA}]}
    )
    the_plan = _plan(body)
    status = the_plan.status()
    everything = repr((status, the_plan.events))
    for secret in ("hunter2", "sig-secret", "tok-secret", "alice"):
        assert secret not in everything
    assert status["variant"]["uri"].startswith("https://REDACTED@models.example/m.gguf?")
    pod = {
        "metadata": {"name": "p"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "fetch-model",
                    "state": {"terminated": {"exitCode": 1, "message": f"GET {SECRET_URI}: 403 Forbidden"}},
                }
            ]
        },
    }
    failure = fetch_failure([pod])
    assert failure is not None and "403 Forbidden" in failure
    assert "hunter2" not in failure and "tok-secret" not in failure and "sig-secret" not in failure
    assert "hunter2" not in str(kopf_error(SpecError(f"bad {SECRET_URI}")))


def test_redaction_keeps_what_is_not_a_credential() -> None:
    assert redact.uri("tiny://gguf?quantization=q8_0") == "tiny://gguf?quantization=q8_0"
    assert redact.uri("hf://org/repo/file.gguf") == "hf://org/repo/file.gguf"
    assert redact.text("placed gguf Q4_K_M on cpu") == "placed gguf Q4_K_M on cpu"
    status = reconciled_status(
        name="m",
        namespace="ns",
        generation=1,
        port=8080,
        placement=_plan(_body()).placement,
        deployment=None,
        old=None,
        timestamp="t",
    )
    assert status["variant"]["uri"] == "tiny://gguf?quantization=q8_0"
