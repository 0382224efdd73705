"""OpenAI's Responses API, stateless: `POST /v1/responses`.

The request becomes the same conversation, tools and grammar as a chat completion (one policy, in
`Service`); what differs is the wire format: `output` items (`message`, `function_call`) instead
of choices, and, streamed, typed Server-Sent Events (`response.created` ... `response.completed`)
built by `ResponseEvents` from the same `ToolStream` items chat streaming uses. Nothing is stored:
`store: true` and `previous_response_id` are a 400.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from slm_runtime.backends.base import FinishEvent, GenerationEvent, GenerationRequest, ResponseFormat
from slm_runtime.errors import BadRequestError, SlmError
from slm_runtime.server._common import dumps, parse_body, prepend, until_disconnect
from slm_runtime.server.errors import error_body
from slm_runtime.server.schemas import ResponsesRequest
from slm_runtime.server.service import Service, first_and_rest
from slm_runtime.server.tools import (
    ArgumentsDelta,
    CallStart,
    ContentDelta,
    Function,
    StreamItem,
    ToolCall,
    ToolChoice,
    ToolStream,
    arguments_dict,
    parse_calls,
    parse_functions,
    parse_tool_choice,
)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# -- request → conversation ---------------------------------------------------------------------


def _content_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequestError(f"{where} must be a string or a list of parts", param=where)
    texts = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind not in ("input_text", "output_text", "text"):
            raise BadRequestError(
                f"{where}.{i}: part type {kind!r} is not supported (text only; this model has no vision)",
                param=f"{where}.{i}.type",
            )
        texts.append(str(part.get("text") or ""))
    return "".join(texts)


def conversation(body: ResponsesRequest) -> list[dict[str, Any]]:
    """`instructions` + `input` in the service's canonical message shape."""
    messages: list[dict[str, Any]] = []
    if body.instructions:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        messages.append({"role": "user", "content": body.input})
        return messages
    names_by_call: dict[str, str] = {}
    for i, item in enumerate(body.input):
        where = f"input.{i}"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("system", "developer", "user", "assistant"):
                raise BadRequestError(f"{where}.role {role!r} is not supported", param=f"{where}.role")
            text = _content_text(item.get("content"), f"{where}.content")
            messages.append({"role": "system" if role == "developer" else role, "content": text})
        elif kind == "function_call":
            name, call_id = item.get("name"), str(item.get("call_id") or "")
            if not isinstance(name, str):
                raise BadRequestError(f"{where}.name is required", param=f"{where}.name")
            names_by_call[call_id] = name
            call = {"id": call_id, "name": name, "arguments": arguments_dict(item.get("arguments"), where)}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls belong to one assistant turn
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = str(item.get("call_id") or "")
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "content": output if isinstance(output, str) else dumps(output),
                    "tool_call_id": call_id,
                    "name": names_by_call.get(call_id, ""),
                }
            )
        else:
            raise BadRequestError(f"{where}.type {kind!r} is not supported", param=f"{where}.type")
    if not messages:
        raise BadRequestError("input must not be empty", param="input")
    return messages


def functions_of(tools: list[dict[str, Any]] | None) -> list[Function]:
    """Responses' flat function tools (`{"type": "function", "name", "parameters"}`)."""
    chat_shaped = []
    for i, tool in enumerate(tools or ()):
        if tool.get("type") != "function":
            raise BadRequestError(
                f"tools.{i}: tool type {tool.get('type')!r} is not supported (function tools only)",
                param=f"tools.{i}.type",
            )
        fn = {k: v for k, v in tool.items() if k in ("name", "description", "parameters")}
        chat_shaped.append({"type": "function", "function": fn})
    return parse_functions(chat_shaped)


def _format_of(body: ResponsesRequest) -> ResponseFormat:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return ResponseFormat()
    if fmt.type == "json_object":
        return ResponseFormat("json_object")
    if fmt.schema_ is None:
        raise BadRequestError("text.format json_schema needs a schema", param="text.format.schema")
    return ResponseFormat("json_schema", fmt.schema_)


# -- response objects ---------------------------------------------------------------------------


def _message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [] if status == "in_progress" else [_text_part(text)]
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _call_item(item_id: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
        "status": status,
    }


class ResponseShell:
    """The fields of a response object that do not depend on the answer."""

    def __init__(self, body: ResponsesRequest, functions: list[Function], choice: ToolChoice) -> None:
        self.id = _new_id("resp")
        self.created_at = int(time.time())
        fmt = body.text.format if body.text and body.text.format else None
        self._fields: dict[str, Any] = {
            "model": body.model,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "tool_choice": _choice_json(choice),
            "tools": [{**f.as_tool()["function"], "type": "function", "strict": False} for f in functions],
            "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            "store": False,
            "previous_response_id": None,
            "truncation": "disabled",
            "metadata": body.metadata if isinstance(body.metadata, dict) else {},
            "reasoning": None,
            "background": False,
        }

    def build(
        self, status: str, output: list[dict[str, Any]], finish: FinishEvent | None = None
    ) -> dict[str, Any]:
        incomplete = (
            {"reason": "max_output_tokens"} if finish is not None and finish.reason == "length" else None
        )
        usage = None
        if finish is not None:
            usage = {
                "input_tokens": finish.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": finish.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": finish.prompt_tokens + finish.completion_tokens,
            }
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "incomplete" if incomplete else status,
            "error": None,
            "incomplete_details": incomplete,
            "output": output,
            "usage": usage,
            **self._fields,
        }


def _choice_json(choice: ToolChoice) -> str | dict[str, Any]:
    return {"type": "function", "name": choice.name} if choice.mode == "function" else choice.mode


def output_items(text: str, calls: list[ToolCall]) -> list[dict[str, Any]]:
    """A finished answer's output items: its text (if any) then one item per call."""
    items = [_message_item(_new_id("msg"), text, "completed")] if text or not calls else []
    items += [_call_item(_new_id("fc"), c, "completed") for c in calls]
    return items


class ResponseEvents:
    """Streamed answer pieces → the Responses API's typed events, in order, numbered."""

    def __init__(self, shell: ResponseShell) -> None:
        self._shell = shell
        self._seq = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item receiving deltas
        self._text = ""
        self._calls: dict[int, int] = {}  # call index → output index

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        snapshot = self._shell.build("in_progress", [])
        return [
            self._event("response.created", response=snapshot),
            self._event("response.in_progress", response=snapshot),
        ]

    def _close(self) -> list[dict[str, Any]]:
        item, self._open = self._open, None
        if item is None:
            return []
        index = self.output.index(item)
        if item["type"] == "message":
            part = _text_part(self._text)
            item.update(status="completed", content=[part])
            ids = {"item_id": item["id"], "output_index": index, "content_index": 0}
            return [
                self._event("response.output_text.done", **ids, text=self._text, logprobs=[]),
                self._event("response.content_part.done", **ids, part=part),
                self._event("response.output_item.done", output_index=index, item=dict(item)),
            ]
        item["status"] = "completed"
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            ),
            self._event("response.output_item.done", output_index=index, item=dict(item)),
        ]

    def feed(self, piece: StreamItem) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if isinstance(piece, ContentDelta):
            if self._open is None or self._open["type"] != "message":
                events += self._close()
                item = _message_item(_new_id("msg"), "", "in_progress")
                self.output.append(item)
                self._open, self._text = item, ""
                index = len(self.output) - 1
                events.append(self._event("response.output_item.added", output_index=index, item=dict(item)))
                events.append(
                    self._event(
                        "response.content_part.added",
                        item_id=item["id"],
                        output_index=index,
                        content_index=0,
                        part=_text_part(""),
                    )
                )
            self._text += piece.text
            events.append(
                self._event(
                    "response.output_text.delta",
                    item_id=self._open["id"],  # type: ignore[index]
                    output_index=len(self.output) - 1,
                    content_index=0,
                    delta=piece.text,
                    logprobs=[],
                )
            )
        elif isinstance(piece, CallStart):
            events += self._close()
            item = _call_item(_new_id("fc"), ToolCall(piece.id, piece.name, ""), "in_progress")
            self.output.append(item)
            self._open = item
            self._calls[piece.index] = len(self.output) - 1
            events.append(
                self._event("response.output_item.added", output_index=len(self.output) - 1, item=dict(item))
            )
        elif isinstance(piece, ArgumentsDelta):
            index = self._calls[piece.index]
            item = self.output[index]
            item["arguments"] += piece.text
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=index,
                    delta=piece.text,
                )
            )
        return events

    def finish(self, finish: FinishEvent) -> list[dict[str, Any]]:
        events = self._close()
        if not self.output:  # an empty answer is still one (empty) message, as OpenAI sends it
            events += self.feed(ContentDelta(""))
            events += self._close()
        kind = "response.incomplete" if finish.reason == "length" else "response.completed"
        return [*events, self._event(kind, response=self._shell.build("completed", self.output, finish))]


def _sse(event: Mapping[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {dumps(event)}\n\n"


# -- route --------------------------------------------------------------------------------------


def routes(service: Service) -> list[BaseRoute]:
    async def create(request: Request) -> Response:
        body = await parse_body(request, ResponsesRequest, service.caps)
        service.resolve_model(body.model)
        functions = functions_of(body.tools)
        choice = parse_tool_choice(body.tool_choice, functions)
        prompt = await service.prompt_for(
            conversation(body), system_field="instructions", tools=functions, tool_choice=choice
        )
        gen = GenerationRequest(
            prompt=prompt,
            grammar=await service.grammar_for(functions, choice),
            sampling=service.sampling(
                max_tokens=body.max_output_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                response_format=_format_of(body),
            ),
        )
        shell = ResponseShell(body, functions, choice)
        calling = choice.mode != "none"
        if not body.stream:
            text, finish = await until_disconnect(request, service.complete(gen))
            content, calls = parse_calls(text, service.tool_format, functions) if calling else (text, [])
            return JSONResponse(shell.build("completed", output_items(content, calls), finish))
        first, rest = await until_disconnect(request, first_and_rest(service.generate(gen)))
        tools = ToolStream(service.tool_format, functions) if calling else None
        events = ResponseEvents(shell)

        async def stream(source: AsyncGenerator[GenerationEvent, None]) -> AsyncIterator[str]:
            for event in events.start():
                yield _sse(event)
            async with aclosing(source):
                try:
                    async for item in source:
                        if isinstance(item, FinishEvent):
                            pieces = tools.finish() if tools is not None else []
                            out = [e for p in pieces for e in events.feed(p)] + events.finish(item)
                        else:
                            pieces = tools.feed(item.text) if tools is not None else [ContentDelta(item.text)]
                            out = [e for p in pieces if not _empty(p) for e in events.feed(p)]
                        for event in out:
                            yield _sse(event)
                except SlmError as exc:  # headers are gone: report in-band, as OpenAI does
                    err = error_body(exc, "openai")[1]["error"]
                    yield _sse({"type": "error", "sequence_number": 0, **err})

        return StreamingResponse(stream(prepend(first, rest)), media_type="text/event-stream")

    return [Route("/v1/responses", create, methods=["POST"])]


def _empty(piece: StreamItem) -> bool:
    return isinstance(piece, ContentDelta | ArgumentsDelta) and not piece.text
