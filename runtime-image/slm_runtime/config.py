"""The runtime's configuration file: the one contract between the operator and its pods.

The operator renders a `RuntimeConfig` into a ConfigMap (`config.yaml`) from the SLMDeployment's
spec; `slm-runtime serve --config FILE` reads it back. Both sides use this module, so a field
that one writes and the other ignores cannot exist. It depends on pydantic only, so the operator
can import it without pulling in llama-cpp-python or onnxruntime-genai.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ModelFormat = Literal["gguf", "onnx", "auto"]
HardwareClass = Literal["cpu", "gpu", "npu"]
ProviderName = Literal["cpu", "cuda", "openvino", "qnn", "vitisai", "dml", "webgpu"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_S = TypeVar("_S", bound=_Strict)


def _defaults(cls: type[_S]) -> Callable[[], _S]:
    """A section with all defaults (typed for mypy, which cannot see through field aliases)."""
    return lambda: cls.model_validate({})


class ModelSection(_Strict):
    """Which model file to serve and under what name clients address it."""

    name: str = Field("default", description="Name served in /v1/models and /api/tags.")
    path: str | None = Field(None, description="GGUF file or ONNX folder; `--model` overrides it.")
    format: ModelFormat = Field("auto", description="Backend to load it with; auto sniffs the path.")
    quantization: str | None = Field(None, description="Reported in metrics and /api/show only.")


class ExecutionProvider(_Strict):
    """An onnxruntime-genai execution provider and its options (ONNX models only)."""

    name: ProviderName = Field(description="cpu is onnxruntime's default provider (no options).")
    options: dict[str, str] = Field(default_factory=dict, description="Provider options, e.g. device_type.")


class RuntimeSection(_Strict):
    """Engine settings, in llama.cpp's vocabulary."""

    context_length: int = Field(4096, alias="contextLength", ge=64, description="Tokens per slot.")
    parallel: int = Field(4, ge=1, le=256, description="Concurrent sequences (slots) per pod.")
    threads: int | None = Field(None, ge=1, description="CPU threads; default: the CPU limit.")
    gpu_layers: int = Field(0, alias="gpuLayers", ge=-1, description="Layers offloaded; -1 = all.")
    batch_size: int = Field(512, alias="batchSize", ge=1, description="Prompt tokens per decode.")
    execution_providers: list[ExecutionProvider] = Field(
        default_factory=list,
        alias="executionProviders",
        max_length=8,
        description="ONNX: providers to try in order; one that fails to load falls back to the next, "
        "and finally to CPU. Empty: CPU.",
    )


class SamplingDefaults(_Strict):
    """Default sampling parameters (Ollama Modelfile PARAMETERs); a request's own values win."""

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, alias="topP", ge=0, le=1)
    top_k: int | None = Field(None, alias="topK", ge=0)
    num_predict: int | None = Field(None, alias="numPredict", ge=-1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    repeat_penalty: float | None = Field(None, alias="repeatPenalty", ge=0)


class PromptSection(_Strict):
    """What a Modelfile's SYSTEM/TEMPLATE/PARAMETER lines say."""

    system: str | None = Field(None, description="System prompt prepended when a chat has none.")
    template: str | None = Field(None, description="Jinja2 chat template overriding the model's.")
    parameters: SamplingDefaults = Field(default_factory=_defaults(SamplingDefaults))


class LimitsSection(_Strict):
    """Admission control: beyond these a request gets 429 (OpenAI) / 503 (Ollama)."""

    max_concurrent: int | None = Field(None, alias="maxConcurrent", ge=1, description="Default: parallel.")
    queue_length: int = Field(64, alias="queueLength", ge=0)
    drain_seconds: float = Field(30.0, alias="drainSeconds", ge=0)


class AuthSection(_Strict):
    """API keys; none configured means the endpoint is open (NetworkPolicy still applies)."""

    api_key_file: str | None = Field(None, alias="apiKeyFile", description="One key per line.")
    api_key_env: str = Field("SLM_API_KEYS", alias="apiKeyEnv", description="Comma-separated keys.")
    protect_metrics: bool = Field(False, alias="protectMetrics")


class ServerSection(_Strict):
    """Where the runtime listens."""

    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535, description="The OpenAI and Ollama APIs (and probes).")
    metrics_port: int | None = Field(
        None,
        alias="metricsPort",
        ge=1,
        le=65535,
        description="Serve /metrics on this port only (a NetworkPolicy can then let scrapers in "
        "without the API); unset: /metrics on `port`, for standalone use.",
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        if self.metrics_port == self.port:
            raise ValueError(f"server.metricsPort must differ from server.port ({self.port})")
        return self


class RuntimeConfig(_Strict):
    """Everything `slm-runtime serve` needs; each section has usable defaults."""

    model: ModelSection = Field(default_factory=_defaults(ModelSection))
    hardware: HardwareClass = "cpu"
    runtime: RuntimeSection = Field(default_factory=_defaults(RuntimeSection))
    prompt: PromptSection = Field(default_factory=_defaults(PromptSection))
    limits: LimitsSection = Field(default_factory=_defaults(LimitsSection))
    auth: AuthSection = Field(default_factory=_defaults(AuthSection))
    server: ServerSection = Field(default_factory=_defaults(ServerSection))

    def to_yaml(self) -> str:
        """Serialise with the camelCase aliases, omitting unset optional values."""
        data = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return yaml.safe_dump(data, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> RuntimeConfig:
        text = Path(path).read_text(encoding="utf-8")
        return cls.model_validate(yaml.safe_load(text) or {})
