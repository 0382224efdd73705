"""The runtime's configuration file: the one contract between the operator and its pods.

The operator renders a `RuntimeConfig` into a ConfigMap (`config.yaml`) from the SLMDeployment's
spec; `slm-runtime serve --config FILE` reads it back. Both sides use this module, so a field
that one writes and the other ignores cannot exist. It depends on pydantic only, so the operator
can import it without pulling in llama-cpp-python or onnxruntime-genai.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

ModelFormat = Literal["gguf", "onnx", "auto"]
HardwareClass = Literal["cpu", "gpu", "npu"]
ProviderName = Literal["cpu", "cuda", "openvino", "qnn", "vitisai", "dml", "webgpu"]
ClientSystemPolicy = Literal["append", "replace", "refuse"]


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
    client_system: ClientSystemPolicy = Field(
        "append",
        alias="clientSystem",
        description="What a client's own system message does when `system` is set: `append` (the "
        "configured prompt stays first, the client's text follows it), `replace` (the client's wins) "
        "or `refuse` (400). Without a configured `system` a client's system message is always used.",
    )
    allow_raw: bool | None = Field(
        None,
        alias="allowRaw",
        description="Whether prompts that bypass the chat template (Ollama `raw: true`, "
        "/v1/completions) are served. Default: only when no `system` prompt is configured.",
    )

    def raw_allowed(self) -> bool:
        """Raw prompts skip the system prompt, so by default they are refused when one is set."""
        return self.allow_raw if self.allow_raw is not None else not self.system


class LimitsSection(_Strict):
    """Admission control (beyond `maxConcurrent` + `queueLength` a request gets 429 for OpenAI /
    503 for Ollama) and the bounds that keep one hostile request or client from taking the pod
    down: body size (413), request shape (400 naming the field) and slow or idle connections."""

    max_concurrent: int | None = Field(None, alias="maxConcurrent", ge=1, description="Default: parallel.")
    queue_length: int = Field(64, alias="queueLength", ge=0)
    drain_seconds: float = Field(30.0, alias="drainSeconds", ge=0)
    max_body_bytes: int = Field(
        4 << 20, alias="maxBodyBytes", ge=1024, description="Request body size; larger is a 413."
    )
    max_json_depth: int = Field(64, alias="maxJsonDepth", ge=4, le=512, description="Nesting of a body.")
    max_messages: int = Field(1024, alias="maxMessages", ge=1, description="Messages (or input items).")
    max_prompt_chars: int | None = Field(
        None,
        alias="maxPromptChars",
        ge=1,
        description="Characters of prompt text in one request; default: 32 per token of contextLength.",
    )
    max_stop: int = Field(16, alias="maxStop", ge=0, description="`stop` sequences per request.")
    max_stop_chars: int = Field(512, alias="maxStopChars", ge=1, description="Length of one stop sequence.")
    max_logit_bias: int = Field(1024, alias="maxLogitBias", ge=0, description="`logit_bias` entries.")
    max_schema_bytes: int = Field(
        65536, alias="maxSchemaBytes", ge=256, description="JSON schema size (response format, tools)."
    )
    max_schema_depth: int = Field(24, alias="maxSchemaDepth", ge=2, description="Nesting of a JSON schema.")
    max_embedding_inputs: int = Field(256, alias="maxEmbeddingInputs", ge=1, description="Inputs per call.")
    body_timeout_seconds: float = Field(
        30.0, alias="bodyTimeoutSeconds", gt=0, description="Time to send a whole request body; else 408."
    )
    header_timeout_seconds: float = Field(
        10.0, alias="headerTimeoutSeconds", gt=0, description="Time to send the request line and headers."
    )
    keep_alive_seconds: float = Field(
        5.0, alias="keepAliveSeconds", gt=0, description="Idle keep-alive connections close after this."
    )
    max_connections: int = Field(
        512, alias="maxConnections", ge=1, description="Open connections + requests; beyond: 503."
    )

    def prompt_chars(self, context_length: int) -> int:
        """The prompt-character cap: configured, else 32 characters per token of one slot."""
        return self.max_prompt_chars or 32 * context_length


class AuthSection(_Strict):
    """API keys; none configured means the endpoint is open (NetworkPolicy still applies).

    A configured key file (or a set key variable) that yields no usable key is a start-up
    error, never an open endpoint. The file is re-read when it changes (Secret rotation)."""

    api_key_file: str | None = Field(
        None, alias="apiKeyFile", description="One key per line, `KEY` or `ID:KEY`; `#` comments."
    )
    api_key_env: str = Field("SLM_API_KEYS", alias="apiKeyEnv", description="Comma-separated keys.")
    protect_metrics: bool = Field(False, alias="protectMetrics")
    min_key_length: int = Field(16, alias="minKeyLength", ge=8, description="Shorter keys are refused.")
    reload_seconds: float = Field(
        2.0, alias="reloadSeconds", gt=0, le=60, description="How often the key file is checked for changes."
    )
    trusted_key_sha256: list[Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]] | None = Field(
        None,  # None, not []: left out of the YAML, so configs without digests keep their hash
        alias="trustedKeySha256",
        max_length=8,
        description="SHA-256 digests (lowercase hex) of keys accepted besides the user keys: "
        "slm-gateway's upstream key, set by the operator. Only with a key file or key variable: "
        "a digest never switches authentication on by itself.",
    )


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
