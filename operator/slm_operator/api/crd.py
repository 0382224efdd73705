"""Generate the SLMDeployment CustomResourceDefinition from the pydantic models.

pydantic's JSON schema is not a Kubernetes *structural* schema: it uses `$ref`/`$defs`, encodes
optional fields as `anyOf: [X, {type: null}]`, adds `title`s and `default: null`, and sets
`additionalProperties: false`. `structural()` rewrites it: references inlined, nullable unions
collapsed to X, titles and null defaults dropped, and only the int-or-string union (quantities)
kept as `anyOf`, marked `x-kubernetes-int-or-string`. Anything else it cannot express raises,
so a new field type that the API server would reject fails `slm-operator crd` (and the tests).
"""

from __future__ import annotations

from typing import Any

import yaml

from slm_operator.api.common import CEL, DNS1035_LABEL, cel
from slm_operator.api.resource import API_VERSION, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from slm_operator.api.spec import MAX_NAME_LENGTH, NAME_MESSAGE, SLMDeploymentSpec
from slm_operator.api.status import SLMDeploymentStatus

Schema = dict[str, Any]
_DROP = {"title", "$defs"}
_EXCLUSIVE = {"exclusiveMinimum": "minimum", "exclusiveMaximum": "maximum"}

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.model.name", "description": "Served model name."},
    {"name": "Hardware", "type": "string", "jsonPath": ".status.hardware", "description": "cpu, gpu or npu."},
    {
        "name": "Variant",
        "type": "string",
        "jsonPath": ".status.variant.quantization",
        "description": "Quantization being served.",
    },
    {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether every wanted pod is ready.",
    },
    {
        "name": "Endpoint",
        "type": "string",
        "jsonPath": ".status.endpoints.openai",
        "description": "OpenAI-compatible base URL.",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


class SchemaError(ValueError):
    """pydantic produced a schema construct that a structural CRD schema cannot express."""


def structural(schema: Schema, defs: Schema | None = None) -> Schema:
    """Rewrite a pydantic JSON schema (with its `$defs`) into a structural OpenAPI v3 schema."""
    defs = schema.get("$defs", {}) if defs is None else defs
    node = dict(schema)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        node = {**structural(target, defs), **{k: v for k, v in node.items() if k not in _DROP}}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        node = _collapse_nullable(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            continue  # `false`: the API server prunes unknown fields instead
        elif key in _EXCLUSIVE:
            out[_EXCLUSIVE[key]] = value  # JSON Schema 2020 bound -> OpenAPI v3 bound + boolean flag
            out[key] = True
        else:
            out[key] = value
    return _ordered(out)


def _ordered(node: Schema) -> Schema:
    """Description and type first, the rest alphabetical: readable and stable YAML."""
    head = [k for k in ("description", "type") if k in node]
    return {k: node[k] for k in head + sorted(k for k in node if k not in head)}


def _collapse_nullable(node: Schema, defs: Schema) -> Schema:
    options = [o for o in node["anyOf"] if o != {"type": "null"}]
    if len(options) != 1:
        raise SchemaError(f"cannot express anyOf {node['anyOf']!r} structurally")
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    return {**structural(options[0], defs), **rest}


def spec_schema() -> Schema:
    """Structural schema of `.spec`."""
    return structural(SLMDeploymentSpec.model_json_schema(by_alias=True, mode="validation"))


def status_schema() -> Schema:
    """Structural schema of `.status`."""
    return structural(SLMDeploymentStatus.model_json_schema(by_alias=True, mode="validation"))


def root_schema() -> Schema:
    """The whole object's `openAPIV3Schema`, with the name-length rule that keeps child names ≤ 63."""
    return {
        "type": "object",
        "description": "A small language model served behind OpenAI- and Ollama-compatible APIs.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "API version of this object: slm.dev/v1alpha1."},
            "kind": {"type": "string", "description": "Kind of this object: SLMDeployment."},
            "metadata": {"type": "object"},  # the API server forbids anything more here
            "spec": spec_schema(),
            "status": status_schema(),
        },
        CEL: [
            # No fieldPath: the API server only accepts paths into the declared schema, and metadata
            # is declared as a bare object.
            cel(
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that child object names fit",
            ),
            cel(f"self.metadata.name.matches('{DNS1035_LABEL}')", NAME_MESSAGE),
        ],
    }


def build_crd() -> dict[str, Any]:
    """The CustomResourceDefinition object."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{PLURAL}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "slm-operator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
                "categories": ["slm"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root_schema()},
                    "subresources": {
                        "status": {},
                        "scale": {
                            "specReplicasPath": ".spec.replicas",
                            "statusReplicasPath": ".status.replicas",
                            "labelSelectorPath": ".status.selector",
                        },
                    },
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                }
            ],
        },
    }


def crd_yaml() -> str:
    """The CRD as committed in crds/slm.dev_slmdeployments.yaml (deterministic)."""
    header = f"# Generated by `slm-operator crd` from slm_operator.api ({API_VERSION}); do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
