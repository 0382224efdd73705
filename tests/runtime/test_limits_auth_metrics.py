"""Admission control, API keys, metrics, readiness and client-disconnect cancellation."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from .conftest import MODEL, RunningServer, ServerFactory

LONG = {"model": MODEL, "prompt": "go", "options": {"num_predict": 100000}}
# A long context so that a "long generation" takes seconds even with the tiny model.
LONG_CONTEXT = {"contextLength": 32768}


def _wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_health_readiness_and_metrics_count_up(gguf_server: RunningServer) -> None:
    assert httpx.get(f"{gguf_server.url}/healthz").status_code == 200
    assert httpx.get(f"{gguf_server.url}/readyz").status_code == 200
    before = gguf_server.metric("vllm:generation_tokens_total", model_name=MODEL)
    prompt_before = gguf_server.metric("vllm:prompt_tokens_total", model_name=MODEL)
    ok_before = gguf_server.metric("vllm:request_success_total", finished_reason="length")
    ttft_before = gguf_server.metric("vllm:time_to_first_token_seconds_count")
    httpx.post(
        f"{gguf_server.url}/api/generate",
        json={"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 7}},
        timeout=60,
    )
    assert gguf_server.metric("vllm:generation_tokens_total", model_name=MODEL) == before + 7
    assert gguf_server.metric("vllm:prompt_tokens_total") > prompt_before
    assert gguf_server.metric("vllm:request_success_total", finished_reason="length") == ok_before + 1
    assert gguf_server.metric("vllm:time_to_first_token_seconds_count") == ttft_before + 1
    text = httpx.get(f"{gguf_server.url}/metrics").text
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_count",
        "slm_model_load_seconds",
    ):
        assert name in text
    assert 'slm_model_info{format="gguf",hardware="cpu",model="tiny",quantization="Q8_0"} 1.0' in text


def test_overload_gets_429_and_503_with_retry_after(serve: ServerFactory) -> None:
    server = serve(limits={"maxConcurrent": 1, "queueLength": 0}, runtime=LONG_CONTEXT)
    with httpx.stream("POST", f"{server.url}/api/generate", json=LONG, timeout=60) as busy:
        assert busy.status_code == 200
        lines = busy.iter_lines()  # keep a reference: a collected iterator closes the connection
        next(lines)  # the generation is running
        assert server.metric("vllm:num_requests_running") == 1
        r = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
        assert r.status_code == 429
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "rate_limit_error"
        r = httpx.post(f"{server.url}/api/generate", json={"model": MODEL, "prompt": "x"})
        assert r.status_code == 503
        assert "retry-after" in r.headers
        assert isinstance(r.json()["error"], str)
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0).completions.create(
                model=MODEL, prompt="x", max_tokens=1
            )
        assert server.metric("slm_requests_rejected_total", reason="overloaded") == 3
    # Closing the stream cancelled the long generation; the slot frees up.
    _wait_for(lambda: server.metric("vllm:num_requests_running") == 0)
    r = httpx.post(
        f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}, timeout=60
    )
    assert r.status_code == 200


def test_client_disconnect_cancels_generation(serve: ServerFactory) -> None:
    server = serve(runtime=LONG_CONTEXT)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 100000,
        "stream": True,
    }
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    # The engine noticed and stopped: an 'abort' finish, with far fewer tokens than asked for.
    _wait_for(lambda: server.metric("vllm:request_success_total", finished_reason="abort") == 1)
    generated = server.metric("vllm:generation_tokens_total")
    assert 0 < generated < 20000  # the context would have allowed ~32k
    time.sleep(0.3)
    assert server.metric("vllm:generation_tokens_total") == generated  # and it stays stopped


def test_non_streaming_disconnect_cancels_generation(serve: ServerFactory) -> None:
    server = serve(runtime=LONG_CONTEXT)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/api/generate", json={**LONG, "stream": False}, timeout=0.5)
    _wait_for(lambda: server.metric("vllm:request_success_total", finished_reason="abort") == 1)


def test_api_keys(serve: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keyfile = tmp_path / "keys"
    keyfile.write_text("# comment\nfile-key-0123456789\n")
    monkeypatch.setenv("TEST_SLM_KEYS", "env-key-1-0123456789, env-key-2-0123456789")
    server = serve(auth={"apiKeyFile": str(keyfile), "apiKeyEnv": "TEST_SLM_KEYS"})
    url = server.url
    # OpenAI format without / with a wrong key
    r = httpx.get(f"{url}/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    # Ollama format
    r = httpx.get(f"{url}/api/tags", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert isinstance(r.json()["error"], str)
    with pytest.raises(ollama.ResponseError) as err:
        ollama.Client(host=url).list()
    assert err.value.status_code == 401
    # right keys, each source, both headers
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="file-key-0123456789")
    assert [m.id for m in client.models.list()] == [MODEL]
    assert ollama.Client(host=url, headers={"Authorization": "Bearer env-key-2-0123456789"}).list().models
    assert httpx.get(f"{url}/api/tags", headers={"x-api-key": "env-key-1-0123456789"}).status_code == 200
    # exempt
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{url}{path}").status_code == 200, path


def test_protected_metrics(serve: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SLM_KEYS2", "metrics-key-0123456789")
    server = serve(auth={"apiKeyEnv": "TEST_SLM_KEYS2", "protectMetrics": True})
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    key = {"Authorization": "Bearer metrics-key-0123456789"}
    assert httpx.get(f"{server.url}/metrics", headers=key).status_code == 200
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_config_prompt_defaults_apply_and_requests_win(serve: ServerFactory) -> None:
    server = serve(prompt={"system": "You are a pirate.", "parameters": {"numPredict": 3, "temperature": 0}})
    c = ollama.Client(host=server.url)
    out = c.generate(model=MODEL, prompt="hi")
    assert out.eval_count == 3  # numPredict default
    assert c.generate(model=MODEL, prompt="hi", options={"num_predict": 5}).eval_count == 5
    # the configured system prompt is the operator's: a client's own system text follows it
    # (prompt.clientSystem: append, the default) instead of replacing it, so that chat has more
    # prompt tokens than the one with the configured prompt alone (a replaced one had fewer)
    plain = c.chat(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    appended = c.chat(
        model=MODEL, messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]
    )
    assert out.prompt_eval_count and appended.prompt_eval_count
    assert plain.prompt_eval_count == out.prompt_eval_count
    assert appended.prompt_eval_count > out.prompt_eval_count
    assert out.response == c.generate(model=MODEL, prompt="hi").response  # temperature 0 default: greedy


def test_readiness_is_503_while_loading_and_draining(models: dict[str, Path]) -> None:
    import asyncio

    from slm_runtime.cli import build_engine
    from slm_runtime.server.app import create_app

    from .conftest import settings_for

    async def run() -> None:
        settings = settings_for(models["q8_0"])
        app = create_app(settings, build_engine(settings))
        service = app.state.service
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 503
            r = await c.post("/v1/completions", json={"model": MODEL, "prompt": "x"})
            assert r.status_code == 503
            await service.start_loading()
            assert (await c.get("/readyz")).status_code == 200
            assert await service.limiter.drain(1.0)
            assert (await c.get("/readyz")).json() == {"status": "draining"}
            r = await c.post("/api/generate", json={"model": MODEL, "prompt": "x"})
            assert r.status_code == 503
        await service.shutdown()

    asyncio.run(run())


def test_bad_model_path_reports_load_failure(tmp_path: Path) -> None:
    import asyncio

    from slm_runtime.cli import build_engine
    from slm_runtime.server.app import create_app

    from .conftest import settings_for

    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)

    async def run() -> None:
        settings = settings_for(bogus)
        app = create_app(settings, build_engine(settings))
        await app.state.service.start_loading()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert "failed to load" in r.json()["status"]
            r = await c.post(
                "/api/chat", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}
            )
            assert r.status_code == 503
        await app.state.service.shutdown()

    asyncio.run(run())
    assert threading.active_count() >= 1


def test_client_that_gives_up_while_queued_leaves_the_queue(serve: ServerFactory) -> None:
    server = serve(limits={"maxConcurrent": 1, "queueLength": 4}, runtime=LONG_CONTEXT)
    with httpx.stream("POST", f"{server.url}/api/generate", json=LONG, timeout=60) as busy:
        lines = busy.iter_lines()
        next(lines)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/api/generate", json=LONG, timeout=0.5)  # streams, but queued
        _wait_for(lambda: server.metric("vllm:num_requests_waiting") == 0)
        assert server.metric("vllm:num_requests_running") == 1
    _wait_for(lambda: server.metric("vllm:num_requests_running") == 0)
    # only the first ever reached the engine
    assert server.metric("vllm:request_success_total", finished_reason="abort") == 1


def test_config_template_override_is_used_and_checked(models: dict[str, Path]) -> None:
    import asyncio

    from slm_runtime.cli import build_engine
    from slm_runtime.server.app import create_app

    from .conftest import settings_for

    async def served(template: str) -> httpx.Response:
        settings = settings_for(models["q8_0"], prompt={"template": template})
        app = create_app(settings, build_engine(settings))
        await app.state.service.start_loading()
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            r = await c.post("/api/show", json={"model": MODEL})
            ready = await c.get("/readyz")
        await app.state.service.shutdown()
        return ready if ready.status_code != 200 else r

    shown = asyncio.run(served("{% for m in messages %}[{{ m.role }}] {{ m.content }}{% endfor %}"))
    assert shown.json()["template"].startswith("{% for m in messages %}[")
    broken = asyncio.run(served("{% if %}"))
    assert broken.status_code == 503
    assert "template" in broken.json()["status"]
