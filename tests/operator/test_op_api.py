"""The API's invariants, checked three ways over one table of cases: by the pydantic models, by the
CRD's OpenAPI schema (jsonschema), and by the CRD's CEL rules (cel-python). The API server checks the
schema and CEL again in the e2e suite."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from cel_support import validate as cel_validate
from op_support import example, gguf, onnx
from pydantic import ValidationError

from slm_operator.api import SLMDeployment, SLMDeploymentSpec
from slm_operator.api.crd import root_schema

MODEL = {"name": "m", "variants": gguf("Q4_K_M")}

VALID: dict[str, dict[str, Any]] = {
    "minimal": {"model": MODEL},
    "uri-template": {
        "model": {
            "name": "m",
            "uriTemplate": "hf://org/repo/m-{quantization}.gguf",
            "quantizations": ["F16", "Q4_K_M"],
            "sha256": {"Q4_K_M": "a" * 64},
        }
    },
    "onnx": {"model": {"name": "m", "variants": onnx("INT4")}, "hardware": {"preference": ["npu", "cpu"]}},
    "autoscaling": {
        "model": MODEL,
        "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4, "targetInFlightRequests": 3},
    },
    "autoscaling-off": {"model": MODEL, "autoscaling": {"enabled": False}},
    "pvc": {"model": MODEL, "cache": {"type": "pvc", "size": "20Gi", "storageClassName": "fast"}},
    "quantities-as-numbers": {"model": MODEL, "hardware": {"memoryBudget": 6442450944}},
    "egress": {
        "model": MODEL,
        "networking": {
            "egress": [
                {"cidr": "203.0.113.0/24", "ports": [443]},
                {"cidr": "2001:db8::/32"},
                {"namespaceSelector": {"matchLabels": {"role": "mirror"}}},
            ]
        },
    },
    "clients": {
        "model": MODEL,
        "networking": {
            "port": 80,
            "allowedClients": [{"podSelector": {"matchLabels": {"app": "web"}}}],
            "metricsNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        },
    },
    "everything": {
        "model": {"name": "m", "parameters": 3.8, "variants": gguf("F16", "Q8_0") + onnx("INT4")},
        "hardware": {
            "preference": ["npu", "gpu", "cpu"],
            "gpu": {"resourceName": "amd.com/gpu", "count": 2},
            "npu": {"resourceName": "npu.intel.com/accel"},
            "nodeSelector": {"pool": "ml"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
            "memoryBudget": "12Gi",
        },
        "runtime": {"contextLength": 8192, "parallel": 8, "threads": 4, "gpuLayers": -1, "batchSize": 256},
        "prompt": {
            "system": "Be brief.",
            "template": "{{ messages }}",
            "parameters": {
                "temperature": 0.2,
                "topP": 0.9,
                "topK": 40,
                "numPredict": 256,
                "stop": ["</s>"],
                "seed": 7,
                "repeatPenalty": 1.1,
            },
        },
        "replicas": 3,
        "auth": {"apiKeySecretRef": {"name": "keys"}},
        "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"memory": "10Gi"}},
        "image": "registry.local/slm-runtime:dev",
        "imagePullPolicy": "IfNotPresent",
        "podLabels": {"team": "ml"},
        "podAnnotations": {"note": "x"},
    },
}

# name -> (spec, message a CEL rule reports, or None when the OpenAPI schema itself rejects it)
INVALID: dict[str, tuple[dict[str, Any], str | None]] = {
    "both-sources": (
        {"model": {**MODEL, "uriTemplate": "hf://o/r/{quantization}", "quantizations": ["F16"]}},
        "exactly one of model.variants and model.uriTemplate",
    ),
    "no-source": ({"model": {"name": "m"}}, "exactly one of model.variants and model.uriTemplate"),
    "template-without-placeholder": (
        {"model": {"name": "m", "uriTemplate": "hf://o/r/m.gguf", "quantizations": ["F16"]}},
        "must contain the placeholder {quantization}",
    ),
    "template-without-quantizations": (
        {"model": {"name": "m", "uriTemplate": "hf://o/r/{quantization}"}},
        "goes with uriTemplate only",
    ),
    "quantizations-without-template": (
        {"model": {**MODEL, "quantizations": ["F16"]}},
        "goes with uriTemplate only",
    ),
    "sha-for-unlisted-quantization": (
        {
            "model": {
                "name": "m",
                "uriTemplate": "hf://o/r/{quantization}",
                "quantizations": ["F16"],
                "sha256": {"Q8_0": "a" * 64},
            }
        },
        "model.sha256 keys must be quantizations",
    ),
    "gguf-with-onnx-quantization": (
        {
            "model": {
                "name": "m",
                "variants": [{"format": "gguf", "quantization": "INT4", "uri": "hf://o/r/f"}],
            }
        },
        "GGUF variants use llama.cpp quantization names",
    ),
    "min-above-max": (
        {"model": MODEL, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
        "minReplicas must not exceed",
    ),
    "enabled-without-max": (
        {"model": MODEL, "autoscaling": {"enabled": True, "targetInFlightRequests": 2}},
        "maxReplicas is required",
    ),
    "enabled-without-target": (
        {"model": MODEL, "autoscaling": {"enabled": True, "maxReplicas": 3}},
        "enabled autoscaling needs",
    ),
    "two-autoscalers": (
        {
            "model": MODEL,
            "autoscaling": {
                "enabled": True,
                "maxReplicas": 3,
                "targetInFlightRequests": 2,
                "targetCPUUtilizationPercentage": 50,
            },
        },
        "not both",
    ),
    "zero-without-in-flight": (
        {
            "model": MODEL,
            "autoscaling": {
                "enabled": True,
                "minReplicas": 0,
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50,
            },
        },
        "minReplicas 0 needs targetInFlightRequests",
    ),
    "bad-scale-to-zero-duration": (
        {"model": MODEL, "autoscaling": {"scaleToZeroAfter": "ten minutes"}},
        None,
    ),
    "storage-class-on-empty-dir": (
        {"model": MODEL, "cache": {"type": "emptyDir", "storageClassName": "fast"}},
        "storageClassName is only valid",
    ),
    "pvc-without-size": ({"model": MODEL, "cache": {"type": "pvc"}}, "cache.size is required"),
    "empty-client": ({"model": MODEL, "networking": {"allowedClients": [{}]}}, "an allowed client needs"),
    "egress-cidr-and-selector": (
        {"model": MODEL, "networking": {"egress": [{"cidr": "10.0.0.0/8", "podSelector": {}}]}},
        "an egress destination needs either a cidr",
    ),
    "egress-no-destination": (
        {"model": MODEL, "networking": {"egress": [{"ports": [443]}]}},
        "an egress destination needs either a cidr",
    ),
    "egress-host-name": ({"model": MODEL, "networking": {"egress": [{"cidr": "example.org"}]}}, None),
    "egress-port-zero": (
        {"model": MODEL, "networking": {"egress": [{"cidr": "10.0.0.0/8", "ports": [0]}]}},
        None,
    ),
    "bad-uri-scheme": (
        {"model": {"name": "m", "variants": [{"quantization": "F16", "uri": "ftp://x/y"}]}},
        None,
    ),
    "bad-sha": (
        {"model": {"name": "m", "variants": [{"quantization": "F16", "uri": "hf://x/y", "sha256": "abc"}]}},
        None,
    ),
    "unknown-quantization": (
        {"model": {"name": "m", "variants": [{"quantization": "Q9", "uri": "hf://x"}]}},
        None,
    ),
    "unknown-hardware": ({"model": MODEL, "hardware": {"preference": ["tpu"]}}, None),
    "empty-preference": ({"model": MODEL, "hardware": {"preference": []}}, None),
    "bad-quantity": ({"model": MODEL, "hardware": {"memoryBudget": "lots"}}, None),
    "zero-gpus": ({"model": MODEL, "hardware": {"gpu": {"count": 0}}}, None),
    "bad-port": ({"model": MODEL, "networking": {"port": 70000}}, None),
    "missing-model": ({}, None),
    "no-model-name": ({"model": {"variants": gguf("F16")}}, None),
    "negative-parameters": ({"model": {**MODEL, "parameters": 0}}, None),
}


def _object(spec: dict[str, Any], name: str = "demo") -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name},
        "spec": spec,
    }


def _schema_errors(obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft4Validator(root_schema())
    return [e.message for e in validator.iter_errors(obj)]


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_specs_pass_every_layer(case: str) -> None:
    obj = _object(VALID[case])
    SLMDeploymentSpec.model_validate(obj["spec"])
    assert _schema_errors(obj) == []
    assert cel_validate(root_schema(), obj) == []


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_specs_fail_every_layer(case: str) -> None:
    spec, message = INVALID[case]
    obj = _object(spec)
    with pytest.raises(ValidationError) as caught:
        SLMDeploymentSpec.model_validate(spec)
    if message is None:
        assert _schema_errors(obj), "the OpenAPI schema should reject this"
    else:
        assert message in str(caught.value)
        assert _schema_errors(obj) == []
        messages = [m for _, m in cel_validate(root_schema(), obj)]
        assert any(message in m for m in messages), messages


def test_cel_failure_names_the_field() -> None:
    obj = _object(INVALID["storage-class-on-empty-dir"][0])
    assert [p for p, _ in cel_validate(root_schema(), obj)] == [".spec.cache.storageClassName"]


def test_name_length_rule() -> None:
    assert cel_validate(root_schema(), _object({"model": MODEL}, "a" * 52)) == []
    long = cel_validate(root_schema(), _object({"model": MODEL}, "a" * 53))
    assert long and "at most 52 characters" in long[0][1]


@pytest.mark.parametrize("name", ["cpu", "gpu", "npu", "tiny"])
def test_examples_are_valid(name: str) -> None:
    obj = example(name)
    SLMDeployment.model_validate(obj)
    assert _schema_errors(obj) == []
    assert cel_validate(root_schema(), obj) == []


def test_defaults() -> None:
    spec = SLMDeploymentSpec.model_validate({"model": MODEL})
    assert spec.hardware.preference == ["gpu", "cpu"]
    assert (spec.runtime.context_length, spec.runtime.parallel, spec.runtime.batch_size) == (4096, 4, 512)
    assert spec.runtime.gpu_layers is None and spec.runtime.threads is None
    assert spec.replicas == 1 and spec.networking.port == 8080 and spec.cache.type == "emptyDir"


def test_uri_template_expands_to_variants() -> None:
    spec = SLMDeploymentSpec.model_validate(VALID["uri-template"])
    variants = spec.model.all_variants()
    assert [(v.quantization, v.uri, v.sha256) for v in variants] == [
        ("F16", "hf://org/repo/m-F16.gguf", None),
        ("Q4_K_M", "hf://org/repo/m-Q4_K_M.gguf", "a" * 64),
    ]


def test_duplicate_preference_rejected() -> None:
    with pytest.raises(ValidationError):
        SLMDeploymentSpec.model_validate({"model": MODEL, "hardware": {"preference": ["cpu", "cpu"]}})


def test_camel_case_round_trip() -> None:
    spec = SLMDeploymentSpec.model_validate(VALID["everything"])
    again = SLMDeploymentSpec.model_validate(spec.to_api())
    assert again == spec
    assert spec.to_api()["runtime"]["contextLength"] == 8192


def test_sampling_parameters_mirror_the_runtime() -> None:
    from slm_operator.api import SamplingParameters
    from slm_runtime.config import SamplingDefaults

    ours = {f.alias or n for n, f in SamplingParameters.model_fields.items()}
    theirs = {f.alias or n for n, f in SamplingDefaults.model_fields.items()}
    assert ours == theirs
