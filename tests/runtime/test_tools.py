"""Tool calling's pure core (format detection, grammar, parsing, streaming), table-driven."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx
import ollama
import openai
import pytest

from slm_runtime.backends.templates import CHATML_TEMPLATE
from slm_runtime.errors import BadRequestError
from slm_runtime.server.tools import (
    GENERIC,
    HERMES,
    LLAMA3,
    MISTRAL,
    PHI4,
    ArgumentsDelta,
    CallStart,
    ContentDelta,
    Function,
    ToolChoice,
    ToolFormat,
    ToolStream,
    call_grammar,
    detect_format,
    for_template,
    parse_calls,
    parse_functions,
    parse_tool_choice,
    system_prompt,
)

from .conftest import REAL_MODEL, RunningServer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["location"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
FUNCTIONS = parse_functions([WEATHER, TIME])

# Snippets of the real templates' tool sections (enough for detection).
QWEN_TEMPLATE = (
    "{%- if tools %}{{- '<tools>' }}{%- for tool in tools %}{{ tool | tojson }}{%- endfor %}"
    "For each function call, return a json object within <tool_call></tool_call> XML tags{%- endif %}"
)
LLAMA32_TEMPLATE = (
    "{{- '<|start_header_id|>system<|end_header_id|>' }}{%- if tools is not none %}"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}'
    "{%- endif %}"
)
MISTRAL_TEMPLATE = (
    "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{%- endif %}[TOOL_CALLS]"
)
PHI4_TEMPLATE = "{% if message['tools'] is defined %}<|tool|>{{ message['tools'] }}<|/tool|>{% endif %}"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (QWEN_TEMPLATE, HERMES),
        (LLAMA32_TEMPLATE, LLAMA3),
        (MISTRAL_TEMPLATE, MISTRAL),
        (PHI4_TEMPLATE, PHI4),
        (CHATML_TEMPLATE, GENERIC),
        ("{{ messages }}", GENERIC),
        ("<|start_header_id|>{{ messages }}", GENERIC),  # Llama 3 without tools in its template
    ],
)
def test_detect_format(template: str, expected: ToolFormat) -> None:
    assert detect_format(template) == expected


CALL = '{"name": "get_weather", "arguments": {"location": "Paris"}}'


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [
        (GENERIC, CALL, "", [("get_weather", {"location": "Paris"})]),
        (GENERIC, "  " + CALL + "\n", "", [("get_weather", {"location": "Paris"})]),
        (GENERIC, "It is sunny.", "It is sunny.", []),
        (GENERIC, '{"answer": 42}', '{"answer": 42}', []),  # JSON, but not a call
        (
            GENERIC,
            '{"name": "rm_rf", "arguments": {}}',
            '{"name": "rm_rf", "arguments": {}}',
            [],
        ),  # undeclared
        (
            GENERIC,
            '{"name": "get_weather", "arguments": {"loc',
            '{"name": "get_weather", "arguments": {"loc',
            [],
        ),
        (GENERIC, '{"name": "get_time", "arguments": "{}"}', "", [("get_time", {})]),  # arguments as a string
        (
            GENERIC,
            '[{"name": "get_time", "arguments": {}}, ' + CALL + "]",
            "",
            [
                ("get_time", {}),
                ("get_weather", {"location": "Paris"}),
            ],
        ),
        (HERMES, f"<tool_call>\n{CALL}\n</tool_call>", "", [("get_weather", {"location": "Paris"})]),
        (
            HERMES,
            f"Let me check.\n<tool_call>\n{CALL}\n</tool_call>",
            "Let me check.",
            [("get_weather", {"location": "Paris"})],
        ),
        (
            HERMES,
            f"<tool_call>{CALL}</tool_call><tool_call>" + '{"name": "get_time", "arguments": {}}</tool_call>',
            "",
            [
                ("get_weather", {"location": "Paris"}),
                ("get_time", {}),
            ],
        ),
        (
            HERMES,
            f"<tool_call>\n{CALL}",
            "",
            [("get_weather", {"location": "Paris"})],
        ),  # EOS before </tool_call>
        (HERMES, "<tool_call>not json</tool_call>", "<tool_call>not json</tool_call>", []),
        (
            LLAMA3,
            '{"name": "get_weather", "parameters": {"location": "Paris"}}',
            "",
            [("get_weather", {"location": "Paris"})],
        ),
        (MISTRAL, f"[TOOL_CALLS][{CALL}]", "", [("get_weather", {"location": "Paris"})]),
        (PHI4, f"<|tool_call|>[{CALL}]<|/tool_call|>", "", [("get_weather", {"location": "Paris"})]),
        (PHI4, "No call here.", "No call here.", []),
    ],
)
def test_parse_calls(
    fmt: ToolFormat, text: str, content: str, calls: list[tuple[str, dict[str, object]]]
) -> None:
    got_content, got_calls = parse_calls(text, fmt, FUNCTIONS)
    assert got_content == content
    assert [(c.name, json.loads(c.arguments)) for c in got_calls] == calls
    assert all(c.id.startswith("call_") for c in got_calls)


def _stream(fmt: ToolFormat, text: str, step: int) -> tuple[str, list[CallStart], dict[int, str]]:
    stream = ToolStream(fmt, FUNCTIONS)
    items = []
    for i in range(0, len(text), step):
        items += stream.feed(text[i : i + step])
    items += stream.finish()
    content = "".join(i.text for i in items if isinstance(i, ContentDelta))
    starts = [i for i in items if isinstance(i, CallStart)]
    args: dict[int, str] = {}
    for item in items:
        if isinstance(item, ArgumentsDelta):
            assert item.index in {s.index for s in starts}  # a call's arguments follow its start
            args[item.index] = args.get(item.index, "") + item.text
    return content, starts, args


@pytest.mark.parametrize("step", [1, 3, 1000])
@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (GENERIC, CALL),
        (GENERIC, "Paris is sunny today."),
        (HERMES, f"Checking.<tool_call>\n{CALL}\n</tool_call>"),
        (HERMES, "a < b, and <tool is a word"),
        (
            HERMES,
            f"<tool_call>{CALL}</tool_call>\n<tool_call>"
            + '{"name": "get_time", "arguments": {}}</tool_call>',
        ),
        (MISTRAL, f"[TOOL_CALLS][{CALL}]"),
        (PHI4, f"<|tool_call|>[{CALL}]<|/tool_call|>"),
        (LLAMA3, '{"name": "get_weather", "parameters": {"location": "Paris, \\"FR\\" {x}"}}'),
    ],
)
def test_stream_equals_whole(fmt: ToolFormat, text: str, step: int) -> None:
    """However the text is split, the streamed pieces add up to the whole answer's parse."""
    content, calls = parse_calls(text, fmt, FUNCTIONS)
    s_content, starts, args = _stream(fmt, text, step)
    assert s_content.strip() == content.strip()
    assert [s.name for s in starts] == [c.name for c in calls]
    assert [json.loads(args[s.index]) for s in starts] == [json.loads(c.arguments) for c in calls]
    assert len({s.id for s in starts}) == len(starts)


def test_stream_sends_arguments_before_the_call_ends() -> None:
    stream = ToolStream(GENERIC, FUNCTIONS)
    items = stream.feed('{"name": "get_weather", "arguments": {"location": "Par')
    assert isinstance(items[0], CallStart) and items[0].name == "get_weather"
    assert items[1] == ArgumentsDelta(0, '{"location": "Par')


def test_stream_holds_back_a_possible_marker_then_releases_it() -> None:
    stream = ToolStream(HERMES, FUNCTIONS)
    assert stream.feed("x <tool_") == [ContentDelta("x ")]
    assert stream.feed("box") == [ContentDelta("<tool_box")]


def test_call_grammar_forces_a_schema_valid_call() -> None:
    grammar = call_grammar(GENERIC, FUNCTIONS, ToolChoice("required"))
    assert grammar is not None
    assert grammar.splitlines()[0] == "root ::= tool-call"
    assert '"get_weather"' in grammar.replace('\\"', '"') and "get_time" in grammar
    named = call_grammar(HERMES, FUNCTIONS, ToolChoice("function", "get_time"))
    assert named is not None and "get_weather" not in named
    assert named.splitlines()[0] == 'root ::= "<tool_call>" tool-call "</tool_call>"'
    array = call_grammar(MISTRAL, FUNCTIONS, ToolChoice("required"))
    assert array is not None and array.splitlines()[0] == 'root ::= "[TOOL_CALLS]" "[" tool-call "]"'
    assert call_grammar(GENERIC, FUNCTIONS, ToolChoice("auto")) is None
    assert call_grammar(GENERIC, FUNCTIONS, ToolChoice("none")) is None


def test_call_grammar_compiles_in_llama_cpp() -> None:
    """The grammar is valid GBNF for llama.cpp's parser (not only plausible text)."""
    from llama_cpp.llama_grammar import LlamaGrammar

    for fmt in (GENERIC, HERMES, MISTRAL, PHI4, LLAMA3):
        grammar = call_grammar(fmt, FUNCTIONS, ToolChoice("required"))
        assert grammar is not None
        LlamaGrammar.from_string(grammar, verbose=False)


@pytest.mark.parametrize(
    ("tools", "message"),
    [
        ([{"type": "retrieval"}], "tools.0.type"),
        ([{"type": "function"}], "tools.0.function must be an object"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools.0.function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], "parameters"),
        ([TIME, TIME], "declared twice"),
    ],
)
def test_parse_functions_rejects(tools: list[dict[str, object]], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse_functions(tools)


def test_parse_tool_choice() -> None:
    assert parse_tool_choice(None, FUNCTIONS) == ToolChoice("auto")
    assert parse_tool_choice(None, []) == ToolChoice("none")
    assert parse_tool_choice("required", FUNCTIONS) == ToolChoice("required")
    named = {"type": "function", "function": {"name": "get_time"}}
    assert parse_tool_choice(named, FUNCTIONS) == ToolChoice("function", "get_time")
    assert parse_tool_choice({"type": "function", "name": "get_time"}, FUNCTIONS) == ToolChoice(
        "function", "get_time"
    )  # Responses API's flat shape
    for bad, match in [
        ("always", "tool_choice must be"),
        ({"type": "function", "function": {"name": "nope"}}, "not in tools"),
        ({"type": "function"}, "name is required"),
    ]:
        with pytest.raises(BadRequestError, match=match):
            parse_tool_choice(bad, FUNCTIONS)
    with pytest.raises(BadRequestError, match="needs tools"):
        parse_tool_choice("required", [])


CONVERSATION = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": {"location": "Paris"}}],
    },
    {"role": "tool", "content": "18C", "name": "get_weather", "tool_call_id": "c1"},
]


def test_for_template_native_uses_hugging_face_shape() -> None:
    out = for_template(CONVERSATION, HERMES)
    assert out[1]["tool_calls"] == [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"location": "Paris"}},
        }
    ]
    assert out[2] == CONVERSATION[2]


def test_for_template_generic_writes_calls_and_results_as_text() -> None:
    out = for_template(CONVERSATION, GENERIC)
    assert "tool_calls" not in out[1]
    assert json.loads(out[1]["content"]) == {"name": "get_weather", "arguments": {"location": "Paris"}}
    assert out[2] == {"role": "user", "content": "Result of get_weather: 18C"}


def test_system_prompt_lists_functions_and_the_format() -> None:
    text = system_prompt([Function("get_weather", "Weather")], ToolChoice("required"))
    assert '"name": "get_weather"' in text
    assert '{"name": <function name>, "arguments":' in text
    assert "Otherwise" not in text
    assert "Otherwise" in system_prompt([Function("f")], ToolChoice("auto"))


# -- the real model, over HTTP, with the official clients ----------------------------------------


def _openai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=300)


ASK = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def _assert_weather_args(arguments: str | Mapping[str, Any]) -> None:
    args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    assert isinstance(args["location"], str)  # required by the schema
    assert set(args) <= {"location", "unit"}
    assert args.get("unit", "celsius") in ("celsius", "fahrenheit")


def test_openai_required_tool_call(smollm2_server: RunningServer) -> None:
    out = _openai(smollm2_server).chat.completions.create(
        model=REAL_MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice="required",
        max_tokens=40,
    )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    if call.function.name == "get_weather":
        _assert_weather_args(call.function.arguments)


def test_openai_named_tool_call_streamed(smollm2_server: RunningServer) -> None:
    stream = _openai(smollm2_server).chat.completions.create(
        model=REAL_MODEL,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=40,
        stream=True,
    )
    chunks = list(stream)
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    pieces = [tc for d in deltas for tc in d.tool_calls or []]
    assert pieces, "no tool_calls deltas"
    first = pieces[0]
    assert first.index == 0 and first.id and first.function and first.function.name == "get_weather"
    assert all(p.index == 0 and p.id in (None, first.id) for p in pieces)
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert len([p for p in pieces if p.function and p.function.arguments]) >= 2  # incremental
    _assert_weather_args(arguments)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_openai_tool_choice_none_and_auto(smollm2_server: RunningServer) -> None:
    c = _openai(smollm2_server)
    plain = c.chat.completions.create(
        model=REAL_MODEL,
        messages=ASK,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,
        temperature=0,
    )
    assert plain.choices[0].message.tool_calls is None
    assert plain.choices[0].message.content
    auto = c.chat.completions.create(
        model=REAL_MODEL, messages=ASK, tools=[WEATHER], max_tokens=12, temperature=0
    )
    message = auto.choices[0].message
    if message.tool_calls:  # the model decides; whichever it does, the shape is right
        assert auto.choices[0].finish_reason == "tool_calls"
        _assert_weather_args(message.tool_calls[0].function.arguments)
    else:
        assert message.content and auto.choices[0].finish_reason in ("stop", "length")


def test_openai_tool_result_round_trip(smollm2_server: RunningServer) -> None:
    """An assistant turn with tool_calls and the tool's result go back through the template."""
    history: list[dict[str, Any]] = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"},
    ]
    canonical = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"location": "Paris"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "18 degrees and sunny"},
    ]
    prompt = smollm2_server.service.render_chat(
        canonical, tools=parse_functions([WEATHER]), tool_choice=ToolChoice()
    )
    assert '{"name": "get_weather", "arguments": {"location": "Paris"}}' in prompt
    assert "Result of get_weather: 18 degrees and sunny" in prompt
    assert "You can call these functions" in prompt
    out = _openai(smollm2_server).chat.completions.create(
        model=REAL_MODEL,
        messages=history,
        tools=[WEATHER],
        tool_choice="none",
        max_tokens=8,
        temperature=0,
    )
    assert out.choices[0].message.content


def test_openai_tool_errors(smollm2_server: RunningServer) -> None:
    url = f"{smollm2_server.url}/v1/chat/completions"
    base = {"model": REAL_MODEL, "messages": ASK}
    for extra, param in [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools.0.function.name"),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{"}}],
                    }
                ]
            },
            "messages.0.tool_calls.0.function.arguments",
        ),
    ]:
        r = httpx.post(url, json={**base, **extra}, timeout=30)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param


def _ollama_chat(server: RunningServer, **body: Any) -> list[ollama.ChatResponse]:
    """POST /api/chat with `tool_choice` (which the `ollama` client cannot send), read with the
    client's own response model."""
    payload = {
        "model": REAL_MODEL,
        "messages": ASK,
        "tools": [WEATHER],
        "options": {"num_predict": 40},
        **body,
    }
    with httpx.stream("POST", f"{server.url}/api/chat", json=payload, timeout=300) as r:
        assert r.status_code == 200, r.read()
        return [ollama.ChatResponse.model_validate_json(line) for line in r.iter_lines() if line]


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_required_tool_call(smollm2_server: RunningServer, stream: bool) -> None:
    parts = _ollama_chat(smollm2_server, tool_choice="required", stream=stream)
    assert len(parts) == 1 if not stream else len(parts) >= 2
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    _assert_weather_args(calls[0].function.arguments)  # an object, as Ollama sends it
    assert parts[-1].done and parts[-1].done_reason == "stop"


def test_ollama_client_tools_and_tool_results(smollm2_server: RunningServer) -> None:
    """With the `ollama` client: tools (the model decides) and a tool result fed back."""
    c = ollama.Client(host=smollm2_server.url, timeout=300)
    out = c.chat(
        model=REAL_MODEL, messages=ASK, tools=[WEATHER], options={"num_predict": 12, "temperature": 0}
    )
    for call in out.message.tool_calls or []:
        assert call.function.name == "get_weather"
    assert out.message.tool_calls or out.message.content
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}],
        },
        {"role": "tool", "content": "18 degrees and sunny", "tool_name": "get_weather"},
    ]
    answer = c.chat(
        model=REAL_MODEL, messages=history, tools=[WEATHER], options={"num_predict": 12, "temperature": 0}
    )
    assert answer.message.content


def test_onnx_cannot_force_a_call_but_accepts_tools(onnx_server: RunningServer) -> None:
    url = f"{onnx_server.url}/v1/chat/completions"
    body = {"model": "tiny", "messages": ASK, "tools": [WEATHER], "max_tokens": 3}
    forced = httpx.post(url, json={**body, "tool_choice": "required"}, timeout=60)
    assert forced.status_code == 400
    assert forced.json()["error"]["param"] == "tool_choice"
    auto = httpx.post(url, json=body, timeout=60)
    assert auto.status_code == 200
    assert auto.json()["choices"][0]["message"]["role"] == "assistant"


def test_schema_grammar_keeps_control_characters_out_of_strings() -> None:
    """llama-cpp-python's converter allows raw newlines in strings (invalid JSON); ours does not."""
    from llama_cpp.llama_grammar import LlamaGrammar

    from slm_runtime.backends.grammar import json_schema_gbnf

    grammar = json_schema_gbnf({"type": "object", "properties": {"a": {"type": "string"}}})
    (char,) = [line for line in grammar.splitlines() if line.startswith("char ::=")]
    assert char.startswith('char ::= [^"\\\\\\x7F\\x00-\\x1F] |')
    LlamaGrammar.from_string(grammar, verbose=False)
    tool_grammar = call_grammar(GENERIC, FUNCTIONS, ToolChoice("required"))
    assert tool_grammar is not None and char in tool_grammar.splitlines()
