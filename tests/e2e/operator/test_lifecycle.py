"""Lifecycle on the real control plane: garbage collection of children (kube-controller-manager's
GC), drift correction (a deleted Service, a hand-edited Deployment, each correction reported, the
operator's own writes not taken for drift), and the auth Secret (missing: Degraded, nothing applied,
healed once it exists; deleted later: noticed by the periodic resync)."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from ..helpers import wait_for
from . import support
from .conftest import OperatorProcess

pytestmark = pytest.mark.usefixtures("operator")

CHILDREN = ("Deployment", "Service", "ServiceAccount", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget")


def _ready(api: client.ApiClient, namespace: str, name: str) -> support.Obj:
    return support.wait_condition(api, namespace, name, "Ready", "True", timeout=90)


def test_deleting_the_slmdeployment_garbage_collects_every_child(
    kube_api: client.ApiClient, slm_namespace: str
) -> None:
    name = "gc"
    support.create(kube_api, slm_namespace, support.tiny(name, replicas=2))
    _ready(kube_api, slm_namespace, name)
    found = support.children(kube_api, slm_namespace, name)
    assert all(found[kind] for kind in CHILDREN), {k: len(v) for k, v in found.items()}
    assert support.pods(kube_api, slm_namespace, name)

    support.delete(kube_api, slm_namespace, name)
    support.wait_gone(kube_api, slm_namespace, name)

    def all_gone() -> bool:
        left = support.children(kube_api, slm_namespace, name)
        sets = client.AppsV1Api(kube_api).list_namespaced_replica_set(slm_namespace).items
        pods = client.CoreV1Api(kube_api).list_namespaced_pod(slm_namespace).items  # terminating too
        return not any(left.values()) and not sets and not pods

    # The GC learns a freshly installed CRD at its next discovery resync (30s): allow for that.
    wait_for(all_gone, 60, "the garbage collector to delete every child, ReplicaSet and pod")


def test_deleted_service_is_restored(kube_api: client.ApiClient, slm_namespace: str) -> None:
    name = "drift-svc"
    support.create(kube_api, slm_namespace, support.tiny(name))
    _ready(kube_api, slm_namespace, name)
    core = client.CoreV1Api(kube_api)
    old_uid = core.read_namespaced_service(name, slm_namespace).metadata.uid

    core.delete_namespaced_service(name, slm_namespace)

    def restored() -> client.V1Service | None:
        try:
            svc = core.read_namespaced_service(name, slm_namespace)
        except client.ApiException as err:
            if err.status == 404:
                return None
            raise
        return svc if svc.metadata.uid != old_uid else None

    svc = wait_for(restored, 20, "the deleted Service to be recreated")
    assert svc.spec.selector == {"app.kubernetes.io/name": "slm-runtime", "app.kubernetes.io/instance": name}
    assert [(p.name, p.port) for p in svc.spec.ports] == [("http", 8080)]
    assert svc.metadata.owner_references[0].controller


def test_edited_deployment_is_restored(kube_api: client.ApiClient, slm_namespace: str) -> None:
    name = "drift-dep"
    support.create(kube_api, slm_namespace, support.tiny(name))
    _ready(kube_api, slm_namespace, name)
    apps = client.AppsV1Api(kube_api)
    original = apps.read_namespaced_deployment(name, slm_namespace)
    image = original.spec.template.spec.containers[0].image
    assert original.spec.replicas == 1

    # An edit by hand (a different field manager): replicas and the runtime image.
    apps.patch_namespaced_deployment(
        name,
        slm_namespace,
        {
            "spec": {
                "replicas": 3,
                "template": {"spec": {"containers": [{"name": "runtime", "image": "example.com/evil:1"}]}},
            }
        },
    )

    def reverted() -> client.V1Deployment | None:
        dep = apps.read_namespaced_deployment(name, slm_namespace)
        runtime = next(c for c in dep.spec.template.spec.containers if c.name == "runtime")
        return dep if dep.spec.replicas == 1 and runtime.image == image else None

    wait_for(reverted, 20, "the hand-edited Deployment to be restored")
    # It stays restored (no fight with a stale event), and the pods settle back to one.
    wait_for(lambda: len(support.pods(kube_api, slm_namespace, name)) == 1, 60, "one pod again")
    _ready(kube_api, slm_namespace, name)


def _drift_events(api: client.ApiClient, namespace: str, name: str) -> int:
    events = support.events_for(api, namespace, "SLMDeployment", name)
    return sum(e.count or 1 for e in events if e.reason == "DriftCorrected")


def test_every_drift_correction_is_reported(kube_api: client.ApiClient, slm_namespace: str) -> None:
    """Two hand edits in a row, both corrected, give two DriftCorrected Events, also when both
    corrections fall into the same second (managedFields times have one-second resolution)."""
    name = "drift-twice"
    support.create(kube_api, slm_namespace, support.tiny(name))
    _ready(kube_api, slm_namespace, name)
    apps = client.AppsV1Api(kube_api)

    def edit_and_wait_restored(replicas: int) -> None:
        apps.patch_namespaced_deployment(name, slm_namespace, {"spec": {"replicas": replicas}})
        wait_for(
            lambda: apps.read_namespaced_deployment(name, slm_namespace).spec.replicas == 1,
            20,
            f"replicas {replicas} corrected back to 1",
            interval=0.02,
        )

    # Start just after a second boundary so that both corrections (each well under a second on
    # an idle machine) land in the same second.
    time.sleep(1.02 - time.time() % 1)
    edit_and_wait_restored(2)
    edit_and_wait_restored(3)
    wait_for(lambda: _drift_events(kube_api, slm_namespace, name) >= 2, 20, "two DriftCorrected Events")


def test_own_writes_are_not_mistaken_for_drift(
    kube_api: client.ApiClient, slm_namespace: str, operator: OperatorProcess
) -> None:
    """A spec change is one reconcile: the watch events of the operator's own apply are not edits
    (no extra `drift` reconciles, which would also repeat the change's Events)."""
    name = "own-writes"
    support.create(kube_api, slm_namespace, support.tiny(name))
    _ready(kube_api, slm_namespace, name)

    def drift_reconciles() -> float:
        return operator.metric("slm_operator_reconciles_total", trigger="drift")

    core = client.CoreV1Api(kube_api)

    def settled() -> tuple[float] | None:
        # Earlier tests' namespaces being deleted cause drift reconciles (their children vanish):
        # wait until none is terminating and the count stands still.
        if any(ns.status.phase == "Terminating" for ns in core.list_namespace().items):
            return None
        before = drift_reconciles()
        time.sleep(2)
        return (before,) if drift_reconciles() == before else None

    (before,) = wait_for(settled, 90, "no namespace terminating and no drift reconciles for 2s")
    support.patch_spec(kube_api, slm_namespace, name, {"prompt": {"system": "Be brief."}})
    _ready(kube_api, slm_namespace, name)
    time.sleep(2)  # the watch events of the apply arrive within milliseconds
    assert drift_reconciles() == before


# The API-key Secret checks (SecretNotFound, degrade and heal) run in namespaced mode only, where
# the operator may read Secrets: tests/e2e/namespaced/test_namespaced.py. The cluster-wide operator
# (this package's) has no Secret access; tests/security/test_operator_attacks.py checks that.
