"""The Ollama API over a real socket, driven by the official `ollama` client (unmodified)."""

from __future__ import annotations

import json
import math

import httpx
import ollama
import pytest

from .conftest import MODEL, RunningServer

DONE_FIELDS = {
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}


def client(server: RunningServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def test_generate(gguf_server: RunningServer) -> None:
    out = client(gguf_server).generate(
        model=MODEL, prompt="Why is the sky blue?", options={"num_predict": 5, "seed": 1}
    )
    assert out.done
    assert out.done_reason == "length"
    assert out.eval_count == 5
    assert out.prompt_eval_count and out.prompt_eval_count > 0
    assert out.total_duration and out.eval_duration
    stream = list(
        client(gguf_server).generate(
            model=MODEL, prompt="Why is the sky blue?", stream=True, options={"num_predict": 5, "seed": 1}
        )
    )
    assert stream[-1].done
    assert not any(chunk.done for chunk in stream[:-1])
    assert "".join(chunk.response for chunk in stream) == out.response


def test_generate_raw_system_and_defaults(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    raw = c.generate(model=MODEL, prompt="abc", raw=True, options={"num_predict": 2, "temperature": 0})
    assert raw.eval_count == 2
    with_system = c.generate(
        model=MODEL, prompt="abc", system="Be brief.", options={"num_predict": 2, "num_ctx": 256}
    )
    with pytest.raises(ollama.ResponseError, match="num_ctx 8192 is larger") as beyond:
        c.generate(model=MODEL, prompt="abc", options={"num_ctx": 8192})
    assert beyond.value.status_code == 400
    assert with_system.eval_count == 2
    assert with_system.prompt_eval_count and raw.prompt_eval_count
    assert with_system.prompt_eval_count > raw.prompt_eval_count
    loaded = c.generate(model=MODEL, prompt="")  # Ollama's "load the model" call
    assert loaded.done_reason == "load"


def test_chat(gguf_server: RunningServer) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    out = client(gguf_server).chat(model=MODEL, messages=messages, options={"num_predict": 4})
    assert out.message.role == "assistant"
    assert out.eval_count == 4
    chunks = list(
        client(gguf_server).chat(
            model=MODEL, messages=messages, stream=True, options={"num_predict": 4, "stop": ["zzz"]}
        )
    )
    assert chunks[-1].done
    assert chunks[-1].done_reason == "length"
    assert all(c.message.role == "assistant" for c in chunks)


def test_format_json(gguf_server: RunningServer) -> None:
    out = client(gguf_server).generate(
        model=MODEL, prompt="json please", format="json", options={"num_predict": 6}
    )
    assert out.response.lstrip().startswith(("{", "["))
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    out = client(gguf_server).chat(
        model=MODEL, messages=[{"role": "user", "content": "x"}], format=schema, options={"num_predict": 6}
    )
    assert out.message.content.startswith("{")


def test_embed_and_embeddings(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    out = c.embed(model=MODEL, input=["one", "two"])
    assert len(out.embeddings) == 2
    assert len(out.embeddings[0]) == 64
    legacy = c.embeddings(model=MODEL, prompt="one")  # Ollama's legacy API: not normalised
    norm = math.sqrt(sum(v * v for v in legacy.embedding))
    assert abs(sum(v * v for v in out.embeddings[0]) - 1) < 1e-4
    assert [v / norm for v in legacy.embedding] == pytest.approx(list(out.embeddings[0]), abs=1e-5)


def test_tags_show_ps_version_root(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    listed = c.list()
    assert [m.model for m in listed.models] == [MODEL]
    assert listed.models[0].details and listed.models[0].details.quantization_level == "Q8_0"
    shown = c.show(MODEL)
    assert shown.template and "im_start" in shown.template
    assert shown.details and shown.details.format == "gguf"
    assert shown.capabilities and "tools" in shown.capabilities
    assert [m.model for m in c.ps().models] == [MODEL]
    assert httpx.get(f"{gguf_server.url}/api/version").json()["version"]
    assert httpx.get(gguf_server.url).text == "Ollama is running"
    assert httpx.head(gguf_server.url).status_code == 200
    assert c.show(f"{MODEL}:latest").details


def test_errors_use_ollama_shape(gguf_server: RunningServer) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client(gguf_server).generate(model="missing", prompt="x")
    assert err.value.status_code == 404
    url = f"{gguf_server.url}/api/chat"
    for body in (
        b"{oops",
        b'{"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "tiny", "messages": [], "options": {"temperature": "warm"}}',
        b'{"messages": []}',
    ):
        r = httpx.post(url, content=body)
        assert r.status_code == 400, body
        assert isinstance(r.json()["error"], str)


def test_ndjson_final_chunk_fields(gguf_server: RunningServer) -> None:
    with httpx.stream(
        "POST",
        f"{gguf_server.url}/api/generate",
        json={"model": MODEL, "prompt": "hi", "options": {"num_predict": 3}},
    ) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True
    assert set(lines[-1]) >= DONE_FIELDS
    assert lines[-1]["eval_count"] == 3


def test_onnx_generate_and_chat(onnx_server: RunningServer) -> None:
    c = client(onnx_server)
    out = c.generate(model=MODEL, prompt="hello", options={"num_predict": 4, "temperature": 0.5, "top_k": 5})
    assert out.eval_count == 4
    chunks = list(
        c.chat(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, options={"num_predict": 4}
        )
    )
    assert chunks[-1].done
    with pytest.raises(ollama.ResponseError) as err:
        c.embed(model=MODEL, input="x")
    assert err.value.status_code == 400
    assert c.show(MODEL).details.format == "onnx"  # type: ignore[union-attr]


def test_unknown_fields_are_400_naming_them(gguf_server: RunningServer) -> None:
    for path, body, name in [
        ("/api/generate", {"prompt": "x", "temprature": 1}, "temprature"),
        ("/api/chat", {"messages": [{"role": "user", "content": "x", "colour": 1}]}, "messages.0.colour"),
        ("/api/generate", {"prompt": "x", "images": ["aGk="]}, "images"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
            "messages.0.images",
        ),
        ("/api/generate", {"prompt": "x", "think": True}, "think"),
        ("/api/generate", {"prompt": "x", "context": [1, 2]}, "context"),
    ]:
        r = httpx.post(f"{gguf_server.url}{path}", json={"model": MODEL, "stream": False, **body}, timeout=30)
        assert r.status_code == 400, (body, r.text)
        assert f"'{name}'" in r.json()["error"]
    with pytest.raises(ollama.ResponseError, match="vision"):
        client(gguf_server).generate(model=MODEL, prompt="what is this?", images=[b"\x89PNG"])


def test_keep_alive_and_empty_images_accepted(gguf_server: RunningServer) -> None:
    out = client(gguf_server).chat(
        model=MODEL,
        messages=[{"role": "user", "content": "hi", "images": []}],
        keep_alive="5m",
        options={"num_predict": 2},
    )
    assert out.eval_count == 2
    assert (
        client(gguf_server)
        .generate(model=MODEL, prompt="hi", keep_alive=0, think=False, options={"num_predict": 1})
        .done
    )


def test_pull_served_model(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    assert c.pull(MODEL).status == "success"
    statuses = [p.status for p in c.pull(f"{MODEL}:latest", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    with pytest.raises(ollama.ResponseError) as err:
        c.pull("llama3.2")
    assert err.value.status_code == 403
    assert "SLMDeployment" in str(err.value.error)


def test_model_management_is_declared_by_the_slmdeployment(gguf_server: RunningServer) -> None:
    c = client(gguf_server)
    with pytest.raises(ollama.ResponseError) as err:
        c.create(model="mine", from_=MODEL, system="You are a pirate.")
    assert err.value.status_code == 403 and "SLMDeployment" in str(err.value.error)
    for call in (lambda: c.copy(MODEL, "other"), lambda: c.delete(MODEL), lambda: c.push(MODEL)):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 403
    r = httpx.post(f"{gguf_server.url}/api/blobs/sha256:abc", content=b"x")
    assert r.status_code == 403 and "SLMDeployment" in r.json()["error"]


def test_health_endpoints(gguf_server: RunningServer) -> None:
    assert httpx.get(f"{gguf_server.url}/api/health").status_code == 200
    assert httpx.head(f"{gguf_server.url}/api/health").status_code == 200
    assert httpx.head(gguf_server.url).status_code == 200


def test_ps_reports_weights_plus_kv_cache(smollm2_server: RunningServer) -> None:
    (entry,) = client(smollm2_server).ps().models
    info = smollm2_server.service.info
    kv = smollm2_server.service.engine.kv_bytes_per_slot
    assert kv > 0
    assert entry.size == info.size_bytes + 4 * kv  # parallel 4
    assert entry.size_vram == 0  # CPU
