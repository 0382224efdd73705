"""The OpenAI API over a real socket, driven by the official `openai` client (unmodified)."""

from __future__ import annotations

import httpx
import openai
import pytest

from .conftest import MODEL, RunningServer

MESSAGES = [{"role": "user", "content": "Say hello"}]


def client(server: RunningServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_chat_completion(gguf_server: RunningServer) -> None:
    out = client(gguf_server).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, seed=1)
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None
    assert out.usage.completion_tokens == 5
    assert out.usage.total_tokens == out.usage.prompt_tokens + 5


def test_chat_completion_stream_with_usage(gguf_server: RunningServer) -> None:
    stream = client(gguf_server).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0.5,
        top_p=0.9,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_completions(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    out = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, seed=7)
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None
    assert out.usage.completion_tokens == 4
    streamed = "".join(
        ch.choices[0].text
        for ch in c.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=4, seed=7, stream=True
        )
    )
    assert streamed == out.choices[0].text  # same seed, same text, streamed or not


def test_stop_and_logit_bias(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    out = c.completions.create(
        model=MODEL, prompt="a b c", max_tokens=3, temperature=0, logit_bias={"97": 100}
    )
    assert out.choices[0].text == "aaa"  # token 97 is the byte 'a'; +100 makes it certain
    stopped = c.completions.create(
        model=MODEL, prompt="a b c", max_tokens=10, temperature=0, logit_bias={"97": 100}, stop=["aa"]
    )
    assert stopped.choices[0].text == ""
    assert stopped.choices[0].finish_reason == "stop"


def test_response_format_json(gguf_server: RunningServer) -> None:
    out = client(gguf_server).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=6, response_format={"type": "json_object"}
    )
    assert (out.choices[0].message.content or "").lstrip().startswith(("{", "["))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    out = client(gguf_server).chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    )
    assert (out.choices[0].message.content or "").startswith("{")


def test_embeddings_float_and_base64(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    default = c.embeddings.create(model=MODEL, input=["hello", "world"])  # the client asks for base64
    assert len(default.data) == 2
    assert len(default.data[0].embedding) == 64
    floats = c.embeddings.create(model=MODEL, input="hello", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(default.data[0].embedding, abs=1e-6)
    assert floats.usage.prompt_tokens > 0


def test_models(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    assert [m.id for m in c.models.list()] == [MODEL]
    assert c.models.retrieve(MODEL).id == MODEL


def test_errors_use_openai_shape(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    with pytest.raises(openai.NotFoundError) as not_found:
        c.chat.completions.create(model="nope", messages=MESSAGES, max_tokens=1)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError, match="n must be at most 16"):
        c.chat.completions.create(model=MODEL, messages=MESSAGES, n=17)
    with pytest.raises(openai.BadRequestError, match="top_logprobs needs logprobs"):
        c.chat.completions.create(model=MODEL, messages=MESSAGES, top_logprobs=2)
    url = f"{gguf_server.url}/v1/chat/completions"
    for body in (
        b"{not json",
        b"[]",
        b'{"model": "tiny", "messages": "hi"}',
        b'{"model": "tiny", "messages": [], "temperature": 1}',
        b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
    ):
        r = httpx.post(url, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, body
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["type"] == "invalid_request_error"
    assert httpx.get(f"{gguf_server.url}/v1/nothing").json()["error"]["message"]


def test_onnx_chat_and_unsupported(onnx_server: RunningServer) -> None:
    c = client(onnx_server)
    out = c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, seed=2)
    assert out.usage is not None
    assert out.usage.completion_tokens == 5
    chunks = list(c.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    with pytest.raises(openai.BadRequestError, match="embeddings"):
        c.embeddings.create(model=MODEL, input="x")
    # Structured output works on ONNX too (onnxruntime-genai guidance); the JSON grammar starts with "{".
    constrained = c.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, response_format={"type": "json_object"}
    )
    assert (constrained.choices[0].message.content or "").lstrip().startswith("{")


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES, "temprature": 0.2}, "temprature"),
        ("/v1/chat/completions", {"messages": MESSAGES, "functions": []}, "functions"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x", "colour": 1}]},
            "messages.0.colour",
        ),
        (
            "/v1/chat/completions",
            {"messages": MESSAGES, "stream_options": {"include_usage": True, "x": 1}},
            "stream_options.x",
        ),
        ("/v1/chat/completions", {"messages": MESSAGES, "modalities": ["text", "audio"]}, "modalities.1"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "content.0.type",
        ),
        ("/v1/completions", {"prompt": "x", "suffix": "y"}, "suffix"),
        ("/v1/embeddings", {"input": "x", "truncate": True}, "truncate"),
    ],
)
def test_unknown_fields_are_400_naming_them(
    gguf_server: RunningServer, path: str, body: dict[str, object], param: str
) -> None:
    r = httpx.post(f"{gguf_server.url}{path}", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert param.rsplit(".", maxsplit=1)[-1] in err["message"]


def test_accepted_and_ignored_fields(gguf_server: RunningServer) -> None:
    out = client(gguf_server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        max_tokens=2,
        user="u-1",
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=True,
        stream_options=None,
        seed=3,
    )
    assert out.usage is not None and out.usage.completion_tokens == 2
