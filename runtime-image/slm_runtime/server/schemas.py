"""Request bodies of both APIs, in one place.

Lenient about unknown fields (clients send many we do not use: `user`, `images`, ...) but
strict about the types of the ones we read: a wrong type is a 400 in the API's error format.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- OpenAI -------------------------------------------------------------------------------------


class ContentPart(_Body):
    type: str
    text: str | None = None


class OpenAIMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """Content as plain text; only text parts are supported (no images)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        return "".join(p.text or "" for p in self.content if p.type == "text")


class JsonSchemaSpec(_Body):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class OpenAIResponseFormat(_Body):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Body):
    include_usage: bool = False


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
    repetition_penalty: float | None = Field(None, gt=0)
    logit_bias: dict[str, float] | None = None
    response_format: OpenAIResponseFormat | None = None
    min_p: float | None = Field(None, ge=0, le=1)  # not OpenAI; llama.cpp and vLLM accept it
    user: str | None = None  # accepted; only for the caller's own bookkeeping


class OpenAIChatRequest(_OpenAISampling):
    messages: list[OpenAIMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class OpenAICompletionRequest(_OpenAISampling):
    prompt: str | list[str]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class OpenAIEmbeddingRequest(_Body):
    model: str
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None


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
    keep_alive: str | int | float | None = None


class _OllamaGenerating(_OllamaBase):
    stream: bool = True
    format: Literal["", "json"] | dict[str, Any] | None = None


class OllamaGenerateRequest(_OllamaGenerating):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False


class OllamaMessage(_Body):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""


class OllamaChatRequest(_OllamaGenerating):
    messages: list[OllamaMessage] = Field(default_factory=list)


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
