"""Shared building blocks of the API: the model base class, quantities and Kubernetes core shapes.

The Kubernetes shapes (tolerations, label selectors, resource requirements) are re-declared here
rather than imported from the `kubernetes` client so that the API stays pure pydantic and its JSON
schema — hence the CRD — is generated from one place, with a description on every field.
"""

from __future__ import annotations

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
