"""slm-gateway in front of a real fleet on the real node: one endpoint, two models, the official
clients, keys, quotas, audit lines, and a pod deleted mid-test.

`support` has spec.auth (issue 13, item 8): the gateway reaches it with its own upstream key, which
the runtime trusts by the SHA-256 the operator put in its config, while the gateway's role grants
no Secret access at all; direct clients need the user key from the Secret, a wrong key is refused.

The fleet: two SLMDeployments reconciled by the operator onto the real kubelet node, each serving
the real SmolLM2-135M-Instruct under its own model name (`chat`, 2 replicas; `support`, 1), fetched
over HTTPS by their init containers (the session's model source, tests/e2e/realnode.py). The
gateway runs on this host in Kubernetes mode, in this process, as a ServiceAccount bound to the
gateway ClusterRole the chart renders (so a rule it needs but the chart lacks fails here); it
reaches the pods at their pod IPs over the node's bridge, as a gateway pod would over the pod
network. (A gateway pod would also work, the image carries slm-gateway; on the host the test can
read its fleet state and audit file directly.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest
import yaml
from kubernetes import client

from .helpers import serviceaccount_kubeconfig, wait_for
from .realnode import (
    GATEWAY_UPSTREAM_KEY,
    GROUP,
    PLURAL,
    REALNODE_MARKS,
    VERSION,
    describe,
    pods_of,
    slmd,
)
from .test_gateway_kube import _chart_gateway_role

pytestmark = REALNODE_MARKS

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
FULL, CHAT_ONLY, LIMITED = "sk-e2e-full-0123", "sk-e2e-chat-only-0123", "sk-e2e-limited-0123"
KEYS = [
    {"id": "full", "key": FULL, "models": ["*"]},
    {"id": "chat-only", "key": CHAT_ONLY, "models": ["chat"]},
    {"id": "limited", "key": LIMITED, "models": ["*"], "requestsPerMinute": 2},
]
REPLICAS = {"chat": 2, "support": 1}
AUTHENTICATED = "support"
USER_KEY = "sk-e2e-support-user-key-0123"  # the runtime's own key, for direct clients


def _ready_ips(api: client.ApiClient, ns: str, name: str) -> list[str]:
    ips = []
    for pod in pods_of(api, ns, name):
        conds = (pod.status and pod.status.conditions) or []
        if pod.metadata.deletion_timestamp is None and any(
            c.type == "Ready" and c.status == "True" for c in conds
        ):
            ips.append(pod.status.pod_ip)
    return sorted(ips)


@pytest.fixture
def fleet(
    kube_api: client.ApiClient,
    kubeconfig: str,
    operator_ns: str,
    test_image: str,
    model_server: dict[str, Any],
) -> Iterator[str]:
    """`chat` (2 pods) and `support` (1 pod) Ready on the real node; deleted afterwards."""
    custom = client.CustomObjectsApi(kube_api)
    real = model_server["smollm2"]
    secret = {"metadata": {"name": "support-keys"}, "stringData": {"api-key": f"{USER_KEY}\n"}}
    client.CoreV1Api(kube_api).create_namespaced_secret(operator_ns, secret)
    for name, replicas in REPLICAS.items():
        body = slmd(
            name, test_image, real["uri"], real["sha256"], model=name, quantization="Q4_1", parallel=2
        )
        body["spec"]["replicas"] = replicas
        if name == AUTHENTICATED:
            body["spec"]["auth"] = {"apiKeySecretRef": {"name": "support-keys", "key": "api-key"}}
        custom.create_namespaced_custom_object(GROUP, VERSION, operator_ns, PLURAL, body)
    try:
        for name, replicas in REPLICAS.items():
            try:
                wait_for(
                    lambda n=name, r=replicas: len(_ready_ips(kube_api, operator_ns, n)) == r,
                    300,
                    f"{replicas} Ready pods of {name}",
                    interval=2,
                )
            except TimeoutError as e:
                raise AssertionError(f"{e}\n{describe(kubeconfig, operator_ns)}") from None
        yield operator_ns
    finally:
        for name in REPLICAS:
            with contextlib.suppress(client.ApiException):
                custom.delete_namespaced_custom_object(GROUP, VERSION, operator_ns, PLURAL, name)
        for name in REPLICAS:
            wait_for(
                lambda n=name: not pods_of(kube_api, operator_ns, n), 120, f"pods of {name} gone", interval=1
            )


@pytest.fixture
def gateway_kubeconfig(kube_api: client.ApiClient, operator_ns: str, tmp_path: Path) -> Iterator[Path]:
    """A ServiceAccount of `operator_ns` bound there to the chart's gateway ClusterRole."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    role = _chart_gateway_role()
    role_name = f"{operator_ns}-gateway"
    role["metadata"] = {"name": role_name}
    rbac.create_cluster_role(role)
    try:
        client.CoreV1Api(kube_api).create_namespaced_service_account(
            operator_ns, {"metadata": {"name": "gateway"}}
        )
        rbac.create_namespaced_role_binding(
            operator_ns,
            {
                "metadata": {"name": "gateway"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": role_name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": "gateway", "namespace": operator_ns}],
            },
        )
        yield serviceaccount_kubeconfig(kube_api, operator_ns, "gateway", tmp_path / "gw.kubeconfig")
    finally:
        with contextlib.suppress(client.ApiException):
            rbac.delete_cluster_role(role_name)


def _audit(path: Path, since: int = 0) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()[since:]] if path.exists() else []


def _oai(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)


def _oll(url: str, key: str) -> ollama.Client:
    return ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def _both_models_both_clients(url: str, audit: Path, ns: str, ips: dict[str, list[str]]) -> None:
    """Both models through the one endpoint, with both official clients; audit lines count tokens."""
    full = _oai(url, FULL)
    answers: list[tuple[str, int, int]] = []  # (model, prompt tokens, completion tokens) per client
    for model in REPLICAS:
        out = full.chat.completions.create(model=model, messages=QUESTION, max_tokens=16, temperature=0)
        assert "Paris" in (out.choices[0].message.content or ""), out
        assert out.model == model and out.usage is not None
        answers.append((model, out.usage.prompt_tokens, out.usage.completion_tokens))
        reply = _oll(url, FULL).chat(
            model=model, messages=QUESTION, options={"num_predict": 16, "temperature": 0}
        )
        assert "Paris" in (reply.message.content or ""), reply
        answers.append((model, reply.prompt_eval_count or 0, reply.eval_count or 0))
    streamed = full.chat.completions.create(
        model="support", messages=QUESTION, max_tokens=16, temperature=0, stream=True
    )
    assert "Paris" in "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    # the gateway writes a stream's audit line once the stream has ended, just after the client's last chunk
    wait_for(lambda: len(_audit(audit)) >= 5, 15, "the streamed request's audit line")
    lines = _audit(audit)
    assert len(lines) == 5, lines
    for line, (model, prompt, completion) in zip(lines, answers, strict=False):
        assert (line["key_id"], line["model"], line["status"]) == ("full", model, 200), line
        assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, completion), line
        assert line["endpoint"].removeprefix("http://").split(":")[0] in ips[model], line
        assert line["deployment"] == f"{ns}/{model}"
    assert lines[4]["stream"] and lines[4]["completion_tokens"] > 0
    assert all("Paris" not in json.dumps(line) for line in lines)  # content is not logged


def _access_and_quota(url: str, audit: Path) -> None:
    """A key for `chat` only is refused `support`; a quota of 2 requests a minute answers 429."""
    chat_only = _oai(url, CHAT_ONLY)
    assert [m.id for m in chat_only.models.list()] == ["chat"]
    chat_only.chat.completions.create(model="chat", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.PermissionDeniedError):
        chat_only.chat.completions.create(model="support", messages=QUESTION, max_tokens=2)
    with pytest.raises(ollama.ResponseError) as refused:
        _oll(url, CHAT_ONLY).chat(model="support", messages=QUESTION, options={"num_predict": 2})
    assert refused.value.status_code == 403

    # a quota of 2 requests a minute: the third gets 429 with Retry-After, in both APIs
    limited = _oai(url, LIMITED)
    for _ in range(2):
        limited.chat.completions.create(model="chat", messages=QUESTION, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as limit:
        limited.chat.completions.create(model="chat", messages=QUESTION, max_tokens=2)
    assert int(limit.value.response.headers["retry-after"]) >= 1
    with pytest.raises(ollama.ResponseError) as limit2:
        _oll(url, LIMITED).chat(model="support", messages=QUESTION, options={"num_predict": 2})
    assert limit2.value.status_code == 429
    statuses = [(x["key_id"], x["model"], x["status"]) for x in _audit(audit)[5:]]
    assert statuses == [
        ("chat-only", "chat", 200),
        ("chat-only", "support", 403),
        ("chat-only", "support", 403),
        ("limited", "chat", 200),
        ("limited", "chat", 200),
        ("limited", "chat", 429),
        ("limited", "support", 429),
    ]


def _pod_deleted_mid_test(api: client.ApiClient, url: str, audit: Path, ns: str, state: Any) -> None:
    """A `chat` pod is deleted while requests flow: every request still succeeds, and once the
    gateway has seen the pod leave, nothing more goes to it."""
    before = len(_audit(audit))
    victim = _ready_ips(api, ns, "chat")[0]
    pod = next(p for p in pods_of(api, ns, "chat") if p.status.pod_ip == victim)
    errors: list[BaseException] = []
    done = threading.Event()

    def traffic() -> None:
        oai = _oai(url, FULL)
        for _ in range(40):
            try:
                oai.chat.completions.create(model="chat", messages=QUESTION, max_tokens=2)
            except (openai.OpenAIError, httpx.HTTPError) as err:
                errors.append(err)
            if done.is_set():
                return

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        wait_for(lambda: len(_audit(audit, before)) >= 2, 60, "traffic before the deletion")
        client.CoreV1Api(api).delete_namespaced_pod(pod.metadata.name, ns)
        wait_for(
            lambda: (
                victim
                not in {s.url.removeprefix("http://").split(":")[0] for s in state.endpoints_of("chat")}
            ),
            60,
            "the gateway to drop the deleted pod",
        )
        left = len(_audit(audit))
        wait_for(lambda: len(_audit(audit, left)) >= 5, 90, "traffic after the deletion")
    finally:
        done.set()
        sender.join(timeout=120)
    assert errors == []
    after = _audit(audit, left)[1:]  # the one request in flight when the pod left may end there
    assert after and all(x["status"] == 200 for x in _audit(audit, before))
    assert all(victim not in x["endpoint"] for x in after), [x["endpoint"] for x in after]


def _direct_clients_need_the_user_key(ips: list[str]) -> None:
    """The authenticated pod, straight (no gateway): the user key from its Secret works as before,
    a wrong key and the gateway key's digest are refused in the API's format."""
    url = f"http://{ips[0]}:8080"
    body = {"model": AUTHENTICATED, "messages": QUESTION, "max_tokens": 2}
    for wrong in (
        None,
        "sk-e2e-wrong-key-0123456789",
        hashlib.sha256(GATEWAY_UPSTREAM_KEY.encode()).hexdigest(),
    ):
        headers = {"Authorization": f"Bearer {wrong}"} if wrong else {}
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=60)
        assert refused.status_code == 401, (wrong, refused.text)
        assert refused.json()["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        _oai(url, "sk-e2e-wrong-key-0123456789").chat.completions.create(
            model=AUTHENTICATED, messages=QUESTION, max_tokens=2
        )
    out = _oai(url, USER_KEY).chat.completions.create(
        model=AUTHENTICATED, messages=QUESTION, max_tokens=16, temperature=0
    )
    assert "Paris" in (out.choices[0].message.content or ""), out


def test_one_endpoint_serves_the_real_fleet(
    kube_api: client.ApiClient,
    fleet: str,
    gateway_kubeconfig: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.conftest import Served
    from slm_gateway.app import create_app
    from slm_gateway.config import GatewayConfig

    ns = fleet
    keys, audit = tmp_path / "keys.yaml", tmp_path / "audit.jsonl"
    keys.write_text(yaml.safe_dump(KEYS))
    upstream_key = tmp_path / "upstream-key"  # what the chart mounts from its Secret
    upstream_key.write_text(f"{GATEWAY_UPSTREAM_KEY}\n")
    monkeypatch.setenv("KUBECONFIG", str(gateway_kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config = {
        "keysFile": str(keys),
        "upstreamKeyFile": str(upstream_key),
        "audit": {"stdout": False, "file": str(audit)},
        "routing": {"scrapeSeconds": 0.5},
    }
    app = create_app(GatewayConfig.model_validate(config), kubernetes_namespaces=[ns])
    gw = Served(app, ready_path="/readyz")
    state = app.state.gateway.fleet
    try:
        full = _oai(gw.url, FULL)
        wait_for(lambda: sorted(m.id for m in full.models.list()) == ["chat", "support"], 60, "both models")
        for name, replicas in REPLICAS.items():
            wait_for(
                lambda n=name, r=replicas: len(state.endpoints_of(n)) == r, 60, f"{replicas} {name} endpoints"
            )
        ips = {name: _ready_ips(kube_api, ns, name) for name in REPLICAS}
        role = _chart_gateway_role()  # what the gateway ran as: no Secret in any namespace
        assert not [r for r in role["rules"] if "secrets" in r["resources"]], role

        _both_models_both_clients(gw.url, audit, ns, ips)
        _direct_clients_need_the_user_key(ips[AUTHENTICATED])
        _access_and_quota(gw.url, audit)
        _pod_deleted_mid_test(kube_api, gw.url, audit, ns, state)
    finally:
        gw.stop()
