"""Namespaced mode (issue 13 item 8): the chart installed with `watchNamespaces`, so the operator
holds Roles in the watched namespace and only nodes, CRDs and namespaces cluster-wide, and the
lifecycle checks run against it. Every 403 the operator got would show here: in its log, and as
an SLMDeployment that never becomes Ready.

Its own package (not tests/e2e/operator): that package's cluster-wide operator runs for the whole
package and would reconcile these SLMDeployments too. The API-key Secret checks live here because
only namespaced mode may read Secrets (its Roles grant `get` in the watched namespaces); the
cluster-wide ClusterRole grants no Secret access at all.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from ..helpers import create_namespace, unique_name, wait_for
from ..operator import support
from ..operator.conftest import (
    CHART,
    RESTRICTED,
    RESYNC_SECONDS,
    OperatorProcess,
    Release,
    _helm,
    chart_kubeconfig,
    launch_operator,
    operator_release,
    stop_operator,
    tail,
)

__all__ = ["operator_release"]

RELEASE = "slm-operator-ns"
SYSTEM_NAMESPACE = "slm-system-ns"


@dataclass(frozen=True)
class Namespaced:
    watched: str
    operator: OperatorProcess


@pytest.fixture(scope="module")
def namespaced(
    kubeconfig: str,
    kube_api: client.ApiClient,
    operator_release: Release,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Namespaced]:
    """`operator_release` installs (and refreshes) the CRD; this second release adds the Roles."""
    watched = create_namespace(kube_api, unique_name("e2e-nsmode"), labels=RESTRICTED)
    installed = _helm(
        kubeconfig,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        f"--namespace={SYSTEM_NAMESPACE}",
        "--create-namespace",
        "--set=replicaCount=0",
        "--set=gateway.enabled=false",
        f"--set=watchNamespaces={{{watched}}}",
        "--skip-crds",  # the CRD is operator_release's, refreshed there
        "--wait",
        "--timeout=90s",
    )
    if installed.returncode != 0:
        pytest.fail(f"helm upgrade --install failed:\n{installed.stdout}\n{installed.stderr}", pytrace=False)
    workdir = tmp_path_factory.mktemp("namespaced")
    release = Release(SYSTEM_NAMESPACE, RELEASE, RELEASE)
    config = chart_kubeconfig(kube_api, release, workdir / "kubeconfig")
    running = launch_operator(config, Path(workdir / "operator.log"), f"--namespace={watched}")
    try:
        yield Namespaced(watched, running)
    finally:
        stop_operator(running.process)
        _helm(kubeconfig, "uninstall", RELEASE, f"--namespace={SYSTEM_NAMESPACE}", "--wait", "--timeout=60s")
        core = client.CoreV1Api(kube_api)
        for namespace in (watched, SYSTEM_NAMESPACE):
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(namespace)


def _ready(api: client.ApiClient, namespace: str, name: str) -> support.Obj:
    return support.wait_condition(api, namespace, name, "Ready", "True", timeout=90)


def _no_forbidden(op: OperatorProcess) -> None:
    log = op.log.read_text(errors="replace")
    assert " 403 " not in log and "Forbidden" not in log, tail(op)


def test_lifecycle_in_namespaced_mode(kube_api: client.ApiClient, namespaced: Namespaced) -> None:
    ns, name = namespaced.watched, "ns-tiny"
    support.create(kube_api, ns, support.tiny(name, replicas=2))
    obj = _ready(kube_api, ns, name)
    assert obj["status"]["endpoints"]["openai"].startswith(f"http://{name}.{ns}.svc")
    found = support.children(kube_api, ns, name)
    assert {k for k, v in found.items() if v} >= {"Deployment", "Service", "ServiceAccount", "ConfigMap"}

    before = support.deployment(kube_api, ns, name).spec.template.metadata.annotations[support.CONFIG_HASH]
    support.patch_spec(kube_api, ns, name, {"prompt": {"system": "Be brief."}})
    _ready(kube_api, ns, name)
    after = support.deployment(kube_api, ns, name).spec.template.metadata.annotations[support.CONFIG_HASH]
    assert after != before

    client.CoreV1Api(kube_api).delete_namespaced_service(name, ns)  # drift: restored
    wait_for(
        lambda: client.CoreV1Api(kube_api).read_namespaced_service(name, ns),
        30,
        "the Service back",
        ignore=(client.ApiException,),
    )

    support.delete(kube_api, ns, name)
    support.wait_gone(kube_api, ns, name)
    wait_for(lambda: not support.children(kube_api, ns, name)["Deployment"], 60, "the Deployment collected")
    _no_forbidden(namespaced.operator)


def test_unwatched_namespace_is_left_alone(kube_api: client.ApiClient, namespaced: Namespaced) -> None:
    other = create_namespace(kube_api, unique_name("e2e-unwatched"))
    try:
        support.create(kube_api, other, support.tiny("elsewhere"))
        support.create(kube_api, namespaced.watched, support.tiny("here"))
        _ready(kube_api, namespaced.watched, "here")  # the operator is working...
        time.sleep(2)
        assert not support.get(kube_api, other, "elsewhere").get("status")  # ...but not there
        assert not any(support.children(kube_api, other, "elsewhere").values())
        support.delete(kube_api, namespaced.watched, "here")
    finally:
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api(kube_api).delete_namespace(other)


def test_missing_auth_secret_degrades_then_heals(kube_api: client.ApiClient, namespaced: Namespaced) -> None:
    ns, name, secret = namespaced.watched, "authn", "authn-keys"
    support.create(kube_api, ns, support.tiny(name, auth={"apiKeySecretRef": {"name": secret}}))
    obj = support.wait_condition(kube_api, ns, name, "Degraded", "True", reason="SecretNotFound", timeout=30)
    degraded = support.condition(obj, "Degraded")
    assert degraded is not None
    assert f"{ns}/{secret}" in degraded["message"], degraded
    ready = support.condition(obj, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    found = support.children(kube_api, ns, name)
    assert not any(found.values()), {k: len(v) for k, v in found.items() if v}
    events = support.events_for(kube_api, ns, "SLMDeployment", name)
    assert any(e.reason == "SecretNotFound" and secret in (e.message or "") for e in events)

    client.CoreV1Api(kube_api).create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data={"api-key": "sk-e2e\n"})
    )
    # Healed by the operator's retry or its periodic resync, without touching the spec.
    healed = support.wait_condition(kube_api, ns, name, "Ready", "True", timeout=60)
    degraded = support.condition(healed, "Degraded")
    assert degraded is not None
    assert degraded["status"] == "False"
    dep = support.deployment(kube_api, ns, name)
    assert any(
        v.secret is not None and v.secret.secret_name == secret for v in dep.spec.template.spec.volumes
    )
    support.delete(kube_api, ns, name)


def _secret_events(api: client.ApiClient, namespace: str, name: str) -> int:
    events = support.events_for(api, namespace, "SLMDeployment", name)
    return sum(e.count or 1 for e in events if e.reason == "SecretNotFound")


def test_secret_deleted_later_degrades_with_an_event(
    kube_api: client.ApiClient, namespaced: Namespaced
) -> None:
    """Nothing but the periodic resync notices a deleted Secret: its Degraded status and its
    Warning Event must both appear (the resync runs outside any kopf handler)."""
    ns, name, secret = namespaced.watched, "authn-later", "later-keys"
    client.CoreV1Api(kube_api).create_namespaced_secret(
        ns, client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data={"api-key": "sk-e2e\n"})
    )
    support.create(kube_api, ns, support.tiny(name, auth={"apiKeySecretRef": {"name": secret}}))
    _ready(kube_api, ns, name)
    assert _secret_events(kube_api, ns, name) == 0

    client.CoreV1Api(kube_api).delete_namespaced_secret(secret, ns)
    obj = support.wait_condition(
        kube_api, ns, name, "Degraded", "True", reason="SecretNotFound", timeout=RESYNC_SECONDS * 3
    )
    assert secret in support.condition(obj, "Degraded")["message"]  # type: ignore[index]
    assert support.deployment(kube_api, ns, name)  # what runs keeps running
    wait_for(lambda: _secret_events(kube_api, ns, name) >= 1, 15, "a SecretNotFound Event")
    support.delete(kube_api, ns, name)
    _no_forbidden(namespaced.operator)
