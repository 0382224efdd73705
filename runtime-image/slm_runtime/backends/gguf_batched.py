"""Continuous batching for GGUF models on llama.cpp's low-level API.

Why: decoding one token of a small model on a CPU is bound by reading the weights (~0.5 GB per
step for a 0.5B Q8_0 model), so serving one sequence at a time leaves the arithmetic units idle.
Feeding the next token of *every* running sequence, plus chunks of new prompts, through one
`llama_decode` reads the weights once for all of them: aggregate tokens/s grows almost linearly
with the number of sequences until the CPU becomes compute-bound.

Design:

* One llama context with `n_seq_max = parallel`; every slot is a llama.cpp sequence id with its own
  `context_length` of KV cache (`n_ctx = context_length * parallel`).
* One scheduler thread (`slm-batch-decode`) owns the context and is the only thread that ever calls
  into llama.cpp after loading (decoding from a second OS thread costs ~1.7x, FACTS). Each loop:
  run queued control jobs (embeddings, token counts), drop cancelled sequences, admit waiting
  requests into free slots, build ONE batch from the next token of every running sequence and
  prompt chunks of admitted ones (bounded by `batch_size`), decode once, sample every sequence
  that produced logits, and hand all resulting events to the event loop with one
  `call_soon_threadsafe`.
* Logits are requested only for the tokens that are sampled (each running sequence's token and the
  last token of a completed prompt), so llama.cpp computes the output head for a handful of rows.
* Each request gets its own sampler chain, built in llama-server's order (`common_sampler_init`:
  logit bias, penalties over the prompt and the output, top-k, typical-p, top-p, min-p,
  temperature, seeded dist; or mirostat), so a request samples as it would on llama-server and
  sequences never share RNG or penalty state.
* This engine serves every GGUF deployment, `parallel: 1` included: one sampler, one loader, one
  embedding path, so a request's answer does not depend on the slot count.
* Slot lifecycle: free → prefill (prompt chunks) → decode (one token per step) → finished or
  cancelled → free. A finished slot keeps its KV cells and the token list that produced them; the
  next request that shares a prefix with them (same system prompt, next turn of a chat) skips
  that part of the prefill (`llama_memory_seq_rm` trims the rest). A prefix held by another slot
  is copied with `llama_memory_seq_cp`. Cancelled and failed sequences drop their cells at once.
  A request whose prompt shares a long prefix with one still being prefilled (the `n` choices of
  one OpenAI request, a burst of chats with one system prompt) waits for that prefill to finish
  and then copies the cells instead of computing them again.
* Embeddings run in a second context on the same weights, many inputs per decode (one sequence
  each), mean-pooled when the model declares no pooling (chat models; what Ollama does).
* Prompts rendered from a chat template (`backends.base.Prompt`) tokenize message content with
  special-token parsing off, and a BOS the template wrote is not doubled by the tokenizer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from slm_runtime.backends.base import (
    Capabilities,
    EmbeddingResult,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    Prompt,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from slm_runtime.backends.grammar import json_schema_gbnf
from slm_runtime.backends.sampling import StopMatcher, Utf8Stream
from slm_runtime.engine import FinishObserver
from slm_runtime.errors import BadRequestError, EngineError, NotReadyError, SlmError

log = logging.getLogger(__name__)

T = TypeVar("T")

_I32P = ctypes.POINTER(ctypes.c_int32)
_MAX_EMBED_TOKENS = 2048
_MAX_EMBED_SEQS = 16
"""Inputs embedded per decode of the embedding context."""
_GATHER_S = 0.01
"""How long an idle scheduler collects arriving requests before its first step (see `_run`)."""
_MIN_SHARED_PREFIX = 16
"""Shorter common prefixes are re-computed: copying cells costs more than a few prompt tokens."""


@dataclass(frozen=True)
class BatchedSettings:
    """How the context is shaped; all from `RuntimeConfig.runtime`."""

    parallel: int = 4
    context_length: int = 4096
    batch_size: int = 512
    threads: int | None = None
    gpu_layers: int = 0
    """Layers offloaded to a GPU build of llama.cpp; -1 = all (ignored by CPU builds)."""
    kv_unified: bool = False
    """One KV buffer for all slots instead of one stream per slot. Off (default), a sequence's
    cells sit in its own stream in position order, exactly as when served alone, so greedy
    output does not depend on what else is running (with unified KV and flash attention the
    cell order changes the F16 accumulation order and near-ties can flip). The price: llama.cpp
    splits a batch into runs of consecutive sequence ids with equal token counts, so slots are
    handed out lowest id first to keep the running ones contiguous. On: every step is one pass
    over the weights; `_pick_slot` may then also share a prefix between slots without a copy."""
    flash_attn: bool | None = None
    """None: llama.cpp decides (on for CPU), like the serial backend, so outputs match."""


class _BatchBuffer:
    """A `llama_batch` whose arrays are numpy buffers we own, so filling it is a slice copy.

    `llama_batch_init` allocates one `seq_id` array per token; we point every token at one
    element of a flat int32 array instead, so all fields can be written with numpy.
    """

    def __init__(self, capacity: int) -> None:
        import llama_cpp

        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        base = self.seq_id.ctypes.data
        self._seq_ptrs = (_I32P * capacity)(*(ctypes.cast(base + 4 * i, _I32P) for i in range(capacity)))
        self.struct: Any = cast(Any, llama_cpp.llama_batch())
        self.struct.token = self.token.ctypes.data_as(_I32P)
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(_I32P)
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(_I32P)
        self.struct.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(_I32P))
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, tokens: npt.NDArray[np.int32], start_pos: int, seq: int, want_last: bool) -> int:
        """Append `tokens` of sequence `seq` at positions start_pos...; return the last one's index."""
        n, k = self.n, len(tokens)
        self.token[n : n + k] = tokens
        self.pos[n : n + k] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq_id[n : n + k] = seq
        self.logits[n : n + k] = 0
        if want_last:
            self.logits[n + k - 1] = 1
        self.n = n + k
        return n + k - 1

    def add_one(self, token: int, pos: int, seq: int) -> int:
        """Append one token whose logits are wanted (a running sequence's next step)."""
        n = self.n
        self.token[n] = token
        self.pos[n] = pos
        self.seq_id[n] = seq
        self.logits[n] = 1
        self.n = n + 1
        return n


@dataclass(eq=False)
class _Sequence:
    """One request's state while it is queued or holds a slot; touched by the scheduler only."""

    request: GenerationRequest
    prompt: list[int]
    deliver: Callable[[GenerationEvent | BaseException], None]
    loop: asyncio.AbstractEventLoop
    grammar: str | None = None
    slot: _Slot | None = None
    sampler: Any = None
    prefilled: int = 0
    """Prompt tokens already in the KV cache (reused or decoded)."""
    pending: int = -1
    """Sampled token not yet decoded (-1: none)."""
    generated: int = 0
    text: Utf8Stream = field(default_factory=Utf8Stream)
    stops: StopMatcher | None = None
    ctx_limit: int = 0
    """Tokens (prompt + output) this sequence may hold: the slot, or a smaller `num_ctx`."""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Log probabilities of tokens whose text has not been sent yet (when requested)."""
    t_queued: int = 0
    t_admitted: int = 0
    t_first: int = 0


@dataclass(eq=False)
class _Slot:
    """A llama.cpp sequence id and the tokens its KV cells hold, in position order."""

    seq_id: int
    tokens: list[int] = field(default_factory=list)
    seq: _Sequence | None = None
    last_used: int = 0


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class BatchedGGUFEngine:
    """The `Engine` protocol for GGUF models, with continuous batching; see the module docstring."""

    def __init__(
        self,
        model_path: str,
        *,
        settings: BatchedSettings,
        info_loader: Callable[[Any, Any], ModelInfo] | None = None,
        name: str = "default",
        quantization: str | None = None,
    ) -> None:
        self._path = model_path
        self._settings = settings
        self._info_loader = info_loader
        self._name = name
        self._quantization = quantization
        self._info: ModelInfo | None = None
        self._load_seconds: float | None = None
        self._observers: list[FinishObserver] = []
        self._inbox: queue.SimpleQueue[_Sequence | Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="slm-batch-decode", daemon=True)
        self._waiting: deque[_Sequence] = deque()
        self._slots: list[_Slot] = []
        self._closed = False
        # native handles, set by _load on the scheduler thread
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._mem: Any = None
        self._n_vocab = 0
        self._batch: _BatchBuffer | None = None
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)
        self._add_bos = True
        self._suppress: list[int] = []
        self._threads = settings.threads or max(1, len(os.sched_getaffinity(0)))
        self.kv_bytes_per_slot = 0
        self.reused_prompt_tokens = 0
        """Prompt tokens served from cached KV cells instead of being decoded (a counter)."""
        self.admitted_prompt_tokens = 0
        """Prompt tokens of every sequence given a slot (a counter): the prefix cache's queries."""
        self._embed_ctx: Any = None
        self._embed_batch: _BatchBuffer | None = None
        self.capabilities = Capabilities(embeddings=True, grammar=True, logit_bias=True, gbnf=True)
        # Tokenizing and JSON schema -> GBNF off the event loop (a long prompt or schema must not
        # stall other requests or /healthz). Not the scheduler thread either: llama_tokenize reads
        # the vocabulary only (no ggml graph, no OpenMP team), which is why it always ran beside
        # decoding, on the event loop's thread until now; llama-server tokenizes on its HTTP threads.
        self._prep = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-tokenize")

    # ---- Engine protocol -------------------------------------------------------------------

    @property
    def info(self) -> ModelInfo | None:
        return self._info

    @property
    def load_seconds(self) -> float | None:
        return self._load_seconds

    @property
    def decode_thread(self) -> threading.Thread:
        """Exposed for tests that assert every llama.cpp call ran on it."""
        return self._thread

    @property
    def parallel(self) -> int:
        return self._settings.parallel

    def add_observer(self, observer: FinishObserver) -> None:
        self._observers.append(observer)

    def slot_usage(self) -> tuple[int, int]:
        """(sequences holding a slot, sequences waiting for one); a racy snapshot for gauges."""
        return sum(s.seq is not None for s in self._slots), len(self._waiting)

    def kv_cache_usage(self) -> float:
        """KV cells that running sequences hold, as a fraction (0..1) of all cells
        (`context_length` x `parallel`): GIE's KVCacheUtilization, vLLM's `kv_cache_usage_perc`.

        A racy snapshot for a gauge, read on the scraping thread from the slots' token lists that
        the scheduler keeps anyway (no llama.cpp call: see FACTS.md's one-thread rule). Cells an idle
        slot keeps for prefix reuse count as free, as vLLM counts its cached blocks: the next
        admission may take them."""
        total = self._settings.context_length * self._settings.parallel
        if total <= 0:
            return 0.0
        used = sum(len(s.tokens) for s in list(self._slots) if s.seq is not None)
        return min(1.0, used / total)

    def prefix_cache_tokens(self) -> tuple[int, int]:
        """(prompt tokens admitted, of which served from cached KV cells): both only grow, and
        are written by the scheduler thread alone; read racily for `vllm:prefix_cache_*`."""
        return self.admitted_prompt_tokens, self.reused_prompt_tokens

    def kv_cache_blocks(self) -> tuple[int, int]:
        """(block size in tokens, number of blocks) for `vllm:cache_config_info`.

        llama.cpp allocates KV per token; the unit in which a shared prefix is reused here is
        `_MIN_SHARED_PREFIX` tokens (shorter ones are recomputed), so that is the block we report
        to prefix-aware pickers, and the cells divided by it the block count."""
        total = self._settings.context_length * self._settings.parallel
        return _MIN_SHARED_PREFIX, total // _MIN_SHARED_PREFIX

    async def start(self) -> None:
        """Start the scheduler thread and load the model on it; raises if loading fails."""
        if not self._thread.is_alive():
            self._thread.start()
        started = time.perf_counter()
        self._info = await self._call(self._load)
        self._load_seconds = time.perf_counter() - started
        log.info(
            "model %s loaded in %.2fs: %d slots x %d tokens, KV cache %d bytes per slot",
            self._info.name,
            self._load_seconds,
            self._settings.parallel,
            self._settings.context_length,
            self.kv_bytes_per_slot,
        )

    async def close(self) -> None:
        """Abort running sequences, free native memory and stop the scheduler thread."""
        if self._thread.is_alive() and not self._closed:
            # no tokenizing may run while the model is freed
            prep = self._prep
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: prep.shutdown(wait=True, cancel_futures=True)
            )
            await self._call(self._free)
            self._inbox.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)

    async def count_tokens(self, text: str) -> int:
        self._require_loaded()
        return len(await asyncio.get_running_loop().run_in_executor(self._prep, self.tokenize_prompt, text))

    async def embed(self, texts: Sequence[str], *, truncate: bool = True) -> EmbeddingResult:
        """Pooled embeddings, computed on the scheduler thread between two decode steps."""
        self._require_loaded()
        return await self._call(lambda: self._embed(texts, truncate=truncate))

    def tokenize_prompt(self, prompt: str) -> list[int]:
        """The tokens a generation prompt becomes (reads the vocabulary only; any thread).

        A `Prompt` from a chat template: its literal spans (message content) are tokenized with
        special-token parsing off, the template's own text with it on. A BOS the template wrote
        itself is not doubled by the tokenizer's.
        """
        if isinstance(prompt, Prompt) and prompt.literal:
            tokens: list[int] = []
            for i, (text, literal) in enumerate(prompt.segments()):
                tokens += self._tokenize(
                    text, add_special=self._add_bos and i == 0, parse_special=not literal
                )
        else:
            tokens = self._tokenize(prompt)
        return drop_doubled_bos(tokens, self._bos_or_zero()) if self._add_bos else tokens

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Queue `request` for a slot; yield its events. Closing the iterator early cancels it."""
        self._require_loaded()
        # Tokenising reads the vocabulary only (no OpenMP, no context), so it runs on the
        # preparation thread (see __init__) and a too-long prompt fails before the response starts.
        loop = asyncio.get_running_loop()
        prompt = await loop.run_in_executor(self._prep, self.tokenize_prompt, request.prompt)
        prompt = prompt or [self._bos_or_zero()]
        limit = self._settings.context_length
        wanted = request.sampling.context_limit
        if wanted is not None and wanted > limit:
            raise BadRequestError(
                f"num_ctx {wanted} is larger than this deployment's context of {limit} tokens per "
                "request (runtime.contextLength)",
                param="num_ctx",
            )
        limit = min(limit, wanted or limit)
        if len(prompt) >= limit:
            raise BadRequestError(
                f"prompt is {len(prompt)} tokens; this model serves at most {limit - 1} per request",
                param="num_ctx" if wanted else "messages",
            )
        bad = [t for t in request.sampling.logit_bias if not 0 <= t < self._n_vocab]
        if bad:
            raise BadRequestError(f"logit_bias has unknown token ids {bad[:5]}", param="logit_bias")
        # a bad schema fails here, not mid-batch
        grammar = request.grammar or await loop.run_in_executor(
            self._prep, _grammar_for, request.sampling.response_format
        )
        events: asyncio.Queue[GenerationEvent | BaseException] = asyncio.Queue()
        seq = _Sequence(
            request=request,
            prompt=prompt,
            grammar=grammar,
            deliver=events.put_nowait,
            loop=asyncio.get_running_loop(),
            stops=StopMatcher(request.sampling.stop) if request.sampling.stop else None,
            ctx_limit=limit,
            t_queued=time.perf_counter_ns(),
        )
        self._inbox.put(seq)
        finished = False
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise _as_slm_error(item)
                yield item
                if isinstance(item, FinishEvent):
                    finished = True
                    return
        finally:
            if not finished:  # consumer gone (disconnect, error): free the slot at the next step
                request.cancel()
                self._inbox.put(_WAKE)

    # ---- scheduler thread --------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            busy = bool(self._waiting) or any(s.seq is not None for s in self._slots)
            try:
                item = self._inbox.get(block=not busy)
            except queue.Empty:
                item = _WAKE
            # Woken from idle by a request: give the rest of a burst a moment to arrive, so it
            # shares the first (long) prefill step instead of waiting a whole step behind it.
            gather_until = time.monotonic() + _GATHER_S if not busy and isinstance(item, _Sequence) else 0.0
            while True:
                if item is None:
                    return
                if isinstance(item, _Sequence):
                    self._waiting.append(item)
                elif item is not _WAKE:
                    item()  # a control job; it reports its own result
                try:
                    wait = gather_until - time.monotonic()
                    item = self._inbox.get(timeout=wait) if wait > 0 else self._inbox.get_nowait()
                except queue.Empty:
                    break
            if self._ctx is None:
                self._fail_all(NotReadyError("model is not loaded"))
                continue
            try:
                self._reap_cancelled()
                self._admit()
                if any(s.seq is not None for s in self._slots):
                    self._step()
            except Exception as exc:  # never let one bad step kill the thread
                log.exception("batched decode step failed")
                self._fail_all(exc)

    def _call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run `fn` on the scheduler thread between two steps; await the result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(_as_slm_error(error))
            else:
                future.set_result(result)

        def job() -> None:
            try:
                result = fn()
            except BaseException as exc:
                _post(loop, settle, None, exc)
            else:
                _post(loop, settle, result, None)

        self._inbox.put(job)
        return future

    def _require_loaded(self) -> None:
        if self._info is None or self._closed:
            raise NotReadyError("model is still loading" if not self._closed else "engine is closed")

    # ---- loading -----------------------------------------------------------------------------

    def _load(self) -> ModelInfo:
        import llama_cpp

        s = self._settings
        if not os.path.exists(self._path):
            raise EngineError(f"model file not found: {self._path}")
        # llama-cpp-python prints every llama.cpp log line unless its logger is raised.
        logging.getLogger("llama-cpp-python").setLevel(
            logging.DEBUG if log.isEnabledFor(logging.DEBUG) else logging.ERROR
        )
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        # AMX/repack crash guard (FACTS): no extra buffer types for weight repacking.
        mparams.use_extra_bufts = False
        mparams.n_gpu_layers = 0x7FFFFFFF if s.gpu_layers == -1 else s.gpu_layers
        model = llama_cpp.llama_model_load_from_file(self._path.encode(), mparams)
        if not model:
            raise EngineError(f"llama.cpp could not load {self._path}")
        self._model = model
        threads = self._threads
        # batchSize is the prompt budget of a step; the running sequences' tokens come on top, so
        # a burst of prompts that fits batchSize is answered after one step.
        n_batch = s.batch_size + s.parallel
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = s.context_length * s.parallel
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = s.parallel
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.kv_unified = s.kv_unified
        cparams.no_perf = True
        if s.flash_attn is not None:
            cparams.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if s.flash_attn
                else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self._ctx = ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self._eog = np.array(
            [llama_cpp.llama_vocab_is_eog(self._vocab, t) for t in range(self._n_vocab)], dtype=np.bool_
        )
        self._batch = _BatchBuffer(n_batch)
        self._slots = [_Slot(seq_id=i) for i in range(s.parallel)]
        self.kv_bytes_per_slot = kv_cache_bytes_per_slot(model, s.context_length)
        suppress_n = ctypes.c_int32(0)
        suppress = llama_cpp.llama_vocab_get_suppress_tokens(self._vocab, ctypes.byref(suppress_n))
        self._suppress = [int(suppress[i]) for i in range(suppress_n.value)] if suppress else []
        if self._info_loader is not None:
            return self._info_loader(model, self._vocab)
        info = _basic_info(model, self._path, self._name, self._quantization, s.context_length)
        if info.chat_template is None:
            from slm_runtime.backends.templates import builtin_template_for

            def single_token(text: str) -> bool:
                return len(self._tokenize(text, add_special=False, parse_special=True)) == 1

            info = replace(info, builtin_template=builtin_template_for(info.family, single_token))
        return info

    def _free(self) -> None:
        import llama_cpp

        self._closed = True
        self._fail_all(NotReadyError("the server is shutting down"), reason="abort")
        self._batch = self._embed_batch = None
        if self._embed_ctx is not None:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def _embed(self, texts: Sequence[str], *, truncate: bool) -> EmbeddingResult:
        """One pooled vector per text (not normalised), from a second context on the weights.

        The context is made on first use (most deployments never embed) and shares the model's
        weights, so it costs only its own small KV cache. Chat models declare no pooling type,
        and llama.cpp then returns no pooled vector: such models are mean-pooled, like Ollama
        does. Inputs are packed many to a decode, one sequence id each.
        """
        import llama_cpp

        n_batch = min(self._settings.context_length, _MAX_EMBED_TOKENS)
        if self._embed_ctx is None:
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = n_batch
            cparams.n_seq_max = _MAX_EMBED_SEQS
            cparams.kv_unified = True  # any one input may use the whole n_ctx
            cparams.n_threads = cparams.n_threads_batch = self._threads
            cparams.embeddings = True
            cparams.no_perf = True
            declared = _meta_int(self._model, "pooling_type")
            if declared in (None, llama_cpp.LLAMA_POOLING_TYPE_NONE):
                cparams.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if not ctx:
                raise EngineError("llama.cpp could not create an embedding context")
            self._embed_ctx = ctx
            self._embed_batch = _BatchBuffer(n_batch)
        inputs: list[list[int]] = []
        for i, text in enumerate(texts):
            tokens = self._tokenize(text) or [self._bos_or_zero()]
            if len(tokens) > n_batch:
                if not truncate:
                    raise BadRequestError(
                        f"input {i} is {len(tokens)} tokens; at most {n_batch} can be embedded "
                        "(or set truncate: true)",
                        param="input",
                    )
                tokens = tokens[:n_batch]
            inputs.append(tokens)
        n_embd = llama_cpp.llama_model_n_embd(self._model)
        vectors: list[list[float]] = []
        for group in pack_inputs([len(t) for t in inputs], n_batch, _MAX_EMBED_SEQS):
            vectors += self._embed_group([inputs[i] for i in group], n_embd)
        return EmbeddingResult(vectors=vectors, prompt_tokens=sum(len(t) for t in inputs))

    def _embed_group(self, inputs: list[list[int]], n_embd: int) -> list[list[float]]:
        import llama_cpp

        batch = self._embed_batch
        assert batch is not None
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._embed_ctx), True)
        batch.clear()
        for seq_id, tokens in enumerate(inputs):
            batch.add(np.asarray(tokens, dtype=np.int32), 0, seq_id, True)
        batch.logits[: batch.n] = 1
        batch.struct.n_tokens = batch.n
        if llama_cpp.llama_decode(self._embed_ctx, batch.struct) != 0:
            raise EngineError("embedding decode failed")
        out: list[list[float]] = []
        for seq_id in range(len(inputs)):
            ptr = llama_cpp.llama_get_embeddings_seq(self._embed_ctx, seq_id)
            if not ptr:
                raise EngineError("the model produced no pooled embedding")
            out.append(np.ctypeslib.as_array(ptr, shape=(n_embd,)).astype(np.float64).tolist())
        return out

    def _tokenize(
        self, text: str, *, add_special: bool | None = None, parse_special: bool = True
    ) -> list[int]:
        import llama_cpp

        add = self._add_bos if add_special is None else add_special
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, add, parse_special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, cap, add, parse_special)
        return list(buf[:n])

    def _bos_or_zero(self) -> int:
        import llama_cpp

        bos = int(llama_cpp.llama_vocab_bos(self._vocab))
        return bos if bos >= 0 else 0

    # ---- slots ---------------------------------------------------------------------------------

    def _reap_cancelled(self) -> None:
        posts: list[tuple[_Sequence, GenerationEvent]] = []
        if self._waiting and any(q.request.cancelled.is_set() for q in self._waiting):
            kept: deque[_Sequence] = deque()
            for q in self._waiting:
                if q.request.cancelled.is_set():
                    self._finish(q, "abort", posts)
                else:
                    kept.append(q)
            self._waiting = kept
        for slot in self._slots:
            if slot.seq is not None and slot.seq.request.cancelled.is_set():
                self._finish(slot.seq, "abort", posts)
        self._post_all(posts)

    def _admit(self) -> None:
        import llama_cpp

        deferred: deque[_Sequence] = deque()
        while self._waiting:
            free = [s for s in self._slots if s.seq is None]
            if not free:
                break
            seq = self._waiting.popleft()
            if self._worth_waiting_for_prefix(seq, free):
                deferred.append(seq)
                continue
            try:
                sampler = self._make_sampler(seq.request.sampling, seq.prompt, seq.grammar)
            except SlmError as exc:  # this request's problem only
                self._fail(seq, exc)
                continue
            slot, reuse = self._pick_slot(seq.prompt, free)
            # Never reuse the whole prompt: its last token must be decoded to get logits.
            reuse = min(reuse, len(seq.prompt) - 1)
            if reuse < len(slot.tokens):
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, reuse, -1)
                del slot.tokens[reuse:]
            seq.slot = slot
            seq.prefilled = reuse
            self.reused_prompt_tokens += reuse
            self.admitted_prompt_tokens += len(seq.prompt)
            seq.sampler = sampler
            seq.t_admitted = time.perf_counter_ns()
            slot.seq = seq
        if deferred:
            deferred.extend(self._waiting)
            self._waiting = deferred

    def _worth_waiting_for_prefix(self, seq: _Sequence, free: list[_Slot]) -> bool:
        """Whether a sequence still prefilling will soon hold a longer prefix of `seq`'s prompt
        than any cells we could reuse now: then `seq` waits a step or two and copies them."""
        have = max(common_prefix_len(s.tokens, seq.prompt) for s in self._slots)
        for slot in self._slots:
            other = slot.seq
            if other is None or other.prefilled >= len(other.prompt):
                continue
            shared = min(common_prefix_len(other.prompt, seq.prompt), len(seq.prompt) - 1)
            if shared - have >= _MIN_SHARED_PREFIX:
                return True
        return False

    def _pick_slot(self, prompt: list[int], free: list[_Slot]) -> tuple[_Slot, int]:
        """Choose the free slot to run `prompt` in and how many of its cached tokens to keep.

        Prefer the free slot whose cells share the longest prefix (the lowest id among equals);
        if another slot (busy or not) holds a longer shared prefix, copy it into that slot.
        """
        import llama_cpp

        best, best_len = free[0], -1
        for s in free:  # ties go to the lowest id: running slots stay contiguous (see kv_unified)
            n = common_prefix_len(s.tokens, prompt)
            if n > best_len:
                best, best_len = s, n
        donor, donor_len = None, best_len
        for s in self._slots:
            if s is best:
                continue
            n = common_prefix_len(s.tokens, prompt)
            if n > donor_len:
                donor, donor_len = s, n
        if donor is None or donor_len - best_len < _MIN_SHARED_PREFIX:
            return best, best_len
        target = best
        if self._settings.kv_unified:
            llama_cpp.llama_memory_seq_rm(self._mem, target.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._mem, donor.seq_id, target.seq_id, 0, donor_len)
        else:
            # Across KV streams only a whole-sequence copy is supported; trim after.
            llama_cpp.llama_memory_seq_rm(self._mem, target.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._mem, donor.seq_id, target.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(self._mem, target.seq_id, donor_len, -1)
        target.tokens = donor.tokens[:donor_len]
        log.debug("slot %d reuses %d prompt tokens from slot %d", target.seq_id, donor_len, donor.seq_id)
        return target, donor_len

    def _make_sampler(self, p: SamplingParams, prompt: list[int], grammar: str | None) -> Any:
        """A sampler chain in llama-server's order (`common_sampler_init`), with its defaults
        where a parameter is off; the prompt's tokens count for the penalties, as there."""
        import llama_cpp

        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        biases = [(int(t), float(b)) for t, b in p.logit_bias.items()]
        biases += [(t, float("-inf")) for t in self._suppress]
        if biases:
            arr: Any = (llama_cpp.llama_logit_bias * len(biases))()
            for i, (tok, bias) in enumerate(biases):
                arr[i].token = tok
                arr[i].bias = bias
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self._n_vocab, len(biases), arr))
        seed = llama_cpp.LLAMA_DEFAULT_SEED if p.seed is None else p.seed & 0xFFFFFFFF
        last_n = self._settings.context_length if p.repeat_last_n < 0 else p.repeat_last_n
        penalised = p.repeat_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0
        if p.mirostat == 0 and penalised and last_n > 0:
            pen = llama_cpp.llama_sampler_init_penalties(
                self._n_vocab, last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
            )
            for tok in prompt[-last_n:]:
                llama_cpp.llama_sampler_accept(pen, tok)
            add(chain, pen)
        if grammar is not None:
            g = llama_cpp.llama_sampler_init_grammar(self._vocab, grammar.encode(), b"root")
            if not g:
                llama_cpp.llama_sampler_free(chain)
                raise BadRequestError("response_format could not be compiled to a grammar")
            add(chain, g)
        if p.mirostat:
            add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
            if p.mirostat == 1:
                miro = llama_cpp.llama_sampler_init_mirostat(
                    self._n_vocab, seed, p.mirostat_tau, p.mirostat_eta, 100
                )
            else:
                miro = llama_cpp.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta)
            add(chain, miro)
            return chain
        if p.temperature <= 0:
            # llama-server keeps only the top logit at temperature 0: the same token as greedy.
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.typical_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_typical(p.typical_p, 0))
        if p.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 0))
        if p.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 0))
        add(chain, llama_cpp.llama_sampler_init_temp_ext(p.temperature, 0.0, 1.0))
        add(chain, llama_cpp.llama_sampler_init_dist(seed))
        return chain

    # ---- one step ------------------------------------------------------------------------------

    def _step(self) -> None:
        import llama_cpp

        batch = self._batch
        assert batch is not None
        batch.clear()
        outputs: list[tuple[_Sequence, int]] = []
        # Running sequences first: one token each, so a long prompt never stalls them.
        for slot in self._slots:
            seq = slot.seq
            if seq is not None and seq.pending >= 0:
                idx = batch.add_one(seq.pending, len(slot.tokens), slot.seq_id)
                slot.tokens.append(seq.pending)
                seq.pending = -1
                outputs.append((seq, idx))
        budget = min(self._settings.batch_size, batch.capacity - batch.n)
        # Then prompt chunks, oldest admission first.
        prefilling = sorted(
            (s.seq for s in self._slots if s.seq is not None and s.seq.prefilled < len(s.seq.prompt)),
            key=lambda q: q.t_admitted,
        )
        for seq in prefilling:
            if budget <= 0:
                break
            owner = seq.slot
            assert owner is not None
            start = seq.prefilled
            take = min(budget, len(seq.prompt) - start)
            chunk = seq.prompt[start : start + take]
            done = start + take == len(seq.prompt)
            idx = batch.add(np.asarray(chunk, dtype=np.int32), start, owner.seq_id, done)
            owner.tokens.extend(chunk)
            seq.prefilled += take
            budget -= take
            if done:
                outputs.append((seq, idx))
        if batch.n == 0:
            return
        batch.struct.n_tokens = batch.n
        rc = llama_cpp.llama_decode(self._ctx, batch.struct)
        if rc != 0:
            self._decode_failed(rc, [s.seq for s in self._slots if s.seq is not None])
            return
        now = time.perf_counter_ns()
        posts: list[tuple[_Sequence, GenerationEvent]] = []
        for seq, idx in outputs:
            token = llama_cpp.llama_sampler_sample(seq.sampler, self._ctx, idx)
            if seq.t_first == 0:
                seq.t_first = now
            k = seq.request.sampling.logprobs
            if k is not None and 0 <= token < self._n_vocab and not self._eog[token]:
                row = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(self._ctx, idx), shape=(self._n_vocab,)
                )
                seq.logprobs.append(token_logprob(row, token, k, self._piece))
            self._on_token(seq, token, posts)
        self._post_all(posts)

    def _on_token(self, seq: _Sequence, token: int, posts: list[tuple[_Sequence, GenerationEvent]]) -> None:

        if token < 0 or token >= self._n_vocab or self._eog[token]:
            self._finish(seq, "stop", posts)
            return
        seq.generated += 1
        text = seq.text.push(self._piece(token))
        if seq.stops is not None and text:
            text, hit = seq.stops.push(text)
            if text:
                posts.append((seq, self._text_event(seq, text)))
            if hit:
                self._finish(seq, "stop", posts, flush=False)
                return
        elif text:
            posts.append((seq, self._text_event(seq, text)))
        slot = seq.slot
        assert slot is not None
        out_of_room = len(slot.tokens) + 1 >= seq.ctx_limit
        if seq.generated >= seq.request.sampling.max_tokens or out_of_room:
            self._finish(seq, "length", posts)
        else:
            seq.pending = token

    def _piece(self, token: int) -> bytes:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, 256, 0, False)
        return self._piece_buf.raw[:n] if n > 0 else b""

    @staticmethod
    def _text_event(seq: _Sequence, text: str) -> TokenEvent:
        if not seq.logprobs:
            return TokenEvent(text)
        event = TokenEvent(text, tuple(seq.logprobs))
        seq.logprobs.clear()
        return event

    def _finish(
        self,
        seq: _Sequence,
        reason: FinishReason,
        posts: list[tuple[_Sequence, GenerationEvent]],
        *,
        flush: bool = True,
    ) -> None:
        """End `seq`: flush held text, free its slot (dropping cells unless reusable), report."""
        import llama_cpp

        if flush and reason != "abort":
            rest = seq.text.flush()
            if seq.stops is not None:
                rest, _ = seq.stops.push(rest)
                rest += seq.stops.flush()
            if rest or seq.logprobs:
                posts.append((seq, self._text_event(seq, rest)))
        slot = seq.slot
        if slot is not None:
            if reason == "abort" or seq.prefilled < len(seq.prompt):
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.tokens = []
            slot.seq = None
            slot.last_used = time.perf_counter_ns()
            seq.slot = None
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
        end = time.perf_counter_ns()
        first = seq.t_first or end
        event = FinishEvent(
            reason=reason,
            prompt_tokens=len(seq.prompt),
            completion_tokens=seq.generated,
            prompt_eval_ns=max(0, first - (seq.t_admitted or end)),
            eval_ns=max(0, end - first) if seq.t_first else 0,
        )
        for observer in self._observers:
            try:
                observer(seq.request, event)
            except Exception:
                log.exception("finish observer failed")
        posts.append((seq, event))

    def _decode_failed(self, rc: int, running: list[_Sequence]) -> None:
        log.error("llama_decode returned %d with %d sequences; failing them", rc, len(running))
        for seq in running:
            self._fail(seq, EngineError(f"llama_decode failed ({rc})"))

    def _fail(self, seq: _Sequence, error: BaseException) -> None:
        import llama_cpp

        slot = seq.slot
        if slot is not None:
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.tokens = []
            slot.seq = None
            seq.slot = None
        if seq.sampler is not None:
            llama_cpp.llama_sampler_free(seq.sampler)
            seq.sampler = None
        _post(seq.loop, seq.deliver, error)

    def _fail_all(self, error: BaseException, reason: FinishReason | None = None) -> None:
        posts: list[tuple[_Sequence, GenerationEvent]] = []
        for slot in self._slots:
            if slot.seq is not None:
                if reason is None:
                    self._fail(slot.seq, error)
                else:
                    self._finish(slot.seq, reason, posts)
        while self._waiting:
            q = self._waiting.popleft()
            if reason is None:
                self._fail(q, error)
            else:
                self._finish(q, reason, posts)
        self._post_all(posts)

    @staticmethod
    def _post_all(posts: list[tuple[_Sequence, GenerationEvent]]) -> None:
        """Hand a step's events to their event loops: one wake-up per loop, not per token."""
        if not posts:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Sequence, GenerationEvent]]] = {}
        for seq, event in posts:
            by_loop.setdefault(seq.loop, []).append((seq, event))
        for loop, items in by_loop.items():
            _post(loop, _deliver_many, items)


_WAKE: Callable[[], None] = lambda: None  # noqa: E731 - a sentinel that only wakes the loop


def _deliver_many(items: list[tuple[_Sequence, GenerationEvent]]) -> None:
    for seq, event in items:
        seq.deliver(event)


def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
        loop.call_soon_threadsafe(fn, *args)


def _as_slm_error(exc: BaseException) -> BaseException:
    if isinstance(exc, SlmError | KeyboardInterrupt | SystemExit):
        return exc
    log.error("engine failure: %s", exc, exc_info=exc)
    return EngineError(f"inference failed: {exc}")


def _grammar_for(fmt: ResponseFormat) -> str | None:
    """GBNF for a response_format, via llama-cpp-python's JSON-schema converter."""
    if fmt.kind == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF

    if fmt.kind == "json_object" or fmt.schema is None:
        return str(JSON_GBNF)
    try:
        return json_schema_gbnf(fmt.schema)
    except Exception as exc:
        raise BadRequestError(f"unsupported JSON schema: {exc}", param="response_format") from exc


def token_logprob(
    logits: npt.NDArray[np.float32], token: int, top: int, piece: Callable[[int], bytes]
) -> TokenLogprob:
    """`token`'s log probability under softmax(`logits`), and the `top` most likely tokens."""
    row = logits.astype(np.float64)
    peak = float(row.max())
    lse = peak + float(np.log(np.exp(row - peak).sum()))

    def entry(t: int) -> tuple[str, float, tuple[int, ...]]:
        raw = piece(t)
        return raw.decode("utf-8", "replace"), float(row[t]) - lse, tuple(raw)

    best: list[int] = []
    if top > 0:
        k = min(top, len(row))
        part = np.argpartition(-row, k - 1)[:k]
        best = [int(t) for t in part[np.argsort(-row[part], kind="stable")]]
    text, lp, raw = entry(token)
    return TokenLogprob(text, lp, raw, tuple(entry(t) for t in best))


def drop_doubled_bos(tokens: list[int], bos: int) -> list[int]:
    """The tokenizer adds a BOS; a template that wrote `bos_token` itself made a second one."""
    if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
        return tokens[1:]
    return tokens


def pack_inputs(lengths: Sequence[int], max_tokens: int, max_seqs: int) -> list[list[int]]:
    """Group input indices, in order, into decodes of at most `max_tokens` and `max_seqs` each."""
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if not groups or used + n > max_tokens or len(groups[-1]) >= max_seqs:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += n
    return groups


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share (for KV-cache prefix reuse)."""
    n = min(len(a), len(b))
    i, step = 0, 64
    while i + step <= n and a[i : i + step] == b[i : i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def kv_cache_bytes_per_slot(model: Any, context_length: int) -> int:
    """K and V cache bytes one slot needs: n_layer x n_ctx x (n_embd_k_gqa + n_embd_v_gqa) x 2 (f16)."""
    import llama_cpp

    n_layer = llama_cpp.llama_model_n_layer(model)
    n_head = max(1, llama_cpp.llama_model_n_head(model))
    n_head_kv = llama_cpp.llama_model_n_head_kv(model)
    n_embd = llama_cpp.llama_model_n_embd(model)
    head_k = _meta_int(model, "attention.key_length") or n_embd // n_head
    head_v = _meta_int(model, "attention.value_length") or n_embd // n_head
    f16 = 2
    return int(n_layer * context_length * n_head_kv * (head_k + head_v) * f16)


def _meta_int(model: Any, suffix: str) -> int | None:
    import llama_cpp

    buf = ctypes.create_string_buffer(128)
    n = llama_cpp.llama_model_meta_val_str(model, b"general.architecture", buf, 128)
    if n <= 0:
        return None
    key = f"{buf.value.decode()}.{suffix}".encode()
    n = llama_cpp.llama_model_meta_val_str(model, key, buf, 128)
    if n <= 0:
        return None
    try:
        return int(buf.value.decode())
    except ValueError:
        return None


def _basic_info(model: Any, path: str, name: str, quantization: str | None, ctx: int) -> ModelInfo:
    """ModelInfo from the GGUF's own metadata, the same fields the serial GGUF backend reports."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(model)

    def meta(key: str) -> str | None:
        size = 1 << 16  # chat templates can be long
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_model_meta_val_str(model, key.encode(), buf, size)
        return buf.value.decode("utf-8", "replace") if n >= 0 else None

    def text(tok: int) -> str:
        raw = llama_cpp.llama_vocab_get_text(vocab, tok) if tok >= 0 else None
        return raw.decode("utf-8", "replace") if raw else ""

    desc = ctypes.create_string_buffer(256)
    llama_cpp.llama_model_desc(model, desc, 256)
    return ModelInfo(
        name=name,
        format="gguf",
        path=path,
        quantization=quantization or desc.value.decode("utf-8", "replace").rsplit(" ", 1)[-1],
        family=meta("general.architecture") or "unknown",
        context_length=ctx,
        parameters=int(llama_cpp.llama_model_n_params(model)),
        size_bytes=int(llama_cpp.llama_model_size(model)),
        chat_template=meta("tokenizer.chat_template"),
        bos_token=text(int(llama_cpp.llama_vocab_bos(vocab))),
        eos_token=text(int(llama_cpp.llama_vocab_eos(vocab))),
    )
