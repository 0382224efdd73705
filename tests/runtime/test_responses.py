"""`POST /v1/responses`: the event builder (pure) and the real model via the official client."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from slm_runtime.backends.base import FinishEvent
from slm_runtime.errors import BadRequestError
from slm_runtime.server.responses import ResponseEvents, ResponseShell, conversation, functions_of
from slm_runtime.server.schemas import ResponsesRequest
from slm_runtime.server.tools import ArgumentsDelta, CallStart, ContentDelta, ToolChoice

from .conftest import REAL_MODEL, RunningServer

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
}


def _body(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": REAL_MODEL, "input": "hi", **fields})


def test_conversation_from_items() -> None:
    body = _body(
        instructions="Be brief.",
        input=[
            {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]},
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "get_weather",
                "arguments": '{"location":"Paris"}',
            },
            {"type": "function_call_output", "call_id": "c1", "output": "18C"},
            {"type": "message", "role": "developer", "content": "Answer in French."},
        ],
    )
    assert conversation(body) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {"location": "Paris"}}],
        },
        {"role": "tool", "content": "18C", "tool_call_id": "c1", "name": "get_weather"},
        {"role": "system", "content": "Answer in French."},
    ]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "input_image",
        ),
        ({"input": [{"type": "reasoning"}]}, "reasoning"),
        ({"input": []}, "must not be empty"),
    ],
)
def test_conversation_rejects(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(BadRequestError, match=match):
        conversation(_body(**fields))


def test_functions_of_rejects_builtin_tools() -> None:
    assert [f.name for f in functions_of([WEATHER_TOOL])] == ["get_weather"]
    with pytest.raises(BadRequestError, match="web_search"):
        functions_of([{"type": "web_search"}])


def test_events_for_text_then_call() -> None:
    shell = ResponseShell(_body(), functions_of([WEATHER_TOOL]), ToolChoice("auto"))
    ev = ResponseEvents(shell)
    events = ev.start()
    for piece in (
        ContentDelta("Let me "),
        ContentDelta("check."),
        CallStart(0, "call_1", "get_weather"),
        ArgumentsDelta(0, '{"location":'),
        ArgumentsDelta(0, ' "Paris"}'),
    ):
        events += ev.feed(piece)
    events += ev.finish(FinishEvent("stop", 10, 5, 0, 0))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["usage"]["total_tokens"] == 15
    message, call = final["output"]
    assert message["content"][0]["text"] == "Let me check."
    assert call["call_id"] == "call_1" and json.loads(call["arguments"]) == {"location": "Paris"}
    assert events[12]["arguments"] == call["arguments"]


def test_events_empty_and_truncated_answer() -> None:
    ev = ResponseEvents(ResponseShell(_body(), [], ToolChoice("none")))
    events = ev.start() + ev.finish(FinishEvent("length", 3, 0, 0, 0))
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["type"] == "message"  # always one message, even empty


# -- the real model --------------------------------------------------------------------------------


def _client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=120)


def test_responses_create(smollm2_server: RunningServer) -> None:
    out = _client(smollm2_server).responses.create(
        model=REAL_MODEL,
        instructions="You are a geography teacher.",
        input="What is the capital of France?",
        max_output_tokens=40,
        temperature=0,
    )
    assert out.object == "response" and out.id.startswith("resp_")
    assert out.output_text.strip()  # (which words: greedy SmolLM2 hovers between Paris and others)
    assert out.usage is not None and 0 < out.usage.output_tokens <= 40
    assert out.output[0].type == "message"


def test_responses_message_list_input(smollm2_server: RunningServer) -> None:
    c = _client(smollm2_server)
    question = "What is the capital of France?"
    alone = c.responses.create(model=REAL_MODEL, input=question, max_output_tokens=1)
    out = c.responses.create(
        model=REAL_MODEL,
        input=[
            {"role": "developer", "content": "You are a geography teacher."},
            {"role": "user", "content": "Hello!"},
            {"role": "assistant", "content": "Hello! How can I help you?"},
            {"role": "user", "content": [{"type": "input_text", "text": question}]},
        ],
        max_output_tokens=30,
        temperature=0,
    )
    assert out.output_text.strip()
    assert out.usage is not None and alone.usage is not None
    assert out.usage.input_tokens > alone.usage.input_tokens + 10  # the earlier turns are in the prompt
    assert alone.status == "incomplete" and alone.incomplete_details is not None


def test_responses_stream(smollm2_server: RunningServer) -> None:
    deltas: list[str] = []
    events: list[Any] = []
    with _client(smollm2_server).responses.stream(
        model=REAL_MODEL,
        instructions="You are a geography teacher.",
        input="What is the capital of France?",
        max_output_tokens=30,
        temperature=0,
    ) as stream:
        for event in stream:
            events.append(event)
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:-1] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ]
    # a greedy SmolLM2 goes on past 30 tokens: OpenAI ends that with response.incomplete
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response
    assert len(deltas) > 1 and "".join(deltas) == final.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))


TOOL_CALL_TOKENS = 256
"""Room for a sampled call's arguments to end: with 60, a CI run's sampled arguments ran out of
tokens once, and the stream rightly ended with `response.incomplete`, not `response.completed`."""


def test_responses_required_function_call(smollm2_server: RunningServer) -> None:
    c = _client(smollm2_server)
    out = c.responses.create(
        model=REAL_MODEL,
        input="What is the weather like in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice="required",
        max_output_tokens=TOOL_CALL_TOKENS,
    )
    calls = [item for item in out.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments)["location"], str)
    with c.responses.stream(
        model=REAL_MODEL,
        input="What is the weather like in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=TOOL_CALL_TOKENS,
    ) as stream:
        arg_deltas = [e.delta for e in stream if e.type == "response.function_call_arguments.delta"]
        final = stream.get_final_response()
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert "".join(arg_deltas) == call.arguments
    assert isinstance(json.loads(call.arguments)["location"], str)


def test_responses_json_schema(smollm2_server: RunningServer) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    out = _client(smollm2_server).responses.create(
        model=REAL_MODEL,
        input="Name a city and its country.",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema, "strict": True}},
        max_output_tokens=200,
        temperature=0,  # sampled, a long string can outrun the budget and leave the JSON cut off
    )
    assert out.status == "completed", out
    data = json.loads(out.output_text)
    assert set(data) == {"city", "country"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
        ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ],
)
def test_responses_rejects(smollm2_server: RunningServer, fields: dict[str, Any], param: str) -> None:
    r = httpx.post(
        f"{smollm2_server.url}/v1/responses", json={"model": REAL_MODEL, "input": "hi", **fields}, timeout=30
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_responses_store_error_through_client(smollm2_server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError, match="stateless"):
        _client(smollm2_server).responses.create(model=REAL_MODEL, input="hi", store=True)
