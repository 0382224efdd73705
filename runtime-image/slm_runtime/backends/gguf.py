"""GGUF models through llama.cpp (llama-cpp-python's low-level bindings).

We drive `llama_decode` ourselves instead of using `llama_cpp.Llama` because we need:
- `use_extra_bufts = False` in the model params (the AMX repack path segfaults on Q4_0/Q8_0,
  FACTS) which `Llama` does not expose;
- a per-token cancellation check and exact token counts/timings;
- an explicit KV-cache/sequence model a continuous-batching scheduler can extend: today one
  sequence (seq_id 0) with prefix reuse between requests; later many seq_ids per batch.

Every method runs on the engine's decode thread only (see `slm_runtime.engine`).
"""

from __future__ import annotations

import ctypes
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_runtime.backends.base import (
    Backend,
    Capabilities,
    EmbeddingResult,
    Emit,
    FinishEvent,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
    TokenEvent,
)
from slm_runtime.backends.grammar import json_schema_gbnf
from slm_runtime.backends.sampling import StopMatcher, Utf8Stream
from slm_runtime.errors import BadRequestError, EngineError

log = logging.getLogger(__name__)

_MAX_EMBED_BATCH = 2048
_DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed per sampler


class GgufBackend(Backend):
    """One llama.cpp model + context; serves one sequence at a time (seq_id 0)."""

    capabilities = Capabilities(embeddings=True, grammar=True, logit_bias=True)

    def __init__(
        self,
        path: str | Path,
        *,
        name: str,
        context_length: int = 4096,
        threads: int = 1,
        gpu_layers: int = 0,
        batch_size: int = 512,
        quantization: str | None = None,
    ) -> None:
        self._path = str(path)
        self._name = name
        self._context_length = context_length
        self._threads = threads
        self._gpu_layers = gpu_layers
        self._batch_size = batch_size
        self._quantization = quantization
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._embed_ctx: Any = None
        self._embed_batch: Any = None
        self._cached: list[int] = []  # tokens whose K/V sit in seq 0, for prefix reuse

    # -- lifecycle ---------------------------------------------------------------------------

    def load(self) -> ModelInfo:
        import llama_cpp
        from llama_cpp import _internals

        if not Path(self._path).is_file():
            raise EngineError(f"GGUF model not found: {self._path}")
        logging.getLogger("llama-cpp-python").setLevel(
            logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
        )
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if self._gpu_layers == -1 else self._gpu_layers
        mparams.use_extra_bufts = False  # crash guard: AMX/repack matmul segfaults (FACTS)
        self._model = _internals.LlamaModel(path_model=self._path, params=mparams, verbose=False)

        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = self._context_length
        cparams.n_batch = self._batch_size
        cparams.n_ubatch = min(self._batch_size, 512)
        cparams.n_threads = self._threads
        cparams.n_threads_batch = self._threads
        cparams.n_seq_max = 1
        cparams.no_perf = True
        self._ctx = _internals.LlamaContext(model=self._model, params=cparams, verbose=False)
        self._batch = _internals.LlamaBatch(n_tokens=self._batch_size, embd=0, n_seq_max=1, verbose=False)

        meta = self._model.metadata()
        desc = self._model.desc()
        vocab = self._model.vocab
        return ModelInfo(
            name=self._name,
            format="gguf",
            path=self._path,
            quantization=self._quantization or desc.rsplit(" ", 1)[-1],
            family=meta.get("general.architecture", "unknown"),
            context_length=self._ctx.n_ctx(),
            parameters=int(self._model.n_params()),
            size_bytes=int(self._model.size()),
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self._model.token_get_text(llama_cpp.llama_vocab_bos(vocab)),
            eos_token=self._model.token_get_text(llama_cpp.llama_vocab_eos(vocab)),
        )

    def close(self) -> None:
        for obj in (self._embed_batch, self._embed_ctx, self._batch, self._ctx, self._model):
            if obj is not None:
                obj.close()
        self._model = self._ctx = self._batch = self._embed_ctx = self._embed_batch = None

    # -- tokens ------------------------------------------------------------------------------

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        tokens: list[int] = self._model.tokenize(text.encode("utf-8"), add_bos, True)
        return tokens

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text, add_bos=self._model.add_bos_token()))

    def token_piece(self, token: int) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character; see `Utf8Stream`)."""
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buf, len(buf), 0, False)
        if n < 0:  # longer than the buffer: retry with the size llama.cpp asked for
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self._model.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n]

    # -- generation --------------------------------------------------------------------------

    def generate(self, request: GenerationRequest, emit: Emit) -> None:
        import llama_cpp

        started = time.perf_counter_ns()
        params = request.sampling
        tokens = self._tokenize(request.prompt, add_bos=self._model.add_bos_token())
        if not tokens:
            tokens = [llama_cpp.llama_vocab_bos(self._model.vocab)]
        n_ctx = self._ctx.n_ctx()
        if len(tokens) >= n_ctx:
            raise BadRequestError(
                f"prompt is {len(tokens)} tokens but the context holds {n_ctx}", param="prompt"
            )
        budget = min(params.max_tokens, n_ctx - len(tokens))
        sampler = self.make_sampler(params, request.grammar)
        try:
            if not self._prefill(tokens, request):
                emit(FinishEvent("abort", len(tokens), 0, time.perf_counter_ns() - started, 0))
                return
            prompt_done = time.perf_counter_ns()
            reason, generated = self._decode_loop(request, sampler, budget, emit)
            emit(
                FinishEvent(
                    reason=reason,
                    prompt_tokens=len(tokens),
                    completion_tokens=generated,
                    prompt_eval_ns=prompt_done - started,
                    eval_ns=time.perf_counter_ns() - prompt_done,
                )
            )
        finally:
            sampler.close()

    def _prefill(self, tokens: list[int], request: GenerationRequest) -> bool:
        """Bring seq 0's KV cache to `tokens`, reusing the longest common prefix already there."""
        keep = 0
        for a, b in zip(self._cached, tokens, strict=False):
            if a != b:
                break
            keep += 1
        keep = min(keep, len(tokens) - 1)  # always evaluate >= 1 token to get fresh logits
        self._ctx.kv_cache_seq_rm(0, keep, -1)
        del self._cached[keep:]
        for start in range(keep, len(tokens), self._batch_size):
            if request.cancelled.is_set():
                return False
            chunk = tokens[start : start + self._batch_size]
            self._decode(chunk)
        return True

    def _decode(self, chunk: Sequence[int]) -> None:
        self._batch.set_batch(chunk, n_past=len(self._cached), logits_all=False)
        try:
            self._ctx.decode(self._batch)
        except RuntimeError as exc:
            self._ctx.kv_cache_seq_rm(0, -1, -1)
            self._cached.clear()
            raise EngineError(f"llama_decode failed: {exc}") from exc
        self._cached.extend(chunk)

    def _decode_loop(
        self, request: GenerationRequest, sampler: Any, budget: int, emit: Emit
    ) -> tuple[FinishReason, int]:
        import llama_cpp

        utf8 = Utf8Stream()
        stops = StopMatcher(request.sampling.stop)
        generated = 0
        reason: FinishReason = "length"
        while generated < budget:
            if request.cancelled.is_set():
                return "abort", generated
            token = sampler.sample(self._ctx, -1)
            if llama_cpp.llama_vocab_is_eog(self._model.vocab, token):
                reason = "stop"
                break
            generated += 1
            text, hit = stops.push(utf8.push(self.token_piece(token)))
            if text:
                emit(TokenEvent(text))
            if hit:
                return "stop", generated
            if generated < budget:  # the last token's K/V is never needed
                self._decode([token])
        tail, hit = stops.push(utf8.flush())
        tail += "" if hit else stops.flush()
        if tail:
            emit(TokenEvent(tail))
        return reason, generated

    def make_sampler(self, params: SamplingParams, gbnf: str | None = None) -> Any:
        """A llama.cpp sampler chain for one sequence (a batching engine keeps one per slot)."""
        from llama_cpp import _internals as internals
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        _internals: Any = internals
        n_vocab = self._model.n_vocab()
        sampler = _internals.LlamaSampler()
        if params.logit_bias:
            bad = [t for t in params.logit_bias if not 0 <= t < n_vocab]
            if bad:
                sampler.close()
                raise BadRequestError(f"logit_bias has unknown token ids {bad[:5]}", param="logit_bias")
            sampler.add_logit_bias(n_vocab, dict(params.logit_bias))
        if params.repeat_penalty != 1.0:
            sampler.add_penalties(n_vocab, 64, params.repeat_penalty, 0.0, 0.0)
        fmt = params.response_format
        if fmt.kind != "text" or gbnf:
            try:
                if gbnf:
                    grammar = LlamaGrammar.from_string(gbnf, verbose=False)
                elif fmt.kind == "json_schema" and fmt.schema:
                    grammar = LlamaGrammar.from_string(json_schema_gbnf(fmt.schema), verbose=False)
                else:
                    grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            except Exception as exc:
                sampler.close()
                raise BadRequestError(f"cannot build a grammar from the schema: {exc}") from exc
            sampler.add_grammar(self._model, grammar)
        seed = _DEFAULT_SEED if params.seed is None else params.seed & 0xFFFFFFFF
        if params.temperature <= 0:
            sampler.add_greedy()
        else:
            if params.top_k > 0:
                sampler.add_top_k(params.top_k)
            if params.top_p < 1.0:
                sampler.add_top_p(params.top_p, 1)
            sampler.add_temp(params.temperature)
            sampler.add_dist(seed)
        return sampler

    # -- embeddings --------------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> EmbeddingResult:
        """Pooled embeddings from a second context on the same weights (no extra model memory)."""
        import llama_cpp
        from llama_cpp import _internals

        n_batch = min(self._context_length, _MAX_EMBED_BATCH)
        if self._embed_ctx is None:
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = n_batch
            cparams.n_batch = n_batch
            cparams.n_ubatch = n_batch
            cparams.n_threads = self._threads
            cparams.n_threads_batch = self._threads
            cparams.embeddings = True
            cparams.no_perf = True
            self._embed_ctx = _internals.LlamaContext(model=self._model, params=cparams, verbose=False)
            self._embed_batch = _internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=False)
        n_embd = self._model.n_embd()
        vectors: list[list[float]] = []
        total = 0
        for text in texts:
            tokens = self._tokenize(text, add_bos=self._model.add_bos_token()) or [
                llama_cpp.llama_vocab_bos(self._model.vocab)
            ]
            if len(tokens) > n_batch:
                raise BadRequestError(f"input is {len(tokens)} tokens; at most {n_batch} can be embedded")
            total += len(tokens)
            self._embed_ctx.kv_cache_clear()
            self._embed_batch.set_batch(tokens, n_past=0, logits_all=True)
            try:
                self._embed_ctx.decode(self._embed_batch)
            except RuntimeError as exc:
                raise EngineError(f"embedding decode failed: {exc}") from exc
            ptr = llama_cpp.llama_get_embeddings_seq(self._embed_ctx.ctx, 0)
            if not ptr:
                raise EngineError("the model produced no pooled embedding (pooling_type none?)")
            vec = [float(ptr[i]) for i in range(n_embd)]
            norm = math.sqrt(sum(v * v for v in vec)) or 1.0
            vectors.append([v / norm for v in vec])
        return EmbeddingResult(vectors=vectors, prompt_tokens=total)
