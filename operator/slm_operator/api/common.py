"""Shared building blocks of the API: the model base class, quantities and Kubernetes core shapes.

The Kubernetes shapes (tolerations, label selectors, resource requirements) are re-declared here
rather than imported from the `kubernetes` client so that the API stays pure pydantic and its JSON
schema — hence the CRD — is generated from one place, with a description on every field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, WithJsonSchema
from pydantic.alias_generators import to_camel

from slm_operator.quantity import QUANTITY_PATTERN, is_quantity

CEL = "x-kubernetes-validations"


def cel(rule: str, message: str, field_path: str | None = None) -> dict[str, JsonValue]:
    """One `x-kubernetes-validations` entry; `fieldPath` names the offending field for `kubectl`."""
    entry: dict[str, JsonValue] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    return entry


def model_config(*rules: dict[str, JsonValue]) -> ConfigDict:
    """The API's model configuration, with the class's CEL rules (if any) for its JSON schema."""
    config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True, validate_default=True
    )
    if rules:
        config["json_schema_extra"] = {CEL: list(rules)}
    return config


class ApiModel(BaseModel):
    """Base of every API type: camelCase aliases, unknown fields rejected, immutable values."""

    model_config = model_config()

    def to_api(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase, unset optional fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _to_str(value: object) -> object:
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _check_quantity(value: str) -> str:
    if not is_quantity(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity such as 512Mi, 6Gi or 500m")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_to_str),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity; accepted as a number or a string, kept as the string."""

StringMap = dict[str, str]

# --- label and annotation syntax, checked at admission (CEL) and again by the reconciler --------
# What the API server would reject when the operator applies a child: a key or value that does not
# pass here would otherwise be accepted into the SLMDeployment and fail later, out of the user's sight.

DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A Service name (DNS-1035 label): lowercase letters, digits and '-', starting with a letter."""
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A qualified name: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
"""A label value: empty, or at most 63 alphanumerics, '-', '_' and '.', alphanumeric at both ends."""
RESERVED_LABEL_KEY = r"^([^/]*\.)?(kubernetes\.io|k8s\.io|slm\.dev)/"
"""Label keys in the Kubernetes and slm.dev domains: the selectors of our children and the core
components' own labels use them, so an SLMDeployment may not set them on its pods."""
RESERVED_LABEL_DOMAINS = "the kubernetes.io, k8s.io and slm.dev domains"
RESERVED_ANNOTATION_KEY = r"^([^/]*\.)?slm\.dev/"
"""Annotation keys the operator sets on the pods itself (slm.dev/config-hash)."""
RESERVED_ANNOTATION_DOMAINS = "the slm.dev domain"
MAX_MAP_ENTRIES = 64
MAX_KEY_LENGTH = 317  # 253 (prefix) + "/" + 63 (name)
MAX_ANNOTATIONS_BYTES = 256 * 1024  # the API server's limit on all annotations of an object together
KEY_MESSAGE = (
    "keys must be qualified names: an optional DNS subdomain prefix and '/', then at most 63 "
    "alphanumerics, '-', '_' or '.', beginning and ending with an alphanumeric "
    "(e.g. team or example.com/team)"
)
VALUE_MESSAGE = (
    "values must be valid label values: empty, or at most 63 alphanumerics, '-', '_' or '.', "
    "beginning and ending with an alphanumeric (no spaces)"
)


def key_problem(key: str) -> str | None:
    """Why `key` is not a valid label/annotation key, or None (the API server's exact rule)."""
    prefix, _, name = key.rpartition("/")
    if len(key) > MAX_KEY_LENGTH or len(prefix) > 253 or not re.match(LABEL_KEY, key) or len(name) > 63:
        return f"{key!r}: {KEY_MESSAGE}"
    return None


def value_problem(value: str) -> str | None:
    """Why `value` is not a valid label value, or None."""
    if len(value) > 63 or not re.match(LABEL_VALUE, value):
        return f"{value!r}: {VALUE_MESSAGE}"
    return None


def map_cel(
    field: str, what: str, *, values: bool, reserved: tuple[str, str] | None = None
) -> list[dict[str, JsonValue]]:
    """The CEL rules of one label-like map field, placed on its parent object (`fieldPath` names it)."""
    rules = [
        cel(
            f"!has(self.{field}) || "
            f"self.{field}.all(k, size(k) <= {MAX_KEY_LENGTH} && k.matches('{_cel(LABEL_KEY)}'))",
            f"{what} {KEY_MESSAGE}",
            f".{field}",
        )
    ]
    if values:
        rules.append(
            cel(
                f"!has(self.{field}) || self.{field}.all(k, self.{field}[k].matches('{_cel(LABEL_VALUE)}'))",
                f"{what} {VALUE_MESSAGE}",
                f".{field}",
            )
        )
    if reserved is not None:
        pattern, domains = reserved
        rules.append(
            cel(
                f"!has(self.{field}) || !self.{field}.exists(k, k.matches('{_cel(pattern)}'))",
                f"{what} may not use keys in {domains} (reserved for Kubernetes and the operator, "
                "whose selectors use them)",
                f".{field}",
            )
        )
    return rules


def _cel(pattern: str) -> str:
    """A regular expression as a CEL single-quoted string literal (backslashes doubled)."""
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


def _check_labels(value: dict[str, str]) -> dict[str, str]:
    problems = [p for k, v in value.items() for p in (key_problem(k), value_problem(v)) if p]
    if problems:
        raise ValueError("; ".join(problems))
    return value


def _check_annotations(value: dict[str, str]) -> dict[str, str]:
    problems = [p for k in value if (p := key_problem(k))]
    if sum(len(k) + len(v) for k, v in value.items()) > MAX_ANNOTATIONS_BYTES:
        problems.append(f"annotations may hold at most {MAX_ANNOTATIONS_BYTES} bytes together")
    if problems:
        raise ValueError("; ".join(problems))
    return value


LabelMap = Annotated[
    dict[str, Annotated[str, Field(max_length=63)]],
    Field(max_length=MAX_MAP_ENTRIES, json_schema_extra={"maxProperties": MAX_MAP_ENTRIES}),
    AfterValidator(_check_labels),
]
"""Labels (pod labels, a node selector): keys and values as the API server accepts them."""
AnnotationMap = Annotated[
    dict[str, str],
    Field(max_length=MAX_MAP_ENTRIES, json_schema_extra={"maxProperties": MAX_MAP_ENTRIES}),
    AfterValidator(_check_annotations),
]
"""Annotations: keys as the API server accepts them, values free (256 KiB in all)."""


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration), copied onto the model pods."""

    key: str | None = Field(None, description="Taint key to tolerate; empty with Exists matches all taints.")
    operator: Literal["Exists", "Equal"] | None = Field(
        None, description="Exists (any value) or Equal (the value must match). Default Equal."
    )
    value: str | None = Field(None, description="Taint value to match when the operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches every effect."
    )
    toleration_seconds: int | None = Field(
        None, description="For NoExecute: how long the pod stays bound after the taint appears."
    )


class LabelSelectorRequirement(ApiModel):
    """One set-based label requirement (metav1 LabelSelectorRequirement)."""

    key: str = Field(description="Label key the requirement applies to.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="Relation between the label's value and `values`."
    )
    values: list[str] | None = Field(
        None, description="Values for In and NotIn; must be empty for Exists and DoesNotExist."
    )


class LabelSelector(ApiModel):
    """A Kubernetes label selector (metav1 LabelSelector); an empty selector matches everything."""

    match_labels: StringMap | None = Field(
        None, description="Labels that must all be present with these values."
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        None, description="Set-based requirements, all of which must hold."
    )


class ResourceRequirements(ApiModel):
    """Compute resources (core/v1 ResourceRequirements) overriding what placement computes."""

    limits: dict[str, Quantity] | None = Field(
        None, description="Maximum resources per model container, e.g. cpu, memory, nvidia.com/gpu."
    )
    requests: dict[str, Quantity] | None = Field(
        None, description="Resources reserved per model container; the CPU request sets the thread count."
    )
