"""The GitOps examples and the kind cluster config: they parse and point at paths that exist."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import celpy
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
GITOPS = ROOT / "examples" / "gitops"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_gitops_manifest_parses_and_core_kinds_are_valid() -> None:
    files = sorted(GITOPS.rglob("*.yaml"))
    assert files
    for path in files:
        for doc in _docs(path):
            assert {"apiVersion", "kind"} <= set(doc), path
            if doc["apiVersion"] == "v1":
                kubernetes_validate.validate(doc, "1.34.0", strict=True)


def test_kustomizations_list_existing_files() -> None:
    for kustomization in GITOPS.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


def test_argocd_applications_point_at_repository_paths() -> None:
    apps = {doc["metadata"]["name"]: doc for doc in _docs(GITOPS / "argocd" / "application.yaml")}
    assert set(apps) == {"slm-operator", "slm-models"}
    for app in apps.values():
        assert (ROOT / app["spec"]["source"]["path"]).is_dir()
    waves = {
        name: int(app["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for name, app in apps.items()
    }
    assert waves["slm-operator"] < waves["slm-models"]
    assert apps["slm-operator"]["spec"]["source"]["path"] == "charts/slm-operator"


def test_flux_kustomizations_point_at_repository_paths() -> None:
    docs = _docs(GITOPS / "flux" / "sync.yaml")
    kustomizations = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Kustomization"}
    assert set(kustomizations) == {"slm-operator", "slm-models"}
    for kustomization in kustomizations.values():
        assert kustomization["spec"]["wait"] is True
        assert (ROOT / kustomization["spec"]["path"]).is_dir()
    assert kustomizations["slm-models"]["spec"]["dependsOn"] == [{"name": "slm-operator"}]
    (expr,) = kustomizations["slm-models"]["spec"]["healthCheckExprs"]
    assert (expr["apiVersion"], expr["kind"]) == ("slm.dev/v1alpha1", "SLMDeployment")
    release = next(
        d for d in _docs(GITOPS / "flux" / "operator" / "slm-operator.yaml") if d["kind"] == "HelmRelease"
    )
    assert release["spec"]["upgrade"]["crds"] == "CreateReplace"


def test_kind_config_has_the_three_pools() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [node["role"] for node in config["nodes"]]
    assert roles.count("control-plane") == 1
    pools = [
        node.get("labels", {}).get("slm.dev/pool") for node in config["nodes"] if node["role"] == "worker"
    ]
    assert {"cpu", "gpu", "npu"} <= set(pools)
    gpu = next(node for node in config["nodes"] if node.get("labels", {}).get("slm.dev/pool") == "gpu")
    assert gpu["labels"]["nvidia.com/gpu.present"] == "true"
    assert gpu["labels"]["nvidia.com/gpu.product"]


def test_fake_accelerator_script_is_valid_bash() -> None:
    for script in ("hack/kind-fake-accelerators.sh", "hack/build-argocd-lua.sh", "hack/fetch-models.sh"):
        result = subprocess.run(
            ["bash", "-n", str(ROOT / script)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stderr
    text = (ROOT / "hack" / "kind-fake-accelerators.sh").read_text()
    assert "--subresource=status" in text and "nvidia.com/gpu" in text


def _flux_health(obj: dict[str, Any]) -> str:
    """What the Flux healthCheckExprs of sync.yaml say about an SLMDeployment (as Flux orders them)."""
    docs = _docs(GITOPS / "flux" / "sync.yaml")
    (expr,) = next(d for d in docs if d["metadata"]["name"] == "slm-models")["spec"]["healthCheckExprs"]
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for verdict in ("inProgress", "failed", "current"):
        if env.program(env.compile(expr[verdict])).evaluate(activation):
            return verdict
    return "unknown"


def _slmd(generation: int, observed: int | None, **conditions: str) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": t, "status": s} for t, s in conditions.items()]}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "m", "generation": generation}, "spec": {}, "status": status}


def test_flux_health_check_exprs() -> None:
    assert _flux_health(_slmd(2, 2, Ready="True")) == "current"
    assert _flux_health(_slmd(3, 2, Ready="True")) == "inProgress"
    assert _flux_health(_slmd(2, None, Ready="True")) == "inProgress"
    assert _flux_health(_slmd(2, 2, Ready="False", Degraded="True")) == "failed"
    assert _flux_health(_slmd(2, 2, Ready="False", Progressing="True")) == "unknown"  # Flux keeps waiting
