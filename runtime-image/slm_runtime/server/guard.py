"""Bounds on what one request can make the server do before any policy runs.

Three layers, outermost first:

* `GuardedH11Protocol` (uvicorn's h11 protocol plus a deadline on the request head): a client
  that trickles its request line and headers (slowloris) is disconnected after
  `limits.headerTimeoutSeconds`, so it cannot hold one of `limits.maxConnections` forever.
  uvicorn itself only times out *idle* keep-alive connections.
* `BodyGuardMiddleware`: a declared `Content-Length` above `limits.maxBodyBytes` is a 413 before
  a byte of the body is read; a chunked (or lying) body is counted as it arrives and cut off at
  the limit with the same 413; a body that is not complete within `limits.bodyTimeoutSeconds`
  is a 408. Both in the API's own error format.

`caps.py` then bounds the parsed JSON and the request's shape.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from slm_runtime.config import LimitsSection
from slm_runtime.errors import PayloadTooLargeError, RequestTimeoutError
from slm_runtime.server.errors import error_response, flavour_of

# -- the connection ---------------------------------------------------------------------------


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (see the module docstring).

    The deadline starts when the connection opens and again when a response completes (the
    next request on a keep-alive connection); it is cleared once h11 has a whole request head.
    Unlike uvicorn's keep-alive timer it is not reset by incoming bytes, which is the point.
    """

    head_timeout: float = 10.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._clear_head_timer()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _clear_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info(
                "closing a connection with no complete request head after %gs", self.head_timeout
            )
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._clear_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._clear_head_timer()
        super().connection_lost(exc)


def protocol_class(limits: LimitsSection) -> type[GuardedH11Protocol]:
    """A protocol class carrying this config's head timeout (uvicorn instantiates it per connection)."""
    return type("GuardedH11", (GuardedH11Protocol,), {"head_timeout": limits.header_timeout_seconds})


def uvicorn_options(limits: LimitsSection) -> dict[str, Any]:
    """The `uvicorn.Config` keyword arguments that bound connections (see the module docstring)."""
    return {
        "http": protocol_class(limits),
        "limit_concurrency": limits.max_connections,
        "timeout_keep_alive": limits.keep_alive_seconds,
        "h11_max_incomplete_event_size": 16 * 1024,  # request line + headers
    }


# -- the body ---------------------------------------------------------------------------------


class BodyGuardMiddleware:
    """413 for a body over `max_bytes` (declared or counted), 408 for one slower than `timeout`."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await error_response(self._too_large(), flavour_of(scope["path"]))(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        received = 0
        body_done = False

        async def guarded() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body: disconnect watchers wait as long as they like
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise RequestTimeoutError(
                    f"request body not received within {self.timeout:g}s (limits.bodyTimeoutSeconds)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
                body_done = not message.get("more_body", False)
            else:
                body_done = True
            return message

        await self.app(scope, guarded, send)

    def _too_large(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"request body is larger than {self.max_bytes} bytes (limits.maxBodyBytes)"
        )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers") or []:
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
