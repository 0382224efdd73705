"""ONNX models through onnxruntime-genai (a model folder with `genai_config.json`).

Supports completion and chat with streaming, and structured output (`response_format`, Ollama
`format`) through onnxruntime-genai's guidance (llguidance: a JSON schema constrains every token);
no embeddings or logit bias (the server answers those with 400 via `capabilities`). Text is decoded with the tokenizer's stream
decoder because `Tokenizer.decode` cuts text at invalid UTF-8 (FACTS).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
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
    TokenEvent,
)
from slm_runtime.backends.onnx_providers import open_model
from slm_runtime.backends.sampling import StopMatcher
from slm_runtime.config import ExecutionProvider
from slm_runtime.errors import BadRequestError, EngineError, UnsupportedError

log = logging.getLogger(__name__)


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

    def load(self) -> ModelInfo:
        import onnxruntime_genai as og

        config_path = self._path / "genai_config.json"
        if not config_path.is_file():
            raise EngineError(f"not an onnxruntime-genai model folder (no genai_config.json): {self._path}")
        genai = json.loads(config_path.read_text(encoding="utf-8"))
        self._model, self.provider = open_model(self._path, self._providers, og=og)
        self._tokenizer = og.Tokenizer(self._model)
        eos = genai["model"].get("eos_token_id", [])
        self._eos = set(eos if isinstance(eos, list) else [eos])
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
        import onnxruntime_genai as og

        started = time.perf_counter_ns()
        params = request.sampling
        if params.logit_bias:
            raise UnsupportedError("the ONNX backend does not support logit_bias", param="logit_bias")
        tokens = list(self._tokenizer.encode(request.prompt))
        if len(tokens) >= self._context_length:
            raise BadRequestError(
                f"prompt is {len(tokens)} tokens but the context holds {self._context_length}", param="prompt"
            )
        budget = min(params.max_tokens, self._context_length - len(tokens))
        options: dict[str, Any] = {
            "max_length": len(tokens) + budget,
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
        stream = self._tokenizer.create_stream()
        stops = StopMatcher(params.stop)
        generated = 0
        reason: FinishReason = "length"
        generator.append_tokens(tokens)
        prompt_done = time.perf_counter_ns()
        while generated < budget:
            if request.cancelled.is_set():
                reason = "abort"
                break
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self._eos:
                reason = "stop"
                break
            generated += 1
            text, hit = stops.push(stream.decode(token))
            if text:
                emit(TokenEvent(text))
            if hit:
                reason = "stop"
                break
            if generator.is_done():
                break
        if reason != "stop" and (tail := stops.flush()):
            emit(TokenEvent(tail))
        emit(
            FinishEvent(
                reason=reason,
                prompt_tokens=len(tokens),
                completion_tokens=generated,
                prompt_eval_ns=prompt_done - started,
                eval_ns=time.perf_counter_ns() - prompt_done,
            )
        )


def _token_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return ""
