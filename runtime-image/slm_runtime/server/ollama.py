"""Ollama's API: /api/generate, /api/chat, /api/embed(dings), /api/tags, /api/show, /api/ps, ...

Streams NDJSON by default (`stream` defaults to true, as in Ollama). Durations are nanoseconds.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from slm_runtime import __version__
from slm_runtime.backends.base import (
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    ResponseFormat,
)
from slm_runtime.errors import BadRequestError, ModelsDeclaredError, SlmError
from slm_runtime.server._common import dumps, parse_body, prepend, until_disconnect
from slm_runtime.server.errors import error_body
from slm_runtime.server.schemas import (
    OllamaChatRequest,
    OllamaEmbeddingsRequest,
    OllamaEmbedRequest,
    OllamaGenerateRequest,
    OllamaOptions,
    OllamaPullRequest,
    OllamaShowRequest,
    _OllamaGenerating,
)
from slm_runtime.server.service import Service, first_and_rest
from slm_runtime.server.tools import (
    ContentDelta,
    Function,
    ToolCall,
    ToolStream,
    arguments_dict,
    parse_calls,
    parse_functions,
    parse_tool_choice,
)

log = logging.getLogger(__name__)

_LOAD_OPTIONS = frozenset(
    {
        "num_batch", "num_gpu", "main_gpu", "num_thread", "low_vram", "use_mmap", "use_mlock",
        "numa", "vocab_only", "f16_kv", "logits_all", "embedding_only", "num_gqa",
        "rope_frequency_base", "rope_frequency_scale",
    }
)  # fmt: skip
"""Options Ollama applies when it loads a model; here the SLMDeployment's spec.runtime fixes them."""


def _check_options(opts: OllamaOptions) -> None:
    """Every option is applied (see `_request`) or refused with a 400 naming it.

    `num_keep` is accepted with nothing to do: it says what to keep when the context is
    shifted, and this runtime never shifts (a prompt that does not fit is a 400).
    """
    for name, value in (opts.model_extra or {}).items():
        if value is None:
            continue
        if name in _LOAD_OPTIONS:
            raise BadRequestError(
                f"option '{name}' is fixed by the SLMDeployment (spec.runtime) and cannot be set per request",
                param=f"options.{name}",
            )
        raise BadRequestError(f"unknown option '{name}'", param=f"options.{name}")
    if opts.tfs_z is not None and opts.tfs_z != 1.0:
        raise BadRequestError(
            "option 'tfs_z' (tail-free sampling) was removed from llama.cpp; only 1.0 (off) is accepted",
            param="options.tfs_z",
        )
    if opts.penalize_newline is False:
        raise BadRequestError(
            "option 'penalize_newline: false' is not supported (llama.cpp penalizes newlines like any token)",
            param="options.penalize_newline",
        )


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).isoformat().replace("+00:00", "Z")


def _response_format(fmt: str | dict[str, Any] | None) -> ResponseFormat:
    if isinstance(fmt, dict):
        return ResponseFormat("json_schema", fmt)
    if fmt == "json":
        return ResponseFormat("json_object")
    return ResponseFormat()


def _request(
    service: Service, body: _OllamaGenerating, prompt: str, grammar: str | None = None
) -> GenerationRequest:
    opts = body.options or OllamaOptions.model_validate({})
    _check_options(opts)
    stop = [opts.stop] if isinstance(opts.stop, str) else opts.stop
    return GenerationRequest(
        prompt=prompt,
        grammar=grammar,
        sampling=service.sampling(
            max_tokens=None
            if opts.num_predict is None
            else (-1 if opts.num_predict < 0 else opts.num_predict),
            temperature=opts.temperature,
            top_p=opts.top_p,
            top_k=opts.top_k,
            repeat_penalty=opts.repeat_penalty,
            seed=opts.seed,
            stop=stop,
            min_p=opts.min_p,
            typical_p=opts.typical_p,
            repeat_last_n=opts.repeat_last_n,
            presence_penalty=opts.presence_penalty,
            frequency_penalty=opts.frequency_penalty,
            mirostat=opts.mirostat,
            mirostat_tau=opts.mirostat_tau,
            mirostat_eta=opts.mirostat_eta,
            context_limit=opts.num_ctx,
            response_format=_response_format(body.format),
        ),
    )


def _final(model: str, finish: FinishEvent, load_ns: int, total_ns: int) -> dict[str, Any]:
    return {
        "done": True,
        "done_reason": "length" if finish.reason == "length" else "stop",
        "total_duration": total_ns,
        "load_duration": load_ns,
        "prompt_eval_count": finish.prompt_tokens,
        "prompt_eval_duration": finish.prompt_eval_ns,
        "eval_count": finish.completion_tokens,
        "eval_duration": finish.eval_ns,
    }


def chat_messages(body: OllamaChatRequest) -> list[dict[str, Any]]:
    """The conversation in the service's canonical shape (tool calls and results included)."""
    out: list[dict[str, Any]] = []
    last_calls: list[str] = []
    for i, m in enumerate(body.messages):
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        calls = []
        for j, raw in enumerate(m.tool_calls or []):
            where = f"messages.{i}.tool_calls.{j}"
            fn = raw.get("function")
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise BadRequestError(f"{where}.function.name is required", param=f"{where}.function.name")
            args = arguments_dict(fn.get("arguments"), f"{where}.function.arguments")
            calls.append({"id": str(raw.get("id") or ""), "name": fn["name"], "arguments": args})
        if calls:
            message["tool_calls"] = calls
            last_calls = [c["name"] for c in calls]
        if m.role == "tool":  # Ollama names the function (`tool_name`), or leaves it to the order
            message["name"] = m.tool_name or (last_calls.pop(0) if last_calls else "")
            message["tool_call_id"] = ""
        out.append(message)
    return out


def _ollama_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [{"function": {"name": c.name, "arguments": c.arguments_object()}} for c in calls]


def _chat_message(text: str, calls: list[ToolCall] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = _ollama_calls(calls)
    return {"message": message}


async def _run(
    service: Service,
    request: Request,
    body: _OllamaGenerating,
    gen: GenerationRequest,
    chunk: Callable[[str], dict[str, Any]],
    *,
    functions: list[Function] | None = None,
) -> Response:
    """Shared by /api/generate and /api/chat; `chunk` wraps a text piece in the endpoint's shape.

    With `functions` (chat with tools), the answer's tool calls are parsed out into
    `message.tool_calls`; streamed, they come in one chunk before the final one, as Ollama does.
    """
    started = time.perf_counter_ns()
    model = body.model
    fmt = service.tool_format
    if not body.stream:
        text, finish = await until_disconnect(request, service.complete(gen))
        total = time.perf_counter_ns() - started
        shaped = chunk(text)
        if functions:
            content, calls = parse_calls(text, fmt, functions)
            shaped = _chat_message(content, calls)
        return JSONResponse(
            {"model": model, "created_at": _now(), **shaped, **_final(model, finish, 0, total)}
        )
    tools = ToolStream(fmt, functions) if functions else None
    first, rest = await until_disconnect(request, first_and_rest(service.generate(gen)))

    async def lines(events: AsyncGenerator[GenerationEvent, None]) -> AsyncIterator[str]:
        async with aclosing(events):
            try:
                async for event in events:
                    if isinstance(event, FinishEvent) and tools is not None:
                        text = "".join(i.text for i in tools.finish() if isinstance(i, ContentDelta))
                        complete = [c for c in tools.calls if _is_object(c.arguments)]
                        if text or complete:
                            piece = {"model": model, "created_at": _now(), **_chat_message(text, complete)}
                            yield dumps({**piece, "done": False}) + "\n"
                    if isinstance(event, FinishEvent):
                        final = {
                            "model": model,
                            "created_at": _now(),
                            **chunk(""),
                            **_final(model, event, 0, time.perf_counter_ns() - started),
                        }
                        yield dumps(final) + "\n"
                    elif tools is not None:
                        text = "".join(i.text for i in tools.feed(event.text) if isinstance(i, ContentDelta))
                        if text:
                            piece = {"model": model, "created_at": _now(), **chunk(text), "done": False}
                            yield dumps(piece) + "\n"
                    else:
                        piece = {"model": model, "created_at": _now(), **chunk(event.text), "done": False}
                        yield dumps(piece) + "\n"
            except SlmError as exc:  # headers are gone: report in-band, as Ollama does
                yield dumps(error_body(exc, "ollama")[1]) + "\n"

    return StreamingResponse(lines(prepend(first, rest)), media_type="application/x-ndjson")


def _loaded(model: str) -> JSONResponse:
    return JSONResponse(
        {"model": model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
    )


def routes(service: Service) -> list[BaseRoute]:
    async def generate(request: Request) -> Response:
        body = await parse_body(request, OllamaGenerateRequest, service.caps)
        service.resolve_model(body.model)
        if body.template:
            log.info("ignoring per-request Go template; the model's chat template is used")
        if not body.prompt and not body.system:
            return _loaded(body.model)
        if body.raw:
            service.check_raw("raw")
            prompt = body.prompt
        else:
            prompt = await service.prompt_for(
                [{"role": "user", "content": body.prompt}], system=body.system, system_field="system"
            )
        return await _run(service, request, body, _request(service, body, prompt), lambda t: {"response": t})

    async def chat(request: Request) -> Response:
        body = await parse_body(request, OllamaChatRequest, service.caps)
        service.resolve_model(body.model)
        if not body.messages:
            return _loaded(body.model)
        functions = parse_functions(body.tools)
        choice = parse_tool_choice(body.tool_choice, functions)
        prompt = await service.prompt_for(chat_messages(body), tools=functions, tool_choice=choice)
        grammar = await service.grammar_for(functions, choice)
        return await _run(
            service,
            request,
            body,
            _request(service, body, prompt, grammar),
            lambda t: {"message": {"role": "assistant", "content": t}},
            functions=functions if choice.mode != "none" else None,
        )

    async def embed(request: Request) -> Response:
        started = time.perf_counter_ns()
        body = await parse_body(request, OllamaEmbedRequest, service.caps, embedding=True)
        service.resolve_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        result = await until_disconnect(
            request, service.embed(texts, dimensions=body.dimensions, truncate=body.truncate)
        )
        return JSONResponse(
            {
                "model": body.model,
                "embeddings": result.vectors,
                "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0,
                "prompt_eval_count": result.prompt_tokens,
            }
        )

    async def embeddings(request: Request) -> Response:
        body = await parse_body(request, OllamaEmbeddingsRequest, service.caps, embedding=True)
        service.resolve_model(body.model)
        # Ollama's legacy API: not normalised
        result = await until_disconnect(request, service.embed([body.prompt], normalize=False))
        return JSONResponse({"embedding": result.vectors[0]})

    def _details(info: ModelInfo) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": info.format,
            "family": info.family,
            "families": [info.family],
            "parameter_size": _param_size(info.parameters),
            "quantization_level": info.quantization,
        }

    def _entry(info: ModelInfo) -> dict[str, Any]:
        return {
            "name": info.name,
            "model": info.name,
            "modified_at": datetime.datetime.fromtimestamp(service.started_at, tz=datetime.UTC).isoformat(),
            "size": info.size_bytes,
            "digest": "",
            "details": _details(info),
        }

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [_entry(service.info)] if service.ready else []})

    async def ps(request: Request) -> Response:
        if not service.ready:
            return JSONResponse({"models": []})
        info = service.info
        rt = service.settings.runtime
        kv_bytes = int(getattr(service.engine, "kv_bytes_per_slot", 0) or 0)  # batched GGUF engine
        size = info.size_bytes + kv_bytes * rt.parallel  # weights + every slot's KV cache
        on_gpu = service.settings.hardware == "gpu" and rt.gpu_layers != 0
        entry = {
            **_entry(info),
            "size": size,
            "expires_at": "2262-04-11T23:47:16Z",  # loaded for the pod's life (keep_alive is moot)
            "size_vram": size if on_gpu else 0,
            "context_length": rt.context_length,
        }
        return JSONResponse({"models": [entry]})

    async def show(request: Request) -> Response:
        body = await parse_body(request, OllamaShowRequest, service.caps)
        info = service.resolve_model(body.model or body.name)
        p = service.settings.prompt
        params = [f"{k} {v}" for k, v in p.parameters.model_dump(exclude_none=True).items() if k != "stop"]
        params += [f'stop "{s}"' for s in p.parameters.stop]
        template = p.template or info.chat_template or service.template_name
        return JSONResponse(
            {
                "modelfile": f"FROM {info.name}\n",  # not the file's path: that is the pod's business
                "parameters": "\n".join(params),
                "template": template,
                "system": p.system or "",
                "details": _details(info),
                "model_info": {
                    "general.architecture": info.family,
                    "general.parameter_count": info.parameters,
                    f"{info.family}.context_length": info.context_length,
                },
                "capabilities": ["completion", "tools"]
                + (["embedding"] if service.engine.capabilities.embeddings else []),
                "modified_at": _entry(info)["modified_at"],
            }
        )

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    return [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/generate", generate, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/embed", embed, methods=["POST"]),
        Route("/api/embeddings", embeddings, methods=["POST"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/version", version, methods=["GET"]),
        *_management_routes(service),
    ]


def _management_routes(service: Service) -> list[BaseRoute]:
    """Pull (of the served model), health, and the model-management calls we refuse."""

    async def pull(request: Request) -> Response:
        """Pulling the served model succeeds at once (it is loaded); clients and scripts do it first."""
        body = await parse_body(request, OllamaPullRequest, service.caps)
        name = body.model or body.name
        served = service.settings.model.name
        if name not in (served, f"{served}:latest"):
            raise ModelsDeclaredError(
                f"cannot pull '{name}': this server serves '{served}' only; "
                "models are declared by the SLMDeployment (spec.model)"
            )
        info = service.info
        steps: list[dict[str, Any]] = [
            {"status": "pulling manifest"},
            {
                "status": f"pulling {info.name}",
                "digest": f"{info.format}:{info.name}",
                "total": info.size_bytes,
                "completed": info.size_bytes,
            },
            {"status": "verifying sha256 digest"},
            {"status": "writing manifest"},
            {"status": "success"},
        ]
        if not body.stream:
            return JSONResponse(steps[-1])

        async def lines() -> AsyncIterator[str]:
            for step in steps:
                yield dumps(step) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def managed(request: Request) -> Response:
        action = request.url.path.removeprefix("/api/").split("/")[0]
        raise ModelsDeclaredError(
            f"/api/{action} is not available: models are declared by the SLMDeployment (spec.model), "
            "not managed through this API"
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return [
        Route("/api/health", health, methods=["GET", "HEAD"]),
        Route("/api/pull", pull, methods=["POST"]),
        Route("/api/create", managed, methods=["POST"]),
        Route("/api/copy", managed, methods=["POST"]),
        Route("/api/delete", managed, methods=["DELETE", "POST"]),
        Route("/api/push", managed, methods=["POST"]),
        Route("/api/blobs/{digest:path}", managed, methods=["HEAD", "POST"]),
    ]


def _is_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _param_size(n: int | None) -> str:
    if not n:
        return "unknown"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)
