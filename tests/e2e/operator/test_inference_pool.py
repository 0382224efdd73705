"""InferencePools on the real control plane, with the real CRD of the Gateway API Inference
Extension (v1.6.0, taken from its Go module by hack/fetch-gie-crd.sh): installed while the operator
runs, the operator starts rendering one pool per SLMDeployment (learned from the CRD's events, no
restart); the API server accepts them (its structural schema and CEL rules); the pools select the
SLMDeployment's pods on their container port as replicas come and go; once the CRD is removed
again the operator goes on reconciling without it. (A pool deleted by hand is not restored until
the operator restarts: the operator does not watch this optional kind, see reconcile/handlers.py.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from slm_operator.kube import Kube
from slm_operator.reconcile.discovery import OPTIONAL_CHILDREN, crd_serves

from ..helpers import BIN_DIR, kubectl, wait_deleted, wait_for
from . import support
from .conftest import OperatorProcess, tail

pytestmark = pytest.mark.usefixtures("operator")

GROUP, VERSION, PLURAL = "inference.networking.k8s.io", "v1", "inferencepools"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_FILE = BIN_DIR / "gie-inferencepools.yaml"


def _crd_api(api: client.ApiClient) -> client.ApiextensionsV1Api:
    return client.ApiextensionsV1Api(api)


@pytest.fixture
def gie_crd(kubeconfig: str, kube_api: client.ApiClient) -> Iterator[Path]:
    """The GIE InferencePool CRD installed for one test, and removed afterwards (so the other
    tests of this package run on a cluster without it, as before)."""
    if not CRD_FILE.exists():
        pytest.fail(f"{CRD_FILE} is missing: run `make bins`", pytrace=False)
    _wait_crd_gone(kube_api)  # an apply onto a CRD still being deleted would go with it
    kubectl(kubeconfig, "apply", "--server-side", f"--filename={CRD_FILE}", timeout=60)

    def established() -> bool:
        crd = _crd_api(kube_api).read_custom_resource_definition(CRD_NAME)
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or ())

    wait_for(established, 30, f"CRD {CRD_NAME} Established")
    try:
        yield CRD_FILE
    finally:
        with contextlib.suppress(client.ApiException):
            _crd_api(kube_api).delete_custom_resource_definition(CRD_NAME)
        _wait_crd_gone(kube_api)


def _wait_crd_gone(api: client.ApiClient) -> None:
    """Until no CRD of that name exists: a deleted CRD lingers while its objects are removed."""
    wait_deleted(lambda: _crd_api(api).read_custom_resource_definition(CRD_NAME), 60, f"CRD {CRD_NAME} gone")


def _pools(api: client.ApiClient, namespace: str) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def _get_pool(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        pool: dict[str, Any] = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except client.ApiException as err:
        if err.status == 404:
            return None
        raise
    return pool


def _selected_pods(api: client.ApiClient, namespace: str, pool: dict[str, Any]) -> list[client.V1Pod]:
    labels = pool["spec"]["selector"]["matchLabels"]
    selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    items = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [p for p in items if p.metadata.deletion_timestamp is None]


def test_pools_follow_the_crd_and_the_pods(
    kube_api: client.ApiClient, slm_namespace: str, operator: OperatorProcess, gie_crd: Path
) -> None:
    # the CRD read the operator makes at startup and on every event of the CRD, on the real API
    # server: a LIST by name (kopf's RBAC grants list on CRDs, not get)
    found = Kube(kube_api).read_crd(CRD_NAME)
    assert found is not None and found["metadata"]["name"] == CRD_NAME
    assert crd_serves(found, next(c for c in OPTIONAL_CHILDREN if c.kind == "InferencePool"))
    assert Kube(kube_api).read_crd(f"nosuchthings.{GROUP}") is None

    name = "pool"
    support.create(kube_api, slm_namespace, support.tiny(name))
    pool = wait_for(lambda: _get_pool(kube_api, slm_namespace, name), 60, "the InferencePool")
    owner = support.get(kube_api, slm_namespace, name)
    ref = pool["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "SLMDeployment",
        name,
        owner["metadata"]["uid"],
        True,
    )
    service = client.CoreV1Api(kube_api).read_namespaced_service(name, slm_namespace)
    assert pool["spec"]["selector"]["matchLabels"] == service.spec.selector
    # the API server applied the CRD's defaults: the object went through its schema
    assert pool["spec"]["appProtocol"] == "http"

    # the pool selects the pods, on the port their container listens on, as replicas change
    support.wait_condition(kube_api, slm_namespace, name, "Ready", "True", timeout=90)
    pods = _selected_pods(kube_api, slm_namespace, pool)
    assert [p.metadata.name for p in pods] == [
        p.metadata.name for p in support.pods(kube_api, slm_namespace, name)
    ]
    ports = {port.container_port for c in pods[0].spec.containers for port in c.ports or ()}
    assert [p["number"] for p in pool["spec"]["targetPorts"]] == [8080] and 8080 in ports
    support.patch_spec(kube_api, slm_namespace, name, {"replicas": 2})
    wait_for(lambda: len(_selected_pods(kube_api, slm_namespace, pool)) == 2, 60, "2 pods in the pool")

    # the real API server's CEL rules are in force for this kind: what we render passes them
    bad = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferencePool",
        "metadata": {"name": "bad"},
        "spec": {**pool["spec"], "targetPorts": [{"number": 8080}, {"number": 8080}]},
    }
    with pytest.raises(client.ApiException) as refused:
        client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
            GROUP, VERSION, slm_namespace, PLURAL, bad
        )
    assert refused.value.status == 422 and "port number must be unique" in str(refused.value.body)


def test_without_the_crd_reconciles_go_on(
    kube_api: client.ApiClient, slm_namespace: str, operator: OperatorProcess, gie_crd: Path
) -> None:
    """The CRD is removed while SLMDeployments exist: the operator notices and keeps reconciling
    them without the kind (no apply of a pool would succeed, and none is tried)."""
    name = "nopool"
    support.create(kube_api, slm_namespace, support.tiny(name))
    wait_for(lambda: _get_pool(kube_api, slm_namespace, name), 60, "the InferencePool")
    _crd_api(kube_api).delete_custom_resource_definition(CRD_NAME)
    wait_deleted(lambda: _crd_api(kube_api).read_custom_resource_definition(CRD_NAME), 60, "the CRD")
    support.patch_spec(kube_api, slm_namespace, name, {"replicas": 2})

    def scaled() -> bool:
        return bool(support.deployment(kube_api, slm_namespace, name).spec.replicas == 2)

    wait_for(scaled, 60, "the Deployment scaled to 2 without the CRD")
    status = support.get(kube_api, slm_namespace, name)
    degraded = support.condition(status, "Degraded")
    assert degraded is None or degraded["status"] != "True", degraded
    noticed, _, after = tail(operator, 400).rpartition("optional child kinds served: none")
    assert noticed, "the operator did not log that InferencePools are no longer served"
    assert "apply InferencePool" not in after


def test_a_crd_recreated_at_once_brings_the_pools_back(
    kube_api: client.ApiClient, kubeconfig: str, slm_namespace: str, gie_crd: Path
) -> None:
    """Deleted and re-created under the same name, several times in a row: the events of the old
    and the new CRD reach the operator in two of kopf's workers, in any order; the operator reads
    the CRD again on each, so it ends serving the kind and the pool comes back with it."""
    name = "again"
    support.create(kube_api, slm_namespace, support.tiny(name))
    wait_for(lambda: _get_pool(kube_api, slm_namespace, name), 60, "the InferencePool")
    for _ in range(3):
        _crd_api(kube_api).delete_custom_resource_definition(CRD_NAME)
        _wait_crd_gone(kube_api)
        kubectl(kubeconfig, "apply", "--server-side", f"--filename={gie_crd}", timeout=60)
    wait_for(lambda: _get_pool(kube_api, slm_namespace, name), 60, "the InferencePool back")
