"""The continuous-batching GGUF engine: batching must not change what a sequence generates.

Greedy decoding is deterministic, so the same prompts served concurrently (sharing every
`llama_decode`) and one at a time must give identical text. Around that: cancellation frees the
slot, stop strings cut the text, finished slots are reused (with their KV prefix), and requests
beyond the slot count wait in the queue instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

pytest.importorskip("llama_cpp")

from slm_runtime.backends.base import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
)
from slm_runtime.backends.gguf_batched import BatchedGGUFEngine, BatchedSettings
from slm_runtime.tiny import SHAPES
from slm_runtime.tiny.gguf_model import write_gguf

T = TypeVar("T")

PROMPTS = [
    "Hello",
    "The quick brown fox jumps over the lazy dog.",
    "A small language model runs on a single CPU core and answers questions about Kubernetes.",
    "How are you today?",
    "Tokens are streamed to the client one at a time, and the server counts them. " * 3,
    "numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "The operator creates a deployment, a service, and a config map for every model.",
    "I am fine, thank you.",
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("batching") / "tiny-q8_0.gguf", SHAPES["tiny"], "q8_0")


def greedy(max_tokens: int = 24, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, **kw)  # type: ignore[arg-type]


def run(model: Path, parallel: int, body: Callable[[BatchedGGUFEngine], Awaitable[T]], **kw: object) -> T:
    """Start an engine, run `body` against it, always close it."""

    async def main() -> T:
        options = {"batch_size": 64, **kw}
        settings = BatchedSettings(parallel=parallel, context_length=256, threads=1, **options)  # type: ignore[arg-type]
        engine = BatchedGGUFEngine(str(model), settings=settings)
        await engine.start()
        try:
            return await asyncio.wait_for(body(engine), timeout=30)
        finally:
            await engine.close()

    return asyncio.run(main())


async def complete(engine: BatchedGGUFEngine, prompt: str, params: SamplingParams) -> tuple[str, FinishEvent]:
    text: list[str] = []
    async for event in engine.generate(GenerationRequest(prompt=prompt, sampling=params)):
        if isinstance(event, TokenEvent):
            text.append(event.text)
        else:
            return "".join(text), event
    raise AssertionError("no FinishEvent")


def one_by_one(model: Path, prompts: list[str], params: SamplingParams, **kw: object) -> list[str]:
    async def body(engine: BatchedGGUFEngine) -> list[str]:
        return [(await complete(engine, p, params))[0] for p in prompts]

    return run(model, 1, body, **kw)


def test_concurrent_outputs_equal_one_by_one(model_path: Path) -> None:
    params = greedy()
    expected = one_by_one(model_path, PROMPTS, params)

    async def body(engine: BatchedGGUFEngine) -> list[tuple[str, FinishEvent]]:
        return list(await asyncio.gather(*(complete(engine, p, params) for p in PROMPTS)))

    # 8 prompts on 4 slots: half of them queue, and prompts join while others decode.
    results = run(model_path, 4, body)
    assert [text for text, _ in results] == expected
    assert all(e.reason == "length" and e.completion_tokens == 24 for _, e in results)
    assert len({len(t) for t in expected}) > 1 or len(set(expected)) > 1  # the prompts really differ


def test_concurrent_outputs_equal_with_unified_kv_and_small_batches(model_path: Path) -> None:
    """Prompt chunks split across steps (batch_size 8) and one shared KV buffer change nothing.

    Flash attention off: with it, a shared buffer's cell order changes its F16 accumulation order
    and greedy near-ties of a random model can flip (see `BatchedSettings.kv_unified`).
    """
    params = greedy(16)
    options: dict[str, object] = {"batch_size": 8, "kv_unified": True, "flash_attn": False}
    expected = one_by_one(model_path, PROMPTS, params, **options)

    async def body(engine: BatchedGGUFEngine) -> list[str]:
        done = await asyncio.gather(*(complete(engine, p, params) for p in PROMPTS))
        return [text for text, _ in done]

    assert run(model_path, 8, body, **options) == expected


def test_cancel_frees_the_slot(model_path: Path) -> None:
    finished: list[FinishEvent] = []

    async def body(engine: BatchedGGUFEngine) -> tuple[str, FinishEvent]:
        engine.add_observer(lambda _req, ev: finished.append(ev))
        stream = engine.generate(GenerationRequest(prompt=PROMPTS[1], sampling=greedy(200)))
        assert isinstance(stream, AsyncGenerator)
        async for event in stream:
            assert isinstance(event, TokenEvent)
            break
        await stream.aclose()  # the client went away
        # The only slot must come free, so this one runs at once instead of waiting 200 tokens.
        result = await complete(engine, PROMPTS[2], greedy(4))
        assert engine.slot_usage() == (0, 0)
        return result

    _, event = run(model_path, 1, body)
    assert event.reason == "length"
    assert finished[0].reason == "abort"
    assert finished[0].completion_tokens < 200


def test_cancel_while_queued(model_path: Path) -> None:
    async def body(engine: BatchedGGUFEngine) -> list[str]:
        running = asyncio.create_task(complete(engine, PROMPTS[0], greedy(240)))
        request = GenerationRequest(prompt=PROMPTS[1], sampling=greedy(40))
        queued = engine.generate(request)
        waiter: asyncio.Task[GenerationEvent] = asyncio.create_task(anext(queued))  # type: ignore[arg-type]
        while engine.slot_usage() != (1, 1):
            await asyncio.sleep(0.001)
        request.cancel()  # e.g. a drain: it never gets a slot
        first = await waiter
        assert isinstance(first, FinishEvent) and first.reason == "abort"
        return [(await running)[0]]

    assert run(model_path, 1, body)[0]


def test_stop_string_cuts_the_text(model_path: Path) -> None:
    full = one_by_one(model_path, [PROMPTS[3]], greedy(32))[0]
    stop = full[10:13]
    assert stop and stop in full

    async def body(engine: BatchedGGUFEngine) -> tuple[str, FinishEvent]:
        return await complete(engine, PROMPTS[3], greedy(32, stop=(stop,)))

    text, event = run(model_path, 2, body)
    assert text == full[: full.index(stop)]
    assert event.reason == "stop"


def test_slots_are_reused_with_their_prefix(model_path: Path) -> None:
    """Many more requests than slots, one after another; repeats and shared prefixes hit the cache."""
    prompts = [PROMPTS[4], PROMPTS[4], PROMPTS[4] + " And more.", PROMPTS[1], PROMPTS[4]]
    params = greedy(12)
    expected = [one_by_one(model_path, [p], params)[0] for p in prompts]  # fresh engine each

    reused: list[int] = []

    async def body(engine: BatchedGGUFEngine) -> list[tuple[str, FinishEvent]]:
        out = [await complete(engine, p, params) for p in prompts]
        reused.append(engine.reused_prompt_tokens)
        # A long shared prefix held by a *running* slot is copied into the new one.
        both = await asyncio.gather(
            complete(engine, PROMPTS[4] + " First.", params),
            complete(engine, PROMPTS[4] + " Second.", params),
        )
        return out + list(both)

    results = run(model_path, 2, body)
    assert [t for t, _ in results[:5]] == expected
    assert [t for t, _ in results[5:]] == [
        one_by_one(model_path, [PROMPTS[4] + " First."], params)[0],
        one_by_one(model_path, [PROMPTS[4] + " Second."], params)[0],
    ]
    # The repeat of a cached prompt re-evaluates only its last token.
    n = results[0][1].prompt_tokens
    assert reused[0] >= 2 * (n - 1)


def test_more_requests_than_slots_queue(model_path: Path) -> None:
    seen_max = 0
    lock = threading.Lock()

    async def body(engine: BatchedGGUFEngine) -> list[tuple[str, FinishEvent]]:
        async def watched(prompt: str) -> tuple[str, FinishEvent]:
            nonlocal seen_max
            text: list[str] = []
            async for event in engine.generate(GenerationRequest(prompt=prompt, sampling=greedy(8))):
                with lock:
                    seen_max = max(seen_max, engine.slot_usage()[0])
                if isinstance(event, FinishEvent):
                    return "".join(text), event
                text.append(event.text)
            raise AssertionError("no FinishEvent")

        return list(await asyncio.gather(*(watched(p) for p in PROMPTS * 2)))

    results = run(model_path, 2, body)
    assert len(results) == 16
    assert all(e.reason == "length" for _, e in results)
    assert seen_max == 2


def test_json_grammar_per_sequence(model_path: Path) -> None:
    """A grammar-constrained sequence and a free one share batches without affecting each other."""
    free_expected = one_by_one(model_path, [PROMPTS[2]], greedy(16))[0]

    async def body(engine: BatchedGGUFEngine) -> list[tuple[str, FinishEvent]]:
        return list(
            await asyncio.gather(
                complete(engine, PROMPTS[1], greedy(16, response_format=ResponseFormat("json_object"))),
                complete(engine, PROMPTS[2], greedy(16)),
            )
        )

    (json_text, _), (free_text, _) = run(model_path, 2, body)
    assert json_text.lstrip().startswith("{")
    assert free_text == free_expected


def test_prompt_longer_than_a_slot_is_rejected(model_path: Path) -> None:
    from slm_runtime.errors import BadRequestError

    async def body(engine: BatchedGGUFEngine) -> None:
        with pytest.raises(BadRequestError):
            await complete(engine, "word " * 400, greedy(4))

    run(model_path, 2, body)


def test_kv_bytes_per_slot(model_path: Path) -> None:
    async def body(engine: BatchedGGUFEngine) -> int:
        return engine.kv_bytes_per_slot

    shape = SHAPES["tiny"]
    # layers x tokens x (K + V heads x head_dim) x f16
    assert run(model_path, 2, body) == shape.layers * 256 * 2 * shape.kv_heads * shape.head_dim * 2


def test_embeddings_between_decode_steps(model_path: Path) -> None:
    async def body(engine: BatchedGGUFEngine) -> tuple[list[list[float]], str]:
        running = asyncio.create_task(complete(engine, PROMPTS[1], greedy(64)))
        result = await engine.embed(["hello world", "the quick brown fox"])
        text, _ = await running
        return result.vectors, text

    vectors, text = run(model_path, 2, body)
    assert len(vectors) == 2 and len(vectors[0]) == SHAPES["tiny"].hidden
    assert sum(v * v for v in vectors[0]) > 0  # raw pooled vectors; each API normalises
    assert text == one_by_one(model_path, [PROMPTS[1]], greedy(64))[0]


def test_model_info_reports_the_gguf_metadata(model_path: Path) -> None:
    async def body(engine: BatchedGGUFEngine) -> object:
        return engine.info

    info = run(model_path, 2, body)
    assert isinstance(info, ModelInfo)
    assert (info.name, info.format, info.path) == ("default", "gguf", str(model_path))
    assert (info.family, info.quantization, info.context_length) == ("llama", "Q8_0", 256)
    assert info.chat_template and "<|im_start|>" in info.chat_template
    assert info.builtin_template is None  # the file has its own template
    assert info.eos_token == "<|im_end|>"
    assert info.parameters and info.size_bytes > 0


def test_n_identical_prompts_share_one_prefill(model_path: Path) -> None:
    """Requests arriving together with one prompt (OpenAI `n`): the later ones wait for the
    first's prefill and copy its KV cells; the outputs are those of the prompt served alone."""
    prompt = PROMPTS[4]

    async def body(engine: BatchedGGUFEngine) -> tuple[list[str], int, int]:
        before = engine.reused_prompt_tokens
        outs = await asyncio.gather(*(complete(engine, prompt, greedy(16)) for _ in range(3)))
        return [t for t, _ in outs], engine.reused_prompt_tokens - before, outs[0][1].prompt_tokens

    texts, reused, n_prompt = run(model_path, 4, body)
    assert reused >= 2 * (n_prompt - 1)
    assert texts == one_by_one(model_path, [prompt] * 3, greedy(16))


def test_bad_request_fails_alone(model_path: Path) -> None:
    """A request the engine refuses does not disturb the sequences already running."""
    from slm_runtime.errors import BadRequestError

    async def body(engine: BatchedGGUFEngine) -> str:
        running = asyncio.create_task(complete(engine, PROMPTS[1], greedy(32)))
        with pytest.raises(BadRequestError):
            await complete(engine, PROMPTS[2], greedy(4, logit_bias={10**7: -1.0}))
        return (await running)[0]

    assert run(model_path, 2, body) == one_by_one(model_path, [PROMPTS[1]], greedy(32))[0]


def test_server_with_parallel_slots_uses_the_batched_engine(serve: Callable[..., Any]) -> None:
    """`runtime.parallel > 1` selects this engine in the CLI's factory; concurrent streams work."""
    import httpx

    server = serve("q8_0", runtime={"parallel": 4})
    assert type(server.service.engine).__name__ == "BatchedGGUFEngine"

    async def stream(i: int) -> str:
        body = {"model": "tiny", "prompt": PROMPTS[i], "max_tokens": 12, "temperature": 0, "stream": True}
        parts: list[str] = []
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            client.stream("POST", "/v1/completions", json=body) as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    parts.extend(c.get("text", "") for c in json.loads(line[6:])["choices"])
        return "".join(parts)

    async def main() -> list[str]:
        return list(await asyncio.gather(*(stream(i) for i in range(6))))

    texts = asyncio.run(main())
    assert all(texts)
    assert server.metric("slm_kv_cache_bytes_per_slot") == SHAPES["tiny"].layers * 512 * 2 * 2 * 16 * 2
