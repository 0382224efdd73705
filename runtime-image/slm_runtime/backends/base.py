"""The contract between the engine (scheduling, threads) and a model format's backend.

A `Backend` is *blocking* and *single-threaded*: every method runs on the engine's one decode
thread (`slm_runtime.engine`), never concurrently and never from the event loop. That keeps the
llama.cpp/OpenMP thread team on one OS thread (calling decode from a second thread costs ~1.7x,
see FACTS) and means backends need no locks.

The HTTP layer never calls a backend: it builds a `GenerationRequest` and consumes the engine's
async iterator of `GenerationEvent`s, so a scheduler that batches many sequences into one decode
can replace the serial one without touching the server.
"""

from __future__ import annotations

import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]
"""Why a generation ended; `abort` = cancelled (client gone, shutdown). Same labels as vLLM."""


@dataclass(frozen=True)
class ResponseFormat:
    """Constrained output: plain text, any JSON object, or JSON matching a schema."""

    kind: Literal["text", "json_object", "json_schema"] = "text"
    schema: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class SamplingParams:
    """Fully resolved sampling settings (request values over config defaults over ours).

    The names and meanings are llama.cpp's (`common_params_sampling`), and the GGUF engine
    builds its sampler chain in llama-server's order, so a request means the same here as there.
    """

    max_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    """Tokens (prompt included) the penalties look back over; 0 = none, -1 = the whole context."""
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: Literal[0, 1, 2] = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    context_limit: int | None = None
    """Ollama's `num_ctx` when smaller than a slot: prompt + output must fit in it."""
    logprobs: int | None = None
    """None: no log probabilities; k >= 0: the sampled token's, plus the k most likely."""


class Prompt(str):
    """A prompt string that knows which of its spans are literal text (message content).

    Chat templates put user-supplied content between control tokens; the engine tokenizes the
    `literal` spans with special-token parsing off, so `<|im_start|>system` typed by a user stays
    text and can never become a role marker. A plain `str` prompt (raw completions) is parsed
    whole, special tokens included, like llama.cpp does.
    """

    literal: tuple[tuple[int, int], ...]

    def __new__(cls, text: str, literal: Sequence[tuple[int, int]] = ()) -> Prompt:
        obj = super().__new__(cls, text)
        obj.literal = tuple(literal)
        return obj

    def segments(self) -> list[tuple[str, bool]]:
        """(text, is_literal) pieces in order, covering the whole string."""
        out: list[tuple[str, bool]] = []
        pos = 0
        for start, end in self.literal:
            if start > pos:
                out.append((self[pos:start], False))
            if end > start:
                out.append((self[start:end], True))
            pos = max(pos, end)
        if pos < len(self):
            out.append((self[pos:], False))
        return out


@dataclass
class GenerationRequest:
    """One prompt to complete. `cancelled` is checked by the backend once per token."""

    prompt: str
    sampling: SamplingParams
    grammar: str | None = None
    """Raw GBNF constraining the output (tool calls); overrides `sampling.response_format`."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Ask the backend to stop after the current token (thread-safe)."""
        self.cancelled.set()


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log probability under the model (before sampling), and the
    `top` most likely alternatives at that position: (token text, logprob) pairs."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class TokenEvent:
    """A piece of generated text (may hold several tokens' worth, or none split mid-UTF-8).

    `logprobs` (only when the request asked) has one entry per token consumed since the
    previous event, so their bytes joined are this event's text plus whatever is held back.
    """

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class FinishEvent:
    """The last event of every generation, also emitted on abort (for metrics)."""

    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_ns: int
    eval_ns: int


GenerationEvent = TokenEvent | FinishEvent
Emit = Callable[[GenerationEvent], None]


@dataclass(frozen=True)
class EmbeddingResult:
    """One pooled vector per input, *not* normalised (each API decides), plus the tokens read."""

    vectors: list[list[float]]
    prompt_tokens: int


@dataclass(frozen=True)
class Capabilities:
    """What a backend supports; the server turns a missing one into a 400, never a crash."""

    embeddings: bool
    grammar: bool  # JSON-schema / JSON structured output (`response_format`, Ollama `format`)
    logit_bias: bool
    gbnf: bool = False  # any llama.cpp GBNF grammar (`GenerationRequest.grammar`: forced tool calls)


@dataclass(frozen=True)
class ProviderReport:
    """Which execution provider the model runs on, which one was asked for, and why not that one."""

    provider: str
    requested: str
    errors: tuple[str, ...] = ()  # "<provider>: <error>" for every provider that failed to load
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def fallback(self) -> bool:
        return self.provider != self.requested

    def summary(self) -> str:
        """One line for logs, the termination message and the operator's status."""
        if not self.fallback:
            return f"execution provider {self.provider}"
        return f"execution provider {self.requested} failed, running on {self.provider}: " + "; ".join(
            self.errors
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "requested": self.requested,
            "fallback": self.fallback,
            "errors": list(self.errors),
            "summary": self.summary(),
        }


@dataclass(frozen=True)
class ModelInfo:
    """Facts about the loaded model shown by /api/show, /v1/models and the info metric."""

    name: str
    format: Literal["gguf", "onnx"]
    path: str
    quantization: str
    family: str
    context_length: int
    parameters: int | None
    size_bytes: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    provider: ProviderReport | None = None  # ONNX: the execution provider in use
    builtin_template: str | None = None
    """llama.cpp's built-in chat template used when the file has none (e.g. `gemma`)."""


class Backend(ABC):
    """A loaded model. All methods are blocking and called from the engine's decode thread only."""

    capabilities: Capabilities

    @abstractmethod
    def load(self) -> ModelInfo:
        """Load weights (slow); called once, on the decode thread, before anything else."""

    @abstractmethod
    def generate(self, request: GenerationRequest, emit: Emit) -> None:
        """Run one generation to the end, calling `emit` per text piece and once with a FinishEvent.

        Must check `request.cancelled` after every token and finish with reason `abort` if set.
        """

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens `text` encodes to (as a prompt)."""

    def embed(self, texts: Sequence[str], *, truncate: bool = True) -> EmbeddingResult:
        """One pooled vector per text (not normalised); `truncate`: cut overlong inputs."""
        from slm_runtime.errors import UnsupportedError

        raise UnsupportedError(f"{type(self).__name__} does not support embeddings")

    @abstractmethod
    def close(self) -> None:
        """Free native memory."""
