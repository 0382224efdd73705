"""The committed CRD is the generated one, and it is a structural schema kubectl explain can teach."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml
from op_support import ROOT

from slm_operator.api.crd import build_crd, crd_yaml, root_schema
from slm_operator.cli import main

CRD_FILE = ROOT / "crds" / "slm.dev_slmdeployments.yaml"


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def test_committed_crd_is_generated() -> None:
    assert CRD_FILE.read_text() == crd_yaml(), "run `make crd` and commit crds/slm.dev_slmdeployments.yaml"


def test_cli_prints_the_crd(capsys: Any) -> None:
    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd_yaml()


def test_structural() -> None:
    for path, node in _nodes(root_schema()):
        assert "$ref" not in node and "$defs" not in node and "title" not in node, path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert node.get("additionalProperties", {}) is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, f"{path} has no type"
        assert node.get("default", "") is not None, path
        assert "uniqueItems" not in node, path


def test_every_field_has_a_description() -> None:
    for path, node in _nodes(root_schema()):
        is_field = path and path != ".metadata" and not path.endswith(("[]", "{}"))
        if is_field:
            assert node.get("description"), f"{path} lacks a description"


def test_crd_shape() -> None:
    crd = build_crd()
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "slmdeployments.slm.dev"
    assert spec["scope"] == "Namespaced" and spec["group"] == "slm.dev"
    assert spec["names"]["kind"] == "SLMDeployment" and spec["names"]["plural"] == "slmdeployments"
    assert spec["names"]["shortNames"] == ["slmd", "slm"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Model", "Hardware", "Variant", "Ready", "Endpoint", "Age"]


def test_quantities_are_int_or_string() -> None:
    schema = root_schema()["properties"]["spec"]["properties"]
    budget = schema["hardware"]["properties"]["memoryBudget"]
    assert budget["x-kubernetes-int-or-string"] is True
    requests = schema["resources"]["properties"]["requests"]["additionalProperties"]
    assert requests["x-kubernetes-int-or-string"] is True


def test_cel_rules_have_messages_and_field_paths() -> None:
    rules = [r for _, n in _nodes(root_schema()) for r in n.get("x-kubernetes-validations", ())]
    assert len(rules) >= 10
    for rule in rules:
        assert rule["message"], rule
        if "metadata.name" not in rule["rule"]:
            assert rule["fieldPath"].startswith("."), rule


def test_defaults_present() -> None:
    spec = root_schema()["properties"]["spec"]["properties"]
    assert spec["hardware"]["default"] == {}
    assert spec["hardware"]["properties"]["preference"]["default"] == ["gpu", "cpu"]
    assert spec["hardware"]["properties"]["preference"]["x-kubernetes-list-type"] == "set"
    assert spec["runtime"]["properties"]["contextLength"]["default"] == 4096
    assert spec["networking"]["properties"]["port"]["default"] == 8080
    assert spec["replicas"]["default"] == 1


def test_committed_file_parses() -> None:
    assert yaml.safe_load(CRD_FILE.read_text()) == build_crd()


def test_cel_rules_hold_on_bare_defaults() -> None:
    """The API server evaluates a node's CEL rules on its `default` *without* nested defaults."""
    from cel_support import failures

    checked = 0
    for path, node in _nodes(root_schema()):
        if "default" in node and isinstance(node["default"], dict):
            assert failures(node, node["default"]) == [], path
            checked += 1
    assert checked >= 4


def test_committed_api_reference_matches_the_generated_one() -> None:
    """docs/api-reference.md is generated from the API model; `make crd` refreshes it."""
    from pathlib import Path

    from slm_operator.api.reference import reference_markdown

    committed = Path(__file__).resolve().parents[2] / "docs" / "api-reference.md"
    assert committed.read_text(encoding="utf-8") == reference_markdown(), "run `make crd`"


def test_api_reference_lists_every_spec_field_with_its_description() -> None:
    from slm_operator.api.reference import reference_markdown

    page = reference_markdown()
    for field in (
        "spec.model.name",
        "spec.hardware.preference",
        "spec.autoscaling.maxReplicas",
        "status.conditions[].observedGeneration",
        "status.endpoints.openai",
    ):
        line = next(row for row in page.splitlines() if row.startswith(f"| `{field}`"))
        assert line.split("|")[3].strip(), f"{field} has no description"
