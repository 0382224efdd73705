"""Issue 13, operator half: each attack a namespace tenant can try through an SLMDeployment, run
against the test bed's real API server with the operator running as the chart's ServiceAccount.

The tenant may only manage SLMDeployments (and read Events) in its namespace; the objects it aims
at are created by the cluster admin. Every test fails if its attack works.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from e2e.helpers import wait_deleted, wait_for

from .operator_support import (
    OperatorProcess,
    Tenant,
    kube_api,
    kubeconfig,
    operator_release,
    sec_operator,
    tenant,
)

pytestmark = pytest.mark.e2e
__all__ = ["kube_api", "kubeconfig", "operator_release", "sec_operator", "tenant"]

GROUP, VERSION, PLURAL = "slm.dev", "v1alpha1", "slmdeployments"
TINY = {
    "name": "tiny",
    "variants": [{"format": "gguf", "quantization": "Q8_0", "uri": "tiny://gguf?quantization=q8_0"}],
}
CHEAP = {"resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}}
SHA = "0" * 64


def _custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _create(tenant: Tenant, name: str, **spec: Any) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": {"model": TINY, **CHEAP, **spec},
    }
    _custom(tenant.api).create_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, body)


def _get(tenant: Tenant, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = _custom(tenant.api).get_namespaced_custom_object(
        GROUP, VERSION, tenant.namespace, PLURAL, name
    )
    return obj


def _delete(tenant: Tenant, name: str) -> None:
    with contextlib.suppress(client.ApiException):
        _custom(tenant.api).delete_namespaced_custom_object(GROUP, VERSION, tenant.namespace, PLURAL, name)
    wait_deleted(lambda: _get(tenant, name), 30, f"SLMDeployment {name}")


def _degraded(tenant: Tenant, name: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        obj = _get(tenant, name)
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond["type"] == "Degraded" and cond["status"] == "True" and cond["reason"] == reason:
                return dict(cond)
        return None

    found: dict[str, Any] = wait_for(check, timeout, f"{name} Degraded with reason {reason}")
    return found


def _events(tenant: Tenant, name: str, reason: str) -> list[client.CoreV1Event]:
    selector = f"involvedObject.kind=SLMDeployment,involvedObject.name={name}"
    items = (
        client.CoreV1Api(tenant.api).list_namespaced_event(tenant.namespace, field_selector=selector).items
    )
    return [e for e in items if e.reason == reason]


def _children(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    selector = f"slm.dev/deployment={name}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    found = [
        f"Deployment/{d.metadata.name}"
        for d in apps.list_namespaced_deployment(namespace, label_selector=selector).items
    ]
    found += [
        f"ConfigMap/{c.metadata.name}"
        for c in core.list_namespaced_config_map(namespace, label_selector=selector).items
    ]
    found += [
        f"Service/{s.metadata.name}"
        for s in core.list_namespaced_service(namespace, label_selector=selector).items
    ]
    return found


# --- item 7: no takeover -------------------------------------------------------------------------


def _service(api: client.ApiClient, ns: str) -> Any:
    return client.CoreV1Api(api).create_namespaced_service(
        ns,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="redis", labels={"app": "redis"}),
            spec=client.V1ServiceSpec(selector={"app": "redis"}, ports=[client.V1ServicePort(port=6379)]),
        ),
    )


def _deny_all(api: client.ApiClient, ns: str) -> Any:
    return client.NetworkingV1Api(api).create_namespaced_network_policy(
        ns,
        client.V1NetworkPolicy(
            metadata=client.V1ObjectMeta(name="default-deny"),
            spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(), policy_types=["Ingress"]),
        ),
    )


def _default_sa(api: client.ApiClient, ns: str) -> Any:
    return client.CoreV1Api(api).read_namespaced_service_account("default", ns)


VICTIMS: dict[
    str, tuple[str, str, Callable[[client.ApiClient, str], Any], Callable[[client.ApiClient, str], Any]]
] = {
    "takeover-service-redis": (
        "redis",
        "Service",
        _service,
        lambda api, ns: client.CoreV1Api(api).read_namespaced_service("redis", ns),
    ),
    "takeover-networkpolicy-default-deny": (
        "default-deny",
        "NetworkPolicy",
        _deny_all,
        lambda api, ns: client.NetworkingV1Api(api).read_namespaced_network_policy("default-deny", ns),
    ),
    "takeover-serviceaccount-default": ("default", "ServiceAccount", _default_sa, _default_sa),
}


@pytest.mark.parametrize("attack", sorted(VICTIMS))
def test_takeover(
    attack: str, kube_api: client.ApiClient, tenant: Tenant, sec_operator: OperatorProcess
) -> None:
    name, kind, make, read = VICTIMS[attack]
    before = make(kube_api, tenant.namespace)
    _create(tenant, name)
    degraded = _degraded(tenant, name, "NameConflict")
    assert f"{kind} {tenant.namespace}/{name} already exists" in degraded["message"], degraded
    events = wait_for(lambda: _events(tenant, name, "NameConflict"), 15, "a NameConflict Event")
    assert f"{kind} {tenant.namespace}/{name}" in (events[0].message or "")
    after = read(kube_api, tenant.namespace)
    assert after.metadata.resource_version == before.metadata.resource_version, "the victim was changed"
    assert not after.metadata.owner_references
    assert _children(kube_api, tenant.namespace, name) == []  # nothing of the SLMDeployment applied

    _delete(tenant, name)
    time.sleep(2)  # the garbage collector acts within milliseconds on what it owns
    survivor = read(kube_api, tenant.namespace)
    assert survivor.metadata.uid == before.metadata.uid, "deleting the SLMDeployment deleted the victim"


# --- item 10: an apply the API server rejects reaches the user ------------------------------------


def test_apply_rejected_by_the_server_is_reported(tenant: Tenant, sec_operator: OperatorProcess) -> None:
    name = "requests-over-limits"
    _create(tenant, name, resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})
    degraded = _degraded(tenant, name, "ApplyFailed")
    assert "422" in degraded["message"] and "must be less than or equal to cpu limit" in degraded["message"]
    events = wait_for(lambda: _events(tenant, name, "ApplyFailed"), 15, "an ApplyFailed Event")
    assert "must be less than or equal to cpu limit" in (events[0].message or "")
    _delete(tenant, name)


# --- item 9 and 5: the operator's policy -----------------------------------------------------------

POLICY: dict[str, tuple[dict[str, Any], str]] = {
    "image-outside-allowed-prefix": ({"image": "evil.example/miner:1"}, "spec.image"),
    "toleration-of-every-taint": (
        {"hardware": {"tolerations": [{"operator": "Exists"}]}},
        "spec.hardware.tolerations[0]",
    ),
    "control-plane-node-selector": (
        {"hardware": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}},
        "spec.hardware.nodeSelector[node-role.kubernetes.io/control-plane]",
    ),
    "apparmor-unconfined-annotation": (
        {"podAnnotations": {"container.apparmor.security.beta.kubernetes.io/runtime": "unconfined"}},
        "spec.podAnnotations[container.apparmor.security.beta.kubernetes.io/runtime]",
    ),
    "model-without-sha256": (
        {
            "model": {
                "name": "m",
                "variants": [{"quantization": "Q4_K_M", "uri": "https://models.example/m.gguf"}],
            }
        },
        "spec.model.variants[0].sha256 is required",
    ),
}


@pytest.mark.parametrize("attack", sorted(POLICY))
def test_policy(
    attack: str, kube_api: client.ApiClient, tenant: Tenant, sec_operator: OperatorProcess
) -> None:
    spec, field = POLICY[attack]
    name = f"policy-{attack}"[:52].rstrip("-")
    _create(tenant, name, **spec)
    degraded = _degraded(tenant, name, "PolicyViolation")
    assert field in degraded["message"], degraded
    assert _children(kube_api, tenant.namespace, name) == []
    _delete(tenant, name)


# --- item 3 (operator part): credentials in a model URI --------------------------------------------


def test_uri_credentials_stay_in_the_spec(
    kube_api: client.ApiClient, tenant: Tenant, sec_operator: OperatorProcess
) -> None:
    name = "uri-credentials"
    uri = "https://alice:hunter2-pass@models.example/m.gguf?token=tok-secret-1"
    _create(
        tenant, name, model={"name": "m", "variants": [{"quantization": "Q4_K_M", "uri": uri, "sha256": SHA}]}
    )
    obj = wait_for(
        lambda: (o := _get(tenant, name)).get("status", {}).get("variant") and o, 30, "status.variant"
    )
    shown = repr(obj["status"])
    assert "hunter2-pass" not in shown and "tok-secret-1" not in shown and "alice" not in shown
    assert obj["status"]["variant"]["uri"] == "https://REDACTED@models.example/m.gguf?token=REDACTED"
    events = client.CoreV1Api(tenant.api).list_namespaced_event(tenant.namespace).items
    assert not [
        e for e in events if "hunter2-pass" in (e.message or "") or "tok-secret-1" in (e.message or "")
    ]
    log = sec_operator.log.read_text(errors="replace")
    assert "hunter2-pass" not in log and "tok-secret-1" not in log
    _delete(tenant, name)


# --- item 8: the cluster-wide operator cannot read Secrets -----------------------------------------


def test_operator_cannot_read_secret_data(
    kube_api: client.ApiClient, tenant: Tenant, sec_operator: OperatorProcess
) -> None:
    client.CoreV1Api(kube_api).create_namespaced_secret(
        tenant.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="db"), string_data={"password": "x"}),
    )
    from kubernetes import config as kube_config

    as_operator = kube_config.new_client_from_config(config_file=str(sec_operator.kubeconfig))
    try:
        with pytest.raises(client.ApiException) as caught:
            client.CoreV1Api(as_operator).read_namespaced_secret("db", tenant.namespace)
        assert caught.value.status == 403
    finally:
        as_operator.close()
    # ... and an SLMDeployment with spec.auth is still served: the pods mount the Secret themselves.
    name = "auth-without-secret-access"
    _create(tenant, name, auth={"apiKeySecretRef": {"name": "keys"}})
    wait_for(
        lambda: client.AppsV1Api(kube_api).read_namespaced_deployment(name, tenant.namespace),
        30,
        f"Deployment {name}",
        ignore=(client.ApiException,),
    )
    _delete(tenant, name)


# --- item 11: a PVC cache going from 1 to 2 replicas; quantities in another spelling ---------------


def test_pvc_cache_scales_and_a_respelled_size_is_not_drift(
    kube_api: client.ApiClient, tenant: Tenant, sec_operator: OperatorProcess
) -> None:
    name = "pvc-cache"
    _create(tenant, name, cache={"type": "pvc", "size": "1024Mi"})
    core, apps = client.CoreV1Api(kube_api), client.AppsV1Api(kube_api)
    claim = wait_for(
        lambda: core.read_namespaced_persistent_volume_claim(f"{name}-cache", tenant.namespace),
        30,
        "the cache PVC",
        ignore=(client.ApiException,),
    )
    assert claim.spec.access_modes == ["ReadWriteOnce"]
    assert claim.spec.resources.requests["storage"] in ("1Gi", "1024Mi")
    wait_for(
        lambda: apps.read_namespaced_deployment(name, tenant.namespace).spec.replicas == 1,
        30,
        "the Deployment at 1 replica",
        ignore=(client.ApiException,),
    )

    _custom(tenant.api).patch_namespaced_custom_object(
        GROUP, VERSION, tenant.namespace, PLURAL, name, {"spec": {"replicas": 2}}
    )
    wait_for(
        lambda: apps.read_namespaced_deployment(name, tenant.namespace).spec.replicas == 2,
        30,
        "the Deployment at 2 replicas",
    )
    claim = core.read_namespaced_persistent_volume_claim(f"{name}-cache", tenant.namespace)
    assert claim.spec.access_modes == ["ReadWriteOnce"]  # immutable: kept as created
    obj = _get(tenant, name)
    degraded = next(c for c in obj["status"]["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] != "ApplyFailed", degraded

    # An edit of the claim by someone else (a label) makes a watch event: the stored "1Gi" is the
    # same quantity as the spec's "1024Mi", so no drift correction follows.
    drift_before = sec_operator.metric("slm_operator_reconciles_total", trigger="drift")
    core.patch_namespaced_persistent_volume_claim(
        f"{name}-cache", tenant.namespace, {"metadata": {"labels": {"touched": "yes"}}}
    )
    time.sleep(3)  # the watch event arrives within milliseconds
    assert sec_operator.metric("slm_operator_reconciles_total", trigger="drift") == drift_before
    assert not _events(tenant, name, "DriftCorrected")
    _delete(tenant, name)
