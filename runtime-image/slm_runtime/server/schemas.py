"""Request bodies of both APIs, in one place.

Strict: a field we do not know is a 400 naming it (a silently different answer is worse than an
error), and a wrong type is a 400 too, in the API's error format. Fields that clients send and
that cannot change the answer are declared below as `Ignored` (accepted, then not read); the
list is documented in runtime-image/README.md ("Accepted and ignored fields").
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from slm_runtime.errors import BadRequestError


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


Ignored = Any
"""A field accepted for compatibility and not read (it cannot change the answer)."""


# -- OpenAI -------------------------------------------------------------------------------------


class ContentPart(_Body):
    type: str
    text: str | None = None
    image_url: Ignored = None  # rejected with a clear message in OpenAIMessage.text
    input_audio: Ignored = None
    file: Ignored = None
    cache_control: Ignored = None  # prompt-caching hint some clients (litellm) add


class OpenAIMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: Ignored = None

    def text(self) -> str:
        """Content as plain text; only text parts are supported (no images, audio or files)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for i, part in enumerate(self.content):
            if part.type not in ("text", "input_text", "output_text"):
                raise BadRequestError(
                    f"content part type '{part.type}' is not supported (text only; this model has no vision)",
                    param=f"content.{i}.type",
                )
        return "".join(p.text or "" for p in self.content)


class JsonSchemaSpec(_Body):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class OpenAIResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Body):
    include_usage: bool = False
    include_obfuscation: Ignored = None  # padding against side channels; we send none


class _OpenAISampling(_Body):
    model: str
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)  # not OpenAI, but vLLM and llama.cpp accept it
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(
        None, gt=0, validation_alias=AliasChoices("repetition_penalty", "repeat_penalty")
    )  # vLLM's name; llama.cpp's server calls it repeat_penalty
    min_p: float | None = Field(None, ge=0, le=1)  # not OpenAI; llama.cpp and vLLM accept it
    logit_bias: dict[str, float] | None = None
    response_format: OpenAIResponseFormat | None = None
    user: Ignored = None  # accepted; only for the caller's own bookkeeping
    metadata: Ignored = None
    store: Ignored = None
    service_tier: Ignored = None


class OpenAIChatRequest(_OpenAISampling):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: Ignored = None  # these models do not reason; accepted as LiteLLM sends it
    prediction: Ignored = None  # a latency hint only


class OpenAICompletionRequest(_OpenAISampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class OpenAIEmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: Ignored = None


# -- Ollama -------------------------------------------------------------------------------------


class OllamaOptions(BaseModel):
    """Modelfile PARAMETERs a request may override; others are accepted and ignored (logged)."""

    model_config = ConfigDict(extra="allow")

    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    typical_p: float | None = Field(None, gt=0, le=1)
    num_predict: int | None = Field(None, ge=-2)
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float | None = Field(None, gt=0)
    repeat_last_n: int | None = Field(None, ge=-1)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    mirostat: Literal[0, 1, 2] | None = None
    mirostat_tau: float | None = None
    mirostat_eta: float | None = None
    num_ctx: int | None = Field(None, ge=1)
    num_keep: int | None = None
    penalize_newline: bool | None = None
    tfs_z: float | None = None


class _OllamaBase(_Body):
    model: str
    options: OllamaOptions | None = None
    keep_alive: str | int | float | None = None  # the model stays loaded for the pod's life


def _no_images(images: list[str] | None) -> list[str] | None:
    if images:
        raise ValueError("images are not supported: this model has no vision")
    return images


class _OllamaGenerating(_OllamaBase):
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None
    think: bool | str | None = None  # accepted off only; these models do not think

    @field_validator("think")
    @classmethod
    def _no_thinking(cls, value: bool | str | None) -> bool | str | None:
        if value not in (None, False):
            raise ValueError("thinking is not supported by this model")
        return value


class OllamaGenerateRequest(_OllamaGenerating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[str] | None = None
    context: list[int] | None = None  # deprecated by Ollama; only an empty one is accepted

    images_unsupported = field_validator("images")(_no_images)

    @field_validator("context")
    @classmethod
    def _no_context(cls, value: list[int] | None) -> list[int] | None:
        if value:
            raise ValueError("context (token ids of an earlier answer) is not supported; send messages")
        return value


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_name: str | None = None
    thinking: Ignored = None

    images_unsupported = field_validator("images")(_no_images)


class OllamaChatRequest(_OllamaGenerating):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None  # ours, as in OpenAI (Ollama has none)


class OllamaEmbedRequest(_OllamaBase):
    input: str | list[str]
    truncate: bool = True
    dimensions: int | None = None


class OllamaEmbeddingsRequest(_OllamaBase):
    prompt: str


class OllamaShowRequest(_Body):
    model: str | None = None
    name: str | None = None  # older clients
    verbose: bool = False


class OllamaPullRequest(_Body):
    model: str | None = None
    name: str | None = None  # older clients
    stream: bool = True
    insecure: Ignored = None
    username: Ignored = None
    password: Ignored = None


# -- OpenAI Responses ---------------------------------------------------------------------------


class ResponsesTextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None
    description: Ignored = None


class ResponsesText(_Body):
    format: ResponsesTextFormat | None = None
    verbosity: Ignored = None


class ResponsesRequest(_Body):
    """`POST /v1/responses`, stateless: no `store`, no `previous_response_id`, no background."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: ResponsesText | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    truncation: Literal["disabled"] | None = None
    include: list[str] | None = None
    metadata: Ignored = None
    user: Ignored = None
    safety_identifier: Ignored = None
    prompt_cache_key: Ignored = None
    service_tier: Ignored = None
    stream_options: Ignored = None
    reasoning: Ignored = None  # these models do not reason

    @field_validator("store")
    @classmethod
    def _stateless(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("this server is stateless: responses are not stored (send store: false)")
        return value

    @field_validator("previous_response_id")
    @classmethod
    def _no_previous(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("this server is stateless: send the whole conversation as input instead")
        return value

    @field_validator("background")
    @classmethod
    def _no_background(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("background responses are not supported (stateless server)")
        return value

    @field_validator("include")
    @classmethod
    def _no_include(cls, value: list[str] | None) -> list[str] | None:
        if value:
            raise ValueError(f"include {value} is not supported")
        return value
