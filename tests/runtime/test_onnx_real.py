"""The real SmolLM2-135M-Instruct as an onnxruntime-genai model, made by `slm-runtime convert`:
quantization, conversion and its cache, tokenizer and greedy agreement with the GGUF, and answers
(plain and structured) through our server with the official clients.

The conversions are cached under ~/.cache/slm-operator/onnx (keyed by the GGUF's sha256, the
precision and the converter version), so only the first run pays for them (~20 s each).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import ollama
import openai
import pytest

from slm_runtime.cli import main as cli_main
from slm_runtime.convert import ConversionError, convert_gguf_to_onnx
from slm_runtime.convert.gguf_source import arch_from_metadata, tokenizer_from_metadata
from slm_runtime.convert.to_onnx import cache_key
from slm_runtime.tiny.onnx_model import quantize_blockwise

from .conftest import RunningServer, _serve, settings_for

pytestmark = pytest.mark.slow

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="session")
def smollm2_onnx(smollm2_gguf: Path) -> dict[str, Path]:
    return {p: convert_gguf_to_onnx(smollm2_gguf, p).path for p in ("int4", "fp32")}


@pytest.fixture(scope="module")
def int4_server(smollm2_onnx: dict[str, Path]) -> Iterator[RunningServer]:
    yield from _serve(settings_for(smollm2_onnx["int4"], model={"name": "smollm2"}))


def test_int4_quantization_error_is_at_most_half_a_step() -> None:
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q = quantize_blockwise(w, 4)
    assert q.packed().shape == (8, 2, 16)
    assert q.packed_zero_points().shape == (8, 1)
    err = np.abs(q.dequantize() - w).reshape(8, 2, 32)
    assert np.all(err <= q.scales[..., None] / 2 + 1e-6)


def test_8_bit_blocks_give_q8_0_weights_back_exactly() -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(-127, 128, (4, 64)).astype(np.float32)
    codes[:, 0] = 127  # Q8_0's quantizer maps each block's largest magnitude to 127
    codes[:, 32] = -127
    w = codes * np.float32(0.013)
    assert np.array_equal(quantize_blockwise(w, 8).dequantize(), w)


def test_only_llama_with_a_byte_level_tokenizer_converts(gemma3_gguf: Path, tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="gemma3"):
        convert_gguf_to_onnx(gemma3_gguf, "int4", cache=tmp_path)
    with pytest.raises(ConversionError, match=r"llama\.embedding_length"):
        arch_from_metadata({"general.architecture": "llama"})
    with pytest.raises(ConversionError, match="pre-tokenizer 'llama-bpe'"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe"})
    assert cache_key("a" * 64, "int4") != cache_key("a" * 64, "fp32")


def test_convert_command_reuses_the_cache(
    smollm2_gguf: Path, smollm2_onnx: dict[str, Path], tmp_path: Path
) -> None:
    again = convert_gguf_to_onnx(smollm2_gguf, "int4")
    assert again.cache_hit
    assert again.path == smollm2_onnx["int4"]
    out = tmp_path / "smollm2-int4"
    argv = ["convert", str(smollm2_gguf), "--to", "onnx", "--precision", "int4", "--out", str(out)]
    assert cli_main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in smollm2_onnx["int4"].iterdir())
    assert (out / "model.onnx").stat().st_size == (smollm2_onnx["int4"] / "model.onnx").stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-int4"]  # no temporary left behind


def test_tokenizer_json_tokenizes_like_llama_cpp(smollm2_gguf: Path, smollm2_onnx: dict[str, Path]) -> None:
    import llama_cpp
    import onnxruntime_genai as og

    vocab = llama_cpp.Llama(str(smollm2_gguf), vocab_only=True, verbose=False)
    tokenizer = og.Tokenizer(og.Model(str(smollm2_onnx["int4"])))
    texts = [
        CHATML.format("What is the capital of France?"),
        "In 2024, 12345 people paid $3.50 each — naïve café, 東京!",
        "def f(x):\n    return x  # tabs\tand  spaces   ",
        "<|im_start|>system\nYou are helpful<|im_end|>\n",
    ]
    for text in texts:
        expected = vocab.tokenize(text.encode(), add_bos=False, special=True)
        assert [int(t) for t in tokenizer.encode(text)] == expected, text


def test_fp32_onnx_and_the_gguf_agree_on_greedy_tokens(
    smollm2_gguf: Path, smollm2_onnx: dict[str, Path]
) -> None:
    """Teacher-forced along llama.cpp's greedy path: at every step the fp32 ONNX model's logits
    are llama.cpp's (cosine >= 0.99; llama.cpp keeps an f16 KV cache and multiplies with Q8
    activations, we compute in fp32) and its greedy token is llama.cpp's, except at a near-tie
    (top two within 0.3), where those rounding differences may pick either."""
    import llama_cpp
    import onnxruntime_genai as og

    prompts = [
        CHATML.format("What is the capital of France?"),
        CHATML.format("Name three colours."),
        CHATML.format("Write a haiku about the sea."),
        "The quick brown fox",
    ]
    llm = llama_cpp.Llama(str(smollm2_gguf), n_ctx=256, n_threads=1, logits_all=True, verbose=False)
    model = og.Model(str(smollm2_onnx["fp32"]))
    agreed = steps = 0
    cosines: list[float] = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        generated: list[int] = []
        for token in llm.generate(ids, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0, reset=True):
            generated.append(int(token))
            if len(generated) == 8 or token == llm.token_eos():
                break
        # logits_all: llm.scores[i] holds the logits after token i of what generate() evaluated
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + len(generated) + 1)
        gen = og.Generator(model, params)
        gen.append_tokens(ids)
        for step, token in enumerate(generated):
            ours = np.asarray(gen.get_logits(), dtype=np.float64).reshape(-1)
            theirs = np.asarray(llm.scores[len(ids) + step - 1], dtype=np.float64)
            cosine = ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)
            cosines.append(cosine)
            assert cosine >= 0.99, (prompt, step, cosine)
            steps += 1
            if int(np.argmax(ours)) == token:
                agreed += 1
            else:
                assert ours.max() - ours[token] < 0.3, (prompt, step, "not a near-tie")
            gen.append_tokens([token])
    assert steps >= 24
    assert agreed >= steps - 2, (agreed, steps)
    assert float(np.median(cosines)) >= 0.999
    print(f"agreed {agreed}/{steps}, cosine min {min(cosines):.5f} median {np.median(cosines):.5f}")


def test_int4_answers_paris_through_the_server(int4_server: RunningServer) -> None:
    client = openai.OpenAI(base_url=f"{int4_server.url}/v1", api_key="-")
    out = client.chat.completions.create(
        model="smollm2",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    assert "Paris" in (out.choices[0].message.content or "")
    assert out.choices[0].finish_reason == "stop"
    assert int4_server.metric("slm_execution_provider", provider="cpu", fallback="false") == 1


CITY = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "country": {"type": "string", "maxLength": 40},
    },
    "required": ["city", "country"],
    "additionalProperties": False,
}


def test_int4_structured_output_openai_and_ollama(int4_server: RunningServer) -> None:
    messages = [{"role": "user", "content": "Which city is the capital of France? Answer in JSON."}]
    client = openai.OpenAI(base_url=f"{int4_server.url}/v1", api_key="-")
    out = client.chat.completions.create(
        model="smollm2",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=48,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}},
    )
    answer = json.loads(out.choices[0].message.content or "")
    jsonschema.validate(answer, CITY)
    assert answer["city"] == "Paris"
    assert out.choices[0].finish_reason == "stop"
    reply = ollama.Client(host=int4_server.url).chat(
        model="smollm2", messages=messages, format="json", options={"num_predict": 48, "temperature": 0}
    )
    assert isinstance(json.loads(reply.message.content or ""), dict)


def test_int4_invalid_schema_is_a_400_naming_response_format(int4_server: RunningServer) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
        },
    }
    r = httpx.post(f"{int4_server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "response_format"
    assert "nonsense" in r.json()["error"]["message"]
