"""Clients nobody here wrote, unmodified, against the real SmolLM2 at parallel 4.

LangChain (`langchain-openai`, `langchain-ollama`) and LiteLLM (providers `openai/`, `ollama/`,
`ollama_chat/`): chat, streaming, tools, structured output and embeddings, as their users call
them. They send fields our own tests would not think of, so these also check the allow-list of
accepted-and-ignored fields. LiteLLM reads its model-cost map from the package, not the network.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

import langchain_ollama
import langchain_openai
import litellm
import pytest
from pydantic import BaseModel

from .conftest import REAL_MODEL, RunningServer

QUESTION = "What is the capital of France?"
SYSTEM = "You are a geography teacher."
CHAT = [("system", SYSTEM), ("human", QUESTION)]  # LangChain's message tuples
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string", "description": "the city"}},
            "required": ["location"],
        },
    },
}
WEATHER_QUESTION = "What is the weather like in Paris today?"


class Place(BaseModel):
    city: str
    country: str


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


PARAPHRASES = ("The cat sits on the mat.", "A cat is sitting on the rug.")
UNRELATED = "Quarterly tax filings are due in April."


def _assert_paraphrases_closer(vectors: Sequence[Sequence[float]]) -> None:
    a, b, c = vectors
    assert _cosine(a, b) > _cosine(a, c)


def _weather_args(args: Any) -> None:
    args = json.loads(args) if isinstance(args, str) else args
    assert isinstance(args["location"], str)


# -- langchain-openai ---------------------------------------------------------------------------


def _chat_openai(server: RunningServer, **kw: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        model=REAL_MODEL, base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=120, **kw
    )


def test_langchain_openai_chat_and_stream(smollm2_server: RunningServer) -> None:
    llm = _chat_openai(smollm2_server, temperature=0, max_tokens=30)
    answer = llm.invoke(CHAT)
    assert isinstance(answer.content, str) and answer.content.strip()
    chunks = [str(chunk.content) for chunk in llm.stream(CHAT)]
    assert len(chunks) > 1 and "".join(chunks).strip()


def test_langchain_openai_tools(smollm2_server: RunningServer) -> None:
    llm = _chat_openai(smollm2_server, max_tokens=40, temperature=0).bind_tools(
        [WEATHER], tool_choice="required"
    )
    message = llm.invoke(WEATHER_QUESTION)
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    _weather_args(call["args"])
    streamed = None
    for chunk in llm.stream(WEATHER_QUESTION):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed is not None
    (call,) = streamed.tool_calls  # LangChain reassembles the incremental argument deltas
    assert call["name"] == "get_weather"
    _weather_args(call["args"])


@pytest.mark.parametrize("method", ["json_schema", "function_calling", "json_mode"])
def test_langchain_openai_structured_output(smollm2_server: RunningServer, method: str) -> None:
    llm = _chat_openai(smollm2_server, max_tokens=60, temperature=0)
    prompt = "Name a city and its country." + (
        " Answer in JSON with keys city and country." if method == "json_mode" else ""
    )
    if method == "json_mode":
        out = llm.with_structured_output(None, method=method).invoke(prompt)
        assert isinstance(out, dict)
        return
    place = llm.with_structured_output(Place, method=method).invoke(prompt)
    assert isinstance(place, Place) and place.city


def test_langchain_openai_embeddings(smollm2_server: RunningServer) -> None:
    emb = langchain_openai.OpenAIEmbeddings(
        model=REAL_MODEL,
        base_url=f"{smollm2_server.url}/v1",
        api_key="-",
        check_embedding_ctx_length=False,  # it would tokenize with tiktoken (a download)
        max_retries=0,
    )
    _assert_paraphrases_closer(emb.embed_documents([*PARAPHRASES, UNRELATED]))


# -- langchain-ollama ---------------------------------------------------------------------------


def _chat_ollama(server: RunningServer, **kw: Any) -> Any:
    return langchain_ollama.ChatOllama(model=REAL_MODEL, base_url=server.url, **kw)


def test_langchain_ollama_chat_and_stream(smollm2_server: RunningServer) -> None:
    llm = _chat_ollama(smollm2_server, temperature=0, num_predict=30)
    answer = llm.invoke(CHAT)
    assert isinstance(answer.content, str) and answer.content.strip()
    chunks = [str(chunk.content) for chunk in llm.stream(CHAT)]
    assert len(chunks) > 1 and "".join(chunks).strip()


def test_langchain_ollama_tools(smollm2_server: RunningServer) -> None:
    """ChatOllama has no tool_choice: the model decides; a call it makes is well-formed."""
    llm = _chat_ollama(smollm2_server, temperature=0, num_predict=16).bind_tools([WEATHER])
    message = llm.invoke(WEATHER_QUESTION)
    for call in message.tool_calls:
        assert call["name"] == "get_weather"
        _weather_args(call["args"])
    assert message.tool_calls or message.content


def test_langchain_ollama_structured_output(smollm2_server: RunningServer) -> None:
    llm = _chat_ollama(smollm2_server, num_predict=60, temperature=0)
    place = llm.with_structured_output(Place, method="json_schema").invoke("Name a city and its country.")
    assert isinstance(place, Place) and place.city


def test_langchain_ollama_embeddings(smollm2_server: RunningServer) -> None:
    emb = langchain_ollama.OllamaEmbeddings(model=REAL_MODEL, base_url=smollm2_server.url)
    _assert_paraphrases_closer(emb.embed_documents([*PARAPHRASES, UNRELATED]))


# -- LiteLLM ------------------------------------------------------------------------------------


def _litellm_args(server: RunningServer, provider: str) -> dict[str, Any]:
    base = f"{server.url}/v1" if provider == "openai" else server.url
    return {"model": f"{provider}/{REAL_MODEL}", "api_base": base, "api_key": "-", "timeout": 120}


@pytest.mark.parametrize("provider", ["openai", "ollama", "ollama_chat"])
def test_litellm_chat_and_stream(smollm2_server: RunningServer, provider: str) -> None:
    args = _litellm_args(smollm2_server, provider)
    # litellm's ollama/ flattens the conversation into one /api/generate prompt: no system turn
    messages = MESSAGES if provider != "ollama" else MESSAGES[1:]
    out = litellm.completion(messages=messages, max_tokens=30, temperature=0, **args)
    assert out.choices[0].message.content.strip()
    assert out.usage.completion_tokens > 0
    chunks = list(litellm.completion(messages=messages, max_tokens=30, temperature=0, stream=True, **args))
    assert len(chunks) > 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()


@pytest.mark.parametrize("provider", ["openai", "ollama_chat"])
def test_litellm_tools(smollm2_server: RunningServer, provider: str) -> None:
    """`openai/` forwards tool_choice, so the call is forced; `ollama_chat/` drops it (Ollama has
    none) and the model decides: a call it makes is well-formed."""
    out = litellm.completion(
        messages=[{"role": "user", "content": WEATHER_QUESTION}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
        **_litellm_args(smollm2_server, provider),
    )
    message = out.choices[0].message
    if provider == "openai":
        assert message.tool_calls, "tool_choice required gave no call"
        assert out.choices[0].finish_reason == "tool_calls"
    else:
        assert message.tool_calls or message.content
    for call in message.tool_calls or []:
        assert call.function.name == "get_weather"
        _weather_args(call.function.arguments)


@pytest.mark.parametrize("provider", ["openai", "ollama_chat"])
def test_litellm_structured_output(smollm2_server: RunningServer, provider: str) -> None:
    out = litellm.completion(
        messages=[{"role": "user", "content": "Name a city and its country."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "place", "schema": Place.model_json_schema(), "strict": True},
        },
        max_tokens=60,
        temperature=0,
        **_litellm_args(smollm2_server, provider),
    )
    place = Place.model_validate_json(out.choices[0].message.content)
    assert place.city


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_litellm_embeddings(smollm2_server: RunningServer, provider: str) -> None:
    out = litellm.embedding(input=[*PARAPHRASES, UNRELATED], **_litellm_args(smollm2_server, provider))
    _assert_paraphrases_closer([d["embedding"] for d in out.data])
