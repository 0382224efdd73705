"""The Helm chart: lint, render several value combinations, validate the output offline.

Runs `bin/helm` (built by `bash hack/build-bins.sh`, or `make bins`); `SLM_HELM` may point at
another helm binary. Kubernetes-typed objects are validated against the Kubernetes OpenAPI schemas
with kubernetes-validate (strict: unknown fields fail); CRD-typed objects (ServiceMonitor,
PodMonitor, PrometheusRule, kopf peerings) are parsed and checked field by field here instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml

from slm_operator.api import SLMDeployment

sys.path.insert(0, str(Path(__file__).parent))
import values_doc

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "slm-operator"
GENERATED_CRD = ROOT / "crds" / "slm.dev_slmdeployments.yaml"
CHART_CRD = CHART / "crds" / "slm.dev_slmdeployments.yaml"
HELM = Path(os.environ.get("SLM_HELM", ROOT / "bin" / "helm"))
# The Kubernetes version the chart is rendered and validated for (the local test bed's minor).
KUBE_VERSION = "1.34.0"
NAMESPACE = "slm-system"
RELEASE = "slm-operator"
# Kinds whose schema is not part of Kubernetes: parsed, checked below, not given to kubernetes-validate.
CRD_GROUPS = ("monitoring.coreos.com/", "kopf.dev/", "slm.dev/")

MONITORING_ON = {
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "podMonitor": {"enabled": True, "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "dashboard": {"enabled": True},
    }
}

CASES: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"watchNamespaces": ["models", "staging"]},
    "ha": {"replicaCount": 2},
    "ha-namespaced": {"replicaCount": 3, "watchNamespaces": ["models"]},
    "monitoring": MONITORING_ON,
    "everything": {
        **MONITORING_ON,
        "replicaCount": 2,
        "watchNamespaces": ["models"],
        "image": {"digest": "sha256:" + "a" * 64},
        "imagePullSecrets": [{"name": "ghcr"}],
        "extraArgs": ["--verbose"],
        "extraEnv": [{"name": "SLM_EXTRA", "value": "1"}],
        "podAnnotations": {"example.com/a": "b"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "system-cluster-critical",
        "serviceAccount": {"annotations": {"example.com/role": "x"}},
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "slm-operator"}},
            }
        ],
    },
}


# ---------------------------------------------------------------------------------------------
# helpers


def _helm() -> Path:
    if not HELM.is_file() or not os.access(HELM, os.X_OK):
        pytest.fail(
            f"helm not found at {HELM}: run `bash hack/build-bins.sh` (make bins) first, "
            "or point SLM_HELM at a helm v3 binary",
            pytrace=False,
        )
    return HELM


def _run_helm(args: list[str], values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return subprocess.run(
        [str(_helm()), *args, "-f", str(values_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "HELM_CACHE_HOME": str(tmp_path / "cache"), "HELM_CONFIG_HOME": str(tmp_path)},
    )


def render(values: dict[str, Any], tmp_path: Path, release: str = RELEASE) -> list[dict[str, Any]]:
    """`helm template` with these values (CRDs included), as parsed documents."""
    result = _run_helm(
        [
            "template",
            release,
            str(CHART),
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            "--include-crds",
        ],
        values,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def is_gateway(doc: dict[str, Any]) -> bool:
    """An object of the gateway (gateway.enabled), tested in tests/gateway/test_gw_chart.py."""
    return (doc.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component") == "gateway"


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The operator's own objects of `kind` (not the gateway's)."""
    return [doc for doc in docs if doc["kind"] == kind and not is_gateway(doc)]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return containers[0]


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a Role or ClusterRole grants."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _leaf_paths(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _leaf_paths(child, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


# ---------------------------------------------------------------------------------------------
# lint and validity, for every case


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_strict(case: str, tmp_path: Path) -> None:
    result = _run_helm(
        ["lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION], CASES[case], tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_are_valid_kubernetes(case: str, tmp_path: Path) -> None:
    docs = render(CASES[case], tmp_path)
    assert docs
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        assert set(doc) >= {"apiVersion", "kind", "metadata"}, name
        assert len(doc["metadata"]["name"]) <= 63 or doc["kind"] == "CustomResourceDefinition", name
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # not in the Kubernetes schemas; checked by the tests below
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            message = getattr(error, "message", str(error)[:2000])
            pytest.fail(f"{case}: {name} is invalid: {message} at {list(getattr(error, 'path', []))}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_namespaced_object_has_a_namespace(case: str, tmp_path: Path) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterKopfPeering"}
    for doc in render(CASES[case], tmp_path):
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']}"


# ---------------------------------------------------------------------------------------------
# default: one cluster-wide replica


def test_default_operator_deployment(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate", "rollingUpdate": None}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    container = operator_container(docs)
    assert container["image"] == "ghcr.io/slm-operator/slm-operator:0.1.0"
    *args, digest = container["args"]
    assert args == [
        "run",
        "--all-namespaces",
        "--standalone",
        "--metrics-port=9090",
        "--liveness=http://0.0.0.0:8081/healthz",
    ]
    # the gateway's upstream key, by digest (tests/gateway/test_gw_chart.py)
    assert re.fullmatch(r"--gateway-key-sha256=[0-9a-f]{64}", digest), digest
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    env = {item["name"]: item for item in container["env"]}
    assert env["SLM_RUNTIME_IMAGE"]["value"] == "ghcr.io/slm-operator/slm-runtime:0.1.0"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_default_rbac_is_one_cluster_role(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    granted = rules_of(role)
    for triple in [
        ("slm.dev", "slmdeployments", "watch"),
        ("slm.dev", "slmdeployments", "patch"),
        ("slm.dev", "slmdeployments/status", "patch"),
        ("apps", "deployments", "delete"),
        ("", "configmaps", "create"),
        ("policy", "poddisruptionbudgets", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "patch"),
        ("networking.k8s.io", "networkpolicies", "patch"),
        ("", "nodes", "list"),
        ("", "pods", "list"),
        ("", "events", "create"),
        ("events.k8s.io", "events", "create"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("", "namespaces", "watch"),
    ]:
        assert triple in granted, triple
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": one(docs, "ServiceAccount")["metadata"]["name"],
            "namespace": NAMESPACE,
        }
    ]
    assert not any(group == "kopf.dev" for group, _, _ in granted)
    # Issue 13: `get secrets` cluster-wide would read every Secret's data in the cluster.
    assert not any(resource == "secrets" for _, resource, _ in granted)
    # Issue 13, item 8: nor may the gateway, the network-facing component (no Secret access at all)
    gateway_roles = [d for d in docs if d["kind"] in ("ClusterRole", "Role") and is_gateway(d)]
    assert gateway_roles
    for gateway_role in gateway_roles:
        assert not any(resource == "secrets" for _, resource, _ in rules_of(gateway_role))


def test_chart_rbac_equals_the_operators_own_rules(tmp_path: Path) -> None:
    """One source of truth: the chart grants exactly what `slm-operator rbac` says the operator
    needs (cluster-wide, with HA so the peering rules are in), no verb more, no verb less."""
    from slm_operator.rbac import rules

    docs = render({"replicaCount": 2}, tmp_path)
    granted = set().union(*(rules_of(role) for role in by_kind(docs, "ClusterRole")))
    needed = {
        (group, resource, verb)
        for rule in rules(peering=True)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted - needed == set(), "the chart grants more than the operator needs"
    assert needed - granted == set(), "the chart lacks what the operator needs"


@pytest.mark.parametrize("case", sorted(CASES))
def test_rbac_is_least_privilege(case: str, tmp_path: Path) -> None:
    docs = render(CASES[case], tmp_path)
    for role in [doc for doc in docs if doc["kind"] in ("ClusterRole", "Role")]:  # the gateway's too
        granted = rules_of(role)
        assert not any("*" in triple for triple in granted), role["metadata"]
        secrets = {verb for group, resource, verb in granted if (group, resource) == ("", "secrets")}
        assert secrets <= {"get"}
        pods = {verb for group, resource, verb in granted if (group, resource) == ("", "pods")}
        assert pods <= {"get", "list", "watch"}
        assert not any(verb in {"escalate", "bind", "impersonate"} for _, _, verb in granted)
        assert ("slm.dev", "slmdeployments", "delete") not in granted


def test_metrics_service_selects_the_operator(tmp_path: Path) -> None:
    docs = render({}, tmp_path)
    service = one(docs, "Service")
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_no_monitoring_objects_by_default(tmp_path: Path) -> None:
    kinds = {doc["kind"] for doc in render({}, tmp_path)}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "PodDisruptionBudget"}


# ---------------------------------------------------------------------------------------------
# watchNamespaces: Roles per namespace, a cluster role for the cluster-scoped rest


def test_watch_namespaces_uses_roles(tmp_path: Path) -> None:
    docs = render(CASES["namespaced"], tmp_path)
    container = operator_container(docs)
    assert "--namespace=models" in container["args"] and "--namespace=staging" in container["args"]
    assert "--all-namespaces" not in container["args"]

    roles = {role["metadata"]["namespace"]: role for role in by_kind(docs, "Role")}
    bindings = {binding["metadata"]["namespace"]: binding for binding in by_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"models", "staging"}
    for namespace, role in roles.items():
        assert ("slm.dev", "slmdeployments", "watch") in rules_of(role)
        assert ("apps", "deployments", "patch") in rules_of(role)
        subject = bindings[namespace]["subjects"][0]
        assert subject["namespace"] == NAMESPACE
        assert bindings[namespace]["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }

    cluster = rules_of(one(docs, "ClusterRole"))
    assert {resource for _, resource, _ in cluster} == {"nodes", "customresourcedefinitions", "namespaces"}


# ---------------------------------------------------------------------------------------------
# HA: kopf peering


def test_ha_cluster_wide_uses_a_cluster_peering(tmp_path: Path) -> None:
    docs = render(CASES["ha"], tmp_path)
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert "strategy" not in deployment["spec"]  # rolling: a standby takes over during rollouts
    peering = one(docs, "ClusterKopfPeering")
    assert peering["apiVersion"] == "kopf.dev/v1"
    args = operator_container(docs)["args"]
    assert f"--peering={peering['metadata']['name']}" in args and "--standalone" not in args
    granted = rules_of(one(docs, "ClusterRole"))
    assert ("kopf.dev", "clusterkopfpeerings", "patch") in granted
    assert ("kopf.dev", "clusterkopfpeerings", "watch") in granted
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )


def test_ha_namespaced_uses_a_peering_per_namespace(tmp_path: Path) -> None:
    docs = render(CASES["ha-namespaced"], tmp_path)
    assert not by_kind(docs, "ClusterKopfPeering")
    peering = one(docs, "KopfPeering")
    assert peering["metadata"]["namespace"] == "models"
    assert ("kopf.dev", "kopfpeerings", "patch") in rules_of(one(docs, "Role"))
    assert not any(group == "kopf.dev" for group, _, _ in rules_of(one(docs, "ClusterRole")))


def test_peering_crds_ship_with_the_chart(tmp_path: Path) -> None:
    crds = {doc["metadata"]["name"]: doc for doc in by_kind(render({}, tmp_path), "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= set(crds)
    assert crds["clusterkopfpeerings.kopf.dev"]["spec"]["scope"] == "Cluster"
    assert crds["kopfpeerings.kopf.dev"]["spec"]["scope"] == "Namespaced"
    for crd in crds.values():
        kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)


# ---------------------------------------------------------------------------------------------
# monitoring


def test_service_monitor_scrapes_the_metrics_service(tmp_path: Path) -> None:
    docs = render(MONITORING_ON, tmp_path)
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


@pytest.mark.parametrize(
    ("watch", "selector"), [([], {"any": True}), (["a", "b"], {"matchNames": ["a", "b"]})]
)
def test_pod_monitor_scrapes_runtime_pods(watch: list[str], selector: dict[str, Any], tmp_path: Path) -> None:
    monitor = one(render({**MONITORING_ON, "watchNamespaces": watch}, tmp_path), "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "slm-runtime",
        "app.kubernetes.io/managed-by": "slm-operator",
    }
    assert monitor["spec"]["namespaceSelector"] == selector
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    assert {
        "sourceLabels": ["__meta_kubernetes_pod_label_slm_dev_deployment"],
        "targetLabel": "slmdeployment",
        "action": "replace",
    } in endpoint["relabelings"]


def test_prometheus_rule_alerts(tmp_path: Path) -> None:
    rule = one(render(MONITORING_ON, tmp_path), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "SLMRuntimeDown",
        "SLMRuntimePodDown",
        "SLMQueueGrowing",
        "SLMTimeToFirstTokenHigh",
        "SLMReplicasAtMax",
        "SLMOperatorDown",
    }
    assert alerts["SLMReplicasAtMax"]["for"] == "15m"
    assert "vllm:num_requests_waiting" in alerts["SLMQueueGrowing"]["expr"]
    assert "vllm:time_to_first_token_seconds_bucket" in alerts["SLMTimeToFirstTokenHigh"]["expr"]
    assert "> 2" in alerts["SLMTimeToFirstTokenHigh"]["expr"]
    assert "kube_horizontalpodautoscaler_spec_max_replicas" in alerts["SLMReplicasAtMax"]["expr"]
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert alert["annotations"]["runbook_url"].endswith("#" + name.lower().replace("poddown", "down")), (
            name
        )
        assert alert["expr"].count("(") == alert["expr"].count(")"), name
        # Prometheus, not Helm, must expand the alert templates.
        assert "{{ $labels." in alert["annotations"]["description"] or name == "SLMOperatorDown", name


def test_prometheus_rule_thresholds_are_values(tmp_path: Path) -> None:
    values = {
        "monitoring": {"prometheusRule": {"enabled": True, "ttftP95Seconds": 0.5, "queueWaitingThreshold": 3}}
    }
    rule = one(render(values, tmp_path), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert "> 0.5" in alerts["SLMTimeToFirstTokenHigh"]["expr"]
    assert "> 3" in alerts["SLMQueueGrowing"]["expr"]
    assert "SLMOperatorDown" not in alerts  # needs the ServiceMonitor


def test_grafana_dashboard(tmp_path: Path) -> None:
    configmap = one(render(MONITORING_ON, tmp_path), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["slm-runtime.json"])
    assert dashboard["uid"] == "slm-runtime"
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "slmdeployment"}
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in [
        "vllm:generation_tokens_total",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        'up{job="slm-runtime"',
    ]:
        assert metric in exprs, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_namespace_override(tmp_path: Path) -> None:
    values = {"monitoring": {"dashboard": {"enabled": True, "namespace": "grafana"}}}
    assert one(render(values, tmp_path), "ConfigMap")["metadata"]["namespace"] == "grafana"


def test_service_monitor_needs_the_metrics_service(tmp_path: Path) -> None:
    values = {"metrics": {"service": {"enabled": False}}, "monitoring": {"serviceMonitor": {"enabled": True}}}
    result = _run_helm(["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION], values, tmp_path)
    assert result.returncode != 0
    assert "needs metrics.service.enabled" in result.stderr


# ---------------------------------------------------------------------------------------------
# names, images, schema, docs


@pytest.mark.parametrize(
    ("release", "values"),
    [
        ("a-release-name-long-enough-to-need-truncating-abcdef", {}),  # 52 (Helm allows 53)
        (RELEASE, {"fullnameOverride": "f" * 63}),
    ],
)
def test_names_are_truncated_to_63(release: str, values: dict[str, Any], tmp_path: Path) -> None:
    docs = render(MONITORING_ON | {"replicaCount": 2} | values, tmp_path, release=release)
    for doc in docs:
        if doc["kind"] != "CustomResourceDefinition":
            name = doc["metadata"]["name"]
            assert len(name) <= 63 and not name.endswith("-"), name
    names = [doc["metadata"]["name"] for doc in docs if doc["kind"] in {"Service", "ConfigMap", "PodMonitor"}]
    assert all(name.endswith(("-metrics", "-dashboard", "-runtime", "-gateway")) for name in names), names


def test_image_digest_and_runtime_image(tmp_path: Path) -> None:
    digest = "sha256:" + "b" * 64
    values = {
        "image": {"digest": digest},
        "runtime": {"image": {"repository": "example.com/rt", "tag": "9.9"}},
    }
    container = operator_container(render(values, tmp_path))
    assert container["image"] == f"ghcr.io/slm-operator/slm-operator@{digest}"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["SLM_RUNTIME_IMAGE"] == "example.com/rt:9.9"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"replicaCont": 2}, "replicaCont"),
        ({"monitoring": {"podMonitor": {"enabeld": True}}}, "enabeld"),
        ({"watchNamespaces": ["Not_A_Namespace"]}, "watchNamespaces"),
        ({"replicaCount": "two"}, "replicaCount"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], complaint: str, tmp_path: Path) -> None:
    result = _run_helm(["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION], values, tmp_path)
    assert result.returncode != 0
    assert complaint in result.stderr, result.stderr


def test_values_schema_describes_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)

    def closed(node: dict[str, Any], where: str) -> None:
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, where
            for key, child in node["properties"].items():
                closed(child, f"{where}.{key}")

    closed(schema, "values")
    # Every documented value exists in the schema.
    for doc in values_doc.parse((CHART / "values.yaml").read_text()):
        node = schema
        for part in doc.path.split("."):
            assert part in node.get("properties", {}), f"{doc.path} is missing from values.schema.json"
            node = node["properties"][part]


def test_values_are_documented_and_readme_is_current() -> None:
    text = (CHART / "values.yaml").read_text()
    assert values_doc.undocumented_leaves(text) == []
    readme = (CHART / "README.md").read_text()
    assert values_doc.render_readme(readme, text) == readme, (
        "charts/slm-operator/README.md is stale: run `python tests/chart/values_doc.py --write`"
    )
    # One comment style: every comment directly above a key starts with "# --" or continues one.
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped and number > 0:
            above = lines[number - 1].strip()
            if above.startswith("#"):
                block_start = number - 1
                while block_start > 0 and lines[block_start - 1].strip().startswith("#"):
                    block_start -= 1
                assert lines[block_start].strip().startswith("# --"), f"values.yaml:{number + 1}"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    assert chart["name"] == "slm-operator"


def test_chart_crd_matches_generated() -> None:
    if not GENERATED_CRD.exists():
        pytest.skip(f"{GENERATED_CRD.relative_to(ROOT)} is not generated yet (`make crd`)")
    assert CHART_CRD.exists(), (
        f"{CHART_CRD.relative_to(ROOT)} is missing: `make crd` copies the generated CRD into the chart"
    )
    assert CHART_CRD.read_text() == GENERATED_CRD.read_text(), (
        f"{CHART_CRD.relative_to(ROOT)} differs from {GENERATED_CRD.relative_to(ROOT)}: run `make crd`"
    )


def _crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(GENERATED_CRD.read_text())
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    return dict(versions["v1alpha1"]["schema"]["openAPIV3Schema"])


def test_gitops_example_models_match_the_crd() -> None:
    if not GENERATED_CRD.exists():
        pytest.skip(f"{GENERATED_CRD.relative_to(ROOT)} is not generated yet (`make crd`)")
    schema = _crd_schema()
    models = sorted((ROOT / "examples" / "gitops" / "models").glob("*.yaml"))
    checked = 0
    for path in models:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "SLMDeployment":
                # A CRD schema is OpenAPI v3.0, whose keywords follow JSON Schema draft 4.
                jsonschema.Draft4Validator(schema).validate(doc)
                # The API model's validators mirror the CRD's CEL rules.
                SLMDeployment.model_validate(doc)
                checked += 1
    assert checked >= 1


# ---------------------------------------------------------------------------------------------
# PromQL: every alert and dashboard query parses


def _dashboard_exprs(tmp_path: Path) -> list[str]:
    configmap = one(render(MONITORING_ON, tmp_path), "ConfigMap")
    dashboard = json.loads(configmap["data"]["slm-runtime.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_alert_expressions_are_valid_promql(tmp_path: Path) -> None:
    rule = one(render(MONITORING_ON, tmp_path), "PrometheusRule")
    for group in rule["spec"]["groups"]:
        for alert in group["rules"]:
            try:
                promql_parser.parse(alert["expr"])
            except ValueError as error:
                pytest.fail(f"{alert['alert']}: {error}\n{alert['expr']}")


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    grafana_variables = {"$__rate_interval": "5m", "$namespace": ".*", "$slmdeployment": ".*"}
    exprs = _dashboard_exprs(tmp_path)
    assert len(exprs) >= 12
    for expr in exprs:
        query = expr
        if query.startswith("label_values("):  # a Grafana function: check the selector inside
            query = query[len("label_values(") : query.rindex(",")]
        for variable, value in grafana_variables.items():
            query = query.replace(variable, value)
        try:
            promql_parser.parse(query)
        except ValueError as error:
            pytest.fail(f"{error}\n{expr}")


def test_dashboard_graphs_replicas_against_requests_in_flight(tmp_path: Path) -> None:
    """Issue 12: the autoscaler's desired/current replicas and the gateway's in-flight and held
    requests on one panel, with metric names the operator and the gateway really export."""
    from slm_gateway.metrics import GatewayMetrics
    from slm_operator.metrics import Metrics

    configmap = one(render(MONITORING_ON, tmp_path), "ConfigMap")
    dashboard = json.loads(configmap["data"]["slm-runtime.json"])
    panel = next(p for p in dashboard["panels"] if p["title"].startswith("Autoscaler"))
    exprs = " ".join(t["expr"] for t in panel["targets"])
    exported = {m.name for m in [*Metrics().registry.collect(), *GatewayMetrics().registry.collect()]}
    for metric in [
        "slm_operator_autoscaler_desired_replicas",
        "slm_operator_autoscaler_current_replicas",
        "slm_gateway_endpoint_outstanding",
        "slm_gateway_held_requests",
    ]:
        assert metric in exprs and metric in exported, metric
    import promql_parser

    for target in panel["targets"]:
        promql_parser.parse(target["expr"])
