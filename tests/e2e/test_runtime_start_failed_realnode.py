"""A runtime that refuses to start, on a REAL node: Degraded/RuntimeStartFailed with its reason,
an Event, and recovery once the Secret is fixed (issue 13, item 1).

`spec.auth` names a Secret whose key holds only `#` comment lines (a rotation caught half-way).
`slm-runtime serve` then refuses to serve without auth: it exits 2 and writes why to
/dev/termination-log. The kubelet restarts it (CrashLoopBackOff) and puts the message in the
container's last terminated state, the operator's pod informer reads it from there, and the
SLMDeployment says why instead of PodsNotReady forever. Fixing the Secret changes nothing in the
spec, so no reconcile runs: the kubelet refreshes the mounted file, the next restart serves, and
the status must clear from the pod and Deployment events alone.

The node, the image, the model source and the operator are the session's (tests/e2e/realnode.py).
"""

from __future__ import annotations

import secrets
import sys
import time
from typing import Any

import httpx
from kubernetes import client

from .helpers import wait_for
from .realnode import GROUP, PLURAL, REALNODE_MARKS, VERSION, describe, ready_pod, slmd

pytestmark = REALNODE_MARKS

SECRET_KEY = "api-keys"
COMMENTS_ONLY = "# keys are being rotated; the new ones follow\n#\n"
REFUSAL = "holds no usable key"
"""The runtime's reason (server/auth.py), which must reach the condition and the Event."""


def _conditions(custom: client.CustomObjectsApi, ns: str, name: str) -> dict[str, dict[str, Any]]:
    obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def test_runtime_refusing_to_start_is_degraded_with_its_reason_then_recovers(
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
) -> None:
    ns, name, secret = operator_ns, "keyless", "keyless-keys"
    core = client.CoreV1Api(kube_api)
    custom = client.CustomObjectsApi(kube_api)
    core.create_namespaced_secret(
        ns,
        client.V1Secret(metadata=client.V1ObjectMeta(name=secret), string_data={SECRET_KEY: COMMENTS_ONLY}),
    )
    body = slmd(name, test_image, model_server["uri"], model_server["sha256"])
    body["spec"]["auth"] = {"apiKeySecretRef": {"name": secret, "key": SECRET_KEY}}
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    started = time.monotonic()
    try:
        _check(
            core=core, custom=custom, kube_api=kube_api, kubeconfig=kubeconfig, ns=ns, name=name, t0=started
        )
    finally:
        custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        core.delete_namespaced_secret(secret, ns)


def _check(
    *,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    kube_api: client.ApiClient,
    kubeconfig: str,
    ns: str,
    name: str,
    t0: float,
) -> None:
    def degraded() -> dict[str, dict[str, Any]] | None:
        conds = _conditions(custom, ns, name)
        bad = conds.get("Degraded") or {}
        return conds if bad.get("status") == "True" and bad.get("reason") == "RuntimeStartFailed" else None

    try:
        conds = wait_for(degraded, 240, f"{ns}/{name} Degraded/RuntimeStartFailed", interval=2)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_conditions(custom, ns, name)}\n{describe(kubeconfig, ns)}") from None
    t_degraded = time.monotonic() - t0
    message = conds["Degraded"]["message"]
    assert REFUSAL in message and "(exit code 2)" in message, message
    assert "/etc/slm/auth/" + SECRET_KEY in message, message  # the runtime's own words, not a guess
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "RuntimeStartFailed"

    def warning() -> list[client.CoreV1Event]:
        events = core.list_namespaced_event(ns, field_selector=f"involvedObject.name={name}").items
        return [e for e in events if e.reason == "RuntimeStartFailed" and e.type == "Warning"]

    events = wait_for(warning, 60, f"a RuntimeStartFailed Event of {ns}/{name}", interval=1)
    assert REFUSAL in (events[0].message or ""), events[0].message
    assert events[0].involved_object.kind == "SLMDeployment"

    # fix the Secret: nothing in the spec changes, the kubelet refreshes the file, the next
    # restart (CrashLoopBackOff's delay) serves, and the status clears from the pods alone
    key = "sk-" + secrets.token_hex(16)
    core.patch_namespaced_secret(f"{name}-keys", ns, {"stringData": {SECRET_KEY: f"# rotated\nci:{key}\n"}})
    t_fixed = time.monotonic()
    pod = ready_pod(kube_api, kubeconfig, ns, name, timeout=420)
    t_ready = time.monotonic() - t_fixed

    def recovered() -> dict[str, dict[str, Any]] | None:
        conds = _conditions(custom, ns, name)
        ok = (conds.get("Ready") or {}).get("status") == "True"
        return conds if ok and (conds.get("Degraded") or {}).get("status") == "False" else None

    try:
        wait_for(recovered, 90, f"{ns}/{name} Ready and no longer Degraded", interval=1)
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{_conditions(custom, ns, name)}") from None
    print(
        f"apply -> Degraded/RuntimeStartFailed {t_degraded:.1f}s; Secret fixed -> pod Ready {t_ready:.1f}s,"
        f" -> condition cleared {time.monotonic() - t_fixed:.1f}s",
        file=sys.stderr,
    )

    # it serves with auth on: the new key is accepted, no key is a 401 (from the host, which
    # NetworkPolicy enforcers let through like the kubelet's probes)
    url = f"http://{pod.status.pod_ip}:8080/v1/models"
    assert httpx.get(url, timeout=30).status_code == 401
    answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
