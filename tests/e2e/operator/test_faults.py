"""Faults on the real control plane: the operator killed (-9) during a burst of creates, the API
server and etcd restarted while SLMDeployments reconcile, the HA leader killed. Each ends converged
(every SLMDeployment has its Deployment and a status for its generation) within a deadline, with no
orphans and no storm of Events.

These tests run their own operators (as the chart's ServiceAccount); the package's shared operator
is paused (SIGSTOP) meanwhile, so that exactly the operators under test act.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from kubernetes import client

from slm_operator.rbac import rules

from ..helpers import LOCAL_CLUSTER, wait_for
from . import support
from .conftest import (
    RESYNC_SECONDS,
    OperatorProcess,
    Release,
    chart_kubeconfig,
    launch_operator,
    stop_operator,
)

BURST = 40
BACK_WITHIN = 30  # seconds after the fault ends


@pytest.fixture(scope="module")
def paused_shared_operator(operator: OperatorProcess) -> Iterator[None]:
    operator.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        operator.process.send_signal(signal.SIGCONT)


class Operators:
    """The operators one test starts, as the chart's ServiceAccount; all stopped after the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[OperatorProcess] = []

    def start(self, *extra: str, env: dict[str, str] | None = None) -> OperatorProcess:
        log = self.workdir / f"operator-{len(self.started)}.log"
        op = launch_operator(self.workdir / "kubeconfig", log, *extra, env=env)
        self.started.append(op)
        return op

    def stop_all(self) -> None:
        for op in self.started:
            stop_operator(op.process)


@pytest.fixture
def ops(tmp_path: Path, kube_api: client.ApiClient, operator_release: Release) -> Iterator[Operators]:
    chart_kubeconfig(kube_api, operator_release, tmp_path / "kubeconfig")
    started = Operators(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def _kill9(op: OperatorProcess) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(op.process.pid, signal.SIGKILL)
    op.process.wait(timeout=10)


def _create_burst(api: client.ApiClient, namespace: str, n: int, prefix: str = "m") -> list[str]:
    names = [f"{prefix}{i:03d}" for i in range(n)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: support.create(api, namespace, support.tiny(name, replicas=0)), names))
    return names


def _converged(api: client.ApiClient, namespace: str, names: list[str]) -> bool:
    owners = client.CustomObjectsApi(api).list_namespaced_custom_object(
        support.GROUP, support.VERSION, namespace, support.PLURAL
    )["items"]
    done = {
        o["metadata"]["name"]
        for o in owners
        if (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
    }
    deployments = {
        d.metadata.name
        for d in client.AppsV1Api(api)
        .list_namespaced_deployment(namespace, label_selector="slm.dev/deployment")
        .items
    }
    return set(names) <= done and set(names) <= deployments


def _assert_no_orphans(api: client.ApiClient, namespace: str) -> None:
    owners = client.CustomObjectsApi(api).list_namespaced_custom_object(
        support.GROUP, support.VERSION, namespace, support.PLURAL
    )["items"]
    uids = {o["metadata"]["uid"]: o["metadata"]["name"] for o in owners}
    for kind, objects in _all_children(api, namespace).items():
        per_owner: dict[str, int] = {}
        for obj in objects:
            refs = [r for r in obj.metadata.owner_references or () if r.controller]
            assert len(refs) == 1 and refs[0].uid in uids, f"{kind} {obj.metadata.name} is an orphan"
            assert uids[refs[0].uid] == obj.metadata.labels["slm.dev/deployment"]
            per_owner[refs[0].uid] = per_owner.get(refs[0].uid, 0) + 1
        assert all(count == 1 for count in per_owner.values()), f"duplicate {kind}: {per_owner}"


def _all_children(api: client.ApiClient, namespace: str) -> dict[str, list[object]]:
    selector = "slm.dev/deployment"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    return {
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "Service": core.list_namespaced_service(namespace, label_selector=selector).items,
        "ConfigMap": core.list_namespaced_config_map(namespace, label_selector=selector).items,
        "ServiceAccount": core.list_namespaced_service_account(namespace, label_selector=selector).items,
    }


def _events(api: client.ApiClient, namespace: str, reason: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for event in client.CoreV1Api(api).list_namespaced_event(namespace).items:
        if event.reason == reason and event.involved_object.kind == support.KIND:
            counts[event.involved_object.name] = counts.get(event.involved_object.name, 0) + (
                event.count or 1
            )
    return counts


def _restart(component: str, down: float) -> None:
    done = subprocess.run(
        [str(LOCAL_CLUSTER), "restart", component, str(down)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr


pytestmark = pytest.mark.usefixtures("paused_shared_operator")


def test_kill_9_during_a_burst_of_creates(
    kube_api: client.ApiClient, slm_namespace: str, ops: Operators
) -> None:
    kills = 3
    op = ops.start()
    with ThreadPoolExecutor(1) as pool:
        creating = pool.submit(_create_burst, kube_api, slm_namespace, BURST)
        for _ in range(kills):
            time.sleep(1.5)
            _kill9(op)
            op = ops.start()
        names = creating.result(timeout=120)
    wait_for(lambda: _converged(kube_api, slm_namespace, names), 90, f"{BURST} SLMDeployments converged")
    _assert_no_orphans(kube_api, slm_namespace)
    placed = _events(kube_api, slm_namespace, "Placed")
    assert set(placed) <= set(names)
    # At most one Placed per operator life that saw the object before its status was written.
    assert max(placed.values(), default=0) <= kills + 1, placed


@pytest.mark.parametrize(("component", "down"), [("kube-apiserver", 10.0), ("etcd", 5.0)])
def test_restart_during_reconciles_converges_soon_after_the_return(
    component: str, down: float, kube_api: client.ApiClient, slm_namespace: str, ops: Operators
) -> None:
    ops.start()
    names = _create_burst(kube_api, slm_namespace, BURST)
    _restart(component, down)
    back = time.monotonic()
    wait_for(
        lambda: _converged(kube_api, slm_namespace, names),
        BACK_WITHIN,
        f"{BURST} SLMDeployments converged within {BACK_WITHIN}s of {component}'s return",
        ignore=(client.ApiException, OSError),
    )
    print(f"{component} down {down:.0f}s: converged {time.monotonic() - back:.1f}s after its return")
    _assert_no_orphans(kube_api, slm_namespace)
    assert max(_events(kube_api, slm_namespace, "Placed").values(), default=0) <= 2


@pytest.fixture
def peering_rbac(kube_api: client.ApiClient, operator_release: Release) -> Iterator[None]:
    """The peering rules `slm-operator rbac` lists, which the chart grants only with HA on
    (this session installed it with replicaCount=0)."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    name = f"e2e-peering-{uuid.uuid4().hex[:6]}"
    rule = next(r for r in rules() if "kopf.dev" in r["apiGroups"])
    rbac.create_cluster_role({"metadata": {"name": name}, "rules": [rule]})
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": operator_release.service_account,
                    "namespace": operator_release.namespace,
                }
            ],
        }
    )
    try:
        yield
    finally:
        with contextlib.suppress(client.ApiException):
            rbac.delete_cluster_role_binding(name)
        with contextlib.suppress(client.ApiException):
            rbac.delete_cluster_role(name)


@pytest.mark.usefixtures("peering_rbac")
def test_the_standby_does_nothing_and_takes_over_when_the_leader_dies(
    kube_api: client.ApiClient, slm_namespace: str, ops: Operators
) -> None:
    peering = f"e2e-ha-{uuid.uuid4().hex[:6]}"
    custom = client.CustomObjectsApi(kube_api)
    custom.create_cluster_custom_object(
        "kopf.dev",
        "v1",
        "clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": peering}},
    )
    try:
        ha = ("--peering", peering, "--peering-lifetime", "10")
        leader = ops.start(*ha, "--priority", "20", env={"POD_ID": f"{peering}-leader"})
        standby = ops.start(*ha, "--priority", "10", env={"POD_ID": f"{peering}-standby"})
        time.sleep(3)  # both replicas have seen the peering object (counted from here on)
        before = {t: standby.metric("slm_operator_reconciles_total", trigger=t) for t in ("change", "resync")}
        first = _create_burst(kube_api, slm_namespace, 3, prefix="a")
        wait_for(lambda: _converged(kube_api, slm_namespace, first), 60, "the leader to reconcile")
        time.sleep(RESYNC_SECONDS + 3)  # a resync period passes on both replicas
        after = {t: standby.metric("slm_operator_reconciles_total", trigger=t) for t in ("change", "resync")}
        assert after == before, "the standby reconciled"
        assert leader.metric("slm_operator_reconciles_total", trigger="change") >= 3

        _kill9(leader)
        killed = time.monotonic()
        second = _create_burst(kube_api, slm_namespace, 3, prefix="b")
        wait_for(lambda: _converged(kube_api, slm_namespace, first + second), 60, "the standby to take over")
        print(
            f"standby took over: new SLMDeployments converged {time.monotonic() - killed:.1f}s after the kill"
        )
        _assert_no_orphans(kube_api, slm_namespace)
    finally:
        with contextlib.suppress(client.ApiException):
            custom.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", peering)
