"""The SLMDeployment status: conditions with observedGeneration plus what placement decided."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from slm_operator.api.common import ApiModel
from slm_operator.api.spec import HardwareClass, ModelFormat

ConditionType = Literal["Ready", "Progressing", "Degraded"]
ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """One observation about the SLMDeployment, in the metav1.Condition shape."""

    type: ConditionType = Field(description="Ready, Progressing or Degraded.")
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation this was computed from."
    )
    last_transition_time: str | None = Field(
        None,
        json_schema_extra={"format": "date-time"},
        description="When the status last changed (RFC 3339).",
    )


class VariantStatus(ApiModel):
    """The model variant placement chose."""

    format: ModelFormat | None = Field(None, description="gguf or onnx.")
    quantization: str | None = Field(None, description="Quantization served, e.g. Q4_K_M.")
    uri: str | None = Field(None, description="Where the file is fetched from.")


class Endpoints(ApiModel):
    """In-cluster URLs clients use."""

    openai: str | None = Field(None, description="OpenAI-compatible base URL (…/v1).")
    ollama: str | None = Field(None, description="Ollama-compatible base URL.")
    fleet: str | None = Field(
        None,
        description="OpenAI-compatible base URL of the fleet's slm-gateway (…/v1): one endpoint for every "
        "model, routed by the request's model; unset when the chart's gateway is off.",
    )


class AutoscalingStatus(ApiModel):
    """The operator's own autoscaler (targetInFlightRequests): its last decision and why."""

    desired_replicas: int | None = Field(None, ge=0, description="Pods the autoscaler wants.")
    current_replicas: int | None = Field(None, ge=0, description="Pods the Deployment had when it decided.")
    reason: str | None = Field(
        None,
        description="ScaledUp, ScaledDown, ScaledToZero, WokenByRequest, Steady, NoDemandData or "
        "OutOfBounds.",
    )
    message: str | None = Field(None, description="The demand the decision was made on.")
    last_scale_time: str | None = Field(
        None, json_schema_extra={"format": "date-time"}, description="When it last changed replicas."
    )


class SLMDeploymentStatus(ApiModel):
    """Observed state of an SLMDeployment, written by the operator only."""

    observed_generation: int | None = Field(None, description="metadata.generation last reconciled.")
    conditions: list[Condition] | None = Field(
        None,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Ready, Progressing and Degraded conditions.",
    )
    hardware: HardwareClass | None = Field(
        None, description="Hardware class placement chose: cpu, gpu or npu."
    )
    variant: VariantStatus | None = Field(None, description="Model variant being served.")
    endpoints: Endpoints | None = Field(None, description="Service URLs of the OpenAI and Ollama APIs.")
    replicas: int | None = Field(None, description="Pods the Deployment wants.")
    ready_replicas: int | None = Field(None, description="Pods ready to serve.")
    selector: str | None = Field(None, description="Label selector of the pods (for the scale subresource).")
    message: str | None = Field(
        None, description="Summary of the last reconcile, including placement fallbacks."
    )
    autoscaling: AutoscalingStatus | None = Field(
        None, description="The operator's autoscaler (targetInFlightRequests): desired vs current, reason."
    )
