"""Shared pieces of the real-node e2e tests: one real kubelet node, one runtime image, one model
source and one operator for the whole session, whichever real-node modules run.

A real-node module opts in with `pytestmark = REALNODE_MARKS` and uses the fixtures below (they
are registered in tests/e2e/conftest.py). The model source is hack/real-node/model_source.py, the
same code `make dev` uses to serve the real SmolLM2 to its demo: the models go over HTTPS from the
node's host address and the pods run the runtime image plus a layer trusting that server's CA.

Runs only where the prerequisites are met (root, hack/real-node/install-deps.sh, bin/kubelet, the
Dockerfile); otherwise every real-node test is skipped with the reason. SLM_E2E_REALNODE=0 skips
them, SLM_E2E_REALNODE=1 turns a missing prerequisite into a failure instead of a skip.
Env: SLM_E2E_KEEP_REAL_NODE=1 leaves the node (and the operator's objects) up afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from kubernetes import client

from .helpers import BIN_DIR, REPO_ROOT, create_namespace, kubectl, unique_name, wait_for

REAL_NODE = REPO_ROOT / "hack" / "real-node"
NODE_NAME = os.environ.get("SLM_REAL_NODE_NAME", "slm-real-node")
VENV_BIN = Path(sys.executable).parent
GROUP, VERSION, PLURAL = "slm.dev", "v1alpha1", "slmdeployments"
GATEWAY_UPSTREAM_KEY = "e2e-gateway-upstream-key-7f3c9a1b5d2e8f4a6c0b"
"""slm-gateway's own key for the runtimes: the session's operator gets its SHA-256 (the chart's
`--gateway-key-sha256`), so runtimes with spec.auth accept it (tests/e2e/test_gateway_realnode.py)."""


def _load_model_source() -> ModuleType:
    spec = importlib.util.spec_from_file_location("slm_real_node_model_source", REAL_NODE / "model_source.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


model_source = _load_model_source()
NODE_IP: str = model_source.NODE_IP


def missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (kubelet, containerd, iptables, mounts)")
    tools = ("containerd", "runc", "ctr", "buildah", "debootstrap", "iptables", "ipset", "gcc", "openssl")
    for tool in tools:
        if not shutil.which(tool):
            missing.append(f"{tool} (hack/real-node/install-deps.sh)")
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("CNI plugins (hack/real-node/install-deps.sh)")
    if not os.access(BIN_DIR / "kubelet", os.X_OK):
        missing.append(f"{BIN_DIR / 'kubelet'} (hack/build-bins.sh)")
    for tool in ("metrics-server", "kube-router"):  # hack/real-node/up starts both
        if not os.access(BIN_DIR / tool, os.X_OK):
            missing.append(f"{BIN_DIR / tool} (make bins)")
    if not (REPO_ROOT / "runtime-image" / "Dockerfile").exists():
        missing.append("runtime-image/Dockerfile")
    if not shutil.which("slm-runtime", path=str(VENV_BIN)) and not shutil.which("slm-runtime"):
        missing.append("slm-runtime on PATH (make setup)")
    return missing


def _skip_reason() -> str:
    wanted = os.environ.get("SLM_E2E_REALNODE", "")
    if wanted == "0":
        return "SLM_E2E_REALNODE=0"
    missing = missing_prerequisites()
    if missing and wanted != "1":
        return "real-node prerequisites missing: " + "; ".join(missing)
    return ""


# Decided at collection, so that a skip does not even start the control plane (a session fixture).
# The timeout: the first test pays for a cold image build (base + pip) and maybe kube-proxy.
_SKIP = _skip_reason()
REALNODE_MARKS = [
    pytest.mark.realnode,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(bool(_SKIP), reason=_SKIP or "-"),
]


def run(argv: list[str], timeout: float, what: str) -> str:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", pytrace=False
        )
    print(f"{what}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return proc.stdout


def connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


# --------------------------------------------------------------------------------------------
# fixtures (session scope: one node, one image, one model source, one operator for every module)


@pytest.fixture(scope="session")
def real_node(kubeconfig: str) -> Iterator[str]:
    missing = missing_prerequisites()
    if missing:  # only reached with SLM_E2E_REALNODE=1 (else the tests were skipped)
        pytest.fail("real-node prerequisites missing: " + "; ".join(missing), pytrace=False)
    was_up = subprocess.run([str(REAL_NODE / "status")], capture_output=True, check=False).returncode == 0
    if not was_up:
        started = time.monotonic()
        up = subprocess.run([str(REAL_NODE / "up")], capture_output=True, text=True, timeout=900, check=False)
        print(f"hack/real-node/up: {time.monotonic() - started:.1f}s", file=sys.stderr)
        if up.returncode != 0:
            # once more: `up` undoes a failed start itself (seen once: kube-proxy killed from outside)
            print(f"hack/real-node/up failed, retrying:\n{up.stderr[-2000:]}", file=sys.stderr)
            run([str(REAL_NODE / "up")], timeout=900, what="hack/real-node/up")
    try:
        yield NODE_NAME
    finally:
        if not was_up and os.environ.get("SLM_E2E_KEEP_REAL_NODE") != "1":
            subprocess.run([str(REAL_NODE / "down")], capture_output=True, timeout=300, check=False)


@pytest.fixture(scope="session")
def runtime_image(real_node: str) -> str:
    out = run([str(REAL_NODE / "build-image.sh"), "--import"], timeout=3000, what="build-image.sh --import")
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def model_server(
    real_node: str, tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path
) -> Iterator[dict[str, Any]]:
    """Over HTTPS on the node's host address, where the pods can reach them: a tiny GGUF, and the
    real SmolLM2-135M-Instruct from the model cache (hack/fetch-models.sh)."""
    root = tmp_path_factory.mktemp("models")
    files = root / "files"
    files.mkdir()
    (files / smollm2_gguf.name).symlink_to(smollm2_gguf)
    model = files / "tiny-q8_0.gguf"
    exe = shutil.which("slm-runtime", path=str(VENV_BIN)) or "slm-runtime"
    run(
        [exe, "tiny-model", "--format", "gguf", "--out", str(model), "--quantization", "q8_0"],
        300,
        "tiny-model",
    )
    certs = model_source.make_certs(root / "tls")
    server = model_source.ModelServer(files, certs).start()
    try:
        yield {
            "uri": server.url(model.name),
            "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            "smollm2": {
                "uri": server.url(smollm2_gguf.name),
                "sha256": Path(f"{smollm2_gguf}.sha256").read_text().strip(),
            },
            "ca": str(certs.ca),
            "requests": server.requests,
        }
    finally:
        server.stop()


@pytest.fixture(scope="session")
def test_image(runtime_image: str, model_server: dict[str, Any]) -> str:
    """The runtime image plus the model source's CA (SSL_CERT_FILE), imported into the node."""
    started = time.monotonic()
    try:
        tag: str = model_source.ca_image(runtime_image, Path(model_server["ca"]))
    except RuntimeError as e:
        pytest.fail(f"the CA image: {e}", pytrace=False)
    print(f"test image {tag}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return tag


@pytest.fixture(scope="session")
def fleet_gateway(real_node: str, kubeconfig: str) -> Iterator[str]:
    """`slm-gateway --kubernetes` on this host (it reaches the pods' IPs over the node's bridge): one
    endpoint for the fleet, and the demand (`/demand`) the operator's autoscaler reads. Its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exe = shutil.which("slm-gateway", path=str(VENV_BIN)) or "slm-gateway"
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"slm-gateway-{port}.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [exe, "--kubernetes", "--host=127.0.0.1", f"--port={port}", "--log-level=WARNING"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": kubeconfig},
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: connects("127.0.0.1", port), 60, "slm-gateway to listen", interval=0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        print(f"gateway log: {log_path}", file=sys.stderr)


@pytest.fixture(scope="session")
def operator_ns(
    kube_api: client.ApiClient, kubeconfig: str, test_image: str, fleet_gateway: str
) -> Iterator[str]:
    """A namespace with `slm-operator run` watching only it (so it never competes with another);
    its autoscaler reads the demand of `fleet_gateway` every second (the default is 5 s)."""
    kubectl(kubeconfig, "apply", "-f", str(REPO_ROOT / "crds" / "slm.dev_slmdeployments.yaml"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/slmdeployments.slm.dev", "--timeout=60s")
    ns = create_namespace(kube_api, unique_name("realnode"))
    exe = shutil.which("slm-operator", path=str(VENV_BIN)) or "slm-operator"
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"slm-operator-{ns}.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [exe, "run", "--namespace", ns, "--standalone", "--metrics-port", "0", "--image", test_image],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "SLM_DEMAND_URL": f"{fleet_gateway}/demand",
            "SLM_AUTOSCALE_SECONDS": "1",
            "SLM_GATEWAY_KEY_SHA256": hashlib.sha256(GATEWAY_UPSTREAM_KEY.encode()).hexdigest(),
        },
    )
    try:
        yield ns
    finally:
        keep = os.environ.get("SLM_E2E_KEEP_REAL_NODE") == "1"
        if not keep:
            with contextlib.suppress(client.ApiException):
                client.CoreV1Api(kube_api).delete_namespace(ns)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        print(f"operator log: {log_path}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# helpers


def slmd(
    name: str,
    image: str,
    uri: str,
    sha256: str,
    *,
    model: str = "tiny",
    quantization: str = "Q8_0",
    parallel: int = 1,
) -> dict[str, Any]:
    """An SLMDeployment pinned to the real node (its nodeSelector and taint), small requests."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "name": model,
                "variants": [{"format": "gguf", "quantization": quantization, "uri": uri, "sha256": sha256}],
            },
            "hardware": {
                "preference": ["cpu"],
                "nodeSelector": {"slm.dev/real-node": "true"},
                "tolerations": [
                    {"key": "slm.dev/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
                ],
            },
            "runtime": {"contextLength": 256, "parallel": parallel},
            "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
            "image": image,
            "imagePullPolicy": "Never",
        },
    }


def pods_of(api: client.ApiClient, ns: str, name: str) -> list[client.V1Pod]:
    selector = f"app.kubernetes.io/instance={name}"
    return list(client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=selector).items)


def describe(kubeconfig: str, ns: str) -> str:
    out = kubectl(kubeconfig, "-n", ns, "get", "slmd,deploy,rs,pods,svc,events", "-o", "wide", check=False)
    pods = kubectl(kubeconfig, "-n", ns, "describe", "pods", check=False)
    return f"{out.stdout}{out.stderr}\n{pods.stdout[-4000:]}"


def ready_pod(api: client.ApiClient, kubeconfig: str, ns: str, name: str, timeout: float) -> client.V1Pod:
    def ready() -> client.V1Pod | None:
        for pod in pods_of(api, ns, name):
            conds = (pod.status and pod.status.conditions) or []
            if any(c.type == "Ready" and c.status == "True" for c in conds):
                return pod
        return None

    try:
        return wait_for(ready, timeout, f"a Ready pod of {ns}/{name}", interval=2)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{describe(kubeconfig, ns)}") from None
