"""The chart's gateway: on by default, read-only RBAC, its Service, NetworkPolicy and key Secret."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chart"))
from test_chart import NAMESPACE, is_gateway, render, rules_of


def gateway(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and is_gateway(d)]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = gateway(docs, "Deployment")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def test_gateway_is_on_by_default_and_serves_from_the_runtime_image(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    (deployment,) = gateway(docs, "Deployment")
    c = container(docs)
    assert c["image"] == "ghcr.io/slm-operator/slm-runtime:0.1.0"
    assert c["command"] == ["slm-gateway"]
    assert c["args"] == ["--kubernetes", "--port=8080", "--upstream-key-file=/etc/slm-gateway/upstream/key"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (sa,) = gateway(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"] == "slm-operator-gateway"
    (service,) = gateway(docs, "Service")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    # the model pods' NetworkPolicies admit pods with this label (operator render/network.py)
    assert deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == "slm-gateway"


def test_gateway_rbac_is_read_only(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    (role,) = gateway(docs, "ClusterRole")
    assert rules_of(role) == {
        ("slm.dev", "slmdeployments", "get"),
        ("slm.dev", "slmdeployments", "list"),
        ("slm.dev", "slmdeployments", "watch"),
        ("discovery.k8s.io", "endpointslices", "get"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
    }  # no secrets (issue 13, item 8): it sends its own upstream key, mounted by the kubelet
    (binding,) = gateway(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "slm-operator-gateway", "namespace": NAMESPACE}
    ]


def test_watched_namespaces_get_roles_and_flags(tmp_path: Path) -> None:
    docs = render({"watchNamespaces": ["models", "staging"]}, tmp_path)
    assert not gateway(docs, "ClusterRole")
    assert {r["metadata"]["namespace"] for r in gateway(docs, "Role")} == {"models", "staging"}
    assert {b["metadata"]["namespace"] for b in gateway(docs, "RoleBinding")} == {"models", "staging"}
    assert container(docs)["args"] == [
        "--kubernetes",
        "--namespace=models",
        "--namespace=staging",
        "--port=8080",
        "--upstream-key-file=/etc/slm-gateway/upstream/key",
    ]
    for role in gateway(docs, "Role"):  # namespaced mode: no Secret access either
        assert not {r for r in rules_of(role) if r[1] == "secrets"}, role["metadata"]


def test_keys_secret_is_mounted_and_clients_are_restricted(tmp_path: Path) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"team": "apps"}}}
    docs = render(
        {"gateway": {"keysSecret": "gw-keys", "allowedClients": [peer], "auditLogContent": True}}, tmp_path
    )
    c = container(docs)
    assert "--keys-file=/etc/slm-gateway/keys/keys.yaml" in c["args"] and "--audit-log-content" in c["args"]
    assert {"name": "keys", "mountPath": "/etc/slm-gateway/keys", "readOnly": True} in c["volumeMounts"]
    (deployment,) = gateway(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["keys"] == {"name": "keys", "secret": {"secretName": "gw-keys"}}
    (policy,) = gateway(docs, "NetworkPolicy")
    port = [{"port": "http", "protocol": "TCP"}]
    assert policy["spec"]["ingress"][0] == {"ports": port, "from": [peer]}
    # the operator's pods too: its autoscaler reads the gateway's /demand
    (operator_rule,) = policy["spec"]["ingress"][1:]
    assert operator_rule["ports"] == port
    (operator_deployment,) = [d for d in docs if d["kind"] == "Deployment" and not is_gateway(d)]
    operator_labels = operator_deployment["spec"]["template"]["metadata"]["labels"]
    assert operator_rule["from"][0]["podSelector"]["matchLabels"].items() <= operator_labels.items()


def test_gateway_can_be_turned_off(tmp_path: Path) -> None:
    docs = render({"gateway": {"enabled": False}}, tmp_path)
    assert not [d for d in docs if is_gateway(d)]


def test_fleet_view_in_the_dashboard_and_the_gateway_is_scraped(tmp_path: Path) -> None:
    import json

    import promql_parser

    values = {"monitoring": {"podMonitor": {"enabled": True}, "dashboard": {"enabled": True}}}
    docs = render(values, tmp_path)
    (monitor,) = gateway(docs, "PodMonitor")
    (deployment,) = gateway(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"]
    dashboard = json.loads(configmap["data"]["slm-runtime.json"])
    fleet = [
        t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "slm_gateway_" in t["expr"]
    ]
    assert len(fleet) == 6  # 4 fleet panels + in flight and held on the autoscaler panel
    for expr in fleet:
        promql_parser.parse(expr)
        assert 'job="slm-gateway"' in expr


def test_the_operator_is_told_where_the_gateway_is(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    operator = next(d for d in docs if d["kind"] == "Deployment" and not is_gateway(d))
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    (service,) = gateway(docs, "Service")
    name, port = service["metadata"]["name"], service["spec"]["ports"][0]["port"]
    assert env["SLM_GATEWAY_NAMESPACE"] == NAMESPACE
    assert env["SLM_GATEWAY_URL"] == f"http://{name}.{NAMESPACE}.svc.cluster.local:{port}/v1"
    off = next(d for d in render({"gateway": {"enabled": False}}, tmp_path) if d["kind"] == "Deployment")
    names = {e["name"] for e in off["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert not names & {"SLM_GATEWAY_NAMESPACE", "SLM_GATEWAY_URL"}


# -- the gateway's upstream key (issue 13, item 8) -----------------------------------------------


def _operator_digests(docs: list[dict[str, Any]]) -> list[str]:
    operator = next(d for d in docs if d["kind"] == "Deployment" and not is_gateway(d))
    args = operator["spec"]["template"]["spec"]["containers"][0]["args"]
    return [a.removeprefix("--gateway-key-sha256=") for a in args if a.startswith("--gateway-key-sha256=")]


def _upstream_volume(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = gateway(docs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(docs)["volumeMounts"]}
    assert mounts["upstream-key"] == {
        "name": "upstream-key",
        "mountPath": "/etc/slm-gateway/upstream",
        "readOnly": True,
    }
    return volumes["upstream-key"]  # type: ignore[no-any-return]


def test_a_generated_upstream_key_and_its_digest_for_the_operator(tmp_path: Path) -> None:
    """By default the chart makes the key; the operator gets only its SHA-256, of that same key."""
    import base64
    import hashlib

    docs = render({}, tmp_path)
    (secret,) = gateway(docs, "Secret")
    key = base64.b64decode(secret["data"]["key"]).decode()
    assert len(key) == 48 and key.isalnum()
    assert _operator_digests(docs) == [hashlib.sha256(key.encode()).hexdigest()]
    assert _upstream_volume(docs)["secret"] == {
        "secretName": secret["metadata"]["name"],
        "items": [{"key": "key", "path": "key"}],
    }
    assert secret["metadata"]["namespace"] == NAMESPACE
    # `helm template` cannot look the Secret up: a new key on every render (the documented trade-off)
    assert _operator_digests(render({}, tmp_path)) != _operator_digests(docs)


def test_an_existing_secret_with_its_digests_for_gitops(tmp_path: Path) -> None:
    old, new = "AB" * 32, "cd" * 32
    values = {"gateway": {"upstreamKey": {"existingSecret": "gw-upstream", "sha256": [old, new]}}}
    docs = render(values, tmp_path)
    assert not gateway(docs, "Secret")  # nothing generated, so every render is the same
    assert _operator_digests(docs) == [old.lower(), new]
    assert _upstream_volume(docs)["secret"]["secretName"] == "gw-upstream"
    assert _operator_digests(render(values, tmp_path)) == _operator_digests(docs)


def test_an_existing_secret_without_a_digest_fails_to_render(tmp_path: Path) -> None:
    from test_chart import _run_helm

    values = {"gateway": {"upstreamKey": {"existingSecret": "gw-upstream"}}}
    result = _run_helm(
        ["template", "r", str(Path(__file__).parents[2] / "charts" / "slm-operator")], values, tmp_path
    )
    assert result.returncode != 0
    assert "gateway.upstreamKey.existingSecret needs gateway.upstreamKey.sha256" in result.stderr
    bad = {"gateway": {"upstreamKey": {"existingSecret": "gw-upstream", "sha256": ["not-hex"]}}}
    result = _run_helm(
        ["template", "r", str(Path(__file__).parents[2] / "charts" / "slm-operator")], bad, tmp_path
    )
    assert result.returncode != 0 and "sha256" in result.stderr


def test_no_gateway_no_upstream_key(tmp_path: Path) -> None:
    docs = render({"gateway": {"enabled": False}}, tmp_path)
    assert _operator_digests(docs) == [] and not [d for d in docs if d["kind"] == "Secret"]
