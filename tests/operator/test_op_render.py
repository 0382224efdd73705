"""Rendering: key fields of every child, each child valid against the Kubernetes 1.34 OpenAPI schema."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml
from op_support import ROOT, bed_nodes, example, gguf, pod_on, spec

from slm_operator.api import SLMDeployment, SLMDeploymentSpec
from slm_operator.api.crd import build_crd
from slm_operator.cli import main
from slm_operator.placement import place
from slm_operator.render import DEFAULT_IMAGE, RenderContext, model_file_name, render_all
from slm_runtime.config import RuntimeConfig

K8S_VERSION = "1.34"
PHI = {"name": "phi", "parameters": 3.8, "variants": gguf("F16", "Q8_0", "Q4_K_M")}


def _render(
    the_spec: SLMDeploymentSpec, nodes: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    placement = place(the_spec, bed_nodes() if nodes is None else nodes)
    ctx = RenderContext(name="demo", namespace="ns", spec=the_spec, placement=placement, **kw)
    return {obj["kind"]: obj for obj in render_all(ctx)}


def _pool_nodes() -> list[dict[str, Any]]:
    nodes = bed_nodes()
    for node in nodes:
        node["metadata"]["labels"]["pool"] = "ml"
    return nodes


def _pod(objs: dict[str, Any]) -> dict[str, Any]:
    return objs["Deployment"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _container(objs: dict[str, Any], name: str = "runtime") -> dict[str, Any]:
    pod = _pod(objs)
    return next(c for c in pod["containers"] + pod["initContainers"] if c["name"] == name)


SPECS = {
    "minimal": {},
    "gpu": {"model": PHI},
    "autoscaled": {
        "model": PHI,
        "autoscaling": {"enabled": True, "maxReplicas": 3, "targetInFlightRequests": 2},
    },
    "everything": {
        "model": PHI,
        "replicas": 3,
        "auth": {"apiKeySecretRef": {"name": "keys", "key": "k"}},
        "cache": {"type": "pvc", "size": "30Gi", "storageClassName": "fast"},
        "networking": {
            "port": 80,
            "allowedClients": [
                {
                    "namespaceSelector": {"matchLabels": {"team": "a"}},
                    "podSelector": {"matchLabels": {"app": "x"}},
                }
            ],
            "metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        },
        "hardware": {"nodeSelector": {"pool": "ml"}, "tolerations": [{"key": "pool", "operator": "Exists"}]},
        "prompt": {"system": "hi", "parameters": {"temperature": 0.1, "stop": ["x"]}},
        "podLabels": {"team": "ml"},
        "podAnnotations": {"a": "b"},
        "imagePullPolicy": "Always",
        "image": "example.org/rt:1",
    },
}


@pytest.mark.parametrize("case", sorted(SPECS))
@pytest.mark.parametrize("inventory", ["test-bed", "offline"])
def test_children_are_valid_kubernetes_objects(case: str, inventory: str) -> None:
    nodes = _pool_nodes() if inventory == "test-bed" else []
    for obj in _render(spec(**SPECS[case]), nodes).values():
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", ["cpu", "gpu", "npu", "tiny"])
def test_examples_render_valid_objects(name: str) -> None:
    resource = SLMDeployment.model_validate(example(name))
    placement = place(resource.spec, bed_nodes())
    ctx = RenderContext(name=resource.name, namespace="default", spec=resource.spec, placement=placement)
    for obj in render_all(ctx):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_crd_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate.validate(build_crd(), K8S_VERSION, strict=True)


def test_names_labels_and_kinds() -> None:
    objs = _render(spec())
    assert sorted(objs) == ["ConfigMap", "Deployment", "NetworkPolicy", "Service", "ServiceAccount"]
    assert objs["ConfigMap"]["metadata"]["name"] == "demo-runtime"
    for obj in objs.values():
        meta = obj["metadata"]
        assert meta["namespace"] == "ns"
        assert meta["labels"] == {
            "app.kubernetes.io/name": "slm-runtime",
            "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "inference",
            "app.kubernetes.io/part-of": "slm-operator",
            "app.kubernetes.io/managed-by": "slm-operator",
            "slm.dev/deployment": "demo",
        }
        if obj["kind"] != "ConfigMap":
            assert meta["name"] == "demo"
    selector = objs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert selector["app.kubernetes.io/instance"] == "demo"
    assert objs["Service"]["spec"]["selector"] == selector


def test_deployment_pod_security_and_probes() -> None:
    objs = _render(spec())
    pod = _pod(objs)
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "demo"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for name in ("runtime", "fetch-model"):
        sc = _container(objs, name)["securityContext"]
        assert sc["runAsNonRoot"] and sc["runAsUser"] == 10001 and sc["readOnlyRootFilesystem"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    runtime = _container(objs)
    assert runtime["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
    ]
    # probes on the metrics port: a connection flood past the API port's limit must not fail them
    assert runtime["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert runtime["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert runtime["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # preStop sleep + the runtime's drain must fit in the grace period, or SIGKILL cuts requests.
    pre_stop = runtime["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) + 30 < pod["terminationGracePeriodSeconds"]
    assert {"name": "tmp", "mountPath": "/tmp"} in runtime["volumeMounts"]
    assert any(v["name"] == "tmp" and "emptyDir" in v for v in pod["volumes"])
    assert [c["topologyKey"] for c in pod["topologySpreadConstraints"]] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]


@pytest.mark.parametrize("case", sorted(SPECS))
def test_probes_target_the_runtime_probe_listener_not_the_api_port(case: str) -> None:
    """Every probe's named port is the container port the runtime config opens as
    `server.metricsPort` (which serves /healthz and /readyz apart from the API's connection
    limit), not `server.port`; and the NetworkPolicy's API-client rule does not open it."""
    objs = _render(spec(**SPECS[case]), _pool_nodes())
    runtime = _container(objs)
    config = RuntimeConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"]))
    ports = {p["name"]: p["containerPort"] for p in runtime["ports"]}
    assert config.server.metrics_port is not None
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        target = ports[runtime[kind]["httpGet"]["port"]]
        assert target == config.server.metrics_port != config.server.port, kind
    # API clients reach the API port only; the probe port is opened to scrapers (and the
    # gateway), while the kubelet probes from the node, which policies do not filter
    clients = objs["NetworkPolicy"]["spec"]["ingress"][0]
    assert clients["ports"] == [{"port": config.server.port, "protocol": "TCP"}]


def test_fetch_then_serve_commands() -> None:
    sha = "b" * 64
    the_spec = spec(
        model={
            "name": "m",
            "parameters": 0.5,
            "variants": [{"quantization": "Q4_K_M", "uri": "hf://o/r/m.gguf", "sha256": sha}],
        }
    )
    objs = _render(the_spec)
    fetch = _container(objs, "fetch-model")
    assert fetch["command"] == ["slm-runtime"]
    assert fetch["args"] == ["fetch", "--uri", "hf://o/r/m.gguf", "--sha256", sha, "--dest", "/models/m.gguf"]
    runtime = _container(objs)
    assert runtime["args"] == ["serve", "--config", "/etc/slm/config.yaml", "--model", "/models/m.gguf"]
    assert runtime["image"] == fetch["image"] == DEFAULT_IMAGE


def test_onnx_archive_is_extracted() -> None:
    variants = [{"format": "onnx", "quantization": "INT4", "uri": "https://example.org/m-int4.tgz"}]
    objs = _render(spec(model={"name": "m", "variants": variants}, hardware={"preference": ["cpu"]}))
    assert _container(objs, "fetch-model")["args"][-3:] == ["--dest", "/models/m-int4", "--extract"]
    assert _container(objs)["args"][-1] == "/models/m-int4"


def test_image_precedence() -> None:
    assert _container(_render(spec(), default_image="op/rt:2"))["image"] == "op/rt:2"
    assert _container(_render(spec(image="spec/rt:3"), default_image="op/rt:2"))["image"] == "spec/rt:3"


def test_gpu_deployment() -> None:
    objs = _render(spec(model=PHI))
    runtime = _container(objs)
    assert runtime["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pod = _pod(objs)
    expressions = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"]
    assert expressions[0]["key"] == "nvidia.com/gpu.product"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert objs["Deployment"]["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    config = RuntimeConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"]))
    assert config.hardware == "gpu" and config.runtime.gpu_layers == -1
    assert config.model.quantization == "F16" and config.model.path == "/models/model-F16.gguf"


def test_runtime_config_round_trips() -> None:
    objs = _render(spec(**SPECS["everything"]), [])
    config = RuntimeConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"]))
    assert config.model.name == "phi" and config.model.format == "gguf"
    assert config.runtime.context_length == 4096 and config.runtime.parallel == 4
    assert config.prompt.system == "hi" and config.prompt.parameters.temperature == 0.1
    assert config.prompt.parameters.stop == ["x"]
    assert config.auth.api_key_file == "/etc/slm/auth/k"
    assert config.server.port == 8080


def test_config_change_rolls_pods() -> None:
    a = _render(spec(runtime={"contextLength": 2048}))
    b = _render(spec(runtime={"contextLength": 4096}))
    c = _render(spec(runtime={"contextLength": 2048}))

    def hash_of(objs: dict[str, Any]) -> str:
        return str(objs["Deployment"]["spec"]["template"]["metadata"]["annotations"]["slm.dev/config-hash"])

    assert hash_of(a) != hash_of(b)
    assert hash_of(a) == hash_of(c)


def test_autoscaling_omits_replicas_and_renders_hpa() -> None:
    # In-flight scaling is the operator's own autoscaler (slm_operator.autoscale): no HPA, so the
    # HPA never fights it, and no custom-metrics adapter is needed.
    objs = _render(spec(**SPECS["autoscaled"]))
    assert "replicas" not in objs["Deployment"]["spec"]
    assert "HorizontalPodAutoscaler" not in objs
    assert "PodDisruptionBudget" not in objs
    cpu = _render(spec(autoscaling={"enabled": True, "maxReplicas": 3, "targetCPUUtilizationPercentage": 70}))
    assert "replicas" not in cpu["Deployment"]["spec"]
    hpa = cpu["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "demo"}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    metric = hpa["metrics"][0]
    assert metric["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert len(hpa["metrics"]) == 1


def test_scale_down_window_defaults_to_five_minutes_and_follows_the_spec() -> None:
    def window(**autoscaling: Any) -> int:
        objs = _render(
            spec(
                autoscaling={
                    "enabled": True,
                    "maxReplicas": 3,
                    "targetCPUUtilizationPercentage": 70,
                    **autoscaling,
                }
            )
        )
        return int(
            objs["HorizontalPodAutoscaler"]["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        )

    assert window() == 300
    assert window(scaleDownStabilizationSeconds=15) == 15


def test_replicas_pdb_pvc_auth() -> None:
    objs = _render(spec(**SPECS["everything"]), _pool_nodes())
    assert objs["Deployment"]["spec"]["replicas"] == 3
    assert objs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    pvc = objs["PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == "demo-cache"
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "30Gi"}},
        "storageClassName": "fast",
    }
    pod = _pod(objs)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "demo-cache"}
    assert volumes["api-keys"]["secret"]["secretName"] == "keys"
    mount = next(m for m in _container(objs)["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] is True
    assert pod["nodeSelector"] == {"pool": "ml"}
    labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "ml" and labels["app.kubernetes.io/instance"] == "demo"
    assert _container(objs)["imagePullPolicy"] == "Always"


def test_network_policy() -> None:
    default = _render(spec())["NetworkPolicy"]["spec"]
    assert default["policyTypes"] == ["Ingress", "Egress"]
    assert default["ingress"] == [
        {"from": [{"podSelector": {}}], "ports": [{"port": 8080, "protocol": "TCP"}]}
    ]
    egress_ports = sorted((p["port"], p["protocol"]) for rule in default["egress"] for p in rule["ports"])
    assert egress_ports == [(53, "TCP"), (53, "UDP"), (443, "TCP")]
    assert all("to" not in rule for rule in default["egress"])  # hf://: any address, port 443 only
    custom = _render(spec(**SPECS["everything"]), [])["NetworkPolicy"]["spec"]
    assert custom["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "a"}}, "podSelector": {"matchLabels": {"app": "x"}}}
    ]
    assert custom["ingress"][1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    # scrapers reach the metrics port and not the API
    assert custom["ingress"][1]["ports"] == [{"port": 9090, "protocol": "TCP"}]
    service = _render(spec(**SPECS["everything"]), [])["Service"]["spec"]
    assert service["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]


def _one_variant(uri: str) -> dict[str, Any]:
    return {"name": "m", "parameters": 0.5, "variants": [{"quantization": "Q4_K_M", "uri": uri}]}


@pytest.mark.parametrize(
    ("uri", "tcp"),
    [
        ("hf://org/repo/m.gguf", [443]),
        ("https://models.example.org/m.gguf", [443]),
        ("https://10.245.0.1:8443/m.gguf", [8443]),
        ("file:///data/m.gguf", None),
        ("tiny://gguf?quantization=q8_0", None),
    ],
)
def test_egress_is_as_narrow_as_the_model_source(uri: str, tcp: list[int] | None) -> None:
    egress = _render(spec(model=_one_variant(uri)))["NetworkPolicy"]["spec"]["egress"]
    if tcp is None:  # nothing to download: no egress at all (the policy still lists Egress)
        assert egress == []
        return
    assert egress == [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"ports": [{"port": p, "protocol": "TCP"} for p in tcp]},
    ]


def test_egress_destinations_replace_any_address() -> None:
    networking = {
        "egress": [
            {"cidr": "10.245.0.1/32"},
            {"cidr": "2001:db8::/32", "ports": [8443, 443, 8443]},
            {
                "namespaceSelector": {"matchLabels": {"role": "mirror"}},
                "podSelector": {"matchLabels": {"app": "m"}},
            },
        ]
    }
    the_spec = spec(model=_one_variant("https://10.245.0.1:8443/m.gguf"), networking=networking)
    objs = _render(the_spec)
    kubernetes_validate.validate(objs["NetworkPolicy"], K8S_VERSION, strict=True)
    egress = objs["NetworkPolicy"]["spec"]["egress"]
    assert egress[0] == {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
    assert egress[1:] == [
        {"to": [{"ipBlock": {"cidr": "10.245.0.1/32"}}], "ports": [{"port": 8443, "protocol": "TCP"}]},
        {
            "to": [{"ipBlock": {"cidr": "2001:db8::/32"}}],
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 8443, "protocol": "TCP"}],
        },
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"role": "mirror"}},
                    "podSelector": {"matchLabels": {"app": "m"}},
                }
            ],
            "ports": [{"port": 8443, "protocol": "TCP"}],
        },
    ]
    # `[]`: DNS only; a destination for a model with nothing to download: every port there
    dns_only = _render(spec(networking={"egress": []}))["NetworkPolicy"]["spec"]["egress"]
    assert dns_only == [egress[0]]
    local = spec(model=_one_variant("file:///m.gguf"), networking={"egress": [{"cidr": "10.0.0.0/8"}]})
    assert _render(local)["NetworkPolicy"]["spec"]["egress"][1] == {
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    }


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ({}, "either a cidr or a namespaceSelector/podSelector"),
        ({"cidr": "10.0.0.0/8", "podSelector": {}}, "either a cidr or a namespaceSelector/podSelector"),
        ({"cidr": "10.0.0.300/8"}, "is not an IP block"),
        ({"cidr": "example.org"}, "String should match pattern"),
        ({"cidr": "10.0.0.0/8", "ports": [0]}, "greater than or equal to 1"),
    ],
)
def test_bad_egress_destinations_are_rejected(dest: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec(networking={"egress": [dest]})


def test_metrics_on_a_port_of_their_own() -> None:
    objs = _render(spec(), gateway_namespace="slm-system")
    ports = _container(objs)["ports"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in ports
    config = RuntimeConfig.model_validate(yaml.safe_load(objs["ConfigMap"]["data"]["config.yaml"]))
    assert (config.server.port, config.server.metrics_port) == (8080, 9090)
    gateway_rule = objs["NetworkPolicy"]["spec"]["ingress"][-1]
    assert gateway_rule["from"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/name": "slm-gateway"}
    }
    assert gateway_rule["ports"] == [{"port": 8080, "protocol": "TCP"}, {"port": 9090, "protocol": "TCP"}]
    # clients of the API never get the metrics port through the clients' rule
    assert objs["NetworkPolicy"]["spec"]["ingress"][0]["ports"] == [{"port": 8080, "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("uri", "fmt", "expected"),
    [
        ("tiny://gguf?quantization=q8_0", "gguf", "tiny-q8_0.gguf"),
        ("tiny://onnx", "onnx", "tiny-onnx"),
        (
            "hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf",
            "gguf",
            "qwen2.5-0.5b-instruct-q4_k_m.gguf",
        ),
        ("https://example.org/files/model.gguf?download=true", "gguf", "model.gguf"),
        (
            "hf://microsoft/Phi-3.5-mini-instruct-onnx/cpu_and_mobile/cpu-int4-awq-block-128-acc-level-4",
            "onnx",
            "cpu-int4-awq-block-128-acc-level-4",
        ),
        ("file:///data/weights", "gguf", "weights.gguf"),
        ("https://example.org/phi-onnx-int4.tar.gz", "onnx", "phi-onnx-int4"),
    ],
)
def test_model_file_names(uri: str, fmt: str, expected: str) -> None:
    assert model_file_name(uri, fmt) == expected


def test_render_is_deterministic() -> None:
    the_spec = spec(**SPECS["everything"])
    assert _render(the_spec, _pool_nodes()) == _render(the_spec, _pool_nodes())


def test_render_cli_gpu_example(capsys: Any) -> None:
    nodes = ROOT / "tests" / "operator" / "data" / "nodes.yaml"
    assert main(["render", "-f", str(ROOT / "examples" / "gpu.yaml"), "--nodes", str(nodes)]) == 0
    out = capsys.readouterr().out
    objs = {d["kind"]: d for d in yaml.safe_load_all(out)}
    assert {"Deployment", "Service", "NetworkPolicy"} <= set(objs)
    assert "HorizontalPodAutoscaler" not in objs  # in-flight scaling: the operator's autoscaler
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = {e["key"] for e in terms[0]["matchExpressions"]}
    assert keys == {"nvidia.com/gpu.product", "nvidia.com/gpu.memory"}
    assert "replicas" not in objs["Deployment"]["spec"]
    # deterministic: the same input prints the same bytes
    main(["render", "-f", str(ROOT / "examples" / "gpu.yaml"), "--nodes", str(nodes)])
    assert capsys.readouterr().out == out


def test_render_cli_offline_and_errors(capsys: Any, tmp_path: Any) -> None:
    assert main(["render", "-f", str(ROOT / "examples" / "gpu.yaml")]) == 0
    objs = {d["kind"]: d for d in yaml.safe_load_all(capsys.readouterr().out)}
    assert (
        objs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
            "nvidia.com/gpu"
        ]
        == "1"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "slm.dev/v1alpha1",
                "kind": "SLMDeployment",
                "metadata": {"name": "x"},
                "spec": {"model": {"name": "x"}},
            }
        )
    )
    assert main(["render", "-f", str(bad)]) == 1
    assert "exactly one of" in capsys.readouterr().err


def test_busy_gpus_render_cpu_fallback() -> None:
    pods = [pod_on("gpu-node-1", {"nvidia.com/gpu": "1"}), pod_on("gpu-node-2", {"nvidia.com/gpu": "1"})]
    the_spec = spec(model=PHI)
    placement = place(the_spec, bed_nodes(), pods)
    objs = {o["kind"]: o for o in render_all(RenderContext(name="d", spec=the_spec, placement=placement))}
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    assert "affinity" not in pod and "tolerations" not in pod
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["requests"]
    assert "namespace" not in objs["Deployment"]["metadata"]
