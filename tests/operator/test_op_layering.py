"""Import layering (STYLE.md): pure layers never import kopf or the Kubernetes client, and only
`slm_operator.kube` imports the client. A lightweight stand-in for an import-linter contract."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from slm_operator.cli import main
from slm_operator.rbac import cluster_role
from slm_operator.reconcile.plan import CHILD_KINDS

PACKAGE = Path(__file__).resolve().parents[2] / "operator" / "slm_operator"
PURE = ("api", "render", "placement.py", "hardware.py", "sizing.py", "quantity.py", "errors.py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _modules(*parts: str) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        target = PACKAGE / part
        found += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return found


def test_pure_layers_do_no_io() -> None:
    for path in _modules(*PURE):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("kopf", "kubernetes") or ".reconcile" in m}
        assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}"


def test_only_kube_imports_the_client() -> None:
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("kube.py", "kubectl_slm.py"):  # kubectl_slm is a separate client-side tool
            continue
        assert not {m for m in _imports(path) if m.split(".")[0] == "kubernetes"}, path


def test_rbac_covers_every_child_kind() -> None:
    rules = cluster_role()["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    plurals = {"Deployment": "deployments", "Service": "services", "NetworkPolicy": "networkpolicies"}
    for api_version, kind in CHILD_KINDS:
        group = api_version.rpartition("/")[0]
        plural = plurals.get(kind)
        if plural:
            assert {
                (group, plural, v) for v in ("get", "list", "watch", "create", "patch", "delete")
            } <= granted
    assert ("slm.dev", "slmdeployments/status", "patch") in granted
    assert ("", "events", "create") in granted


def test_rbac_cli_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rbac"]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert doc["kind"] == "ClusterRole" and doc["rules"] == cluster_role()["rules"]


def test_run_flags_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_operator.reconcile import runner

    seen = []
    monkeypatch.setattr(runner, "run_operator", seen.append)
    monkeypatch.setenv("SLM_RUNTIME_IMAGE", "env/rt:9")
    assert (
        main(
            ["run", "-n", "a", "-n", "b", "--peering", "slm", "--metrics-port", "0", "--resync-seconds", "5"]
        )
        == 0
    )
    settings = seen[0]
    assert settings.namespaces == ("a", "b") and settings.peering == "slm" and not settings.standalone
    assert (
        settings.runtime_image == "env/rt:9" and settings.metrics_port == 0 and settings.resync_seconds == 5
    )
    assert main(["run"]) == 0
    assert seen[1].all_namespaces and seen[1].standalone and seen[1].namespaces == ()
