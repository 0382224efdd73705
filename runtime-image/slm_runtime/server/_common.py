"""Helpers both front-ends use to read bodies and stream responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from slm_runtime.backends.base import GenerationEvent
from slm_runtime.errors import BadRequestError
from slm_runtime.server.caps import RequestCaps, loads

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


_INLINE_BYTES = 64 * 1024
"""Bodies up to this size are parsed on the event loop (microseconds); larger ones on a worker
thread, so a big body cannot hold up /healthz or the other requests' streams."""


async def parse_body(request: Request, model: type[M], caps: RequestCaps, *, embedding: bool = False) -> M:
    """Parse and validate a JSON body within `caps`; any problem is a 400 naming the field.

    The body was bounded while it arrived (`guard.BodyGuardMiddleware`: 413, 408)."""
    raw = await request.body()
    if len(raw) <= _INLINE_BYTES:
        return _parse(raw, model, caps, embedding)
    return await asyncio.to_thread(_parse, raw, model, caps, embedding)


def _parse(raw: bytes, model: type[M], caps: RequestCaps, embedding: bool) -> M:
    data = loads(raw, caps.max_depth)
    if not isinstance(data, dict):
        raise BadRequestError("request body must be a JSON object")
    caps.check(data, embedding=embedding)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            message = f"unknown field '{where}': this server does not support it"
        else:
            message = f"invalid field '{where}': {first['msg'].removeprefix('Value error, ')}"
        raise BadRequestError(message, param=where or None) from exc


async def prepend(
    first: GenerationEvent, rest: AsyncGenerator[GenerationEvent, None]
) -> AsyncGenerator[GenerationEvent, None]:
    """`first` then `rest`; closing this closes `rest` (which cancels the generation)."""
    async with aclosing(rest):
        yield first
        async for event in rest:
            yield event


class ClientGoneError(Exception):
    """The client disconnected before a non-streamed answer was ready."""


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (non-streamed requests).

    Streamed responses need no help: Starlette cancels the body iterator on disconnect. A plain
    request's handler would otherwise run its generation to the end for nobody.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done():
            raise ClientGoneError from None
        raise
    finally:
        watcher.cancel()


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
