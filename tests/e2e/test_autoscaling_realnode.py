"""Scaling on requests in flight, and scale to zero, on the REAL node with the real SmolLM2.

Nothing is installed for it but the operator and the gateway: the gateway counts the requests in
flight per deployment (and the ones it holds), the operator's own autoscaler reads that
(`/demand`, every second here) and writes the Deployment's scale subresource. One SLMDeployment of
the real SmolLM2-135M-Instruct (parallel 2, target 2 in flight per pod, 0..2 pods, scale-down
window 10 s, scale to zero after 30 s without requests):

1. four clients through the gateway: 1 -> 2 pods; the load stops: back to 1;
2. 30 s without requests: 0 pods; the status says so (Ready stays True, reason
   ScaledToZeroOnIdle; status.autoscaling ScaledToZero), and Argo CD's health check says Healthy;
3. one request through the gateway, starting from zero: held while the operator scales to 1 and
   the pod turns Ready, then answered ("Paris", finish_reason stop), no client error. The time from
   the request to its first token is the cold start (printed, and recorded in
   $SLM_REALNODE_TIMINGS when set).

The node, the image, the model source, the gateway and the operator are the session's
(tests/e2e/realnode.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from .helpers import REPO_ROOT, wait_for
from .realnode import GROUP, PLURAL, REALNODE_MARKS, VERSION, describe, pods_of, ready_pod, slmd

pytestmark = REALNODE_MARKS

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
HEALTH_SCRIPT = REPO_ROOT / "examples" / "gitops" / "argocd" / "slmdeployment-health.lua"


def _argocd_health(obj: dict[str, Any]) -> str | None:
    """Argo CD's verdict on the live object with the same Lua VM (bin/argocd-lua), if built."""
    harness = REPO_ROOT / "bin" / "argocd-lua"
    if not os.access(harness, os.X_OK):
        return None
    out = subprocess.run(
        [str(harness), str(HEALTH_SCRIPT)],
        input=json.dumps(obj) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return str(json.loads(out.stdout)["status"])


@dataclass(frozen=True)
class Scaled:
    """The autoscaled SLMDeployment of the real SmolLM2, and where to reach it."""

    api: client.ApiClient
    kubeconfig: str
    ns: str
    name: str
    model: str
    chat_url: str

    def replicas(self) -> int:
        return int(client.AppsV1Api(self.api).read_namespaced_deployment(self.name, self.ns).spec.replicas)

    def obj(self) -> dict[str, Any]:
        found = client.CustomObjectsApi(self.api).get_namespaced_custom_object(
            GROUP, VERSION, self.ns, PLURAL, self.name
        )
        return dict(found)

    def ask(self, http: httpx.Client, max_tokens: int = 48) -> httpx.Response:
        payload = {"model": self.model, "messages": QUESTION, "max_tokens": max_tokens, "temperature": 0}
        return http.post(self.chat_url, json=payload)


@pytest.fixture
def scaled(
    *,
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
    fleet_gateway: str,
) -> Iterator[Scaled]:
    ns, name, model = operator_ns, "scaled", "smollm2-scaled"
    real = model_server["smollm2"]
    body = slmd(name, test_image, real["uri"], real["sha256"], model=model, quantization="Q4_1", parallel=2)
    body["spec"]["autoscaling"] = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 2,
        "targetInFlightRequests": 2,
        "scaleDownStabilizationSeconds": 10,
        "scaleToZeroAfter": "30s",
    }
    custom = client.CustomObjectsApi(kube_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    try:
        yield Scaled(kube_api, kubeconfig, ns, name, model, f"{fleet_gateway}/v1/chat/completions")
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)


def _scale_out_and_in_under_load(s: Scaled) -> None:
    """Four clients keep 4 requests in flight: 2 pods (both Ready); then none: back to 1."""
    stop, answered, failed = threading.Event(), [0], [0]

    def load() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                counts = answered if s.ask(http, max_tokens=96).status_code == 200 else failed
                counts[0] += 1

    workers = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        wait_for(lambda: s.replicas() == 2, 120, "2 pods under 4 requests in flight", interval=1)
        wait_for(
            lambda: sum(1 for p in pods_of(s.api, s.ns, s.name) if _ready(p)) == 2,
            300,
            "the second pod Ready",
            interval=2,
        )
    except TimeoutError as e:
        raise AssertionError(f"{e}: {s.obj().get('status')}\n{describe(s.kubeconfig, s.ns)}") from None
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=120)
    assert answered[0] > 0 and failed[0] == 0, (answered, failed)
    print(f"scaled up: {s.obj()['status']['autoscaling']}", file=sys.stderr)
    wait_for(lambda: s.replicas() == 1, 120, "back to 1 pod once the load stopped", interval=1)


def _idle_to_zero(s: Scaled) -> None:
    """scaleToZeroAfter without requests: 0 pods, and the status and GitOps health say it is fine."""
    wait_for(lambda: s.replicas() == 0, 120, "scaled to zero after 30 s idle", interval=1)
    wait_for(lambda: not pods_of(s.api, s.ns, s.name), 120, "the last pod gone", interval=1)

    def idle_status() -> dict[str, Any] | None:
        obj = s.obj()
        ready = next((c for c in obj["status"]["conditions"] if c["type"] == "Ready"), {})
        return obj if ready.get("reason") == "ScaledToZeroOnIdle" else None

    obj = wait_for(idle_status, 30, "Ready=True ScaledToZeroOnIdle in the status")
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert obj["status"]["autoscaling"]["desiredReplicas"] == 0
    assert obj["status"]["autoscaling"]["reason"] in ("ScaledToZero", "Steady")
    assert _argocd_health(obj) in (None, "Healthy")


def _first_request_from_zero(s: Scaled) -> tuple[float, float]:
    """One streamed request at zero: (seconds to the first token, to the end of the answer)."""
    t0 = time.monotonic()
    first_token = None
    text = ""
    payload = {"model": s.model, "messages": QUESTION, "max_tokens": 24, "temperature": 0, "stream": True}
    with httpx.Client(timeout=300) as http, http.stream("POST", s.chat_url, json=payload) as stream:
        assert stream.status_code == 200, stream.read()
        for line in stream.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            for choice in chunk.get("choices") or ():
                delta = (choice.get("delta") or {}).get("content")
                if delta and first_token is None:
                    first_token = time.monotonic() - t0
                text += delta or ""
                if choice.get("finish_reason"):
                    assert choice["finish_reason"] == "stop", chunk
    assert first_token is not None and "Paris" in text, text
    return first_token, time.monotonic() - t0


def test_in_flight_scaling_and_scale_to_zero_with_a_held_first_request(scaled: Scaled) -> None:
    s = scaled
    ready_pod(s.api, s.kubeconfig, s.ns, s.name, timeout=300)
    wait_for(
        lambda: s.ask(httpx.Client(timeout=60)).status_code == 200, 60, "the gateway to route to the pod"
    )
    _scale_out_and_in_under_load(s)
    _idle_to_zero(s)
    first_token, total = _first_request_from_zero(s)
    print(
        f"cold start from zero: first token after {first_token:.1f}s, answer after {total:.1f}s",
        file=sys.stderr,
    )
    _record_timing(
        {"scale_from_zero_first_token_s": round(first_token, 1), "scale_from_zero_answer_s": round(total, 1)}
    )
    woken = s.obj()["status"]["autoscaling"]
    assert woken["reason"] in ("WokenByRequest", "Steady"), woken
    events = client.CoreV1Api(s.api).list_namespaced_event(
        s.ns, field_selector=f"involvedObject.name={s.name}"
    )
    reasons = {e.reason for e in events.items}
    assert {"ScaledUp", "ScaledDown", "ScaledToZero", "WokenByRequest"} <= reasons, reasons


def _ready(pod: client.V1Pod) -> bool:
    conds = (pod.status and pod.status.conditions) or []
    return any(c.type == "Ready" and c.status == "True" for c in conds)


def _record_timing(values: dict[str, float]) -> None:
    out = os.environ.get("SLM_REALNODE_TIMINGS")
    if out:
        path = Path(out)
        data = json.loads(path.read_text()) if path.exists() else {}
        data.update(values)
        path.write_text(json.dumps(data, indent=2) + "\n")
