"""Concurrent ONNX requests: waiting requests decode together in one left-padded generator, and
each gets exactly what it would get alone (the graph computes padded rows exactly)."""

from __future__ import annotations

import asyncio
from collections import deque
from pathlib import Path
from typing import Any

import pytest

from slm_runtime.backends.base import FinishEvent, GenerationRequest, SamplingParams
from slm_runtime.backends.onnx import OnnxBackend, batch_key
from slm_runtime.backends.onnx_batching import BatchingOnnxEngine, _Waiting, take_batch
from slm_runtime.errors import BadRequestError

GREEDY = SamplingParams(max_tokens=12, temperature=0)
PROMPTS = [
    "hi",
    "The quick brown fox jumps over the lazy dog and keeps running",
    "Tokens are streamed to the client",
    "numbers 0 1 2 3",
]


def _waiting(params: SamplingParams) -> _Waiting:
    return _Waiting(GenerationRequest("x", params), lambda _: None, lambda _: None)


def test_take_batch_groups_compatible_requests_oldest_first() -> None:
    sampled = SamplingParams(temperature=0.7, seed=1)
    items = [_waiting(GREEDY), _waiting(sampled), _waiting(GREEDY), _waiting(GREEDY), _waiting(GREEDY)]
    queue = deque(items)
    assert take_batch(queue, 3) == [items[0], items[2], items[3]]
    assert list(queue) == [items[1], items[4]]
    assert take_batch(queue, 3) == [items[1]]
    assert take_batch(queue, 3) == [items[4]]
    assert take_batch(queue, 3) == []
    # greedy requests differing only in sampling knobs greedy ignores still batch together
    assert batch_key(GREEDY) == batch_key(SamplingParams(max_tokens=3, temperature=0, top_k=5))
    assert batch_key(GREEDY) != batch_key(sampled)


async def _run(engine: BatchingOnnxEngine, prompt: str, params: SamplingParams) -> tuple[str, FinishEvent]:
    text: list[str] = []
    finish = None
    async for event in engine.generate(GenerationRequest(prompt, params)):
        if isinstance(event, FinishEvent):
            finish = event
        else:
            text.append(event.text)
    assert finish is not None
    return "".join(text), finish


def test_batched_requests_get_what_they_get_alone(models: dict[str, Path]) -> None:
    async def run() -> None:
        engine = BatchingOnnxEngine(OnnxBackend(models["onnx"], name="t", context_length=256), max_batch=4)
        await engine.start()
        alone = [await _run(engine, p, GREEDY) for p in PROMPTS]
        assert engine.batch_sizes == {1: len(PROMPTS)}
        together = await asyncio.gather(*(_run(engine, p, GREEDY) for p in PROMPTS))
        assert engine.batch_sizes[len(PROMPTS)] == 1  # one batch of four, not four batches
        assert [t for t, _ in together] == [t for t, _ in alone]
        assert [f.completion_tokens for _, f in together] == [12] * len(PROMPTS)
        assert all(f.prompt_tokens > 0 for _, f in together)
        await engine.close()

    asyncio.run(run())


def test_a_bad_request_fails_alone_and_others_in_its_batch_finish(models: dict[str, Path]) -> None:
    async def run() -> None:
        engine = BatchingOnnxEngine(OnnxBackend(models["onnx"], name="t", context_length=64), max_batch=4)
        await engine.start()
        results = await asyncio.gather(
            _run(engine, "hi", GREEDY),
            _run(engine, "word " * 200, GREEDY),  # longer than the context
            _run(engine, "hello there", SamplingParams(max_tokens=5, temperature=0.8, seed=3)),
            return_exceptions=True,
        )
        assert isinstance(results[1], BadRequestError)
        assert results[1].param == "prompt"
        ok = [r for r in results if not isinstance(r, BaseException)]
        assert [f.completion_tokens for _, f in ok] == [12, 5]
        await engine.close()

    asyncio.run(run())


def test_cancelled_request_in_a_batch_aborts_without_stopping_the_others(models: dict[str, Path]) -> None:
    async def run() -> None:
        engine = BatchingOnnxEngine(OnnxBackend(models["onnx"], name="t", context_length=256), max_batch=4)
        await engine.start()
        doomed = GenerationRequest("hi", SamplingParams(max_tokens=200, temperature=0))
        events = []
        # The decode thread does not wait for the consumer: on a busy machine it could finish all
        # 200 tokens before the consumer's cancel (seen in CI: finish "length"). Hold it after
        # the doomed request's second token until the cancel is in, so the test sees the abort.
        channel = engine._channel

        def gated(request: GenerationRequest) -> Any:
            queue, deliver, emit = channel(request)
            if request is not doomed:
                return queue, deliver, emit
            sent = [0]

            def emit_then_hold(event: Any) -> None:
                emit(event)
                sent[0] += 1
                if sent[0] == 2:
                    assert doomed.cancelled.wait(30), "the consumer never cancelled"

            return queue, deliver, emit_then_hold

        engine._channel = gated  # type: ignore[method-assign]

        async def consume() -> None:
            async for event in engine.generate(doomed):
                events.append(event)
                if len(events) == 2:
                    doomed.cancel()

        _, (_text, finish) = await asyncio.gather(consume(), _run(engine, "hello", GREEDY))
        assert isinstance(events[-1], FinishEvent)
        assert events[-1].reason == "abort"
        assert events[-1].completion_tokens < 200
        assert finish.completion_tokens == 12
        await engine.close()

    asyncio.run(run())


@pytest.mark.parametrize("parallel", [1, 4])
def test_cli_builds_the_batching_engine_for_parallel_onnx(models: dict[str, Path], parallel: int) -> None:
    from slm_runtime.cli import build_engine
    from slm_runtime.engine import SerialEngine

    from .conftest import settings_for

    engine = build_engine(settings_for(models["onnx"], runtime={"parallel": parallel}))
    assert isinstance(engine, BatchingOnnxEngine) == (parallel > 1)
    assert isinstance(engine, SerialEngine)
