"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Streams Server-Sent Events ending with `data: [DONE]`. `n` must be 1. Log probabilities are
not implemented: asking for them (`logprobs: true` / `logprobs: N`) is a 400 rather than a
silently different response. Chat completions take `tools`/`tool_choice` (`server/tools.py`) and
answer with `tool_calls`, streamed as OpenAI does: a delta with the call's `index`, `id` and
`function.name`, then `function.arguments` in pieces.
"""

from __future__ import annotations

import base64
import logging
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from slm_runtime.backends.base import FinishEvent, GenerationEvent, GenerationRequest, ResponseFormat
from slm_runtime.errors import BadRequestError, SlmError
from slm_runtime.server._common import dumps, parse_body, prepend, until_disconnect
from slm_runtime.server.errors import error_body
from slm_runtime.server.schemas import (
    OpenAIChatRequest,
    OpenAICompletionRequest,
    OpenAIEmbeddingRequest,
    OpenAIResponseFormat,
    _OpenAISampling,
)
from slm_runtime.server.service import Service, first_and_rest
from slm_runtime.server.tools import (
    CallStart,
    ContentDelta,
    Function,
    StreamItem,
    ToolStream,
    arguments_dict,
    parse_calls,
    parse_functions,
    parse_tool_choice,
)

log = logging.getLogger(__name__)


def _response_format(fmt: OpenAIResponseFormat | None) -> ResponseFormat:
    if fmt is None or fmt.type == "text":
        return ResponseFormat()
    if fmt.type == "json_object":
        return ResponseFormat("json_object")
    if fmt.json_schema is None or fmt.json_schema.schema_ is None:
        raise BadRequestError("response_format json_schema needs json_schema.schema", param="response_format")
    return ResponseFormat("json_schema", fmt.json_schema.schema_)


def _logit_bias(raw: dict[str, float] | None) -> dict[int, float]:
    out: dict[int, float] = {}
    for key, value in (raw or {}).items():
        try:
            out[int(key)] = max(-100.0, min(100.0, float(value)))
        except ValueError as exc:
            raise BadRequestError(f"logit_bias key {key!r} is not a token id", param="logit_bias") from exc
    return out


def _request(
    service: Service, body: _OpenAISampling, prompt: str, max_tokens: int | None, grammar: str | None = None
) -> GenerationRequest:
    if body.n != 1:
        raise BadRequestError("only n=1 is supported", param="n")
    if body.presence_penalty or body.frequency_penalty:
        log.info("presence/frequency penalties are not supported and were ignored")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    return GenerationRequest(
        prompt=prompt,
        grammar=grammar,
        sampling=service.sampling(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            repeat_penalty=body.repetition_penalty,
            seed=body.seed,
            stop=stop,
            logit_bias=_logit_bias(body.logit_bias),
            response_format=_response_format(body.response_format),
        ),
    )


def _usage(finish: FinishEvent) -> dict[str, int]:
    return {
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
    }


def _finish_reason(finish: FinishEvent) -> str:
    return "length" if finish.reason == "length" else "stop"


def _sse(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


def chat_messages(body: OpenAIChatRequest) -> list[dict[str, Any]]:
    """The conversation in the service's canonical shape (tool calls and results included)."""
    names_by_id: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for i, m in enumerate(body.messages):
        role = "system" if m.role == "developer" else m.role
        message: dict[str, Any] = {"role": role, "content": m.text()}
        calls = []
        for j, raw in enumerate(m.tool_calls or []):
            where = f"messages.{i}.tool_calls.{j}"
            fn = raw.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequestError(f"{where}.function.name is required", param=f"{where}.function.name")
            args = arguments_dict(fn.get("arguments"), f"{where}.function.arguments")
            call_id = str(raw.get("id") or "")
            names_by_id[call_id] = fn["name"]
            calls.append({"id": call_id, "name": fn["name"], "arguments": args})
        if calls:
            message["tool_calls"] = calls
        if role == "tool":
            message["tool_call_id"] = m.tool_call_id or ""
            message["name"] = m.name or names_by_id.get(m.tool_call_id or "", "")
        out.append(message)
    return out


def _tool_call_json(call_id: str, name: str, arguments: str, index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
    return out if index is None else {"index": index, **out}


def _tool_delta(item: StreamItem) -> dict[str, Any]:
    """A chat chunk's `delta` for one streamed tool-call item (OpenAI's incremental shape)."""
    if isinstance(item, ContentDelta):
        return {"content": item.text}
    if isinstance(item, CallStart):
        return {"tool_calls": [_tool_call_json(item.id, item.name, "", item.index)]}
    return {"tool_calls": [{"index": item.index, "function": {"arguments": item.text}}]}


async def _run(
    service: Service,
    request: Request,
    body: _OpenAISampling,
    gen: GenerationRequest,
    *,
    obj: str,
    whole: Callable[[str, str], dict[str, Any]],
    delta: Callable[[str | None, str | None, bool], dict[str, Any]],
    tool_stream: ToolStream | None = None,
) -> Response:
    """Shared by chat and text completions; `whole`/`delta` build the endpoint's choice objects.

    With `tool_stream` (chat with tools), streamed text goes through it and comes out as content
    and `tool_calls` deltas.
    """
    cid = f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    model = body.model
    if not body.stream:
        text, finish = await until_disconnect(request, service.complete(gen))
        return JSONResponse(
            {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [whole(text, _finish_reason(finish))],
                "usage": _usage(finish),
            }
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    first, rest = await until_disconnect(request, first_and_rest(service.generate(gen)))
    chunk_obj = f"{obj}.chunk" if obj.startswith("chat") else obj

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {"id": cid, "object": chunk_obj, "created": created, "model": model, "choices": choices}
        if include_usage and "usage" not in extra:
            payload["usage"] = None
        return _sse({**payload, **extra})

    async def events(stream: AsyncGenerator[GenerationEvent, None]) -> AsyncIterator[str]:
        started = False
        async with aclosing(stream):
            try:
                async for event in stream:
                    if not started and obj.startswith("chat"):
                        yield chunk([delta("", None, True)])
                    started = True
                    if isinstance(event, FinishEvent):
                        reason = _finish_reason(event)
                        if tool_stream is not None:
                            for item in tool_stream.finish():
                                yield chunk([_chat_choice(_tool_delta(item))])
                            reason = "tool_calls" if tool_stream.calls and reason != "length" else reason
                        yield chunk([delta(None, reason, False)])
                        if include_usage:
                            yield chunk([], usage=_usage(event))
                    elif event.text and tool_stream is not None:
                        for item in tool_stream.feed(event.text):
                            yield chunk([_chat_choice(_tool_delta(item))])
                    elif event.text:
                        yield chunk([delta(event.text, None, False)])
            except SlmError as exc:  # headers are gone: report in-band, as OpenAI does
                yield _sse(error_body(exc, "openai")[1])
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(prepend(first, rest)), media_type="text/event-stream")


def _chat_choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}


def _with_tool_calls(
    service: Service, functions: list[Function], text: str, reason: str
) -> tuple[dict[str, Any], str]:
    """The assistant message of a finished answer, with its tool calls parsed out."""
    content, calls = parse_calls(text, service.tool_format, functions)
    if not calls:
        return {"role": "assistant", "content": text}, reason
    return {
        "role": "assistant",
        "content": content or None,
        "tool_calls": [_tool_call_json(c.id, c.name, c.arguments) for c in calls],
    }, "tool_calls"


def _floats_b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def routes(service: Service) -> list[BaseRoute]:
    async def chat_completions(request: Request) -> Response:
        body = await parse_body(request, OpenAIChatRequest)
        service.resolve_model(body.model)
        if body.logprobs or body.top_logprobs:
            raise BadRequestError("logprobs are not supported", param="logprobs")
        functions = parse_functions(body.tools)
        choice = parse_tool_choice(body.tool_choice, functions)
        prompt = service.render_chat(chat_messages(body), tools=functions, tool_choice=choice)
        grammar = service.tool_grammar(functions, choice)
        gen = _request(service, body, prompt, body.max_completion_tokens or body.max_tokens, grammar)
        calling = choice.mode != "none"

        def whole(text: str, reason: str) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calling:
                message, reason = _with_tool_calls(service, functions, text, reason)
            return {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}

        return await _run(
            service,
            request,
            body,
            gen,
            obj="chat.completion",
            whole=whole,
            tool_stream=ToolStream(service.tool_format, functions) if calling else None,
            delta=lambda text, reason, role: {
                "index": 0,
                "delta": (
                    {"role": "assistant", "content": ""}
                    if role
                    else {}
                    if text is None
                    else {"content": text}
                ),
                "finish_reason": reason,
                "logprobs": None,
            },
        )

    async def completions(request: Request) -> Response:
        body = await parse_body(request, OpenAICompletionRequest)
        service.resolve_model(body.model)
        if body.logprobs:
            raise BadRequestError("logprobs are not supported", param="logprobs")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise BadRequestError("exactly one prompt is supported", param="prompt")
        gen = _request(service, body, prompts[0], body.max_tokens or 16)  # OpenAI's default is 16
        echo = prompts[0] if body.echo else ""
        return await _run(
            service,
            request,
            body,
            gen,
            obj="text_completion",
            whole=lambda text, reason: {
                "index": 0,
                "text": echo + text,
                "finish_reason": reason,
                "logprobs": None,
            },
            delta=lambda text, reason, role: {
                "index": 0,
                "text": text or "",
                "finish_reason": reason,
                "logprobs": None,
            },
        )

    async def embeddings(request: Request) -> Response:
        body = await parse_body(request, OpenAIEmbeddingRequest)
        service.resolve_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        result = await service.embed(texts)
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _floats_b64(v) if body.encoding_format == "base64" else v,
            }
            for i, v in enumerate(result.vectors)
        ]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.model,
                "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
            }
        )

    def _model_card() -> dict[str, Any]:
        return {
            "id": service.settings.model.name,
            "object": "model",
            "created": int(service.started_at),
            "owned_by": "slm-operator",
        }

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card()]})

    async def model(request: Request) -> Response:
        service.resolve_model(request.path_params["model"])
        return JSONResponse(_model_card())

    return [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
    ]
