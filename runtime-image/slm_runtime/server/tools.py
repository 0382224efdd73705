"""Tool (function) calling, for both APIs: pure functions from template, tools and text to calls.

A model family writes its calls in its own format, which its chat template shows (and the model
was trained on). `detect_format` reads that from the template source; a template without one
(SmolLM2, Gemma) gets the *generic* format: the tools are described in the system prompt and the
call is a bare JSON object `{"name": ..., "arguments": {...}}`. For `tool_choice` `required` or a
named function, `call_grammar` builds a GBNF grammar (llama.cpp's JSON-schema converter for each
function's parameters) so the arguments are always valid JSON for the schema; for `auto` the text
is parsed afterwards and stays text if it is not a well-formed call.

Streaming: `ToolStream` turns text pieces into `ContentDelta` / `CallStart` / `ArgumentsDelta`
items as soon as they are unambiguous (OpenAI's incremental `function.arguments`). It re-scans
the whole text each time (`scan`, a pure function); answers are short, so that is cheap, and it
keeps one parser for both the streamed and the whole answer.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from slm_runtime.backends.grammar import json_schema_gbnf
from slm_runtime.errors import BadRequestError

# -- declarations -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    """A callable function the request declares (OpenAI's and Ollama's `tools[].function`)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def as_tool(self) -> dict[str, Any]:
        """The OpenAI-shaped tool dict chat templates expect in their `tools` variable."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": dict(self.parameters),
            },
        }


@dataclass(frozen=True)
class ToolChoice:
    """`auto` (the model decides), `none`, `required` (some call), or `function` (that one)."""

    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None


@dataclass(frozen=True)
class ToolCall:
    """A parsed call; `arguments` is the JSON text of an object."""

    id: str
    name: str
    arguments: str

    def arguments_object(self) -> dict[str, Any]:
        value = json.loads(self.arguments)
        return value if isinstance(value, dict) else {}


_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def parse_functions(tools: Sequence[Mapping[str, Any]] | None) -> list[Function]:
    """Validate `tools` (OpenAI / Ollama shape) into functions; a bad entry is a 400 naming it."""
    out: list[Function] = []
    for i, tool in enumerate(tools or ()):
        where = f"tools.{i}"
        if tool.get("type", "function") != "function":
            raise BadRequestError(f"{where}.type must be 'function'", param=f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise BadRequestError(f"{where}.function must be an object", param=f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise BadRequestError(
                f"{where}.function.name must be 1-64 letters, digits, '_', '.' or '-'",
                param=f"{where}.function.name",
            )
        params = fn.get("parameters")
        params = {"type": "object", "properties": {}} if params is None else params
        if not isinstance(params, Mapping):
            raise BadRequestError(
                f"{where}.function.parameters must be a JSON schema object",
                param=f"{where}.function.parameters",
            )
        if any(f.name == name for f in out):
            raise BadRequestError(f"{where}: function '{name}' is declared twice", param=where)
        out.append(Function(name, str(fn.get("description") or ""), dict(params)))
    return out


def parse_tool_choice(raw: str | Mapping[str, Any] | None, functions: Sequence[Function]) -> ToolChoice:
    """OpenAI's `tool_choice`: a mode string or `{"type": "function", "function": {"name"}}`."""
    if raw is None:
        return ToolChoice("auto" if functions else "none")
    if isinstance(raw, str):
        if raw not in ("auto", "none", "required"):
            raise BadRequestError(
                f"tool_choice must be 'auto', 'none', 'required' or a function, not {raw!r}",
                param="tool_choice",
            )
        choice = ToolChoice(raw)  # type: ignore[arg-type]
    else:
        fn = raw.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else raw.get("name")  # Responses API: flat
        if not isinstance(name, str):
            raise BadRequestError("tool_choice.function.name is required", param="tool_choice")
        if not any(f.name == name for f in functions):
            raise BadRequestError(f"tool_choice names '{name}', which is not in tools", param="tool_choice")
        choice = ToolChoice("function", name)
    if choice.mode in ("required", "function") and not functions:
        raise BadRequestError(f"tool_choice '{choice.mode}' needs tools", param="tool_choice")
    return choice


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


# -- formats ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolFormat:
    """How a model family writes calls.

    `start`/`end` delimit a block of calls ("" start: the answer *is* the call, JSON from its first
    character; "" end: the block runs to the end). `array`: the block holds a JSON list of calls.
    `native`: the chat template renders `tools` itself; otherwise we describe them in the system
    prompt.
    """

    name: str
    start: str = ""
    end: str = ""
    array: bool = False
    args_key: str = "arguments"
    native: bool = True


HERMES = ToolFormat("hermes", start="<tool_call>", end="</tool_call>")
"""Hermes, Qwen2/2.5/3, many fine-tunes: `<tool_call>{"name":..,"arguments":..}</tool_call>`."""
LLAMA3 = ToolFormat("llama3", args_key="parameters")
"""Llama 3.1/3.2: the answer is `{"name": .., "parameters": {..}}`."""
MISTRAL = ToolFormat("mistral", start="[TOOL_CALLS]", array=True)
"""Mistral v3+: `[TOOL_CALLS][{"name": .., "arguments": {..}}]`."""
PHI4 = ToolFormat("phi4", start="<|tool_call|>", end="<|/tool_call|>", array=True)
"""Phi-4-mini: `<|tool_call|>[{"name": .., "arguments": {..}}]<|/tool_call|>`."""
GENERIC = ToolFormat("generic", native=False)
"""Models whose template knows no tools: described in the system prompt, a bare JSON call."""

FORMATS = (HERMES, LLAMA3, MISTRAL, PHI4, GENERIC)


def detect_format(template: str) -> ToolFormat:
    """The tool-call format a chat template's source shows; `GENERIC` when it shows none."""
    if "tools" not in template:
        return GENERIC
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|tool_call|>" in template or "<|tool|>" in template:
        return PHI4
    if "<|start_header_id|>" in template and ("parameters" in template or "<|python_tag|>" in template):
        return LLAMA3
    return GENERIC


def system_prompt(functions: Sequence[Function], choice: ToolChoice) -> str:
    """The tool description for templates that have none (the generic format)."""
    listing = "\n".join(json.dumps(f.as_tool()["function"], ensure_ascii=False) for f in functions)
    if choice.mode == "function":
        how = f'Call the function "{choice.name}": reply with only a JSON object'
    elif choice.mode == "required":
        how = "Call one of them: reply with only a JSON object"
    else:
        how = "To call one, reply with only a JSON object"
    return (
        f"You can call these functions:\n{listing}\n\n"
        f'{how} {{"name": <function name>, "arguments": <object matching its parameters>}}.'
        + ("" if choice.mode in ("required", "function") else " Otherwise answer normally.")
    )


# -- grammar ------------------------------------------------------------------------------------


def _gbnf_literal(text: str) -> str:
    return json.dumps(text)  # GBNF string literals use JSON's escapes


def call_schema(fmt: ToolFormat, functions: Sequence[Function]) -> dict[str, Any]:
    """JSON schema of one call object in `fmt` to any of `functions`."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": f.name}, fmt.args_key: dict(f.parameters)},
            "required": ["name", fmt.args_key],
            "additionalProperties": False,
        }
        for f in functions
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def call_grammar(fmt: ToolFormat, functions: Sequence[Function], choice: ToolChoice) -> str | None:
    """GBNF forcing one call for `required` / a named function; None for `auto` / `none`."""
    if choice.mode == "function":
        functions = [f for f in functions if f.name == choice.name]
    elif choice.mode != "required":
        return None
    try:
        body = json_schema_gbnf(call_schema(fmt, functions), ["name", fmt.args_key])
    except Exception as exc:
        raise BadRequestError(f"unsupported function parameters schema: {exc}", param="tools") from exc
    lines = body.splitlines()
    renamed = [
        "tool-call ::=" + line[len("root ::=") :] if line.startswith("root ::=") else line for line in lines
    ]
    call = '"[" tool-call "]"' if fmt.array else "tool-call"
    parts = [_gbnf_literal(fmt.start)] if fmt.start else []
    parts.append(call)
    if fmt.end:
        parts.append(_gbnf_literal(fmt.end))
    return "\n".join([f"root ::= {' '.join(parts)}", *renamed])


# -- parsing ------------------------------------------------------------------------------------


@dataclass
class PartialCall:
    """A call as far as the text goes: `name` known, `arguments` possibly unfinished."""

    name: str
    arguments: str
    complete: bool


@dataclass
class Scan:
    """What a text says so far: its content (outside calls) and the calls."""

    content: str
    calls: list[PartialCall]
    pending: bool = False
    """True while the text could still turn out to be a call (nothing is safe to show yet)."""


_HEADER_RE = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def _json_value_end(text: str, start: int) -> int | None:
    """Index just past the JSON object/array starting at `start`, or None if unfinished."""
    depth = 0
    in_string = False
    escaped = False
    for i in range(start, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _calls_in(block: str, fmt: ToolFormat, names: frozenset[str], final: bool) -> list[PartialCall] | None:
    """Calls in one block's text; None if the block is not (or cannot become) calls."""
    text = block.strip()
    if final:
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if value is not None:
            items = value if isinstance(value, list) else [value]
            out = []
            for raw in items:
                wrapped = isinstance(raw, Mapping) and isinstance(raw.get("function"), Mapping)
                item = raw["function"] if wrapped else raw  # some models echo OpenAI's wrapper
                if not isinstance(item, Mapping) or item.get("name") not in names:
                    return None
                args = item.get(fmt.args_key, item.get("arguments", item.get("parameters", {})))
                if isinstance(args, str):  # arguments as a JSON string
                    try:
                        args = json.loads(args)
                    except json.JSONDecodeError:
                        return None
                if not isinstance(args, Mapping):
                    return None
                out.append(PartialCall(str(item["name"]), json.dumps(args, ensure_ascii=False), True))
            return out or None
    # unfinished (streaming) or not plain JSON: walk `{"name": "..", "arguments": ...}` headers
    pos = 0
    if fmt.array:
        if not text:
            return [] if not final else None
        if text[0] != "[":
            return None
        pos = 1
    out = []
    while True:
        m = _HEADER_RE.match(text, pos)
        if m is None:
            rest = text[pos:].lstrip(" \n\t,")
            if final:
                return out if out and rest in ("", "]") else None
            if _could_start_header(rest) or rest.startswith("]"):
                return out
            return out or None
        name = json.loads(f'"{m.group(1)}"')
        if name not in names:
            return None
        args_start = m.end()
        end = _json_value_end(text, args_start) if args_start < len(text) else None
        if end is None:
            if final:
                return None
            out.append(PartialCall(name, text[args_start:], False))
            return out
        out.append(PartialCall(name, text[args_start:end], True))
        close = text.find("}", end)
        if close < 0:
            return None if final else out
        pos = close + 1


def _could_start_header(text: str) -> bool:
    """Whether `text` is a prefix of some `{"name": "...` header (so keep waiting)."""
    probe = re.sub(r"\s+", "", text)
    target = '{"name":"'
    return target.startswith(probe) or probe.startswith(target)


def _prefix_overlap(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def scan(text: str, fmt: ToolFormat, names: frozenset[str], *, final: bool) -> Scan:
    """Split generated `text` into content and calls, as far as it is decided.

    With `final=False` (streaming), text that may still become a call is held back: the content
    returned then only grows as more text arrives.
    """
    if not fmt.start:  # the whole answer is a call or it is content
        stripped = text.lstrip()
        if not stripped:
            return Scan("", [], pending=not final)
        if stripped[0] not in "{[":
            return Scan(text, [])
        whole = _calls_in(stripped, fmt, names, final)
        if whole is None:
            return Scan(text, []) if final or not _could_still_be_call(stripped) else Scan("", [], True)
        return Scan("", whole, pending=not final)
    content: list[str] = []
    calls: list[PartialCall] = []
    pos = 0
    while True:
        i = text.find(fmt.start, pos)
        if i < 0:
            tail = text[pos:]
            hold = 0 if final else _prefix_overlap(tail, fmt.start)
            content.append(tail[: len(tail) - hold])
            return Scan("".join(content), calls, pending=hold > 0)
        content.append(text[pos:i])
        body_start = i + len(fmt.start)
        j = text.find(fmt.end, body_start) if fmt.end else -1
        closed = j >= 0
        block = text[body_start : j if closed else len(text)]
        if not closed and fmt.end and not final:  # drop a partial end marker from the block
            block = block[: len(block) - _prefix_overlap(block, fmt.end)]
        found = _calls_in(block, fmt, names, final or closed)
        if found is None:
            if not final and not closed:
                return Scan("".join(content), calls, pending=True)
            content.append(text[i : j + len(fmt.end) if closed else len(text)])
        else:
            calls.extend(found)
        if not closed:
            return Scan("".join(content).strip() if calls else "".join(content), calls, pending=not final)
        pos = j + len(fmt.end)


def _could_still_be_call(text: str) -> bool:
    body = text[1:].lstrip() if text.startswith("[") else text
    return not body or _could_start_header(body) or bool(_HEADER_RE.match(body))


def parse_calls(text: str, fmt: ToolFormat, functions: Sequence[Function]) -> tuple[str, list[ToolCall]]:
    """A finished answer's content and its complete calls (valid JSON arguments, declared names)."""
    result = scan(text, fmt, frozenset(f.name for f in functions), final=True)
    calls = [ToolCall(new_call_id(), c.name, c.arguments) for c in result.calls if c.complete]
    if not calls:
        return text, []
    return result.content.strip(), calls


# -- streaming ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsDelta:
    index: int
    text: str


StreamItem = ContentDelta | CallStart | ArgumentsDelta


class ToolStream:
    """Incremental `scan`: feed text pieces, get what became certain since the last call."""

    def __init__(self, fmt: ToolFormat, functions: Sequence[Function]) -> None:
        self._fmt = fmt
        self._names = frozenset(f.name for f in functions)
        self._text = ""
        self._content_sent = 0
        self._args_sent: list[int] = []
        self.calls: list[ToolCall] = []
        """Calls started so far (with the arguments sent so far)."""

    def feed(self, piece: str) -> list[StreamItem]:
        self._text += piece
        return self._diff(scan(self._text, self._fmt, self._names, final=False))

    def finish(self) -> list[StreamItem]:
        """The rest, once generation ended (held-back text that was not a call comes out)."""
        result = scan(self._text, self._fmt, self._names, final=True)
        if not result.calls and self.calls:  # started a call but it did not parse: keep what was sent
            return []
        return self._diff(result)

    def _diff(self, result: Scan) -> list[StreamItem]:
        items: list[StreamItem] = []
        if len(result.content) > self._content_sent and result.content.startswith(
            result.content[: self._content_sent]
        ):
            items.append(ContentDelta(result.content[self._content_sent :]))
            self._content_sent = len(result.content)
        for index, call in enumerate(result.calls):
            if index >= len(self.calls):
                self.calls.append(ToolCall(new_call_id(), call.name, ""))
                self._args_sent.append(0)
                items.append(CallStart(index, self.calls[index].id, call.name))
            sent = self._args_sent[index]
            prior = self.calls[index].arguments
            if len(call.arguments) > sent and call.arguments.startswith(prior):
                items.append(ArgumentsDelta(index, call.arguments[sent:]))
                self._args_sent[index] = len(call.arguments)
                self.calls[index] = ToolCall(self.calls[index].id, call.name, call.arguments)
        return items


# -- conversation -------------------------------------------------------------------------------


def for_template(messages: Sequence[Mapping[str, Any]], fmt: ToolFormat) -> list[dict[str, Any]]:
    """Messages in our canonical shape as the chat template wants them.

    Canonical (what the front-ends build): an assistant message may carry `tool_calls`, a list of
    `{"id", "name", "arguments": dict}`; a `tool` message carries `content`, `name` and
    `tool_call_id`. Native templates get Hugging Face's shape (`tool_calls[].function` with
    `arguments` as an object, which they `tojson`). Templates without tools get the call written
    out as the generic format's JSON, and results as a user turn (templates without tools often
    reject a `tool` role).
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        m = dict(message)
        calls = m.pop("tool_calls", None) or []
        if m.get("role") == "assistant" and calls:
            if fmt.native:
                m["tool_calls"] = [
                    {
                        "id": c.get("id", ""),
                        "type": "function",
                        "function": {"name": c["name"], "arguments": c.get("arguments", {})},
                    }
                    for c in calls
                ]
                m["content"] = m.get("content") or ""
            else:
                written = "\n".join(
                    json.dumps({"name": c["name"], "arguments": c.get("arguments", {})}, ensure_ascii=False)
                    for c in calls
                )
                m["content"] = f"{m.get('content') or ''}\n{written}".strip()
        elif m.get("role") == "tool" and not fmt.native:
            name = m.pop("name", None) or "the function"
            m.pop("tool_call_id", None)
            m = {"role": "user", "content": f"Result of {name}: {m.get('content') or ''}"}
        out.append(m)
    return out


def arguments_dict(raw: str | Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """A call's arguments from a request (OpenAI: JSON text; Ollama: an object)."""
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"{where} is not valid JSON: {exc}", param=where) from exc
    if not isinstance(value, dict):
        raise BadRequestError(f"{where} must be a JSON object", param=where)
    return value
