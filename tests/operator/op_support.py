"""Shared helpers of the operator's unit tests (imported explicitly; no conftest magic)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from slm_operator.api import SLMDeploymentSpec

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = ROOT / "examples"


def bed_nodes() -> list[dict[str, Any]]:
    """The e2e test bed's nodes (2 cpu, 2 gpu, 1 npu), all Ready."""
    return copy.deepcopy(yaml.safe_load((DATA / "nodes.yaml").read_text())["items"])


def nodes_named(*prefixes: str) -> list[dict[str, Any]]:
    return [n for n in bed_nodes() if n["metadata"]["name"].startswith(prefixes)]


def example(name: str) -> dict[str, Any]:
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def gguf(*quants: str, base: str = "hf://org/repo/model") -> list[dict[str, Any]]:
    return [{"format": "gguf", "quantization": q, "uri": f"{base}-{q}.gguf"} for q in quants]


def cpu_scaled(model: dict[str, Any] | None = None) -> dict[str, Any]:
    """A spec autoscaled by CPU (2..3 replicas): every child kind renders, the HPA and PDB too."""
    return {
        "model": model or {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M")},
        "autoscaling": {
            "enabled": True,
            "minReplicas": 2,
            "maxReplicas": 3,
            "targetCPUUtilizationPercentage": 50,
        },
    }


def onnx(*quants: str) -> list[dict[str, Any]]:
    return [{"format": "onnx", "quantization": q, "uri": f"hf://org/repo-onnx/{q.lower()}"} for q in quants]


def spec(**overrides: Any) -> SLMDeploymentSpec:
    """A valid spec (0.5B model, Q4_K_M + Q8_0 GGUF) with `overrides` merged at the top level."""
    raw: dict[str, Any] = {"model": {"name": "m", "parameters": 0.5, "variants": gguf("Q4_K_M", "Q8_0")}}
    raw.update(overrides)
    return SLMDeploymentSpec.model_validate(raw)


def pod_on(
    node: str, requests: dict[str, str], *, name: str = "other", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "resources": {"requests": requests, "limits": requests}}],
        },
        "status": {"phase": "Running"},
    }
