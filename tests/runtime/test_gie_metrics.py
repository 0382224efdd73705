"""The metrics GIE's model-server protocol (docs/proposals/003-model-server-protocol of
sigs.k8s.io/gateway-api-inference-extension) reads beyond the queue gauges: KV cache utilisation
(`vllm:kv_cache_usage_perc`, 0..1) and the optional block layout (`vllm:cache_config_info`), plus
vLLM's prefix-cache counters, on the batching engine pods run (parallel 4)."""

from __future__ import annotations

import time

import httpx

from .conftest import MODEL, ServerFactory


def _wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_kv_cache_usage_and_layout(serve: ServerFactory) -> None:
    server = serve(runtime={"parallel": 4, "contextLength": 512})
    info = server.metric("vllm:cache_config_info", model_name=MODEL, block_size="16", num_gpu_blocks="128")
    assert info == 1.0  # 4 slots x 512 cells, in blocks of 16 (the engine's prefix-reuse unit)
    assert 'vllm:kv_cache_usage_perc{model_name="tiny"} 0.0' in httpx.get(f"{server.url}/metrics").text

    body = {"model": MODEL, "prompt": "go", "stream": True, "options": {"num_predict": 100000}}
    with httpx.stream("POST", f"{server.url}/api/generate", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(20):
            next(lines)
        usage = server.metric("vllm:kv_cache_usage_perc", model_name=MODEL)
        # one sequence of at least 20 tokens of the 2048 cells, and at most its own slot's 512
        assert 20 / 2048 <= usage <= 0.25, usage
    # the client went away: the sequence is aborted and its cells freed
    _wait_for(lambda: server.metric("vllm:kv_cache_usage_perc", model_name=MODEL) == 0.0)


def test_prefix_cache_counters_count_reused_prompt_tokens(serve: ServerFactory) -> None:
    server = serve(runtime={"parallel": 4, "contextLength": 512})

    def counters() -> tuple[float, float]:
        return (
            server.metric("vllm:prefix_cache_queries_total", model_name=MODEL),
            server.metric("vllm:prefix_cache_hits_total", model_name=MODEL),
        )

    prompt = " ".join(f"word{i}" for i in range(40))
    body = {"model": MODEL, "prompt": prompt, "stream": False, "options": {"num_predict": 2}}
    start = counters()
    first = httpx.post(f"{server.url}/api/generate", json=body, timeout=60).json()
    after_first = counters()
    n = first["prompt_eval_count"]
    assert n > 16  # longer than the engine's shortest reused prefix
    assert after_first == (start[0] + n, start[1])  # a cold cache: all queried, nothing hit
    httpx.post(f"{server.url}/api/generate", json=body, timeout=60).raise_for_status()
    queried, hit = (b - a for a, b in zip(after_first, counters(), strict=True))
    assert queried == n
    assert n // 2 < hit < n  # the finished slot's cells served the repeat (all but the last token)
