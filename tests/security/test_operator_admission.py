"""Issue 13 item 10 (and the fixed rules of item 9) on the real API server: what the server would
reject when the operator applies a child is rejected when the tenant applies the SLMDeployment,
with a message that names the field and says why, so no CR sits there with an empty row forever.

Runs as the tenant (a ServiceAccount that may only manage SLMDeployments in its namespace); needs
no operator: this is the CRD's schema and CEL at work.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from kubernetes import client

from .operator_support import Tenant, kube_api, kubeconfig, operator_release, tenant

pytestmark = pytest.mark.e2e
__all__ = ["kube_api", "kubeconfig", "operator_release", "tenant"]

GROUP, VERSION, PLURAL = "slm.dev", "v1alpha1", "slmdeployments"
TINY = {
    "name": "tiny",
    "variants": [{"format": "gguf", "quantization": "Q8_0", "uri": "tiny://gguf?quantization=q8_0"}],
}

ATTACKS: dict[str, tuple[str, dict[str, Any], str]] = {
    "name-qwen2.5": ("qwen2.5", {}, "metadata.name must be a DNS-1035 label"),
    "name-7b-model": ("7b-model", {}, "metadata.name must be a DNS-1035 label"),
    "pod-label-value-a-b": ("labels-space", {"podLabels": {"team": "a b"}}, "podLabels values must be valid"),
    "pod-label-key-space": (
        "labels-key",
        {"podLabels": {"my team": "a"}},
        "podLabels keys must be qualified",
    ),
    "pod-label-selector-hijack": (
        "labels-hijack",
        {"podLabels": {"app.kubernetes.io/instance": "other-model"}},
        "podLabels may not use keys in the kubernetes.io, k8s.io and slm.dev domains",
    ),
    "pod-label-operator-key": (
        "labels-owner",
        {"podLabels": {"slm.dev/deployment": "other-model"}},
        "podLabels may not use keys",
    ),
    "pod-annotation-config-hash": (
        "annotations-hash",
        {"podAnnotations": {"slm.dev/config-hash": "0"}},
        "podAnnotations may not use keys in the slm.dev domain",
    ),
    "node-selector-value-space": (
        "selector-space",
        {"hardware": {"nodeSelector": {"pool": "a b"}}},
        "hardware.nodeSelector values must be valid",
    ),
}


def _create(tenant: Tenant, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": {"model": TINY, **spec},
    }
    created: dict[str, Any] = client.CustomObjectsApi(tenant.api).create_namespaced_custom_object(
        GROUP, VERSION, tenant.namespace, PLURAL, body
    )
    return created


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_rejected_at_admission(attack: str, operator_release: object, tenant: Tenant) -> None:
    name, spec, message = ATTACKS[attack]
    with pytest.raises(client.ApiException) as caught:
        _create(tenant, name, spec)
    assert caught.value.status == 422, caught.value.body
    status = json.loads(caught.value.body)
    assert status["reason"] == "Invalid"
    assert message in status["message"], status["message"]


def test_valid_names_and_labels_are_accepted(operator_release: object, tenant: Tenant) -> None:
    """The control: the same shapes, spelled validly, pass (the rules reject only what they must)."""
    created = _create(
        tenant,
        "qwen2-5",
        {
            "podLabels": {"team": "a-b", "example.com/tier": "gold"},
            "podAnnotations": {"prometheus.io/scrape": "true", "note": "free text, with spaces"},
            "hardware": {"nodeSelector": {"kubernetes.io/arch": "amd64"}},
        },
    )
    assert created["metadata"]["name"] == "qwen2-5"
    with contextlib.suppress(client.ApiException):
        client.CustomObjectsApi(tenant.api).delete_namespaced_custom_object(
            GROUP, VERSION, tenant.namespace, PLURAL, "qwen2-5"
        )
