"""Operator fixtures for the end-to-end suite: the chart installed, the operator running locally as
the chart's ServiceAccount, and helpers for SLMDeployments on the real control plane.

Session fixtures:
    operator_release   the chart installed into slm-system with `helm upgrade --install` (CRD,
                       ServiceAccount, ClusterRole + binding); its in-cluster Deployment is scaled
                       to 0 (a KWOK node would never run it), the CRD refreshed server-side (Helm
                       never upgrades CRDs on its own)

Package fixture:
    operator           `slm-operator run --all-namespaces --standalone` as a local subprocess that
                       authenticates with a TokenRequest token of the chart's ServiceAccount, so
                       every test also proves the chart's RBAC sufficient; its log is printed when a
                       test fails; it is stopped once this package's tests are done, so that it
                       never competes with an operator another e2e module runs

    fleet_gateway      `slm-gateway --kubernetes` on loopback; the operator's autoscaler reads its
                       `/demand`

Function fixtures:
    slm_namespace      a fresh namespace labelled pod-security enforce/warn=restricted

Env:
    SLM_E2E_OPERATOR_LOG   where the operator's log goes (default: a session temp dir)
    SLM_E2E_CHART          the chart to install (default: charts/slm-operator)
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from ..helpers import (
    BIN_DIR,
    REPO_ROOT,
    create_namespace,
    kubectl,
    serviceaccount_kubeconfig,
    unique_name,
    wait_for,
)

RELEASE = "slm-operator"
SYSTEM_NAMESPACE = "slm-system"
CHART = Path(os.environ.get("SLM_E2E_CHART") or REPO_ROOT / "charts" / "slm-operator")
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
# Short enough that heal-after-fix tests (a created Secret, an uncordoned node) stay quick; the
# operator's default is 60s.
RESYNC_SECONDS = 10


@dataclass(frozen=True)
class Release:
    namespace: str
    service_account: str
    cluster_role: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass(frozen=True)
class OperatorProcess:
    process: subprocess.Popen[bytes]
    log: Path
    kubeconfig: Path
    metrics_url: str

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one sample of the operator's Prometheus metrics (0 if absent)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample == (f"{name}{{{want}}}" if want else name):
                return float(value)
        return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _helm(kubeconfig: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN_DIR / "helm"), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def operator_release(kubeconfig: str, kube_api: client.ApiClient) -> Release:
    installed = _helm(
        kubeconfig,
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        f"--namespace={SYSTEM_NAMESPACE}",
        "--create-namespace",
        "--set=replicaCount=0",
        "--wait",
        "--timeout=90s",
    )
    if installed.returncode != 0:
        pytest.fail(f"helm upgrade --install failed:\n{installed.stdout}\n{installed.stderr}", pytrace=False)
    # `helm upgrade` leaves an existing CRD alone (docs/operations.md): refresh it from the chart.
    kubectl(
        kubeconfig, "apply", "--server-side", "--force-conflicts", f"--filename={CHART / 'crds'}", timeout=60
    )
    ext = client.ApiextensionsV1Api(kube_api)

    def established() -> bool:
        crd = ext.read_custom_resource_definition("slmdeployments.slm.dev")
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or ())

    wait_for(established, 30, "CRD slmdeployments.slm.dev Established")
    # The names the chart gives its ServiceAccount and ClusterRole: the release's full name.
    sa = client.CoreV1Api(kube_api).read_namespaced_service_account(RELEASE, SYSTEM_NAMESPACE)
    role = client.RbacAuthorizationV1Api(kube_api).read_cluster_role(RELEASE)
    return Release(SYSTEM_NAMESPACE, sa.metadata.name, role.metadata.name)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def launch_operator(
    kubeconfig: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    unverified_models: bool = True,
) -> OperatorProcess:
    """`slm-operator run` as a local subprocess (its own session), waiting for its liveness
    endpoint. The same arguments as the chart's Deployment (templates/deployment.yaml), local
    ports; `extra` adds or overrides flags (`--peering`, `--namespace`...)."""
    health = f"http://127.0.0.1:{_free_port()}/healthz"
    metrics_port = _free_port()
    full_env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "SLM_RUNTIME_IMAGE": "ghcr.io/slm-operator/slm-runtime:e2e",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    # Outside a pod the in-cluster config must not be picked up by accident.
    full_env.pop("KUBERNETES_SERVICE_HOST", None)
    scope = [] if any(a.startswith(("--namespace", "-n")) for a in extra) else ["--all-namespaces"]
    mode = [] if any(a.startswith("--peering") for a in extra) else ["--standalone"]
    argv = [
        str(Path(sys.executable).with_name("slm-operator")),
        "run",
        *scope,
        *mode,
        f"--metrics-port={metrics_port}",
        f"--liveness={health}",
        f"--resync-seconds={RESYNC_SECONDS}",
        # The examples' hf:// variants carry no sha256 and are never downloaded on KWOK nodes;
        # tests/security runs the operator with its production default instead.
        *(["--allow-unverified-models"] if unverified_models else []),
        *extra,
    ]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=log_path.parent,
            start_new_session=True,
        )
    running = OperatorProcess(process, log_path, kubeconfig, f"http://127.0.0.1:{metrics_port}/metrics")

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"operator exited with {process.returncode}:\n{tail(running)}")
        return _healthy(health)

    try:
        wait_for(up, 60, "the operator's liveness endpoint", interval=0.5)
    except BaseException:
        stop_operator(process)
        raise
    return running


def stop_operator(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    _stop(process, timeout)


def chart_kubeconfig(kube_api: client.ApiClient, release: Release, path: Path) -> Path:
    """A kubeconfig with a TokenRequest token of the chart's ServiceAccount."""
    return serviceaccount_kubeconfig(
        kube_api, release.namespace, release.service_account, path, expiration_seconds=3 * 3600
    )


@pytest.fixture(scope="package")
def fleet_gateway(kubeconfig: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Real `slm-gateway --kubernetes` on a loopback port: the fleet's demand (`/demand`) that the
    operator's own autoscaler reads. Its base URL (no request ever reaches a KWOK pod here)."""
    port = _free_port()
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    argv = [str(Path(sys.executable).with_name("slm-gateway")), "--kubernetes", "--host=127.0.0.1"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*argv, f"--port={port}", "--log-level=WARNING"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(f"{url}/readyz"), 60, "slm-gateway's first fleet listing", interval=0.5)
        yield url
    finally:
        _stop(process)


@pytest.fixture(scope="package")
def operator(
    operator_release: Release,
    kube_api: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
    fleet_gateway: str,
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("operator")
    sa_config = chart_kubeconfig(kube_api, operator_release, workdir / "kubeconfig")
    log_path = Path(os.environ.get("SLM_E2E_OPERATOR_LOG") or workdir / "operator.log")
    # The autoscaler reads the gateway's demand every second (the default is 5 s).
    autoscale = {"SLM_DEMAND_URL": f"{fleet_gateway}/demand", "SLM_AUTOSCALE_SECONDS": "1"}
    running = launch_operator(sa_config, log_path, env=autoscale)
    try:
        yield running
    finally:
        _stop(running.process)


def tail(op: OperatorProcess, lines: int = 80) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(op.log.read_text(errors="replace").splitlines()[-lines:])
    return "(no operator log)"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    op = item.funcargs.get("operator") if hasattr(item, "funcargs") else None  # type: ignore[attr-defined]
    if report.failed and isinstance(op, OperatorProcess):
        report.sections.append(("operator log (tail)", tail(op)))
    return report


@pytest.fixture
def slm_namespace(kube_api: client.ApiClient) -> Iterator[str]:
    """A fresh namespace that enforces the `restricted` Pod Security Standard."""
    name = create_namespace(kube_api, unique_name("e2e-op"), labels=RESTRICTED)
    yield name
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(kube_api).delete_namespace(name)
