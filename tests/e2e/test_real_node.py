"""End to end on a REAL node: kubelet + containerd + CNI + kube-proxy (hack/real-node), the runtime
image built from runtime-image/Dockerfile (hack/real-node/build-image.sh), a real model answering
through the Service.

The models (the real SmolLM2-135M-Instruct from the model cache, and a `slm-runtime tiny-model` GGUF)
are served over HTTPS from the node's host address (the bridge gateway, reachable from the pod
network); the operator's init container downloads and verifies them. (The API accepts only https://
among network schemes, so the server has a certificate from a throwaway CA, and the pods run the
runtime image plus one layer that trusts that CA through SSL_CERT_FILE, which the runtime's HTTP
client honours: the image's code is unchanged.) Clients talk to the Service's cluster IP from this
host (kube-proxy's iptables rules). hack/real-node also runs metrics-server against this node's
kubelet, so the HorizontalPodAutoscaler the operator renders really scales here.

Runs only where its prerequisites are met (root, hack/real-node/install-deps.sh, bin/kubelet, the
Dockerfile); otherwise every test here is skipped with the reason. SLM_E2E_REALNODE=0 skips them,
SLM_E2E_REALNODE=1 turns a missing prerequisite into a failure instead of a skip.

Env: SLM_E2E_KEEP_REAL_NODE=1 leaves the node (and the operator's objects) up afterwards.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from .helpers import BIN_DIR, REPO_ROOT, create_namespace, kubectl, unique_name, wait_deleted, wait_for

REAL_NODE = REPO_ROOT / "hack" / "real-node"
NODE_IP = "10.245.0.1"  # hack/real-node/real_node.py: the bridge gateway = the node's InternalIP
NODE_NAME = os.environ.get("SLM_REAL_NODE_NAME", "slm-real-node")
VENV_BIN = Path(sys.executable).parent
GROUP, VERSION, PLURAL = "slm.dev", "v1alpha1", "slmdeployments"


def _missing_prerequisites() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (kubelet, containerd, iptables, mounts)")
    for tool in ("containerd", "runc", "ctr", "buildah", "debootstrap", "iptables", "gcc"):
        if not shutil.which(tool):
            missing.append(f"{tool} (hack/real-node/install-deps.sh)")
    if not Path("/usr/lib/cni/bridge").exists():
        missing.append("CNI plugins (hack/real-node/install-deps.sh)")
    if not os.access(BIN_DIR / "kubelet", os.X_OK):
        missing.append(f"{BIN_DIR / 'kubelet'} (hack/build-bins.sh)")
    if not os.access(BIN_DIR / "metrics-server", os.X_OK):
        missing.append(f"{BIN_DIR / 'metrics-server'} (make bins)")
    if not (REPO_ROOT / "runtime-image" / "Dockerfile").exists():
        missing.append("runtime-image/Dockerfile")
    if not shutil.which("slm-runtime", path=str(VENV_BIN)) and not shutil.which("slm-runtime"):
        missing.append("slm-runtime on PATH (make setup)")
    return missing


def _skip_reason() -> str:
    wanted = os.environ.get("SLM_E2E_REALNODE", "")
    if wanted == "0":
        return "SLM_E2E_REALNODE=0"
    missing = _missing_prerequisites()
    if missing and wanted != "1":
        return "real-node prerequisites missing: " + "; ".join(missing)
    return ""


# Decided at collection, so that a skip does not even start the control plane (a session fixture).
# The timeout: the first test pays for a cold image build (base + pip) and maybe kube-proxy.
_SKIP = _skip_reason()
pytestmark = [
    pytest.mark.realnode,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(2400),
    pytest.mark.skipif(bool(_SKIP), reason=_SKIP or "-"),
]


def _run(argv: list[str], timeout: float, what: str) -> str:
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}", pytrace=False
        )
    print(f"{what}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return proc.stdout


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# fixtures (module scope: one node, one image, one operator for all tests here)


@pytest.fixture(scope="module", autouse=True)
def _prerequisites() -> None:
    """SLM_E2E_REALNODE=1: a missing prerequisite fails the tests instead of skipping them."""
    missing = _missing_prerequisites()
    if missing:
        pytest.fail("real-node prerequisites missing: " + "; ".join(missing), pytrace=False)


@pytest.fixture(scope="module")
def real_node(kubeconfig: str) -> Iterator[str]:
    was_up = subprocess.run([str(REAL_NODE / "status")], capture_output=True, check=False).returncode == 0
    if not was_up:
        started = time.monotonic()
        up = subprocess.run([str(REAL_NODE / "up")], capture_output=True, text=True, timeout=900, check=False)
        print(f"hack/real-node/up: {time.monotonic() - started:.1f}s", file=sys.stderr)
        if up.returncode != 0:
            # once more: `up` undoes a failed start itself (seen once: kube-proxy killed from outside)
            print(f"hack/real-node/up failed, retrying:\n{up.stderr[-2000:]}", file=sys.stderr)
            _run([str(REAL_NODE / "up")], timeout=900, what="hack/real-node/up")
    try:
        yield NODE_NAME
    finally:
        if not was_up and os.environ.get("SLM_E2E_KEEP_REAL_NODE") != "1":
            subprocess.run([str(REAL_NODE / "down")], capture_output=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def runtime_image(real_node: str) -> str:
    out = _run([str(REAL_NODE / "build-image.sh"), "--import"], timeout=3000, what="build-image.sh --import")
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
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
    _run(
        [exe, "tiny-model", "--format", "gguf", "--out", str(model), "--quantization", "q8_0"],
        300,
        "tiny-model",
    )
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    ca, cert, key = _make_certs(root)
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(files), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            requests.append(f"{self.command} {self.path}")

    server = http.server.ThreadingHTTPServer((NODE_IP, 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield {
            "uri": f"https://{NODE_IP}:{port}/{model.name}",
            "sha256": sha,
            "smollm2": {
                "uri": f"https://{NODE_IP}:{port}/{smollm2_gguf.name}",
                "sha256": Path(f"{smollm2_gguf}.sha256").read_text().strip(),
            },
            "ca": str(ca),
            "requests": requests,
        }
    finally:
        server.shutdown()
        server.server_close()


def _make_certs(root: Path) -> tuple[Path, Path, Path]:
    ca_key, ca, key, csr, cert, ext = (
        root / n for n in ("ca.key", "ca.crt", "tls.key", "tls.csr", "tls.crt", "ext")
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-days",
        "2",
        "-subj",
        "/CN=slm-realnode-test-ca",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-subj",
        f"/CN={NODE_IP}",
        "-keyout",
        str(key),
        "-out",
        str(csr),
    )
    ext.write_text(f"subjectAltName=IP:{NODE_IP}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        str(ext),
        "-out",
        str(cert),
    )
    return ca, cert, key


@pytest.fixture(scope="module")
def test_image(
    runtime_image: str, model_server: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The runtime image plus the test CA (SSL_CERT_FILE), imported into the real node's containerd."""
    tag = "localhost/slm-runtime-testca:" + runtime_image.rsplit(":", 1)[-1]
    work = buildah_ctr = None
    started = time.monotonic()
    try:
        buildah_ctr = _run(["buildah", "from", "--pull-never", runtime_image], 120, "buildah from").strip()
        _run(
            [
                "buildah",
                "copy",
                "--chown",
                "0:0",
                buildah_ctr,
                model_server["ca"],
                "/etc/ssl/slm-test-ca.crt",
            ],
            60,
            "buildah copy",
        )
        _run(
            ["buildah", "config", "--env", "SSL_CERT_FILE=/etc/ssl/slm-test-ca.crt", buildah_ctr],
            60,
            "config",
        )
        _run(["buildah", "commit", "--rm", "--quiet", buildah_ctr, tag], 300, "buildah commit")
        buildah_ctr = None
        work = tmp_path_factory.mktemp("testimage")
        archive = work / "image.tar"
        _run(["buildah", "push", "--quiet", tag, f"docker-archive:{archive}:{tag}"], 600, "buildah push")
        env = dict(line.split("=", 1) for line in _run([str(REAL_NODE / "env")], 30, "env").split())
        _run(
            [
                "ctr",
                "--address",
                env["CONTAINERD_ADDRESS"],
                "-n",
                "k8s.io",
                "images",
                "import",
                "--snapshotter",
                "overlayfs",
                str(archive),
            ],
            600,
            "ctr import",
        )
    finally:
        if buildah_ctr:
            subprocess.run(["buildah", "rm", buildah_ctr], capture_output=True, check=False)
        if work:
            shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["buildah", "rmi", tag], capture_output=True, check=False)
    print(f"test image {tag}: {time.monotonic() - started:.1f}s", file=sys.stderr)
    return tag


def _connects(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@pytest.fixture(scope="module")
def operator_ns(kube_api: client.ApiClient, kubeconfig: str, test_image: str) -> Iterator[str]:
    """A namespace with `slm-operator run` watching only it (so it never competes with another)."""
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
        env={**os.environ, "KUBECONFIG": kubeconfig},
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


# --------------------------------------------------------------------------------------------
# tests


def test_real_model_answers_through_the_service(
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
) -> None:
    """The real SmolLM2-135M-Instruct, fetched by the init container, served at parallel 2 (the
    batching engine, as the operator's defaults run it), answers a real question correctly."""
    ns, name = operator_ns, "smollm2"
    custom = client.CustomObjectsApi(kube_api)
    real = model_server["smollm2"]
    t0 = time.monotonic()
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        PLURAL,
        slmd(name, test_image, real["uri"], real["sha256"], model="smollm2", quantization="Q4_1", parallel=2),
    )
    pod = ready_pod(kube_api, kubeconfig, ns, name, timeout=300)
    t_ready = time.monotonic() - t0

    # it really ran on the real node, and the init container fetched + verified the model over HTTP
    assert pod.spec.node_name == NODE_NAME
    init = {s.name: s for s in pod.status.init_container_statuses or []}
    assert init, "the pod has no init container status"
    for status in init.values():
        assert status.state.terminated is not None and status.state.terminated.exit_code == 0, status
    assert f"GET /{real['uri'].rsplit('/', 1)[1]}" in model_server["requests"], model_server["requests"]

    svc = client.CoreV1Api(kube_api).read_namespaced_service(name, ns)
    ip, port = svc.spec.cluster_ip, svc.spec.ports[0].port
    wait_for(lambda: _connects(ip, port), 60, f"Service {ip}:{port} through kube-proxy", interval=1)

    import ollama
    import openai

    oa = openai.OpenAI(base_url=f"http://{ip}:{port}/v1", api_key="unused", timeout=60, max_retries=2)
    question = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    chat = oa.chat.completions.create(model="smollm2", messages=question, max_tokens=24, temperature=0)
    t_answer = time.monotonic() - t0
    assert "Paris" in (chat.choices[0].message.content or ""), chat
    assert chat.choices[0].finish_reason == "stop", chat
    assert chat.usage is not None and chat.usage.completion_tokens > 0, chat

    ol = ollama.Client(host=f"http://{ip}:{port}", timeout=60)
    reply = ol.chat(model="smollm2", messages=question, options={"num_predict": 24, "temperature": 0})
    assert "Paris" in (reply.message.content or ""), reply
    print(f"apply -> pod Ready {t_ready:.1f}s, -> first answer {t_answer:.1f}s", file=sys.stderr)
    _record_timing({"apply_to_ready_s": round(t_ready, 1), "apply_to_first_answer_s": round(t_answer, 1)})

    # deleting the SLMDeployment removes its pods (owner references -> garbage collector -> kubelet)
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    wait_for(lambda: not pods_of(kube_api, ns, name), 120, f"pods of {ns}/{name} to be deleted", interval=1)
    wait_deleted(lambda: client.CoreV1Api(kube_api).read_namespaced_service(name, ns), 60, f"Service {name}")


def test_wrong_sha256_keeps_the_pod_unready_and_says_why(
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
) -> None:
    ns, name = operator_ns, "bad-sum"
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, slmd(name, test_image, model_server["uri"], "0" * 64)
    )

    def fetch_failed() -> tuple[str, client.V1ContainerStatus] | None:
        for pod in pods_of(kube_api, ns, name):
            for st in pod.status.init_container_statuses or []:
                term = st.state.terminated or st.last_state.terminated
                if term is not None and term.exit_code != 0:
                    return pod.metadata.name, st
        return None

    try:
        pod_name, failed = wait_for(fetch_failed, 240, "the fetch init container to fail", interval=2)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{describe(kubeconfig, ns)}") from None
    term = failed.state.terminated or failed.last_state.terminated
    assert term.exit_code == 3, f"slm-runtime fetch exits 3 on a checksum mismatch: {failed}"
    # the container's own words (kubectl logs goes apiserver -> kubelet -> containerd)
    logs = kubectl(kubeconfig, "-n", ns, "logs", pod_name, "-c", failed.name, check=False)
    if not logs.stdout:
        logs = kubectl(kubeconfig, "-n", ns, "logs", pod_name, "-c", failed.name, "--previous", check=False)
    assert "sha256 mismatch" in logs.stdout, (logs.stdout, logs.stderr)
    for pod in pods_of(kube_api, ns, name):
        conds = (pod.status and pod.status.conditions) or []
        assert not any(c.type == "Ready" and c.status == "True" for c in conds), pod.status

    # The SLMDeployment must say so: a False condition and a Warning Event naming the checksum.
    def said_so() -> tuple[dict[str, Any], Any] | None:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        conds = (obj.get("status") or {}).get("conditions") or []
        cond = next(
            (c for c in conds if c.get("status") == "False" and _mentions_checksum(c.get("message", ""))),
            None,
        )
        events = client.CoreV1Api(kube_api).list_namespaced_event(
            ns, field_selector=f"involvedObject.kind=SLMDeployment,involvedObject.name={name}"
        )
        event = next(
            (ev for ev in events.items if ev.type == "Warning" and _mentions_checksum(ev.message or "")), None
        )
        return (cond, event) if cond and event else None

    try:
        cond, event = wait_for(
            said_so, 90, f"SLMDeployment {name} to report the checksum failure", interval=2
        )
    except TimeoutError:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        raise AssertionError(
            f"SLMDeployment {name} did not report the checksum failure; status: "
            f"{json.dumps(obj.get('status'))[:1500]}"
        ) from None
    assert cond["type"] == "Ready" and cond["reason"] == "ModelFetchFailed", cond
    assert event.reason == "ModelFetchFailed", event


def test_cpu_autoscaler_scales_a_loaded_model_out_and_back_in(
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
) -> None:
    """metrics-server reads the pod's CPU from the real kubelet; the HPA the operator rendered goes
    1 -> 2 under load and back to 1 after it (the scale-down window shortened through the spec)."""
    ns, name = operator_ns, "busy"
    body = slmd(name, test_image, model_server["uri"], model_server["sha256"], parallel=2)
    body["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 1,
        "maxReplicas": 2,
        "targetCPUUtilizationPercentage": 50,
        "scaleDownStabilizationSeconds": 10,
    }
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    ready_pod(kube_api, kubeconfig, ns, name, timeout=300)
    scaling = client.AutoscalingV2Api(kube_api)
    apps = client.AppsV1Api(kube_api)

    def hpa_state() -> str:
        hpa = scaling.read_namespaced_horizontal_pod_autoscaler(name, ns)
        st = hpa.status
        return f"current={st.current_replicas} desired={st.desired_replicas} metrics={st.current_metrics}"

    def cpu_measured() -> bool:
        hpa = scaling.read_namespaced_horizontal_pod_autoscaler(name, ns)
        return bool(hpa.status.current_metrics)

    try:
        wait_for(cpu_measured, 120, "the HPA to read the pod's CPU from metrics.k8s.io", interval=2)
    except TimeoutError as e:
        raise AssertionError(f"{e}: {hpa_state()}\n{describe(kubeconfig, ns)}") from None

    svc = client.CoreV1Api(kube_api).read_namespaced_service(name, ns)
    url = f"http://{svc.spec.cluster_ip}:{svc.spec.ports[0].port}/v1/completions"
    wait_for(lambda: _connects(svc.spec.cluster_ip, svc.spec.ports[0].port), 60, "the Service", interval=1)
    stop = threading.Event()
    sent = [0]

    def load() -> None:
        import httpx

        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    http.post(url, json={"model": "tiny", "prompt": "count", "max_tokens": 64})
                    sent[0] += 1

    workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_for(
            lambda: apps.read_namespaced_deployment(name, ns).spec.replicas == 2,
            240,
            "the Deployment to be scaled to 2 by the HPA under load",
            interval=2,
        )
    except TimeoutError as e:
        raise AssertionError(
            f"{e}: {hpa_state()}, {sent[0]} requests sent\n{describe(kubeconfig, ns)}"
        ) from None
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=40)
    try:
        wait_for(
            lambda: apps.read_namespaced_deployment(name, ns).spec.replicas == 1,
            240,
            "the Deployment to go back to 1 once the load stopped",
            interval=2,
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}: {hpa_state()}\n{describe(kubeconfig, ns)}") from None
    custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _mentions_checksum(text: str) -> bool:
    low = text.lower()
    return "sha256" in low or "checksum" in low


def _record_timing(values: dict[str, float]) -> None:
    out = os.environ.get("SLM_REALNODE_TIMINGS")
    if out:
        path = Path(out)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(values)
        path.write_text(json.dumps(data, indent=2) + "\n")
