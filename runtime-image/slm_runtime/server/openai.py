"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models.

Streams Server-Sent Events ending with `data: [DONE]`. `n > 1` runs n sequences of one
prompt (the engine copies the prompt's KV cells instead of computing them n times); with a
`seed`, choice i uses seed + i. `logprobs` are the model's own log probabilities (softmax of
the raw logits, before sampling), like OpenAI's. Chat completions take `tools`/`tool_choice`
(`server/tools.py`) and answer with `tool_calls`, streamed as OpenAI does: a delta with the call's
`index`, `id` and `function.name`, then `function.arguments` in pieces (each choice parses its own).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from slm_runtime.backends.base import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ResponseFormat,
    TokenEvent,
)
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


_MAX_N = 16


def _requests(
    service: Service,
    body: _OpenAISampling,
    prompt: str,
    max_tokens: int | None,
    logprobs: int | None = None,
    *,
    grammar: str | None = None,
) -> list[GenerationRequest]:
    """One generation per choice (`n`); choice i gets seed + i so seeded choices differ."""
    if body.n > _MAX_N:
        raise BadRequestError(f"n must be at most {_MAX_N}", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else body.stop
    sampling = service.sampling(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=body.repetition_penalty,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        seed=body.seed,
        stop=stop,
        logit_bias=_logit_bias(body.logit_bias),
        response_format=_response_format(body.response_format),
        logprobs=logprobs,
    )
    return [
        GenerationRequest(
            prompt=prompt,
            grammar=grammar,
            sampling=sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + i),
        )
        for i in range(body.n)
    ]


def _chat_logprobs(events: Sequence[TokenEvent]) -> dict[str, Any]:
    """OpenAI's chat `logprobs` object for the tokens of `events`."""
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.bytes),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(b)} for t, v, b in lp.top],
            }
            for event in events
            for lp in event.logprobs
        ],
        "refusal": None,
    }


def _completion_logprobs(events: Sequence[TokenEvent], offset: int = 0) -> dict[str, Any]:
    """The legacy completions `logprobs` object: parallel lists, text offsets from `offset`."""
    tokens: list[str] = []
    values: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    at = offset
    for event in events:
        for lp in event.logprobs:
            tokens.append(lp.token)
            values.append(lp.logprob)
            tops.append({t: v for t, v, _ in lp.top})
            offsets.append(at)
            at += len(lp.token)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}


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


Whole = Callable[[int, str, str, list[TokenEvent]], dict[str, Any]]
"""(index, text, finish_reason, token events) -> a choice of the non-streamed answer."""
Delta = Callable[[int, str | None, str | None, bool, TokenEvent | None], dict[str, Any]]
"""(index, text, finish_reason, is_role_chunk, event) -> a choice of one streamed chunk."""


async def _collect(service: Service, gen: GenerationRequest) -> tuple[list[TokenEvent], FinishEvent]:
    events: list[TokenEvent] = []
    async with aclosing(service.generate(gen)) as stream:
        async for event in stream:
            if isinstance(event, FinishEvent):
                return events, event
            events.append(event)
    raise BadRequestError("generation ended without a result")  # pragma: no cover


def _total_usage(finishes: Sequence[FinishEvent]) -> dict[str, int]:
    prompt = finishes[0].prompt_tokens if finishes else 0
    completion = sum(f.completion_tokens for f in finishes)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _merged(
    streams: list[AsyncGenerator[GenerationEvent, None]],
) -> AsyncGenerator[tuple[int, GenerationEvent], None]:
    """The events of several generations as they come, tagged with their choice index."""
    if len(streams) == 1:
        async with aclosing(streams[0]) as only:
            async for event in only:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, GenerationEvent | BaseException | None]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncGenerator[GenerationEvent, None]) -> None:
        try:
            async with aclosing(stream):
                async for event in stream:
                    await queue.put((i, event))
        except Exception as exc:
            await queue.put((i, exc))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            i, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _run(
    service: Service,
    request: Request,
    body: _OpenAISampling,
    gens: list[GenerationRequest],
    *,
    obj: str,
    whole: Whole,
    delta: Delta,
    tool_stream: Callable[[], ToolStream] | None = None,
) -> Response:
    """Shared by chat and text completions; `whole`/`delta` build the endpoint's choice objects.
    With `tool_stream`, each choice's text goes through its own parser (tool calls as deltas)."""
    cid = f"{'chatcmpl' if obj.startswith('chat') else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    model = body.model
    if not body.stream:
        results = await until_disconnect(request, asyncio.gather(*(_collect(service, g) for g in gens)))
        return JSONResponse(
            {
                "id": cid,
                "object": obj,
                "created": created,
                "model": model,
                "choices": [
                    whole(i, "".join(e.text for e in events), _finish_reason(finish), events)
                    for i, (events, finish) in enumerate(results)
                ],
                "usage": _total_usage([finish for _, finish in results]),
            }
        )
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    started = await until_disconnect(
        request,
        asyncio.gather(*(first_and_rest(service.generate(g)) for g in gens), return_exceptions=True),
    )
    failed = [r for r in started if isinstance(r, BaseException)]
    opened = [r for r in started if not isinstance(r, BaseException)]
    if failed:  # e.g. the n-th choice was refused by admission control: none of them runs
        for _, rest in opened:
            await rest.aclose()
        raise failed[0]
    chunk_obj = f"{obj}.chunk" if obj.startswith("chat") else obj

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        payload = {"id": cid, "object": chunk_obj, "created": created, "model": model, "choices": choices}
        if include_usage and "usage" not in extra:
            payload["usage"] = None
        return _sse({**payload, **extra})

    def tool_choice(i: int, item: StreamItem) -> dict[str, Any]:
        return {"index": i, "delta": _tool_delta(item), "finish_reason": None, "logprobs": None}

    async def events(stream: AsyncGenerator[tuple[int, GenerationEvent], None]) -> AsyncIterator[str]:
        started: set[int] = set()
        finishes: list[FinishEvent] = []
        parsers: dict[int, ToolStream] = {}
        async with aclosing(stream):
            try:
                async for i, event in stream:
                    if i not in started and obj.startswith("chat"):
                        yield chunk([delta(i, "", None, True, None)])
                    started.add(i)
                    parser = parsers.setdefault(i, tool_stream()) if tool_stream is not None else None
                    if isinstance(event, FinishEvent):
                        finishes.append(event)
                        reason = _finish_reason(event)
                        if parser is not None:
                            for item in parser.finish():
                                yield chunk([tool_choice(i, item)])
                            reason = "tool_calls" if parser.calls and reason != "length" else reason
                        yield chunk([delta(i, None, reason, False, None)])
                    elif event.text and parser is not None:
                        for item in parser.feed(event.text):
                            yield chunk([tool_choice(i, item)])
                    elif event.text or event.logprobs:
                        yield chunk([delta(i, event.text, None, False, event)])
                if include_usage:
                    yield chunk([], usage=_total_usage(finishes))
            except SlmError as exc:  # headers are gone: report in-band, as OpenAI does
                yield _sse(error_body(exc, "openai")[1])
        yield "data: [DONE]\n\n"

    streams = [prepend(first, rest) for first, rest in opened]
    return StreamingResponse(events(_merged(streams)), media_type="text/event-stream")


def _floats_b64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def routes(service: Service) -> list[BaseRoute]:
    async def chat_completions(request: Request) -> Response:
        body = await parse_body(request, OpenAIChatRequest, service.caps)
        service.resolve_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise BadRequestError("top_logprobs needs logprobs: true", param="top_logprobs")
        functions = parse_functions(body.tools)
        choice = parse_tool_choice(body.tool_choice, functions)
        prompt = await service.prompt_for(chat_messages(body), tools=functions, tool_choice=choice)
        grammar = await service.grammar_for(functions, choice)
        k = (body.top_logprobs or 0) if body.logprobs else None
        gens = _requests(
            service, body, prompt, body.max_completion_tokens or body.max_tokens, k, grammar=grammar
        )
        calling = choice.mode != "none"

        def whole(i: int, text: str, reason: str, events: list[TokenEvent]) -> dict[str, Any]:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calling:
                message, reason = _with_tool_calls(service, functions, text, reason)
            logprobs = _chat_logprobs(events) if k is not None else None
            return {"index": i, "message": message, "finish_reason": reason, "logprobs": logprobs}

        return await _run(
            service,
            request,
            body,
            gens,
            obj="chat.completion",
            whole=whole,
            tool_stream=(lambda: ToolStream(service.tool_format, functions)) if calling else None,
            delta=lambda i, text, reason, role, event: {
                "index": i,
                "delta": (
                    {"role": "assistant", "content": ""}
                    if role
                    else {}
                    if text is None
                    else {"content": text}
                ),
                "finish_reason": reason,
                "logprobs": _chat_logprobs([event]) if k is not None and event is not None else None,
            },
        )

    async def completions(request: Request) -> Response:
        body = await parse_body(request, OpenAICompletionRequest, service.caps)
        service.resolve_model(body.model)
        service.check_raw("prompt")  # a completion prompt skips the chat template and its system prompt
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise BadRequestError("exactly one prompt is supported", param="prompt")
        k = body.logprobs
        if k is not None and body.echo:
            raise BadRequestError(
                "logprobs with echo (prompt log probabilities) is not supported", param="echo"
            )
        gens = _requests(service, body, prompts[0], body.max_tokens or 16, k)  # OpenAI's default is 16
        echo = prompts[0] if body.echo else ""
        return await _run(
            service,
            request,
            body,
            gens,
            obj="text_completion",
            whole=lambda i, text, reason, events: {
                "index": i,
                "text": echo + text,
                "finish_reason": reason,
                "logprobs": _completion_logprobs(events) if k is not None else None,
            },
            delta=lambda i, text, reason, role, event: {
                "index": i,
                "text": text or "",
                "finish_reason": reason,
                "logprobs": _completion_logprobs([event]) if k is not None and event is not None else None,
            },
        )

    async def embeddings(request: Request) -> Response:
        body = await parse_body(request, OpenAIEmbeddingRequest, service.caps, embedding=True)
        service.resolve_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        result = await until_disconnect(request, service.embed(texts, dimensions=body.dimensions))
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
