"""The engine: owns a backend and the ONE thread that ever calls it.

Why one thread: llama.cpp's CPU backend runs an OpenMP team per calling thread; decoding from a
second OS thread made every later decode ~1.7x slower (FACTS). So all backend calls (load,
generate, embed, tokenize) go through a FIFO of jobs run by a dedicated `slm-decode` thread, and
results come back to asyncio with `loop.call_soon_threadsafe`.

Two engines implement the `Engine` protocol (the HTTP layer depends on nothing else):

* `backends.gguf_batched.BatchedGGUFEngine` serves every GGUF model, whatever
  `runtime.parallel` is (continuous batching over llama.cpp sequence ids; with one slot it is
  simply serial), so a request samples the same at `parallel: 1` as at `parallel: 8`;
* `SerialEngine` (here) runs a `Backend` one job at a time: ONNX models, whose runtime has no
  sequence batching (see backends/onnx.py).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from slm_runtime.backends.base import (
    Backend,
    Capabilities,
    EmbeddingResult,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
)
from slm_runtime.errors import EngineError, NotReadyError, SlmError

log = logging.getLogger(__name__)

T = TypeVar("T")
FinishObserver = Callable[[GenerationRequest, FinishEvent], None]
"""Called on the decode thread when any generation ends, aborted ones included."""


class Engine(Protocol):
    """What the HTTP layer needs from an engine; see the module docstring."""

    @property
    def info(self) -> ModelInfo | None: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def load_seconds(self) -> float | None: ...

    async def start(self) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]: ...

    async def embed(self, texts: Sequence[str], *, truncate: bool = True) -> EmbeddingResult:
        """One pooled vector per text, not normalised (each API decides); `truncate` cuts
        inputs longer than the engine embeds at once, else they are a 400."""
        ...

    async def count_tokens(self, text: str) -> int: ...

    def add_observer(self, observer: FinishObserver) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class _Failure:
    error: BaseException


class SerialEngine:
    """Runs jobs one after another on a dedicated decode thread; see the module docstring."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="slm-decode", daemon=True)
        self._info: ModelInfo | None = None
        self._load_seconds: float | None = None
        self._observers: list[FinishObserver] = []

    @property
    def info(self) -> ModelInfo | None:
        """None until the model has loaded."""
        return self._info

    @property
    def capabilities(self) -> Capabilities:
        return self._backend.capabilities

    @property
    def load_seconds(self) -> float | None:
        return self._load_seconds

    @property
    def decode_thread(self) -> threading.Thread:
        """Exposed for tests that assert every backend call ran on it."""
        return self._thread

    def add_observer(self, observer: FinishObserver) -> None:
        self._observers.append(observer)

    async def start(self) -> None:
        """Start the decode thread and load the model on it; raises if loading fails."""
        if not self._thread.is_alive():
            self._thread.start()
        started = time.perf_counter()
        self._info = await self._call(self._backend.load)
        self._load_seconds = time.perf_counter() - started
        log.info("model %s loaded in %.2fs", self._info.name, self._load_seconds)

    async def close(self) -> None:
        """Free the model after queued jobs finish, then stop the thread."""
        if self._thread.is_alive():
            await self._call(self._backend.close)
            self._jobs.put(None)

    async def count_tokens(self, text: str) -> int:
        self._require_loaded()
        return await self._call(lambda: self._backend.count_tokens(text))

    async def embed(self, texts: Sequence[str], *, truncate: bool = True) -> EmbeddingResult:
        self._require_loaded()
        return await self._call(lambda: self._backend.embed(texts, truncate=truncate))

    def _channel(
        self, request: GenerationRequest
    ) -> tuple[
        asyncio.Queue[GenerationEvent | _Failure],
        Callable[[GenerationEvent | _Failure], None],
        Callable[[GenerationEvent], None],
    ]:
        """The per-request queue the decode thread feeds, `deliver` (thread-safe put), and `emit`
        (deliver an event, telling the finish observers first). Call on the event loop."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[GenerationEvent | _Failure] = asyncio.Queue()

        def deliver(item: GenerationEvent | _Failure) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the event loop is gone (shutdown); nobody is listening
                request.cancel()

        def emit(event: GenerationEvent) -> None:
            if isinstance(event, FinishEvent):
                for observer in self._observers:
                    try:
                        observer(request, event)
                    except Exception:
                        log.exception("finish observer failed")
            deliver(event)

        return events, deliver, emit

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Queue `request`; yield its events. Closing the iterator early cancels the generation."""
        self._require_loaded()
        events, deliver, emit = self._channel(request)

        def job() -> None:
            if request.cancelled.is_set():
                emit(FinishEvent("abort", 0, 0, 0, 0))
                return
            try:
                self._backend.generate(request, emit)
            except BaseException as exc:
                deliver(_Failure(exc))

        self._jobs.put(job)
        try:
            while True:
                item = await events.get()
                if isinstance(item, _Failure):
                    raise _as_slm_error(item.error)
                yield item
                if isinstance(item, FinishEvent):
                    return
        finally:
            # Normal end: harmless. Consumer gone (disconnect, error): stops at the next token.
            request.cancel()

    def _require_loaded(self) -> None:
        if self._info is None:
            raise NotReadyError("model is still loading")

    async def _call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the decode thread and await its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: T | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)  # type: ignore[arg-type]

        def job() -> None:
            try:
                result = fn()
            except BaseException as exc:
                loop.call_soon_threadsafe(settle, None, _as_slm_error(exc))
            else:
                loop.call_soon_threadsafe(settle, result, None)

        self._jobs.put(job)
        return await future

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:  # a job must never kill the decode thread
                log.exception("decode job failed")


def _as_slm_error(exc: BaseException) -> BaseException:
    if isinstance(exc, SlmError | KeyboardInterrupt | SystemExit):
        return exc
    log.error("engine failure: %s", exc, exc_info=exc)
    return EngineError(f"inference failed: {exc}")
