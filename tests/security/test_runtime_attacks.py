"""Issue 13, item 2: one request (or one client) cannot take the runtime down.

Each test runs an attack against `slm-runtime serve` (its own process, real sockets) while a
probe times /healthz on fresh connections; the attack must fail in the API's own error format
and must not block the event loop. The server runs with its production defaults except for
smaller limits and timeouts, so each attack is cheap and short.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .runtime_live import MODEL, HealthProbe, LiveRuntime, base_config, start_runtime, tiny_gguf

__all__ = ["tiny_gguf"]  # a fixture, imported for pytest

BODY_LIMIT = 256 * 1024
HEAD_TIMEOUT = 2.0
BODY_TIMEOUT = 1.5
PROMPT_CHARS = 20_000


@pytest.fixture(scope="module")
def live(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRuntime]:
    config = base_config(
        tiny_gguf,
        limits={
            "maxBodyBytes": BODY_LIMIT,
            "headerTimeoutSeconds": HEAD_TIMEOUT,
            "bodyTimeoutSeconds": BODY_TIMEOUT,
            "maxPromptChars": PROMPT_CHARS,
            "maxMessages": 64,
            "maxStop": 8,
            "maxStopChars": 64,
            "maxLogitBias": 32,
            "maxSchemaBytes": 4096,
            "maxSchemaDepth": 8,
            "maxEmbeddingInputs": 8,
            "queueLength": 4,
        },
    )
    runtime = start_runtime(tmp_path_factory.mktemp("attacks"), config)
    yield runtime
    runtime.stop()


def _chat(
    live: LiveRuntime, body: dict[str, object] | bytes, path: str = "/v1/chat/completions"
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        f"{live.url}{path}", content=content, headers={"Content-Type": "application/json"}, timeout=30
    )


def _openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert isinstance(error, dict) and error["message"]
    return error


def _raw_request(port: int, head: bytes, body_parts: list[bytes], *, pause: float = 0.0) -> bytes:
    """Send `head` and `body_parts` on a raw socket; the server's whole answer (until it closes
    or 10 s pass). Sending stops quietly when the server has closed its side."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        for part in body_parts:
            try:
                s.sendall(part)
            except OSError:
                break
            if pause:
                time.sleep(pause)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        except OSError:
            pass
        return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


# -- body size ------------------------------------------------------------------------------


def test_attack_body_bomb_declared_gets_413(live: LiveRuntime) -> None:
    """A 10 GB Content-Length is refused before a byte of the body is read."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n"
    )
    with HealthProbe(live.url) as probe:
        answer = _raw_request(live.port, head, [b"{"])
    assert _status(answer) == 413, answer[:300]
    body = json.loads(answer.partition(b"\r\n\r\n")[2])
    assert "maxBodyBytes" in body["error"]["message"] and body["error"]["type"] == "invalid_request_error"
    probe.assert_answered()


def test_attack_body_bomb_chunked_gets_413(live: LiveRuntime) -> None:
    """A chunked body (no length announced) is counted as it arrives and cut off at the limit;
    the Ollama route answers in Ollama's format."""
    head = (
        b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 65536
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (BODY_LIMIT // len(chunk) + 4)
    with HealthProbe(live.url) as probe:
        answer = _raw_request(live.port, head, parts)
    assert _status(answer) == 413, answer[:300]
    assert "maxBodyBytes" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    probe.assert_answered()


def test_body_under_the_limit_is_served(live: LiveRuntime) -> None:
    """The limit is not a blanket refusal: a body just under it gets the ordinary answer."""
    filler = "a" * (BODY_LIMIT - 1024)
    response = _chat(live, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "user": filler})
    assert response.status_code == 200, response.text


# -- slow clients ---------------------------------------------------------------------------


def test_attack_slowloris_connections_are_closed(live: LiveRuntime) -> None:
    """Twenty clients trickling a request head are disconnected after headerTimeoutSeconds,
    while /healthz keeps answering."""
    sockets = [socket.create_connection(("127.0.0.1", live.port), timeout=10) for _ in range(20)]
    try:
        with HealthProbe(live.url) as probe:
            for s in sockets:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
            closed_after: list[float] = []
            started = time.monotonic()
            for _ in range(int(HEAD_TIMEOUT * 10) + 40):  # keep trickling past the deadline
                for s in sockets:
                    with contextlib.suppress(OSError):
                        s.sendall(b"X-a: b\r\n")
                time.sleep(0.1)
            for s in sockets:
                s.settimeout(10)
                try:
                    while s.recv(1024):
                        pass
                except TimeoutError:
                    continue  # still open: not counted
                except ConnectionError:
                    pass
                closed_after.append(time.monotonic() - started)
        assert len(closed_after) == len(sockets), "some slow clients were never disconnected"
        probe.assert_answered()
    finally:
        for s in sockets:
            s.close()


def test_attack_slow_body_gets_408(live: LiveRuntime) -> None:
    """A body that never finishes arriving is a 408 after bodyTimeoutSeconds, not a held slot."""
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n"
    )
    with HealthProbe(live.url) as probe:
        answer = _raw_request(live.port, head, [b'{"model": '] + [b" "] * 30, pause=0.1)
    assert _status(answer) == 408, answer[:300]
    assert "bodyTimeoutSeconds" in json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["message"]
    probe.assert_answered()


# -- hostile JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,raw",
    [
        ("deep_arrays", b'{"model": "tiny", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
        ("deep_objects", b'{"a":' * 30_000 + b"1" + b"}" * 30_000),
        ("deep_but_parseable", b'{"model": "tiny", "metadata": ' + b"[" * 200 + b"]" * 200 + b"}"),
        ("huge_integer", b'{"model": "tiny", "seed": ' + b"9" * 100_000 + b"}"),
        ("huge_float", b'{"model": "tiny", "temperature": 1e999999}'),
        ("nan", b'{"model": "tiny", "temperature": NaN}'),
        ("not_utf8", b'{"model": "\xff\xfe"}'),
    ],
)
def test_attack_hostile_json_gets_400(live: LiveRuntime, name: str, raw: bytes) -> None:
    """Deep nesting and absurd numbers are a 400 with a message, never a 500 with a traceback."""
    with HealthProbe(live.url) as probe:
        for _ in range(3):
            error = _openai_error(_chat(live, raw), 400)
    assert "JSON" in str(error["message"]) or "nested" in str(error["message"])
    assert "Traceback" not in live.log()
    probe.assert_answered()


# -- request shape --------------------------------------------------------------------------


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _deep_schema(levels: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


SHAPE_ATTACKS: list[tuple[str, dict[str, object], str]] = [
    ("message_flood", {"messages": _user("hi") * 65}, "messages"),
    ("prompt_chars", {"messages": _user("a" * (PROMPT_CHARS + 1))}, "messages"),
    ("many_stops", {"messages": _user("hi"), "stop": ["s"] * 9}, "stop"),
    ("long_stop", {"messages": _user("hi"), "stop": ["s" * 65]}, "stop"),
    (
        "logit_bias_flood",
        {"messages": _user("hi"), "logit_bias": {str(i): 1 for i in range(33)}},
        "logit_bias",
    ),
    (
        "huge_schema",
        {
            "messages": _user("hi"),
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "x",
                    "schema": {
                        "type": "object",
                        "properties": {f"p{i}": {"type": "string"} for i in range(400)},
                    },
                },
            },
        },
        "response_format.json_schema.schema",
    ),
    (
        "deep_schema",
        {
            "messages": _user("hi"),
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": _deep_schema(12)},
            },
        },
        "response_format.json_schema.schema",
    ),
    (
        "huge_tool_schemas",
        {
            "messages": _user("hi"),
            "tools": [
                {"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object"}}}
                for i in range(200)
            ],
        },
        "tools",
    ),
]


@pytest.mark.parametrize("name,body,param", SHAPE_ATTACKS, ids=[a[0] for a in SHAPE_ATTACKS])
def test_attack_request_shape_gets_400_naming_the_field(
    live: LiveRuntime, name: str, body: dict[str, object], param: str
) -> None:
    with HealthProbe(live.url) as probe:
        error = _openai_error(_chat(live, {"model": MODEL, **body}), 400)
    assert error["param"] == param, error
    probe.assert_answered()


def test_attack_ollama_options_stop_flood_gets_400(live: LiveRuntime) -> None:
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"stop": ["x"] * 9}}
    response = _chat(live, body, "/api/generate")
    assert response.status_code == 400
    assert "options.stop" in response.json()["error"]


def test_attack_long_prompts_are_tokenized_off_the_event_loop(live: LiveRuntime) -> None:
    """Prompts just under the character cap (far over the 512-token slot) from several clients
    at once: each admitted one is tokenized off the event loop and refused with a 400 that names
    the slot size, the rest are refused by admission, while /healthz answers throughout."""
    body = {"model": MODEL, "messages": _user("word " * (PROMPT_CHARS // 5 - 10))}
    with (
        HealthProbe(live.url) as probe,
        httpx.Client(base_url=live.url, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(8) as pool,
    ):
        answers = list(pool.map(lambda _: client.post("/v1/chat/completions", json=body), range(16)))
    # tokenizing happens after admission, so beyond parallel + queueLength it is a 429 instead
    assert {r.status_code for r in answers} <= {400, 429}, [r.text for r in answers]
    refused = [r for r in answers if r.status_code == 400]
    assert refused and all("tokens" in str(_openai_error(r, 400)["message"]) for r in refused)
    probe.assert_answered()


def test_max_tokens_absent_is_bounded_by_the_slot(live: LiveRuntime) -> None:
    """No max_tokens anywhere: the generation still ends, at the slot's context at the latest."""
    response = _chat(
        live,
        {"model": MODEL, "messages": _user("hi"), "temperature": 0, "logit_bias": {"0": -100}},
        "/v1/chat/completions",
    )
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= 512


# -- embeddings -----------------------------------------------------------------------------


def test_attack_embedding_input_flood_gets_400(live: LiveRuntime) -> None:
    error = _openai_error(_chat(live, {"model": MODEL, "input": ["x"] * 9}, "/v1/embeddings"), 400)
    assert error["param"] == "input"
    ollama = _chat(live, {"model": MODEL, "input": ["x"] * 9}, "/api/embed")
    assert ollama.status_code == 400 and "input" in ollama.json()["error"]


def test_attack_embedding_request_flood_is_admitted_not_piled_up(live: LiveRuntime) -> None:
    """Two dozen concurrent embedding calls: beyond parallel + queueLength they are refused (429 for
    OpenAI clients), the rest are answered, and /healthz keeps answering."""
    body = {"model": MODEL, "input": ["the quick brown fox " * 20] * 8}
    limits = httpx.Limits(max_connections=24)
    with (
        HealthProbe(live.url) as probe,
        httpx.Client(base_url=live.url, timeout=60, limits=limits) as client,
        concurrent.futures.ThreadPoolExecutor(24) as pool,
    ):
        answers = list(pool.map(lambda _: client.post("/v1/embeddings", json=body), range(24)))
    statuses = sorted({r.status_code for r in answers})
    assert set(statuses) <= {200, 429}, statuses
    assert 200 in statuses
    assert 429 in statuses, "no embedding call was refused: they are not going through admission"
    probe.assert_answered()


def test_prompt_work_runs_off_the_event_loop(tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Template rendering, tokenizing and JSON schema -> grammar each run on a worker thread,
    not the event loop's (and not the decode thread: llama.cpp's decode stays on one thread)."""
    import asyncio
    import threading

    from slm_runtime.backends import gguf_batched
    from slm_runtime.cli import build_engine
    from slm_runtime.config import RuntimeConfig
    from slm_runtime.server.app import create_app

    settings = RuntimeConfig.model_validate(base_config(tiny_gguf))
    engine = build_engine(settings)
    app = create_app(settings, engine)
    service = app.state.service
    seen: dict[str, str] = {}

    def spy(name: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name] = threading.current_thread().name
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(engine, "tokenize_prompt", spy("tokenize", engine.tokenize_prompt))
    monkeypatch.setattr(service, "render_chat", spy("render", service.render_chat))
    monkeypatch.setattr(gguf_batched, "_grammar_for", spy("grammar", gguf_batched._grammar_for))
    body = {
        "model": MODEL,
        "messages": _user("hi"),
        "max_tokens": 2,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
    }

    async def run() -> tuple[int, str]:
        await service.start_loading()
        loop_thread = threading.current_thread().name
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as client:
                response = await client.post("/v1/chat/completions", json=body)
        finally:
            await service.shutdown()
        return response.status_code, loop_thread

    status, loop_thread = asyncio.run(run())
    assert status == 200
    assert set(seen) == {"tokenize", "render", "grammar"}
    assert loop_thread not in seen.values()
    assert engine.decode_thread.name not in seen.values()
    assert seen["render"].startswith("slm-prep") and seen["tokenize"].startswith("slm-tokenize")
