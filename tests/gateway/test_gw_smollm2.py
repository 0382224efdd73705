"""What a user sees through the gateway, on the real SmolLM2-135M-Instruct: the right answer,
streamed, with token counts in the audit line, through both official clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import openai
import pytest

from .conftest import GatewayFactory, Served, serve_runtime

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf: Path) -> Iterator[Served]:
    pod = serve_runtime(smollm2_gguf, "smollm2", parallel=2, context=2048)
    yield pod
    pod.stop()


def test_smollm2_answers_through_the_gateway(gateway: GatewayFactory, smollm2: Served) -> None:
    gw = gateway(
        deployments=[{"name": "smollm2", "model": "smollm2", "endpoints": [smollm2.url]}],
        keys=[{"id": "demo", "key": "sk-demo-0123456789", "models": ["smollm2"]}],
    )
    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-demo-0123456789", max_retries=0)
    chunks = list(
        oai.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=16,
            stream=True,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[-1].choices[0].finish_reason == "stop"
    olc = ollama.Client(host=gw.url, headers={"Authorization": "Bearer sk-demo-0123456789"})
    answer = olc.chat(
        model="smollm2",
        messages=[{"role": "user", "content": QUESTION}],
        options={"temperature": 0, "num_predict": 16},
    )
    assert "Paris" in answer.message.content
    first, second = gw.wait_audit(2)
    assert first["key_id"] == second["key_id"] == "demo"
    assert first["prompt_tokens"] == second["prompt_tokens"] > 10  # same chat template, same prompt
    assert first["completion_tokens"] == len([c for c in chunks if c.choices and c.choices[0].delta.content])
    assert second["completion_tokens"] == answer.eval_count
    assert "Paris" not in str(first) and "capital" not in str(first)  # content is not logged by default
