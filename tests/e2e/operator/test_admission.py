"""Invalid SLMDeployments are rejected by the API server itself (OpenAPI schema + CEL rules of the
CRD installed by the chart), with a message naming the offending field. Server-side dry runs: nothing
is stored, and the operator is not involved."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

from . import support
from .conftest import Release

Obj = dict[str, Any]
SHA = "a" * 64


def _base() -> Obj:
    body = support.tiny("valid")
    body["spec"]["model"]["parameters"] = 0.5
    return body


def _spec(edit: Callable[[Obj], object]) -> Callable[[], Obj]:
    def build() -> Obj:
        body = _base()
        edit(body["spec"])
        return body

    return build


def _template(spec: Obj, template: str = "hf://org/repo/m-{quantization}.gguf") -> None:
    del spec["model"]["variants"]
    spec["model"]["uriTemplate"] = template
    spec["model"]["quantizations"] = ["Q8_0"]


def _long_name() -> Obj:
    body = _base()
    body["metadata"]["name"] = "n" * 53
    return body


# id -> (build the body, field path the message must name, a fragment of the reason)
INVALID: dict[str, tuple[Callable[[], Obj], str, str]] = {
    "missing model.name": (
        _spec(lambda s: s["model"].pop("name")),
        "spec.model.name",
        "Required value",
    ),
    "bad format enum": (
        _spec(lambda s: s["model"]["variants"][0].update(format="safetensors")),
        "spec.model.variants[0].format",
        "Unsupported value",
    ),
    "variants and uriTemplate both": (
        _spec(
            lambda s: s["model"].update(uriTemplate="hf://o/r/m-{quantization}.gguf", quantizations=["Q8_0"])
        ),
        "spec.model.variants",
        "set exactly one of model.variants and model.uriTemplate",
    ),
    "neither variants nor uriTemplate": (
        _spec(lambda s: s["model"].pop("variants")),
        "spec.model.variants",
        "set exactly one of model.variants and model.uriTemplate",
    ),
    "uriTemplate without {quantization}": (
        _spec(lambda s: _template(s, "hf://org/repo/model.gguf")),
        "spec.model.uriTemplate",
        "{quantization}",
    ),
    "bad sha256": (
        _spec(lambda s: s["model"]["variants"][0].update(sha256="not-a-digest")),
        "spec.model.variants[0].sha256",
        "should match",
    ),
    "unknown hardware class": (
        _spec(lambda s: s["hardware"].update(preference=["tpu", "cpu"])),
        "spec.hardware.preference[0]",
        "Unsupported value",
    ),
    "duplicate hardware class": (
        _spec(lambda s: s["hardware"].update(preference=["cpu", "cpu"])),
        "spec.hardware.preference[1]",
        "Duplicate value",
    ),
    "minReplicas > maxReplicas": (
        _spec(
            lambda s: s.update(
                autoscaling={
                    "enabled": True,
                    "minReplicas": 3,
                    "maxReplicas": 2,
                    "targetCPUUtilizationPercentage": 80,
                }
            )
        ),
        "spec.autoscaling.minReplicas",
        "must not exceed",
    ),
    "autoscaling without maxReplicas": (
        _spec(lambda s: s.update(autoscaling={"enabled": True, "targetCPUUtilizationPercentage": 80})),
        "spec.autoscaling.maxReplicas",
        "required when autoscaling is enabled",
    ),
    "autoscaling without target": (
        _spec(lambda s: s.update(autoscaling={"enabled": True, "maxReplicas": 3})),
        "spec.autoscaling.enabled",
        "targetCPUUtilizationPercentage",
    ),
    "storageClassName with emptyDir": (
        _spec(lambda s: s.update(cache={"type": "emptyDir", "storageClassName": "fast"})),
        "spec.cache.storageClassName",
        "only valid with cache.type pvc",
    ),
    "pvc without size": (
        _spec(lambda s: s.update(cache={"type": "pvc"})),
        "spec.cache.size",
        "required with cache.type pvc",
    ),
    "port out of range": (
        _spec(lambda s: s.update(networking={"port": 70000})),
        "spec.networking.port",
        "less than or equal to 65535",
    ),
    "negative contextLength": (
        _spec(lambda s: s["runtime"].update(contextLength=-1)),
        "spec.runtime.contextLength",
        "greater than or equal to 64",
    ),
    "gguf variant with an onnx quantization": (
        _spec(lambda s: s["model"]["variants"][0].update(quantization="INT4")),
        "spec.model.variants[0].quantization",
        "llama.cpp quantization names",
    ),
    "sha256 key not in quantizations": (
        _spec(lambda s: (_template(s), s["model"].update(sha256={"Q4_K_M": SHA}))),
        "spec.model.sha256",
        "must be quantizations listed",
    ),
    "allowed client without selectors": (
        _spec(lambda s: s.update(networking={"allowedClients": [{}]})),
        "spec.networking.allowedClients[0].podSelector",
        "needs a namespaceSelector, a podSelector or both",
    ),
    "unknown field": (
        _spec(lambda s: s["runtime"].update(contextLenght=1024)),
        "spec.runtime.contextLenght",
        "unknown field",
    ),
    "name too long": (_long_name, "metadata.name", "at most 52 characters"),
}


def _reject(api: client.ApiClient, namespace: str, body: Obj) -> str:
    with pytest.raises(client.ApiException) as caught:
        support.custom(api).create_namespaced_custom_object(
            support.GROUP,
            support.VERSION,
            namespace,
            support.PLURAL,
            body,
            dry_run="All",
            field_validation="Strict",
        )
    # 422 Invalid from validation; 400 from strict decoding (an unknown field)
    assert caught.value.status in (400, 422), caught.value.body
    status = json.loads(caught.value.body)
    causes = (status.get("details") or {}).get("causes") or []
    return (
        str(status.get("message")) + "\n" + "\n".join(f"{c.get('field')}: {c.get('message')}" for c in causes)
    )


def test_valid_base_is_admitted(kube_api: client.ApiClient, operator_release: Release) -> None:
    created = support.custom(kube_api).create_namespaced_custom_object(
        support.GROUP, support.VERSION, "default", support.PLURAL, _base(), dry_run="All"
    )
    assert created["spec"]["cache"] == {"type": "emptyDir"}  # defaults applied by the schema
    assert created["spec"]["networking"]["port"] == 8080


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_spec_rejected_naming_the_field(
    kube_api: client.ApiClient, operator_release: Release, case: str
) -> None:
    build, field, reason = INVALID[case]
    body = copy.deepcopy(build())
    message = _reject(kube_api, "default", body)
    assert field in message, message
    assert reason in message, message
