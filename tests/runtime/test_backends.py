"""The engines against real tiny models: the GGUF one production runs (crash guard, decode thread,
embeddings, cancellation) and ONNX behind the SerialEngine."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from slm_runtime.backends.base import (
    FinishEvent,
    GenerationRequest,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
)
from slm_runtime.backends.gguf_batched import BatchedGGUFEngine, BatchedSettings
from slm_runtime.backends.onnx import OnnxBackend
from slm_runtime.engine import SerialEngine
from slm_runtime.errors import BadRequestError, UnsupportedError

PROMPT = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"


async def _collect(
    engine: SerialEngine | BatchedGGUFEngine, request: GenerationRequest
) -> tuple[str, FinishEvent]:
    text, finish = [], None
    async for event in engine.generate(request):
        if isinstance(event, TokenEvent):
            text.append(event.text)
        else:
            finish = event
    assert finish is not None
    return "".join(text), finish


def _gguf(path: Path, context_length: int = 256, parallel: int = 1) -> BatchedGGUFEngine:
    """The GGUF engine production runs, at `parallel: 1` unless asked."""
    settings = BatchedSettings(parallel=parallel, context_length=context_length, threads=1, batch_size=64)
    return BatchedGGUFEngine(str(path), settings=settings, name="t")


@pytest.mark.parametrize("quant", ["f32", "q8_0", "q4_0"])
def test_gguf_decodes_every_quantization(models: dict[str, Path], quant: str) -> None:
    """Crash guard: Q8_0/Q4_0 decode segfaulted on AMX before use_extra_bufts=False (FACTS)."""

    async def run() -> None:
        engine = _gguf(models[quant])
        await engine.start()
        assert engine.info is not None
        assert engine.info.quantization.lower() == quant
        text, finish = await _collect(
            engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=12, seed=3))
        )
        assert finish.reason == "length"
        assert finish.completion_tokens == 12
        assert finish.prompt_tokens > 5
        assert text
        # Same seed, same prompt (served from the prefix cache this time): same text.
        again, _ = await _collect(engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=12, seed=3)))
        assert again == text
        await engine.close()

    asyncio.run(run())


def test_llama_cpp_runs_only_on_the_decode_thread(models: dict[str, Path]) -> None:
    seen: set[str] = set()

    class Spy(BatchedGGUFEngine):
        def _step(self) -> None:
            seen.add(threading.current_thread().name)
            super()._step()

        def _embed(self, texts, *, truncate):  # type: ignore[no-untyped-def]
            seen.add(threading.current_thread().name)
            return super()._embed(texts, truncate=truncate)

    async def run() -> None:
        settings = BatchedSettings(parallel=2, context_length=256, threads=1, batch_size=64)
        engine = Spy(str(models["q8_0"]), settings=settings)
        await engine.start()
        await asyncio.gather(
            *(_collect(engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=4))) for _ in range(3)),
            engine.embed(["a", "b"]),
        )
        await engine.close()

    asyncio.run(run())
    assert seen == {"slm-batch-decode"}


def test_gguf_embeddings_are_deterministic_and_batched(models: dict[str, Path]) -> None:
    """Many inputs share one decode (one sequence each): each vector equals its input's alone."""

    async def run() -> None:
        engine = _gguf(models["q8_0"])
        await engine.start()
        texts = ["hello world", "the quick brown fox", "hello world"]
        result = await engine.embed(texts)
        assert len(result.vectors) == 3
        assert len(result.vectors[0]) == 64
        assert result.vectors[0] == pytest.approx(result.vectors[2], abs=1e-5)
        assert result.vectors[0] != pytest.approx(result.vectors[1], abs=1e-3)
        alone = await engine.embed(["the quick brown fox"])
        assert alone.vectors[0] == pytest.approx(result.vectors[1], abs=1e-4)
        assert result.prompt_tokens == sum([await engine.count_tokens(t) for t in texts])
        with pytest.raises(BadRequestError, match="truncate"):
            await engine.embed(["word " * 300], truncate=False)
        cut = await engine.embed(["word " * 300])
        assert cut.prompt_tokens == 256  # cut to what one decode embeds (the slot's context here)
        await engine.close()

    asyncio.run(run())


def test_gguf_json_grammar_and_long_prompt(models: dict[str, Path]) -> None:
    async def run() -> None:
        engine = _gguf(models["q8_0"], context_length=128)
        await engine.start()
        params = SamplingParams(max_tokens=8, seed=1, response_format=ResponseFormat("json_object"))
        text, _ = await _collect(engine, GenerationRequest(PROMPT, params))
        assert text.lstrip().startswith(("{", "["))
        with pytest.raises(BadRequestError, match="at most 127"):
            await _collect(engine, GenerationRequest("word " * 400, SamplingParams(max_tokens=4)))
        with pytest.raises(BadRequestError, match="num_ctx 4096") as info:
            await _collect(
                engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=4, context_limit=4096))
            )
        assert info.value.param == "num_ctx"
        # A smaller num_ctx bounds prompt + output.
        n = await engine.count_tokens(PROMPT)
        _, finish = await _collect(
            engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=100, context_limit=n + 5))
        )
        assert (finish.reason, finish.prompt_tokens + finish.completion_tokens) == ("length", n + 5)
        await engine.close()

    asyncio.run(run())


def test_cancellation_stops_generation_early(models: dict[str, Path]) -> None:
    finishes: list[FinishEvent] = []

    async def run() -> None:
        engine = _gguf(models["q8_0"], context_length=512)
        engine.add_observer(lambda _req, event: finishes.append(event))
        await engine.start()
        stream = engine.generate(GenerationRequest(PROMPT, SamplingParams(max_tokens=400)))
        await anext(stream)
        await stream.aclose()  # what a client disconnect does
        # The engine is free again: the next request runs (the aborted one finished first).
        _, finish = await _collect(engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=2)))
        assert finish.reason == "length"
        await engine.close()

    asyncio.run(run())
    assert finishes[0].reason == "abort"
    assert finishes[0].completion_tokens < 400


def test_onnx_generates_and_refuses_unsupported(models: dict[str, Path]) -> None:
    async def run() -> None:
        engine = SerialEngine(OnnxBackend(models["onnx"], name="t", context_length=256))
        await engine.start()
        text, finish = await _collect(
            engine, GenerationRequest(PROMPT, SamplingParams(max_tokens=10, temperature=0.7, seed=5))
        )
        assert finish.completion_tokens == 10
        assert finish.reason == "length"
        assert text
        greedy = SamplingParams(max_tokens=6, temperature=0)
        first, _ = await _collect(engine, GenerationRequest(PROMPT, greedy))
        second, _ = await _collect(engine, GenerationRequest(PROMPT, greedy))
        assert first == second
        with pytest.raises(UnsupportedError):
            await engine.embed(["x"])
        constrained, _ = await _collect(
            engine,
            GenerationRequest(
                PROMPT, SamplingParams(max_tokens=4, response_format=ResponseFormat("json_object"))
            ),
        )
        assert constrained.lstrip().startswith("{")  # guidance: only JSON can come out
        await engine.close()

    asyncio.run(run())
