"""The gateway in static mode in front of real slm-runtime servers, through the official clients."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import httpx
import ollama
import openai
import pytest

from .conftest import Fleet, GatewayFactory, RunningGateway, Script, Served, free_port, scripted_upstream

FULL = "sk-full-0123456789"
ALPHA_ONLY = "sk-alpha-0123456789"
LIMITED = "sk-limited-0123456789"
KEYS = [
    {"id": "full", "key": FULL},
    {"id": "alpha-team", "key": ALPHA_ONLY, "models": ["alpha"]},
    {"id": "limited", "key": LIMITED, "requestsPerMinute": 2},
]


def deployments(fleet: Fleet) -> list[dict[str, Any]]:
    return [
        {"name": "alpha", "model": "alpha", "endpoints": [s.url for s in fleet.alpha]},
        {"name": "beta", "model": "beta", "endpoints": [fleet.beta.url]},
    ]


def oai(gw: RunningGateway, key: str = FULL) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=60)


def oll(gw: RunningGateway, key: str = FULL) -> ollama.Client:
    return ollama.Client(host=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


@pytest.fixture
def gw(gateway: GatewayFactory, fleet: Fleet) -> RunningGateway:
    return gateway(deployments=deployments(fleet), keys=KEYS)


def test_one_endpoint_serves_both_models_to_both_clients(gw: RunningGateway) -> None:
    client = oai(gw)
    for model in ("alpha", "beta"):
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert out.model == model and out.usage is not None and out.usage.completion_tokens >= 1
        text = oll(gw).generate(model=model, prompt="hi", options={"num_predict": 4})
        assert text["done"] and text["eval_count"] >= 1
    streamed = client.chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "hi"}], max_tokens=6, stream=True
    )
    chunks = list(streamed)
    assert chunks and all(c.usage is None for c in chunks)  # the client did not ask for usage
    pieces = list(
        oll(gw).chat(
            model="alpha",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            options={"num_predict": 5},
        )
    )
    assert pieces[-1]["done"] and 1 <= pieces[-1]["eval_count"] <= 5
    lines = gw.wait_audit(6)
    assert {(line["model"], line["api"]) for line in lines} == {
        ("alpha", "openai"),
        ("beta", "openai"),
        ("alpha", "ollama"),
        ("beta", "ollama"),
    }
    for line in lines:
        assert line["status"] == 200 and line["key_id"] == "full"
        assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0  # streams too
        assert line["endpoint"].startswith("http://127.0.0.1:") and line["duration_ms"] >= line["ttft_ms"] > 0
        assert FULL not in json.dumps(line) and "prompt" not in line.get("content", {})
    stream_line = next(x for x in lines if x["model"] == "beta" and x["api"] == "openai" and x["stream"])
    assert 1 <= stream_line["completion_tokens"] <= 6


def test_usage_chunk_passes_when_the_client_asks(gw: RunningGateway) -> None:
    chunks = list(
        oai(gw).chat.completions.create(
            model="alpha",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_fleet_listings_show_only_what_the_key_may_use(gw: RunningGateway) -> None:
    assert sorted(m.id for m in oai(gw).models.list()) == ["alpha", "beta"]
    assert [m.id for m in oai(gw, ALPHA_ONLY).models.list()] == ["alpha"]
    tags = oll(gw).list()
    assert sorted(m.model for m in tags.models) == ["alpha", "beta"]
    assert all(m.details.family for m in tags.models)  # the pods' own entries, not placeholders
    assert [m.model for m in oll(gw, ALPHA_ONLY).list().models] == ["alpha"]
    assert sorted(m.model for m in oll(gw).ps().models) == ["alpha", "beta"]
    assert oai(gw).models.retrieve("beta").id == "beta"
    with pytest.raises(openai.NotFoundError):
        oai(gw, ALPHA_ONLY).models.retrieve("beta")


def test_unknown_model_is_a_404_in_each_api(gw: RunningGateway) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        oai(gw).chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
    assert err.value.code == "model_not_found" and "nope" in err.value.message
    with pytest.raises(ollama.ResponseError) as oerr:
        oll(gw).generate(model="nope", prompt="hi")
    assert oerr.value.status_code == 404 and "nope" in oerr.value.error
    raw = httpx.post(f"{gw.url}/api/generate", json={"model": "nope"}, headers={"x-api-key": FULL})
    assert raw.json() == {"error": "model 'nope' not found"}


def test_keys_refuse_missing_wrong_and_other_models(gw: RunningGateway) -> None:
    with pytest.raises(openai.AuthenticationError):
        oai(gw, "sk-wrong-0123456789").chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "x"}]
        )
    r = httpx.post(f"{gw.url}/api/chat", json={"model": "alpha", "messages": []})
    assert r.status_code == 401 and r.json() == {"error": "missing API key"}
    ok = oai(gw, ALPHA_ONLY).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=2
    )
    assert ok.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(openai.PermissionDeniedError) as err:
        oai(gw, ALPHA_ONLY).chat.completions.create(model="beta", messages=[{"role": "user", "content": "x"}])
    assert "may not use model 'beta'" in err.value.message
    with pytest.raises(ollama.ResponseError) as oerr:
        oll(gw, ALPHA_ONLY).generate(model="beta", prompt="x")
    assert oerr.value.status_code == 403
    lines = gw.wait_audit(5)
    assert [x["status"] for x in lines] == [401, 401, 200, 403, 403]
    assert lines[3]["key_id"] == "alpha-team" and lines[3]["model"] == "beta"
    assert all(ALPHA_ONLY not in json.dumps(x) for x in lines)


def test_request_quota_gives_429_with_retry_after_in_each_api(gw: RunningGateway) -> None:
    for _ in range(2):
        oai(gw, LIMITED).chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    with pytest.raises(openai.RateLimitError) as err:
        oai(gw, LIMITED).chat.completions.create(
            model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    assert int(err.value.response.headers["retry-after"]) >= 1
    assert err.value.code == "rate_limit_exceeded"
    r = httpx.post(
        f"{gw.url}/api/generate",
        json={"model": "alpha", "prompt": "x"},
        headers={"Authorization": f"Bearer {LIMITED}"},
    )
    assert (
        r.status_code == 429
        and int(r.headers["retry-after"]) >= 1
        and "requests per minute" in r.json()["error"]
    )
    assert oai(gw).chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "x"}], max_tokens=1
    )
    text = httpx.get(f"{gw.url}/metrics").text
    assert 'slm_gateway_refused_total{key_id="limited",reason="requests"} 2.0' in text
    assert 'slm_gateway_requests_total{key_id="limited",model="alpha",status="200"} 2.0' in text


def test_token_quota_counts_streamed_tokens(gateway: GatewayFactory, fleet: Fleet) -> None:
    gw = gateway(deployments=deployments(fleet), keys=[{"id": "t", "key": LIMITED, "tokensPerMinute": 30}])
    stream = oai(gw, LIMITED).chat.completions.create(
        model="beta", messages=[{"role": "user", "content": "hello there " * 20}], max_tokens=4, stream=True
    )
    assert len(list(stream)) > 1
    line = gw.wait_audit(1)[0]
    assert line["prompt_tokens"] > 30  # over the allowance: the next request waits
    with pytest.raises(openai.RateLimitError) as err:
        oai(gw, LIMITED).chat.completions.create(
            model="beta", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    assert "tokens per minute" in err.value.message


def test_keys_rotate_without_a_restart(gw: RunningGateway, tmp_path: Any) -> None:
    path = gw.gateway.keys.path
    assert path is not None
    assert oai(gw, FULL).models.list().data
    new = path.with_suffix(".new")
    new.write_text(json.dumps([{"id": "rotated", "key": "sk-rotated-0123456789"}]))
    new.replace(path)
    with pytest.raises(openai.AuthenticationError):
        oai(gw, FULL).models.list()
    assert [m.id for m in oai(gw, "sk-rotated-0123456789").models.list()] == ["alpha", "beta"]


def _metric(url: str, sample: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_prefix_affinity_keeps_a_conversation_on_one_replica(gw: RunningGateway) -> None:
    system = "You are a helpful assistant who answers in one short sentence. " * 12
    client = oai(gw)
    convos = [f"conversation {i}: " for i in range(6)]
    for turn in range(3):
        for c in convos:
            messages: list[Any] = [{"role": "system", "content": system}]
            for t in range(turn + 1):
                messages.append({"role": "user", "content": c + f"question {t} " * 40})
            client.chat.completions.create(model="alpha", messages=messages, max_tokens=1)
    lines = gw.wait_audit(18)
    by_convo: dict[int, set[str]] = {}
    for i, line in enumerate(lines):
        by_convo.setdefault(i % 6, set()).add(line["endpoint"])
    assert all(len(eps) == 1 for eps in by_convo.values()), by_convo
    # every later turn (and every first turn after the first: the system prompt) was an affinity hit
    assert _metric(gw.url, 'slm_gateway_prefix_affinity_total{model="alpha",result="hit"}') == 17


def test_without_a_shared_prefix_new_conversations_spread(gw: RunningGateway) -> None:
    for i in range(16):
        oai(gw).completions.create(model="alpha", prompt=f"{i} unrelated prompt " * 30, max_tokens=1)
    assert len({x["endpoint"] for x in gw.wait_audit(16)}) == 2


def test_priority_prefers_the_first_deployment_and_falls_back(gateway: GatewayFactory, fleet: Fleet) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    gw = gateway(
        deployments=[
            {"name": "gpu", "model": "alpha", "priority": 10, "endpoints": [fleet.alpha[0].url]},
            {"name": "cpu", "model": "alpha", "priority": 0, "endpoints": [fleet.alpha[1].url]},
        ]
    )
    for _ in range(3):
        oai(gw).completions.create(model="alpha", prompt="hi", max_tokens=1)
    assert {x["deployment"] for x in gw.wait_audit(3)} == {"gpu"}
    down = gateway(
        deployments=[
            {"name": "gpu", "model": "alpha", "priority": 10, "endpoints": [dead]},
            {"name": "cpu", "model": "alpha", "priority": 0, "endpoints": [fleet.alpha[1].url]},
        ]
    )
    for _ in range(2):
        oai(down).completions.create(model="alpha", prompt="hi", max_tokens=1)
    first, second = down.wait_audit(2)
    assert (first["deployment"], first["retries"]) == ("cpu", 1)  # retried once, before any byte
    assert (second["deployment"], second["retries"]) == ("cpu", 0)  # the dead one is set aside now
    assert down.gateway.fleet.endpoints[dead].failures == 1


def two_tiers(ups: list[Served]) -> list[dict[str, Any]]:
    """Model alpha on two deployments; the first is always tried first."""
    return [
        {"name": "first", "model": "alpha", "priority": 1, "endpoints": [ups[0].url]},
        {"name": "second", "model": "alpha", "endpoints": [ups[1].url]},
    ]


def test_a_failure_before_the_first_byte_is_retried_once_on_another_endpoint(gateway: GatewayFactory) -> None:
    scripts = [Script(mode="fail-first"), Script()]
    ups = [Served(scripted_upstream(s)) for s in scripts]
    try:
        gw = gateway(deployments=two_tiers(ups))
        r = httpx.post(
            f"{gw.url}/v1/chat/completions", json={"model": "alpha", "messages": [], "stream": True}
        )
        assert r.status_code == 200 and "last" in r.text
        assert (scripts[0].hits, scripts[1].hits) == (1, 1)  # the 503 first, then the other one
        line = gw.wait_audit(1)[0]
        assert line["retries"] == 1 and line["deployment"] == "second"
    finally:
        for u in ups:
            u.stop()


def test_a_failure_after_the_first_byte_is_not_retried(gateway: GatewayFactory) -> None:
    scripts = [Script(mode="cut-mid-stream"), Script()]
    ups = [Served(scripted_upstream(s)) for s in scripts]
    try:
        gw = gateway(deployments=two_tiers(ups))
        body = b""
        with (
            contextlib.suppress(httpx.HTTPError),
            httpx.stream(
                "POST",
                f"{gw.url}/v1/chat/completions",
                json={"model": "alpha", "messages": [], "stream": True},
            ) as r,
        ):
            for part in r.iter_raw():
                body += part
        assert b"first" in body and b"last" not in body
        assert (scripts[0].hits, scripts[1].hits) == (1, 0)
        line = gw.wait_audit(1)[0]
        assert line["retries"] == 0 and "mid-stream" in line["error"]
    finally:
        for u in ups:
            u.stop()


def test_streams_pass_through_without_buffering(gateway: GatewayFactory) -> None:
    """The upstream sends its second event only after the client has seen the first."""
    script = Script(mode="wait-for-client")
    up = Served(scripted_upstream(script))
    try:
        gw = gateway(deployments=[{"name": "a", "model": "alpha", "endpoints": [up.url]}])
        seen: list[str] = []
        with httpx.stream(
            "POST",
            f"{gw.url}/v1/chat/completions",
            json={"model": "alpha", "messages": [], "stream": True},
            timeout=60,
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen.append(json.loads(line[6:])["choices"][0]["delta"]["content"])
                    script.release.set()
        assert seen == ["first", "after-release", "last"]
    finally:
        up.stop()


def test_a_client_that_disconnects_cancels_the_generation_upstream(
    gateway: GatewayFactory, tiny_gguf: Any
) -> None:
    from .conftest import serve_runtime

    pod = serve_runtime(tiny_gguf, "alpha", parallel=1, context=32768)
    try:
        gw = gateway(deployments=[{"name": "a", "model": "alpha", "endpoints": [pod.url]}])
        body = {"model": "alpha", "prompt": "count", "max_tokens": 30000, "stream": True}
        with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=60) as r:
            for _ in r.iter_lines():
                break  # got the first token: leave
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and pod.metric("vllm:request_success_total", finished_reason="abort") < 1
        ):
            time.sleep(0.05)
        assert pod.metric("vllm:request_success_total", finished_reason="abort") == 1
        assert pod.metric("vllm:num_requests_running") == 0
        line = gw.wait_audit(1)[0]
        assert line["status"] == 499 and "completion_tokens" not in line
    finally:
        pod.stop()


def test_bad_requests_get_400_in_the_api_format(gw: RunningGateway) -> None:
    h = {"x-api-key": FULL}
    r = httpx.post(f"{gw.url}/v1/chat/completions", content=b"{nope", headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": []}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    r = httpx.post(f"{gw.url}/api/generate", json=[1, 2], headers=h)
    assert r.status_code == 400 and r.json() == {"error": "request body must be a JSON object"}
    r = httpx.get(f"{gw.url}/v1/nothing-here", headers=h)
    assert r.status_code in (404, 405) and "error" in r.json()
