"""The SLMDeployment spec: what model to serve, on which hardware, and how to expose it.

Every invariant the API server can check is declared twice on purpose: as a CEL rule in the
class's JSON schema (`x-kubernetes-validations`, enforced by `kubectl apply`) and as a pydantic
validator (enforced by `slm-operator render` and by the reconciler on whatever the server stored).
The tests evaluate the CEL rules with cel-python against the same cases as the validators.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from slm_operator.api.common import (
    DNS1035_LABEL,
    RESERVED_ANNOTATION_DOMAINS,
    RESERVED_ANNOTATION_KEY,
    RESERVED_LABEL_DOMAINS,
    RESERVED_LABEL_KEY,
    AnnotationMap,
    ApiModel,
    LabelMap,
    LabelSelector,
    Quantity,
    ResourceRequirements,
    StringMap,
    Toleration,
    cel,
    map_cel,
    model_config,
)
from slm_runtime.config import ClientSystemPolicy, ProviderName  # the runtime config's lists: one definition

HardwareClass = Literal["npu", "gpu", "cpu"]
ModelFormat = Literal["gguf", "onnx"]
Quantization = Literal[
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_1",
    "Q5_0",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_1",
    "Q4_0",
    "Q3_K_M",
    "Q2_K",
    "FP32",
    "FP16",
    "INT8",
    "INT4",
]
ONNX_ONLY: tuple[Quantization, ...] = ("FP32", "FP16", "INT8", "INT4")
URI_PATTERN = r"^(https://|hf://|file://|tiny://)\S+$"
SHA256_PATTERN = r"^[a-fA-F0-9]{64}$"
RESOURCE_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$"
DEFAULT_PREFERENCE: tuple[HardwareClass, ...] = ("gpu", "cpu")
MAX_NAME_LENGTH = 52
"""Longest SLMDeployment name: children add at most "-runtime" and must stay within 63 characters."""
NAME_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter "
    "and ending with a letter or digit, e.g. qwen2-5 rather than qwen2.5 or 7b-model), because it names "
    "the model's Service, whose name is its DNS name"
)


def name_problem(name: str) -> str | None:
    """Why `name` cannot name an SLMDeployment (its children take the name), or None."""
    if len(name) > MAX_NAME_LENGTH:
        return f"metadata.name must be at most {MAX_NAME_LENGTH} characters so that child object names fit"
    if not re.match(DNS1035_LABEL, name):
        return f"{NAME_MESSAGE}: {name!r}"
    return None


class ModelVariant(ApiModel):
    """One downloadable file (GGUF) or folder (ONNX) of the model at one quantization."""

    model_config = model_config(
        cel(
            "(has(self.format) && self.format == 'onnx') || "
            "!(self.quantization in ['FP32', 'FP16', 'INT8', 'INT4'])",
            "GGUF variants use llama.cpp quantization names (F32, F16, BF16, Q8_0, Q4_K_M, ...)",
            ".quantization",
        )
    )

    format: ModelFormat = Field(
        "gguf", description="File format: gguf (llama.cpp) or onnx (ONNX Runtime GenAI)."
    )
    quantization: Quantization = Field(
        description="Weight precision of this variant, e.g. Q4_K_M, F16, INT4."
    )
    uri: str = Field(
        pattern=URI_PATTERN,
        max_length=2048,
        description=(
            "Where to fetch it: https://..., hf://org/repo/path/to/file, file:///local/path, "
            "or tiny://gguf?quantization=q8_0 / tiny://onnx for a generated test model."
        ),
    )
    sha256: str | None = Field(
        None,
        pattern=SHA256_PATTERN,
        description="Expected SHA-256 of the file (64 hex digits); checked after download. For an "
        "ONNX hf:// folder: the manifest digest, sha256 of `sha256sum` over its files sorted by path.",
    )
    size_bytes: int | None = Field(
        None,
        ge=1,
        description="Size of the file in bytes; improves the memory estimate when `parameters` is unset.",
    )

    @model_validator(mode="after")
    def _gguf_names(self) -> Self:
        if self.format == "gguf" and self.quantization in ONNX_ONLY:
            raise ValueError(
                "GGUF variants use llama.cpp quantization names (F32, F16, BF16, Q8_0, Q4_K_M, ...)"
            )
        return self


class ModelSpec(ApiModel):
    """The model to serve: its name and either an explicit list of variants or a URI template."""

    model_config = model_config(
        cel(
            "has(self.variants) != has(self.uriTemplate)",
            "set exactly one of model.variants and model.uriTemplate",
            ".variants",
        ),
        cel(
            "!has(self.uriTemplate) || self.uriTemplate.contains('{quantization}')",
            "model.uriTemplate must contain the placeholder {quantization}",
            ".uriTemplate",
        ),
        cel(
            "has(self.uriTemplate) == has(self.quantizations)",
            "model.quantizations (the quantizations a uriTemplate offers) goes with uriTemplate only",
            ".quantizations",
        ),
        cel(
            "!has(self.sha256) || (has(self.quantizations) && self.sha256.all(q, q in self.quantizations))",
            "model.sha256 keys must be quantizations listed in model.quantizations",
            ".sha256",
        ),
    )

    name: str = Field(
        min_length=1,
        max_length=253,
        description="Model name served in /v1/models and /api/tags, e.g. qwen2.5:0.5b.",
    )
    parameters: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="Approximate parameter count in billions (0.5, 3.8, ...); used for memory estimates.",
    )
    variants: list[ModelVariant] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="The files this model is offered as; placement picks one.",
    )
    uri_template: str | None = Field(
        None,
        max_length=2048,
        pattern=URI_PATTERN,
        description="URI with a {quantization} placeholder, an alternative to listing variants.",
    )
    format: ModelFormat = Field("gguf", description="Format of the files a uriTemplate points to.")
    quantizations: list[Quantization] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Quantizations the uriTemplate offers (with uriTemplate only).",
    )
    sha256: dict[str, Annotated[str, Field(pattern=SHA256_PATTERN)]] | None = Field(
        None,
        max_length=16,
        json_schema_extra={"maxProperties": 16},
        description="Expected SHA-256 of each uriTemplate file, keyed by quantization (64 hex digits).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.variants is None) == (self.uri_template is None):
            raise ValueError("set exactly one of model.variants and model.uriTemplate")
        if self.uri_template is not None and "{quantization}" not in self.uri_template:
            raise ValueError("model.uriTemplate must contain the placeholder {quantization}")
        if (self.uri_template is None) != (self.quantizations is None):
            raise ValueError(
                "model.quantizations (the quantizations a uriTemplate offers) goes with uriTemplate only"
            )
        if self.sha256 is not None and not set(self.sha256) <= set(self.quantizations or ()):
            raise ValueError("model.sha256 keys must be quantizations listed in model.quantizations")
        return self

    def all_variants(self) -> list[ModelVariant]:
        """The offered variants, expanding a uriTemplate into one variant per quantization."""
        if self.variants is not None:
            return list(self.variants)
        template = self.uri_template or ""
        return [
            ModelVariant(
                format=self.format,
                quantization=q,
                uri=template.replace("{quantization}", q),
                sha256=(self.sha256 or {}).get(q),
                size_bytes=None,
            )
            for q in self.quantizations or ()
        ]


class ExecutionProviderSpec(ApiModel):
    """The onnxruntime-genai execution provider for ONNX models on this class, replacing the default."""

    name: ProviderName = Field(description="cpu, cuda, openvino, qnn, vitisai, dml or webgpu.")
    options: StringMap | None = Field(
        None, description="Provider options, e.g. {device_type: NPU} for openvino."
    )


class AcceleratorSpec(ApiModel):
    """Which extended resource to request for an accelerator class, and how many."""

    resource_name: str | None = Field(
        None,
        pattern=RESOURCE_NAME_PATTERN,
        max_length=253,
        description="Extended resource, e.g. nvidia.com/gpu or npu.intel.com/accel; default: detected.",
    )
    count: int = Field(1, ge=1, le=16, description="Devices per pod.")
    execution_provider: ExecutionProviderSpec | None = Field(
        None,
        description="ONNX: the execution provider to use here (default: by vendor, see the hardware table); "
        "the runtime falls back to CPU if it cannot load.",
    )


class HardwareSpec(ApiModel):
    """Where the model may run, in order of preference, and the scheduling constraints to honour."""

    model_config = model_config(*map_cel("nodeSelector", "hardware.nodeSelector", values=True))

    preference: list[HardwareClass] = Field(
        default_factory=lambda: list(DEFAULT_PREFERENCE),
        min_length=1,
        max_length=3,
        json_schema_extra={"default": ["gpu", "cpu"], "x-kubernetes-list-type": "set"},
        description="Hardware classes to try in order; the first with room for the model wins.",
    )
    gpu: AcceleratorSpec | None = Field(None, description="GPU resource to request when placed on a GPU.")
    npu: AcceleratorSpec | None = Field(None, description="NPU resource to request when placed on an NPU.")
    node_selector: LabelMap | None = Field(None, description="Node labels every model pod requires.")
    tolerations: list[Toleration] | None = Field(
        None, description="Extra tolerations; the accelerator's own taint is tolerated automatically."
    )
    memory_budget: Quantity | None = Field(
        None, description="Most memory one pod may use (e.g. 6Gi); larger variants are not chosen."
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        if len(set(self.preference)) != len(self.preference):
            raise ValueError("hardware.preference must not repeat a class")
        return self


class RuntimeSettings(ApiModel):
    """Engine settings passed to the runtime (llama.cpp vocabulary)."""

    context_length: int = Field(
        4096, ge=64, le=1048576, description="Context window per parallel slot, in tokens."
    )
    parallel: int = Field(4, ge=1, le=256, description="Requests decoded concurrently per pod (slots).")
    threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads; default: the pod's CPU request."
    )
    gpu_layers: int | None = Field(
        None,
        ge=-1,
        le=1000,
        description="Layers offloaded to the GPU; -1 = all. Default -1 on gpu, 0 elsewhere.",
    )
    batch_size: int = Field(512, ge=1, le=65536, description="Prompt tokens processed per decode step.")


class SamplingParameters(ApiModel):
    """Default sampling parameters (an Ollama Modelfile's PARAMETER lines); a request's own values win."""

    temperature: float | None = Field(None, ge=0, le=10, description="Sampling temperature; 0 is greedy.")
    top_p: float | None = Field(None, ge=0, le=1, description="Nucleus sampling probability mass.")
    top_k: int | None = Field(None, ge=0, description="Sample among the k most likely tokens; 0 disables.")
    num_predict: int | None = Field(None, ge=-1, description="Most tokens to generate; -1 = until stop.")
    stop: list[str] | None = Field(None, max_length=16, description="Stop sequences.")
    seed: int | None = Field(None, description="Random seed for reproducible sampling.")
    repeat_penalty: float | None = Field(None, ge=0, description="Penalty for repeating recent tokens.")


class PromptSpec(ApiModel):
    """What a Modelfile's SYSTEM, TEMPLATE and PARAMETER lines say."""

    system: str | None = Field(None, description="System prompt used when a chat brings none.")
    template: str | None = Field(None, description="Jinja2 chat template overriding the model's own.")
    parameters: SamplingParameters | None = Field(None, description="Default sampling parameters.")
    client_system: ClientSystemPolicy | None = Field(
        None,
        description="What a client's own system message does when `system` is set: append (default: "
        "the configured prompt stays first, the client's text follows), replace (the client's wins), "
        "or refuse (400).",
    )
    allow_raw: bool | None = Field(
        None,
        description="Serve prompts that bypass the chat template and so the system prompt (Ollama "
        "`raw: true`, /v1/completions). Default: only when `system` is not set.",
    )


DURATION_PATTERN = r"^[0-9]{1,6}(s|m|h)$"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def duration_seconds(value: str) -> int:
    """`90s`, `10m`, `1h` in seconds (the shape `DURATION_PATTERN` admits)."""
    return int(value[:-1]) * _UNIT_SECONDS[value[-1]]


class AutoscalingSpec(ApiModel):
    """Horizontal autoscaling of the model pods (a HorizontalPodAutoscaler is rendered when enabled)."""

    model_config = model_config(
        cel(
            "!has(self.maxReplicas) || !has(self.minReplicas) || self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            ".minReplicas",
        ),
        cel(
            "!has(self.enabled) || !self.enabled || has(self.maxReplicas)",
            "autoscaling.maxReplicas is required when autoscaling is enabled",
            ".maxReplicas",
        ),
        cel(
            "!has(self.enabled) || !self.enabled || "
            "has(self.targetCPUUtilizationPercentage) || has(self.targetInFlightRequests)",
            "enabled autoscaling needs targetCPUUtilizationPercentage and/or targetInFlightRequests",
            ".enabled",
        ),
        cel(
            "!has(self.targetCPUUtilizationPercentage) || !has(self.targetInFlightRequests)",
            "set targetCPUUtilizationPercentage (the HPA scales) or targetInFlightRequests "
            "(the operator scales), not both: exactly one thing writes the replica count",
            ".targetInFlightRequests",
        ),
        cel(
            "!has(self.minReplicas) || self.minReplicas > 0 || has(self.targetInFlightRequests)",
            "autoscaling.minReplicas 0 needs targetInFlightRequests: only the gateway's demand "
            "can wake a model at zero",
            ".minReplicas",
        ),
    )

    enabled: bool = Field(
        False, description="Render a HorizontalPodAutoscaler; spec.replicas is then ignored."
    )
    min_replicas: int = Field(
        1,
        ge=0,
        le=1000,
        description="Fewest pods the autoscaler keeps; 0 scales the model to zero after "
        "scaleToZeroAfter without requests (needs targetInFlightRequests).",
    )
    max_replicas: int | None = Field(None, ge=1, le=1000, description="Most pods the autoscaler may run.")
    target_cpu_utilization_percentage: int | None = Field(
        None,
        alias="targetCPUUtilizationPercentage",
        ge=1,
        le=100,
        description="Scale to keep average CPU use at this percentage of the request.",
    )
    target_in_flight_requests: int | None = Field(
        None,
        ge=1,
        le=10000,
        description="Scale to keep this many requests in flight per pod, counted by the fleet's "
        "slm-gateway (the operator's own autoscaler writes the replica count; no adapter needed).",
    )
    scale_down_stabilization_seconds: int = Field(
        300,
        ge=0,
        le=3600,
        description="How long load must stay low before the autoscaler removes pods (HPA "
        "behavior.scaleDown.stabilizationWindowSeconds): a model pod is slow to start again.",
    )
    scale_to_zero_after: str = Field(
        "10m",
        pattern=DURATION_PATTERN,
        description="With minReplicas 0: how long a model must go without requests before it is "
        "scaled to zero, e.g. 90s, 10m, 1h.",
    )

    @property
    def operator_scaled(self) -> bool:
        """Whether the operator's own autoscaler owns the replica count (in-flight requests)."""
        return self.enabled and self.target_in_flight_requests is not None

    @property
    def scale_to_zero_seconds(self) -> int:
        """`scaleToZeroAfter` in seconds."""
        return duration_seconds(self.scale_to_zero_after)

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.max_replicas is not None and self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        if self.enabled and self.max_replicas is None:
            raise ValueError("autoscaling.maxReplicas is required when autoscaling is enabled")
        if (
            self.enabled
            and self.target_cpu_utilization_percentage is None
            and self.target_in_flight_requests is None
        ):
            raise ValueError(
                "enabled autoscaling needs targetCPUUtilizationPercentage and/or targetInFlightRequests"
            )
        if self.target_cpu_utilization_percentage is not None and self.target_in_flight_requests is not None:
            raise ValueError(
                "set targetCPUUtilizationPercentage (the HPA scales) or targetInFlightRequests "
                "(the operator scales), not both: exactly one thing writes the replica count"
            )
        if self.min_replicas == 0 and self.target_in_flight_requests is None:
            raise ValueError(
                "autoscaling.minReplicas 0 needs targetInFlightRequests: only the gateway's demand "
                "can wake a model at zero"
            )
        return self


class NetworkPeer(ApiModel):
    """Pods allowed to call the model: a namespace selector, a pod selector, or both (AND)."""

    model_config = model_config(
        cel(
            "has(self.namespaceSelector) || has(self.podSelector)",
            "an allowed client needs a namespaceSelector, a podSelector or both",
            ".podSelector",
        )
    )

    namespace_selector: LabelSelector | None = Field(
        None, description="Namespaces of allowed clients; unset means the SLMDeployment's own namespace."
    )
    pod_selector: LabelSelector | None = Field(
        None, description="Pods allowed within the selected namespaces; unset means all of them."
    )

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("an allowed client needs a namespaceSelector, a podSelector or both")
        return self


CIDR_PATTERN = r"^([0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/[0-9]{1,3})$"


class EgressDestination(ApiModel):
    """Where the model download may connect: an IP block, or pods by namespace and pod selectors.

    Destinations are addresses, not host names (a NetworkPolicy cannot match names), so an
    `https://host/...` source is reached through the block that holds the host's addresses.
    """

    model_config = model_config(
        cel(
            "has(self.cidr) != (has(self.namespaceSelector) || has(self.podSelector))",
            "an egress destination needs either a cidr or a namespaceSelector/podSelector, not both",
            ".cidr",
        )
    )

    cidr: str | None = Field(
        None,
        pattern=CIDR_PATTERN,
        max_length=64,
        description="IP block, e.g. 203.0.113.0/24 or 2001:db8::/32.",
    )
    namespace_selector: LabelSelector | None = Field(
        None,
        description="Namespaces of in-cluster destinations (e.g. a model mirror); unset: the own namespace.",
    )
    pod_selector: LabelSelector | None = Field(
        None, description="Pods within the selected namespaces; unset: all of them."
    )
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(
        None,
        max_length=16,
        description="TCP ports; default: the model source's port (443 for https:// and hf://).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.cidr is None) == (self.namespace_selector is None and self.pod_selector is None):
            raise ValueError(
                "an egress destination needs either a cidr or a namespaceSelector/podSelector, not both"
            )
        if self.cidr is not None:
            try:
                ipaddress.ip_network(self.cidr, strict=False)
            except ValueError as err:
                raise ValueError(f"networking.egress cidr {self.cidr!r} is not an IP block: {err}") from err
        return self


class NetworkingSpec(ApiModel):
    """The Service port and who may reach the pods (a NetworkPolicy is always rendered)."""

    port: int = Field(8080, ge=1, le=65535, description="Service port for the OpenAI and Ollama APIs.")
    allowed_clients: list[NetworkPeer] | None = Field(
        None,
        max_length=32,
        description="Clients allowed to call the API; unset means every pod in the same namespace.",
    )
    metrics_namespace_selector: LabelSelector | None = Field(
        None,
        description="Namespaces (e.g. monitoring) whose pods may scrape /metrics (the pods' "
        "`metrics` port only, not the API).",
    )
    egress: list[EgressDestination] | None = Field(
        None,
        max_length=32,
        description="Where the pods may connect (besides DNS) to download the model; unset: any "
        "address on the model source's port (443 for https:// and hf://, the URI's port otherwise), "
        "and no egress at all for file:// and tiny:// models. `[]`: DNS only.",
    )


class SecretKeyRef(ApiModel):
    """A key of a Secret in the SLMDeployment's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(
        "api-key", min_length=1, max_length=253, description="Key holding the API keys, one per line."
    )


class AuthSpec(ApiModel):
    """API-key authentication of the model endpoints."""

    api_key_secret_ref: SecretKeyRef = Field(
        description="Secret key with the accepted API keys, one per line."
    )


class CacheSpec(ApiModel):
    """The volume the model file is downloaded into."""

    model_config = model_config(
        cel(
            "!has(self.storageClassName) || (has(self.type) && self.type == 'pvc')",
            "cache.storageClassName is only valid with cache.type pvc",
            ".storageClassName",
        ),
        cel(
            "!has(self.type) || self.type != 'pvc' || has(self.size)",
            "cache.size is required with cache.type pvc",
            ".size",
        ),
    )

    type: Literal["emptyDir", "pvc"] = Field(
        "emptyDir", description="emptyDir (per pod, downloaded on every start) or pvc (kept across restarts)."
    )
    size: Quantity | None = Field(None, description="Volume size (pvc) or emptyDir size limit.")
    storage_class_name: str | None = Field(None, max_length=253, description="StorageClass of the pvc.")

    @model_validator(mode="after")
    def _pvc_only(self) -> Self:
        if self.type != "pvc" and self.storage_class_name is not None:
            raise ValueError("cache.storageClassName is only valid with cache.type pvc")
        if self.type == "pvc" and self.size is None:
            raise ValueError("cache.size is required with cache.type pvc")
        return self


class SLMDeploymentSpec(ApiModel):
    """Desired state of an SLMDeployment: one model served by a fleet of runtime pods."""

    model_config = model_config(
        *map_cel(
            "podLabels", "podLabels", values=True, reserved=(RESERVED_LABEL_KEY, RESERVED_LABEL_DOMAINS)
        ),
        *map_cel(
            "podAnnotations",
            "podAnnotations",
            values=False,
            reserved=(RESERVED_ANNOTATION_KEY, RESERVED_ANNOTATION_DOMAINS),
        ),
    )

    model: ModelSpec = Field(description="The model to serve and the files it is offered as.")
    hardware: HardwareSpec = Field(
        default_factory=lambda: HardwareSpec.model_validate({}),
        json_schema_extra={"default": {}},
        description="Hardware preference and scheduling constraints.",
    )
    runtime: RuntimeSettings = Field(
        default_factory=lambda: RuntimeSettings.model_validate({}),
        json_schema_extra={"default": {}},
        description="Engine settings.",
    )
    prompt: PromptSpec | None = Field(None, description="System prompt, chat template and sampling defaults.")
    replicas: int = Field(1, ge=0, le=1000, description="Pods to run when autoscaling is disabled.")
    autoscaling: AutoscalingSpec | None = Field(None, description="Horizontal autoscaling.")
    networking: NetworkingSpec = Field(
        default_factory=lambda: NetworkingSpec.model_validate({}),
        json_schema_extra={"default": {}},
        description="Service port and access.",
    )
    auth: AuthSpec | None = Field(None, description="API-key authentication; unset leaves the API open.")
    resources: ResourceRequirements | None = Field(
        None, description="Resource requests/limits overriding the computed ones, key by key."
    )
    cache: CacheSpec = Field(
        default_factory=lambda: CacheSpec.model_validate({}),
        json_schema_extra={"default": {}},
        description="Model download volume.",
    )
    image: str | None = Field(
        None, max_length=512, description="Runtime image overriding the operator's default."
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, description="Pull policy of the runtime image."
    )
    pod_labels: LabelMap | None = Field(
        None,
        description="Extra labels on the model pods (label syntax; not in the kubernetes.io, k8s.io or "
        "slm.dev domains).",
    )
    pod_annotations: AnnotationMap | None = Field(
        None, description="Extra annotations on the model pods (not in the slm.dev domain)."
    )

    @model_validator(mode="after")
    def _reserved_keys(self) -> Self:
        for what, keys, pattern, domains in (
            ("podLabels", self.pod_labels, RESERVED_LABEL_KEY, RESERVED_LABEL_DOMAINS),
            ("podAnnotations", self.pod_annotations, RESERVED_ANNOTATION_KEY, RESERVED_ANNOTATION_DOMAINS),
        ):
            taken = sorted(k for k in keys or () if re.match(pattern, k))
            if taken:
                raise ValueError(f"{what} may not use keys in {domains}: {', '.join(taken)}")
        return self

    @property
    def autoscaled(self) -> bool:
        """Whether a HorizontalPodAutoscaler owns the replica count."""
        return self.autoscaling is not None and self.autoscaling.enabled

    @property
    def min_pods(self) -> int:
        """The fewest pods that normally run (decides whether a PodDisruptionBudget helps)."""
        if self.autoscaling is not None and self.autoscaling.enabled:
            return self.autoscaling.min_replicas
        return self.replicas
