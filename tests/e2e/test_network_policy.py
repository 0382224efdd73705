"""The operator's NetworkPolicy, enforced, seen from real pods on the real node.

hack/real-node runs kube-router's NetworkPolicy firewall (iptables + ipset) next to the bridge
CNI, which enforces nothing by itself. One SLMDeployment (the tiny GGUF over HTTPS from this
host, as in test_real_node.py) with `networking.metricsNamespaceSelector` naming a scraper
namespace; helper pods (the same image, sleeping) in three namespaces connect to it with Python:

- a pod of the SLMDeployment's namespace reaches the API (pod IP and Service);
- a pod of another namespace does not, though its network works (it reaches this host);
- a pod of the scraper namespace reads `metrics` (9090) and not the API port;
- the runtime container itself reaches the model server's port (its allowed egress) and not
  another port of the same host, which the unrestricted pods reach.

kube-router rejects what a policy does not allow (ICMP port unreachable), so "blocked" is a quick
refusal; every refusal here has a control showing that the target listens and the source's
network works. The node, image, model source and operator are the session's
(tests/e2e/realnode.py); run it under `flock -o /tmp/slm-real-node.lock`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from . import realnode as rn
from .helpers import create_namespace, kubectl, unique_name, wait_for, wait_pod_ready

pytestmark = rn.REALNODE_MARKS

API_PORT, METRICS_PORT = 8080, 9090

# Run inside a pod: connect, optionally send one GET, print a JSON verdict. Exit 0 either way, so
# that a kubectl failure is not taken for a blocked connection.
PROBE = r"""
import json, socket, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    s = socket.create_connection((host, port), timeout=4)
except OSError as e:
    print(json.dumps({"connected": False, "error": type(e).__name__})); sys.exit(0)
status, body = None, ""
if path != "-":
    s.settimeout(10)
    s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, body = int(head.split()[1]), rest.decode(errors="replace")
print(json.dumps({"connected": True, "status": status, "body": body}))
"""


@pytest.fixture(scope="module")
def host_listener(real_node: str) -> Iterator[int]:
    """A TCP port on the node's host address that accepts and closes: reachable for pods without
    an egress policy, and outside the model pods' allowed egress."""
    server = socket.create_server((rn.NODE_IP, 0))
    server.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = server.accept()
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


def _helper_pod(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "np-probe"}},
        "spec": {
            "nodeSelector": {"slm.dev/real-node": "true"},
            "tolerations": [
                {"key": "slm.dev/real-node", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
            ],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "32Mi"},
                        "limits": {"memory": "128Mi"},
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def bed(
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """The SLMDeployment Ready, and one sleeping helper pod in each of its namespace, another
    namespace and the scraper namespace."""
    core = client.CoreV1Api(kube_api)
    other = create_namespace(kube_api, unique_name("np-other"))
    scraper = create_namespace(kube_api, unique_name("np-scraper"))
    name = "np"
    body = rn.slmd(name, test_image, model_server["uri"], model_server["sha256"])
    body["spec"]["networking"] = {
        "metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": scraper}}
    }
    started = time.monotonic()
    client.CustomObjectsApi(kube_api).create_namespaced_custom_object(
        rn.GROUP, rn.VERSION, operator_ns, rn.PLURAL, body
    )
    pods = {"client": operator_ns, "outsider": other, "scraper": scraper}
    for pod, ns in pods.items():
        core.create_namespaced_pod(ns, _helper_pod(pod, test_image))
    try:
        runtime = rn.ready_pod(kube_api, kubeconfig, operator_ns, name, timeout=300)
        for pod, ns in pods.items():
            wait_pod_ready(kube_api, ns, pod, timeout=120)
        print(f"network-policy bed ready: {time.monotonic() - started:.1f}s")
        svc = core.read_namespaced_service(name, operator_ns)
        yield {
            "ns": operator_ns,
            "pods": pods,
            "runtime_pod": runtime.metadata.name,
            "pod_ip": runtime.status.pod_ip,
            "service_ip": svc.spec.cluster_ip,
            "model_port": int(model_server["uri"].split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[1]),
        }
    finally:
        for ns in (other, scraper):
            with contextlib.suppress(client.ApiException):
                core.delete_namespace(ns)


def probe(
    kubeconfig: str, ns: str, pod: str, host: str, port: int, *, path: str = "-", container: str | None = None
) -> dict[str, Any]:
    """Connect from inside `pod` (and GET `path` unless "-"): {"connected": bool, "status", "body"}."""
    where = ["-c", container] if container else []
    out = kubectl(
        kubeconfig,
        "-n",
        ns,
        "exec",
        pod,
        *where,
        "--",
        "python3",
        "-c",
        PROBE,
        host,
        str(port),
        path,
        timeout=60,
    )
    verdict: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return verdict


def _enforced(kubeconfig: str, bed: dict[str, Any]) -> None:
    """kube-router programs the policy shortly after the pod starts: wait until it is in force."""
    wait_for(
        lambda: (
            not probe(kubeconfig, bed["pods"]["outsider"], "outsider", bed["pod_ip"], API_PORT)["connected"]
        ),
        90,
        "kube-router to enforce the NetworkPolicy",
        interval=2,
    )


def test_allowed_client_reaches_the_api(kubeconfig: str, bed: dict[str, Any]) -> None:
    _enforced(kubeconfig, bed)
    ns = bed["ns"]
    for host in (bed["pod_ip"], bed["service_ip"]):
        answer = probe(kubeconfig, ns, "client", host, API_PORT, path="/v1/models")
        assert answer["connected"] and answer["status"] == 200, (host, answer)
        assert json.loads(answer["body"])["data"][0]["id"] == "tiny", answer
    # the API port no longer serves metrics; they are on their own port
    assert probe(kubeconfig, ns, "client", bed["pod_ip"], API_PORT, path="/metrics")["status"] == 404


def test_pod_in_another_namespace_is_refused(
    kubeconfig: str, bed: dict[str, Any], host_listener: int
) -> None:
    _enforced(kubeconfig, bed)
    other = bed["pods"]["outsider"]
    for host in (bed["pod_ip"], bed["service_ip"]):
        assert not probe(kubeconfig, other, "outsider", host, API_PORT)["connected"], host
    assert not probe(kubeconfig, other, "outsider", bed["pod_ip"], METRICS_PORT)["connected"]
    # control: its network works (no policy selects it), so the refusal above is the policy's
    assert probe(kubeconfig, other, "outsider", rn.NODE_IP, host_listener)["connected"]


def test_scraper_namespace_reads_metrics_only(kubeconfig: str, bed: dict[str, Any]) -> None:
    _enforced(kubeconfig, bed)
    scraper = bed["pods"]["scraper"]
    page = probe(kubeconfig, scraper, "scraper", bed["pod_ip"], METRICS_PORT, path="/metrics")
    assert page["connected"] and page["status"] == 200, page
    assert "vllm:num_requests_running" in page["body"]
    assert not probe(kubeconfig, scraper, "scraper", bed["pod_ip"], API_PORT)["connected"]


def test_runtime_container_reaches_only_its_allowed_egress(
    kubeconfig: str, bed: dict[str, Any], host_listener: int
) -> None:
    _enforced(kubeconfig, bed)
    ns, pod = bed["ns"], bed["runtime_pod"]
    # allowed: the model source's port (https://10.245.0.1:PORT), which the fetch step used
    assert probe(kubeconfig, ns, pod, rn.NODE_IP, bed["model_port"], container="runtime")["connected"]
    # not allowed: another port of the same host, which the unrestricted client pod does reach
    assert probe(kubeconfig, ns, "client", rn.NODE_IP, host_listener)["connected"]
    refused = probe(kubeconfig, ns, pod, rn.NODE_IP, host_listener, container="runtime")
    assert not refused["connected"], refused
