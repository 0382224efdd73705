"""slm-gateway in Kubernetes mode against the real API server, with the chart's RBAC.

The fleet is two SLMDeployments (models `alpha`, `beta`) whose EndpointSlices point at real
slm-runtime servers on this machine (tiny models; no operator and no kubelet needed: the gateway
reads only SLMDeployments and EndpointSlices). The gateway runs in this process as the chart's
ServiceAccount, bound to the ClusterRole that `helm template` renders, so a rule the gateway needs
but the chart lacks fails here. A pod that leaves its EndpointSlice is routed around.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from kubernetes import client

from .helpers import BIN_DIR, REPO_ROOT, kubectl, read_versions, serviceaccount_kubeconfig, wait_for

CHART = REPO_ROOT / "charts" / "slm-operator"


def _host_ip() -> str | None:
    """An address of this machine that an EndpointSlice accepts (not loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            ip = str(s.getsockname()[0])
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


def _chart_gateway_role() -> dict[str, Any]:
    out = subprocess.run(
        [
            str(BIN_DIR / "helm"),
            "template",
            "gw",
            str(CHART),
            "--namespace=slm-system",
            f"--kube-version={read_versions()['KUBE_VERSION'].lstrip('v')}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for doc in yaml.safe_load_all(out.stdout):
        if doc and doc["kind"] == "ClusterRole" and doc["metadata"]["name"].endswith("-gateway"):
            return doc  # type: ignore[no-any-return]
    raise AssertionError("the chart renders no gateway ClusterRole")


def _slice(name: str, ip: str, ports: list[int]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-x",
            "labels": {"kubernetes.io/service-name": name, "app.kubernetes.io/name": "slm-runtime"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": ports[0], "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}],
    }


@pytest.fixture
def runtimes(tmp_path: Path) -> Iterator[dict[str, list[int]]]:
    """Real slm-runtime processes on 0.0.0.0: two for alpha, one for beta."""
    model = tmp_path / "tiny.gguf"
    subprocess.run(
        [
            str(REPO_ROOT / ".venv" / "bin" / "slm-runtime"),
            "tiny-model",
            "--format",
            "gguf",
            "--out",
            str(model),
            "--quantization",
            "q8_0",
        ],
        check=True,
        timeout=120,
    )
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, list[int]] = {"alpha": [], "beta": []}
    for name in ("alpha", "alpha", "beta"):
        with socket.socket() as s:
            s.bind(("0.0.0.0", 0))
            port = int(s.getsockname()[1])
        procs.append(
            subprocess.Popen(
                [
                    str(REPO_ROOT / ".venv" / "bin" / "slm-runtime"),
                    "--log-level",
                    "WARNING",
                    "serve",
                    "--model",
                    str(model),
                    "--name",
                    name,
                    "--host",
                    "0.0.0.0",
                    "--port",
                    str(port),
                    "--parallel",
                    "2",
                ]
            )
        )
        ports[name].append(port)
    try:
        for port in ports["alpha"] + ports["beta"]:
            wait_for(
                lambda p=port: httpx.get(f"http://127.0.0.1:{p}/readyz", timeout=1).status_code == 200,
                60,
                f"runtime :{port}",
                ignore=(httpx.HTTPError,),
            )
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(20)


@pytest.fixture
def gateway_kubeconfig(
    kubeconfig: str, kube_api: client.ApiClient, namespace: str, tmp_path: Path
) -> Iterator[Path]:
    """The CRD installed, and a kubeconfig for a ServiceAccount bound (in `namespace`) to the
    chart's gateway ClusterRole."""
    crd = CHART / "crds" / "slm.dev_slmdeployments.yaml"
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", f"--filename={crd}", timeout=60)
    core, rbac = client.CoreV1Api(kube_api), client.RbacAuthorizationV1Api(kube_api)
    role = _chart_gateway_role()
    role["metadata"] = {"name": f"{namespace}-gateway"}
    rbac.create_cluster_role(role)
    try:
        core.create_namespaced_service_account(namespace, {"metadata": {"name": "gateway"}})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": "gateway"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": f"{namespace}-gateway",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "gateway", "namespace": namespace}],
            },
        )
        yield serviceaccount_kubeconfig(kube_api, namespace, "gateway", tmp_path / "gw.kubeconfig")
    finally:
        with contextlib.suppress(client.ApiException):
            rbac.delete_cluster_role(f"{namespace}-gateway")


def _create_fleet(kube_api: client.ApiClient, namespace: str, ip: str, ports: dict[str, list[int]]) -> None:
    custom, discovery = client.CustomObjectsApi(kube_api), client.DiscoveryV1Api(kube_api)
    variant = [{"format": "gguf", "quantization": "Q8_0", "uri": "tiny://gguf?quantization=q8_0"}]
    for name in ("alpha", "beta"):
        body = {
            "apiVersion": "slm.dev/v1alpha1",
            "kind": "SLMDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"name": name, "parameters": 0.01, "variants": variant}},
        }
        custom.create_namespaced_custom_object("slm.dev", "v1alpha1", namespace, "slmdeployments", body)
    discovery.create_namespaced_endpoint_slice(namespace, _slice("beta", ip, ports["beta"]))
    # one slice per alpha pod: they listen on different ports, as two pods' slices could differ
    for i, port in enumerate(ports["alpha"]):
        s = _slice("alpha", ip, [port])
        s["metadata"]["name"] = f"alpha-{i}"
        discovery.create_namespaced_endpoint_slice(namespace, s)


def test_gateway_follows_slmdeployments_and_endpointslices(
    kube_api: client.ApiClient,
    namespace: str,
    runtimes: dict[str, list[int]],
    gateway_kubeconfig: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.conftest import Served
    from slm_gateway.app import create_app
    from slm_gateway.config import GatewayConfig

    ip = _host_ip()
    if ip is None:
        pytest.skip("no non-loopback IPv4 address for the EndpointSlices")
    _create_fleet(kube_api, namespace, ip, runtimes)
    monkeypatch.setenv("KUBECONFIG", str(gateway_kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    audit = gateway_kubeconfig.parent / "audit.jsonl"
    config = {"audit": {"stdout": False, "file": str(audit)}, "routing": {"scrapeSeconds": 0.5}}
    app = create_app(GatewayConfig.model_validate(config), kubernetes_namespaces=[namespace])
    gw = Served(app, ready_path="/readyz")
    try:
        oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="-", max_retries=0)
        wait_for(lambda: sorted(m.id for m in oai.models.list()) == ["alpha", "beta"], 30, "both models")
        fleet = app.state.gateway.fleet
        wait_for(lambda: len(fleet.endpoints_of("alpha")) == 2, 30, "two alpha endpoints")
        for model in ("alpha", "beta"):
            out = oai.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
            assert out.model == model
        # a pod leaves (its slice goes): the gateway stops sending there, requests keep working
        gone = f"http://{ip}:{runtimes['alpha'][0]}"
        client.DiscoveryV1Api(kube_api).delete_namespaced_endpoint_slice("alpha-0", namespace)
        wait_for(lambda: gone not in [s.url for s in fleet.endpoints_of("alpha")], 30, "alpha-0 gone")
        before = len(audit.read_text().splitlines())
        for _ in range(4):
            oai.completions.create(model="alpha", prompt="hi", max_tokens=1)
        lines = [yaml.safe_load(x) for x in audit.read_text().splitlines()[before:]]
        assert {x["endpoint"] for x in lines} == {f"http://{ip}:{runtimes['alpha'][1]}"}
        assert all(x["status"] == 200 and x["deployment"] == f"{namespace}/alpha" for x in lines)
        # an SLMDeployment deleted: its model is gone from the one endpoint
        client.CustomObjectsApi(kube_api).delete_namespaced_custom_object(
            "slm.dev", "v1alpha1", namespace, "slmdeployments", "beta"
        )
        wait_for(lambda: [m.id for m in oai.models.list()] == ["alpha"], 30, "beta gone")
        with pytest.raises(openai.NotFoundError):
            oai.chat.completions.create(model="beta", messages=[{"role": "user", "content": "hi"}])
    finally:
        gw.stop()


def test_attack_gateway_credentials_read_no_secret(
    kube_api: client.ApiClient, namespace: str, gateway_kubeconfig: Path
) -> None:
    """Issue 13, item 8: a compromised gateway holds its ServiceAccount's token; with the chart's
    rules it can read no Secret (a model's API key here), get, list or watch, and still do its job."""
    from kubernetes import config as kube_config

    secret = {"metadata": {"name": "model-keys"}, "stringData": {"api-key": "sk-model-key-0123456789"}}
    client.CoreV1Api(kube_api).create_namespaced_secret(namespace, secret)
    as_gateway = kube_config.new_client_from_config(config_file=str(gateway_kubeconfig))
    core = client.CoreV1Api(as_gateway)
    attempts = {
        "get": lambda: core.read_namespaced_secret("model-keys", namespace),
        "list": lambda: core.list_namespaced_secret(namespace),
        "list-all": core.list_secret_for_all_namespaces,
        "watch": lambda: core.list_namespaced_secret(namespace, watch=True, timeout_seconds=1),
    }
    for verb, attempt in attempts.items():
        with pytest.raises(client.ApiException) as refused:
            attempt()
        assert refused.value.status == 403, verb
    listed = client.CustomObjectsApi(as_gateway).list_namespaced_custom_object(
        "slm.dev", "v1alpha1", namespace, "slmdeployments"
    )
    assert listed["items"] == []
