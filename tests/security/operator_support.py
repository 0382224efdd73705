"""Fixtures of the operator's security suite: the e2e test bed's real API server, and a tenant.

Reuses the e2e fixtures (tests/e2e/conftest.py: the local control plane, started once and shared
with the e2e suite through its users/ registry; tests/e2e/operator/conftest.py: the chart installed,
the operator launched as the chart's ServiceAccount) instead of starting a second control plane.
Import the fixtures into a test module by name.

    tenant        (module)  a namespace, and an API client for a ServiceAccount whose Role lets it
                            do what a namespace user does with SLMDeployments there, nothing more
    sec_operator  (module)  `slm-operator run --all-namespaces` as the chart's ServiceAccount with
                            its production defaults (checksums required, no Secret access) and
                            `--allowed-image-prefix=ghcr.io/slm-operator/`
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config as kube_config

from e2e.conftest import kube_api, kubeconfig
from e2e.helpers import create_namespace, serviceaccount_kubeconfig, unique_name
from e2e.operator.conftest import (
    RESTRICTED,
    OperatorProcess,
    Release,
    chart_kubeconfig,
    launch_operator,
    operator_release,
    stop_operator,
    tail,
)

__all__ = [
    "ALLOWED_IMAGE_PREFIX",
    "OperatorProcess",
    "Tenant",
    "kube_api",
    "kubeconfig",
    "operator_release",
    "sec_operator",
    "tail",
    "tenant",
]

ALLOWED_IMAGE_PREFIX = "ghcr.io/slm-operator/"
TENANT_RULES = [
    client.V1PolicyRule(
        api_groups=["slm.dev"],
        resources=["slmdeployments"],
        verbs=["get", "list", "watch", "create", "update", "patch", "delete"],
    ),
    client.V1PolicyRule(api_groups=[""], resources=["events"], verbs=["get", "list", "watch"]),
]


@dataclass(frozen=True)
class Tenant:
    namespace: str
    api: client.ApiClient
    """Authenticates as the tenant's ServiceAccount: may only manage SLMDeployments here."""


@pytest.fixture(scope="module")
def tenant(kube_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tenant]:
    namespace = create_namespace(kube_api, unique_name("sec-op"), labels=RESTRICTED)
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(metadata={"name": "tenant"}))
    rbac.create_namespaced_role(namespace, client.V1Role(metadata={"name": "tenant"}, rules=TENANT_RULES))
    rbac.create_namespaced_role_binding(
        namespace,
        client.V1RoleBinding(
            metadata={"name": "tenant"},
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="tenant"),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name="tenant", namespace=namespace)],
        ),
    )
    path = serviceaccount_kubeconfig(kube_api, namespace, "tenant", tmp_path_factory.mktemp("tenant") / "kc")
    api = kube_config.new_client_from_config(config_file=str(path))
    try:
        yield Tenant(namespace, api)
    finally:
        api.close()
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(namespace)


@pytest.fixture(scope="module")
def sec_operator(
    operator_release: Release, kube_api: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("sec-operator")
    config = chart_kubeconfig(kube_api, operator_release, workdir / "kubeconfig")
    running = launch_operator(
        config,
        Path(workdir / "operator.log"),
        f"--allowed-image-prefix={ALLOWED_IMAGE_PREFIX}",
        unverified_models=False,
    )
    try:
        yield running
    finally:
        stop_operator(running.process)
