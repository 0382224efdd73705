"""ONNX models through onnxruntime-genai (a model folder with `genai_config.json`).

Supports completion and chat with streaming, and structured output (`response_format`, Ollama
`format`) through onnxruntime-genai's guidance (llguidance: a JSON schema constrains every token);
no embeddings or logit bias (the server answers those with 400 via `capabilities`). Text is
decoded with the tokenizer's stream decoder because `Tokenizer.decode` cuts text at invalid
UTF-8 (FACTS). Several requests can run as one batch (`generate_batch`, used by
`backends.onnx_batching`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slm_runtime.backends.base import (
    Backend,
    Capabilities,
    Emit,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    ProviderReport,
    SamplingParams,
    TokenEvent,
)
from slm_runtime.backends.onnx_providers import open_model
from slm_runtime.backends.sampling import StopMatcher
from slm_runtime.config import ExecutionProvider
from slm_runtime.errors import BadRequestError, EngineError, UnsupportedError

log = logging.getLogger(__name__)

FEATURES_FILE = "slm-model.json"
"""Written by our ONNX writer: `{"left_padded_batches": true}` when padded batches are exact.
Other folders (e.g. published ONNX models) are served one request per generator."""


class OnnxBackend(Backend):
    """One onnxruntime-genai model, opened on the first execution provider that loads it."""

    capabilities = Capabilities(embeddings=False, grammar=True, logit_bias=False)

    def __init__(
        self,
        path: str | Path,
        *,
        name: str,
        context_length: int = 4096,
        quantization: str | None = None,
        providers: Sequence[ExecutionProvider] = (),
    ):
        self._path = Path(path)
        self._providers = tuple(providers)
        self.provider: ProviderReport | None = None
        self._name = name
        self._context_length = context_length
        self._quantization = quantization
        self._model: Any = None
        self._tokenizer: Any = None
        self._eos: set[int] = set()
        self._pad_id = 0
        self.batchable = False  # set by load(): only our graphs compute padded rows exactly

    def load(self) -> ModelInfo:
        import onnxruntime_genai as og

        config_path = self._path / "genai_config.json"
        if not config_path.is_file():
            raise EngineError(f"not an onnxruntime-genai model folder (no genai_config.json): {self._path}")
        genai = json.loads(config_path.read_text(encoding="utf-8"))
        check_genai_config(self._path, genai)
        self._model, self.provider = open_model(self._path, self._providers, og=og)
        self._tokenizer = og.Tokenizer(self._model)
        eos = genai["model"].get("eos_token_id", [])
        self._eos = set(eos if isinstance(eos, list) else [eos])
        self._pad_id = int(genai["model"].get("pad_token_id", 0))
        features = self._path / FEATURES_FILE
        self.batchable = features.is_file() and bool(
            json.loads(features.read_text(encoding="utf-8")).get("left_padded_batches")
        )
        model_ctx = int(genai["model"].get("context_length", self._context_length))
        self._context_length = min(self._context_length, model_ctx)
        tok_config: dict[str, Any] = {}
        if (self._path / "tokenizer_config.json").is_file():
            tok_config = json.loads((self._path / "tokenizer_config.json").read_text(encoding="utf-8"))
        size = sum(f.stat().st_size for f in self._path.iterdir() if f.is_file())
        template = tok_config.get("chat_template")
        return ModelInfo(
            name=self._name,
            format="onnx",
            path=str(self._path),
            quantization=self._quantization or "unknown",
            family=str(genai["model"].get("type", "unknown")),
            context_length=self._context_length,
            parameters=None,
            size_bytes=size,
            chat_template=template if isinstance(template, str) else None,
            bos_token=_token_text(tok_config.get("bos_token")),
            eos_token=_token_text(tok_config.get("eos_token")),
            provider=self.provider,
        )

    def close(self) -> None:
        self._tokenizer = None
        self._model = None

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def generate(self, request: GenerationRequest, emit: Emit) -> None:
        self.generate_batch([(request, emit)])

    def prompt_tokens(self, request: GenerationRequest) -> list[int]:
        """The prompt's tokens; raises the request's own 4xx if it cannot run (checked per request
        before batching, so one bad request never fails the others)."""
        if request.sampling.logit_bias:
            raise UnsupportedError("the ONNX backend does not support logit_bias", param="logit_bias")
        tokens = [int(t) for t in self._tokenizer.encode(request.prompt)]
        if len(tokens) >= self._context_length:
            raise BadRequestError(
                f"prompt is {len(tokens)} tokens but the context holds {self._context_length}", param="prompt"
            )
        return tokens

    def generate_batch(self, batch: Sequence[tuple[GenerationRequest, Emit]]) -> None:
        """Run several requests as one left-padded batch in one generator; each gets its own events.

        They must share `batch_key` (one generator has one set of search options and one grammar).
        Raises before anything is emitted if a request is invalid (see `prompt_tokens`).
        """
        import numpy as np
        import onnxruntime_genai as og

        started = time.perf_counter_ns()
        params = batch[0][0].sampling
        if any(batch_key(r.sampling) != batch_key(params) for r, _ in batch):
            raise EngineError("generate_batch needs requests with the same search options")
        prompts = [self.prompt_tokens(r) for r, _ in batch]
        width = max(len(t) for t in prompts)
        budgets = [min(r.sampling.max_tokens, self._context_length - width) for r, _ in batch]
        options: dict[str, Any] = {
            "max_length": width + max(budgets),
            "batch_size": len(batch),
            "do_sample": params.temperature > 0,
            "temperature": max(params.temperature, 1e-5),
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k > 0 else 50,
            "repetition_penalty": params.repeat_penalty,
        }
        if params.seed is not None:
            options["random_seed"] = params.seed & 0x7FFFFFFF
        gen_params = og.GeneratorParams(self._model)
        gen_params.set_search_options(**options)
        fmt = params.response_format
        try:
            if fmt.kind != "text":
                schema = fmt.schema if fmt.kind == "json_schema" and fmt.schema else {"type": "object"}
                gen_params.set_guidance("json_schema", json.dumps(schema))
            generator = og.Generator(self._model, gen_params)
        except RuntimeError as exc:
            if fmt.kind == "text":
                raise EngineError(f"onnxruntime-genai: {exc}") from exc
            raise BadRequestError(f"cannot use this JSON schema: {exc}", param="response_format") from exc
        padded = np.full((len(batch), width), self._pad_id, dtype=np.int32)
        for row, tokens in enumerate(prompts):
            padded[row, width - len(tokens) :] = tokens
        generator.append_tokens(padded)
        prompt_done = time.perf_counter_ns()
        seqs = [
            _Sequence(r, e, StopMatcher(r.sampling.stop), self._tokenizer.create_stream(), b)
            for (r, e), b in zip(batch, budgets, strict=True)
        ]
        while any(s.reason is None for s in seqs):
            for s in seqs:
                if s.reason is None and (s.request.cancelled.is_set() or s.generated >= s.budget):
                    s.finish("abort" if s.request.cancelled.is_set() else "length")
            if all(s.reason is not None for s in seqs):
                break
            if generator.is_done():
                for s in seqs:
                    if s.reason is None:
                        s.finish("length")
                break
            generator.generate_next_token()
            for s, token in zip(seqs, generator.get_next_tokens(), strict=True):
                if s.reason is None:
                    s.push(int(token), self._eos)
        ended = time.perf_counter_ns()
        for s, tokens in zip(seqs, prompts, strict=True):
            s.emit(
                FinishEvent(
                    reason=s.reason or "length",
                    prompt_tokens=len(tokens),
                    completion_tokens=s.generated,
                    prompt_eval_ns=prompt_done - started,
                    eval_ns=(s.ended_ns or ended) - prompt_done,
                )
            )


def batch_key(params: SamplingParams) -> tuple[object, ...]:
    """Requests with equal keys can share one generator (same search options and grammar)."""
    fmt = params.response_format
    grammar = (fmt.kind, json.dumps(fmt.schema, sort_keys=True) if fmt.schema else None)
    if params.temperature <= 0:
        return ("greedy", params.repeat_penalty, grammar)
    return (
        "sample",
        params.temperature,
        params.top_p,
        params.top_k,
        params.repeat_penalty,
        params.seed,
        grammar,
    )


@dataclass
class _Sequence:
    """One request's decoding state inside a batch (text stream, stop strings, counts)."""

    request: GenerationRequest
    emit: Emit
    stops: StopMatcher
    stream: Any
    budget: int
    generated: int = 0
    reason: FinishReason | None = None
    ended_ns: int | None = None

    def push(self, token: int, eos: set[int]) -> None:
        if token in eos:
            self.finish("stop")
            return
        self.generated += 1
        text, hit = self.stops.push(self.stream.decode(token))
        if text:
            self.emit(TokenEvent(text))
        if hit:
            self.finish("stop", flush=False)

    def finish(self, reason: FinishReason, *, flush: bool = True) -> None:
        """End this sequence; text held back for a possible stop string is sent unless one hit."""
        self.reason = reason
        self.ended_ns = time.perf_counter_ns()
        if flush and (tail := self.stops.flush()):
            self.emit(TokenEvent(tail))


def _token_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return ""


_FORBIDDEN_KEYS = frozenset({"custom_ops_library"})
"""genai_config.json keys that load native code into the runtime: refused outright."""


def check_genai_config(folder: Path, config: Any) -> None:
    """Refuse a model folder whose genai_config.json could reach outside it, before loading.

    A model folder comes from the network: `custom_ops_library` would make onnxruntime load a
    shared library of the folder's choosing, and a file name that is absolute, climbs with
    `..`, or is a symlink resolving outside the folder would read files that are not the
    model's. Every string in the config is checked (the schema grows; names are not a list we
    could keep complete); a plain value such as `"cpu"` passes, as it names nothing outside.
    """
    top = folder.resolve()
    stack: list[tuple[str, Any]] = [("", config)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{where}.{key}" if where else str(key)
                if key in _FORBIDDEN_KEYS:
                    raise EngineError(
                        f"genai_config.json sets {path}: loading native code from a model is refused"
                    )
                stack.append((path, value))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(node))
        elif isinstance(node, str) and node:
            candidate = Path(node)
            if candidate.is_absolute() or ".." in candidate.parts or node.startswith("~"):
                raise EngineError(f"genai_config.json {where} = {node!r} points outside the model folder")
            resolved = (folder / candidate).resolve()
            if (folder / candidate).exists() and resolved != top and top not in resolved.parents:
                raise EngineError(f"genai_config.json {where} = {node!r} resolves outside the model folder")
