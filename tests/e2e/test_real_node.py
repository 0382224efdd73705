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

The node, the image, the model source and the operator are the session's (tests/e2e/realnode.py,
which also says when these tests run and which environment variables they read).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from .helpers import kubectl, wait_deleted, wait_for
from .realnode import (
    GROUP,
    NODE_NAME,
    PLURAL,
    REALNODE_MARKS,
    VERSION,
    describe,
    pods_of,
    ready_pod,
    slmd,
)
from .realnode import connects as _connects

pytestmark = REALNODE_MARKS


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
