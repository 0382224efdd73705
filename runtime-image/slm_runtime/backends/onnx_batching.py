"""Concurrent ONNX requests: waiting requests are decoded together, as one batch in one generator.

onnxruntime-genai 0.18 on CPU has no continuous batching (its paged-KV `Engine` is CUDA/WebGPU
only), but one `Generator` decodes a left-padded batch, and our graph computes padded rows
exactly (`tiny.onnx_model`). So this engine does *static* batching on the `SerialEngine`'s one
decode thread: a request is queued; when the decode thread is free it takes the oldest waiting
request plus every other waiting one with the same search options (`onnx.batch_key`), up to
`max_batch`, and runs them to the end together. Requests arriving meanwhile wait for the next
batch (their time to first token includes the running batch: the price of batching without
paged attention). Measured on the real SmolLM2 int4: 4 streams decode at ~2.2x the aggregate
tokens/s of one (`benchmarks/onnx_concurrency.py`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass

from slm_runtime.backends.base import FinishEvent, GenerationEvent, GenerationRequest
from slm_runtime.backends.onnx import OnnxBackend, batch_key
from slm_runtime.engine import SerialEngine, _as_slm_error, _Failure

log = logging.getLogger(__name__)

GATHER_SECONDS = 0.005
"""How long a batch that is not full waits for more requests before it starts..."""
LOADED_GATHER_SECONDS = 0.03
"""...and how long when the previous batch had several requests (clients are waiting)."""

Deliver = Callable[[GenerationEvent | _Failure], None]


@dataclass
class _Waiting:
    request: GenerationRequest
    emit: Callable[[GenerationEvent], None]
    deliver: Deliver


def take_batch(waiting: deque[_Waiting], max_batch: int) -> list[_Waiting]:
    """Pure: the oldest request and the next compatible ones (FIFO otherwise kept), at most max_batch."""
    if not waiting:
        return []
    key = batch_key(waiting[0].request.sampling)
    chosen = [w for w in waiting if batch_key(w.request.sampling) == key][:max_batch]
    for w in chosen:
        waiting.remove(w)
    return chosen


class BatchingOnnxEngine(SerialEngine):
    """`SerialEngine` whose generations are batched (see the module docstring)."""

    def __init__(self, backend: OnnxBackend, max_batch: int) -> None:
        super().__init__(backend)
        self._onnx = backend
        self._max_batch = max(1, max_batch)
        self._waiting: deque[_Waiting] = deque()
        self._lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()  # size -> batches run, for logs and tests
        self._last_size = 1

    def _gather(self, limit: int) -> None:
        """Wait briefly for a batch to fill: clients sent together arrive a little apart, and
        under load (the last batch had several) the next requests follow within milliseconds of
        the last batch's answers. At most GATHER_SECONDS (or LOADED_GATHER_SECONDS) of TTFT."""
        want = min(limit, max(2, self._last_size))
        window = LOADED_GATHER_SECONDS if self._last_size > 1 else GATHER_SECONDS
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            with self._lock:
                if not 0 < len(self._waiting) < want:
                    return
            time.sleep(0.001)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Queue `request`; yield its events. Closing the iterator early cancels the generation."""
        self._require_loaded()
        events, deliver, emit = self._channel(request)

        with self._lock:
            self._waiting.append(_Waiting(request, emit, deliver))
        self._jobs.put(self._run_batch)  # one job per request: each runs whatever is waiting
        try:
            while True:
                item = await events.get()
                if isinstance(item, _Failure):
                    raise _as_slm_error(item.error)
                yield item
                if isinstance(item, FinishEvent):
                    return
        finally:
            request.cancel()

    def _run_batch(self) -> None:
        limit = self._max_batch if self._onnx.batchable else 1
        self._gather(limit)
        with self._lock:
            batch = take_batch(self._waiting, limit)
        live = []
        for w in batch:
            if w.request.cancelled.is_set():
                w.emit(FinishEvent("abort", 0, 0, 0, 0))
                continue
            try:
                self._onnx.prompt_tokens(w.request)  # a bad request gets its own 4xx
            except BaseException as exc:
                w.deliver(_Failure(exc))
                continue
            live.append(w)
        if not live:
            return
        self.batch_sizes[len(live)] += 1
        self._last_size = len(live)
        try:
            self._onnx.generate_batch([(w.request, w.emit) for w in live])
        except BaseException as exc:
            for w in live:
                w.deliver(_Failure(exc))
