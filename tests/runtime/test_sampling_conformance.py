"""Sampling conformance: our answers equal llama.cpp's `llama-server`'s, token for token.

llama-server (built from the llama.cpp sources our wheel is built from, by the same helper the
benchmarks use: benchmarks/llama_server.py; it builds it when the cache is cold) is the
reference for what a sampling parameter does. Both serve the real SmolLM2-135M-Instruct with
the same threads and slots; each case sends the same prompt (the model's chat template around
a user message) and the same parameters, with every llama.cpp default spelled out, and the
texts must be equal. Greedy cases check the penalties, truncation samplers, stop strings and
length; seeded cases check that the chain (order, RNG) is llama-server's too. Ours runs at
`parallel: 1` and `parallel: 4`: the slot count may not change an answer.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from .conftest import RunningServer, _serve, free_port, settings_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CTX = 1024
THREADS = 1
MODEL = "tiny"

COUNT = "List the numbers from 1 to 20."
STORY = "Write a short story about a robot who learns to paint."

LLAMA_DEFAULTS: dict[str, Any] = {
    "temperature": 0.0,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "mirostat": 0,
    "num_predict": 48,
}

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "greedy": (COUNT, {}),
    "repeat_penalty_1.1": (COUNT, {"repeat_penalty": 1.1}),
    "repeat_penalty_1.3": (COUNT, {"repeat_penalty": 1.3}),
    "repeat_penalty_1.3_last_16": (COUNT, {"repeat_penalty": 1.3, "repeat_last_n": 16}),
    "presence_penalty": (COUNT, {"presence_penalty": 1.5}),
    "frequency_penalty": (COUNT, {"frequency_penalty": 0.7}),
    "truncation_samplers_greedy": (STORY, {"top_k": 5, "top_p": 0.5, "min_p": 0.2}),
    "stop": (COUNT, {"stop": ["7"]}),
    "max_tokens": (STORY, {"num_predict": 9}),
    "seed_temperature": (STORY, {"temperature": 0.8, "seed": 42}),
    "seed_hot_top_k_0": (STORY, {"temperature": 1.3, "seed": 3, "top_k": 0, "top_p": 1.0, "min_p": 0.0}),
    "seed_top_k_min_p": (STORY, {"temperature": 1.0, "seed": 5, "top_k": 20, "min_p": 0.1}),
    "seed_typical_p": (STORY, {"temperature": 1.0, "seed": 9, "typical_p": 0.6}),
    "seed_penalties": (
        STORY,
        {"temperature": 0.9, "seed": 1, "repeat_penalty": 1.2, "presence_penalty": 0.5},
    ),
    "mirostat_2": (STORY, {"temperature": 0.9, "seed": 4, "mirostat": 2, "mirostat_tau": 4.0}),
}


def _helper() -> ModuleType:
    """benchmarks/llama_server.py (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location("llama_server", ROOT / "benchmarks" / "llama_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["llama_server"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _helper().build()  # cached; a cold cache builds it (minutes)
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "log.txt"
    cmd = [str(binary), "-m", str(smollm2_gguf), "-np", "4", "-c", str(CTX * 4)]
    cmd += ["-t", str(THREADS), "-tb", str(THREADS), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama-server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not get ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module", params=[1, 4], ids=["parallel1", "parallel4"])
def ours(smollm2_gguf: Path, request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    runtime = {"contextLength": CTX, "threads": THREADS, "parallel": request.param}
    yield from _serve(settings_for(smollm2_gguf, runtime=runtime))


@pytest.fixture(scope="module")
def reference(llama_server: str) -> dict[str, str]:
    """llama-server's answer per case, asked once."""
    return {}


def _prompt(server: RunningServer, user: str) -> str:
    return str(server.service.render_chat([{"role": "user", "content": user}]))


def _llama_server_answer(url: str, prompt: str, params: dict[str, Any]) -> str:
    body = {k: v for k, v in params.items() if k != "num_predict"}
    body.update(prompt=prompt, n_predict=params["num_predict"], stream=False)
    r = httpx.post(f"{url}/completion", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return str(r.json()["content"])


def _our_answer(server: RunningServer, prompt: str, params: dict[str, Any]) -> str:
    body = {"model": MODEL, "prompt": prompt, "raw": True, "stream": False, "options": params}
    r = httpx.post(f"{server.url}/api/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return str(r.json()["response"])


@pytest.mark.parametrize("case", list(CASES))
def test_output_equals_llama_server(
    case: str, ours: RunningServer, llama_server: str, reference: dict[str, str]
) -> None:
    user, overrides = CASES[case]
    params = {**LLAMA_DEFAULTS, **overrides}
    prompt = _prompt(ours, user)
    if case not in reference:
        reference[case] = _llama_server_answer(llama_server, prompt, params)
    assert reference[case], "llama-server answered nothing"
    assert _our_answer(ours, prompt, params) == reference[case]
    if case not in ("greedy", "truncation_samplers_greedy"):
        # Every parameter set changes the answer, so the equality above is not vacuous.
        plain = _llama_server_answer(llama_server, _prompt(ours, user), {**LLAMA_DEFAULTS})
        assert reference[case] != plain


def test_openai_penalties_equal_llama_server(ours: RunningServer, llama_server: str) -> None:
    """OpenAI's presence/frequency penalties mean llama.cpp's (they were ignored before)."""
    prompt = _prompt(ours, COUNT)
    params = {**LLAMA_DEFAULTS, "presence_penalty": 0.6, "frequency_penalty": 0.4}
    expected = _llama_server_answer(llama_server, prompt, params)
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": params["num_predict"],
        "temperature": 0,
        "presence_penalty": 0.6,
        "frequency_penalty": 0.4,
    }
    r = httpx.post(f"{ours.url}/v1/completions", json=body, timeout=300)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["text"] == expected
