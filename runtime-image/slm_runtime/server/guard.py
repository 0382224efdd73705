"""Bounds on what one request can make the server do before any policy runs.

The layers, outermost first:

* `GuardedH11Protocol` (uvicorn's h11 protocol plus a deadline on the request head): a client
  that trickles its request line and headers (slowloris) is disconnected after
  `limits.headerTimeoutSeconds`, so it cannot hold one of `limits.maxConnections` forever.
  uvicorn itself only times out *idle* keep-alive connections.
* The same protocol keeps the probe listener (`server.metricsPort`: `/metrics`, `/healthz`,
  `/readyz`) out of `limits.maxConnections`. Beyond that limit uvicorn answers 503 to every
  request of the server, so a flood of client connections on the API port would otherwise fail
  the kubelet's probes too and get the pod restarted or taken out of its Service. The probe
  listener has a bound of its own (`PROBE_MAX_CONNECTIONS`, beyond it new connections are closed
  at once), so a flood there (only scrapers, the gateway and the node may reach it) holds a
  bounded number of sockets and does not use the API port's budget either.
* `BodyGuardMiddleware`: a declared `Content-Length` above `limits.maxBodyBytes` is a 413 before
  a byte of the body is read; a chunked (or lying) body is counted as it arrives and cut off at
  the limit with the same 413; a body that is not complete within `limits.bodyTimeoutSeconds`
  is a 408. Both in the API's own error format.

`caps.py` then bounds the parsed JSON and the request's shape.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import h11
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from slm_runtime.config import LimitsSection
from slm_runtime.errors import PayloadTooLargeError, RequestTimeoutError
from slm_runtime.server.errors import error_response, flavour_of

# -- the connection ---------------------------------------------------------------------------

PROBE_MAX_CONNECTIONS = 64
"""Open connections the probe listener serves at once. Its clients are few and brief: the
kubelet's three probes (a fresh connection each), a Prometheus scrape, each gateway replica's
scraper. A connection beyond it is closed at once, so a flood there holds no more sockets."""


@dataclass
class ProbeListener:
    """The probe listener's port and the connections open on it (at most `max_connections`).

    uvicorn checks `limits.maxConnections` at each request against *every* connection and
    running request of the server, whichever socket they came in on; `GuardedH11Protocol` skips
    that check on this port and adds the connections open here to the API port's allowance, so
    neither listener's clients use the other's budget.
    """

    port: int
    max_connections: int = PROBE_MAX_CONNECTIONS
    open: set[object] = field(default_factory=set)
    full_logged: bool = False


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head (see the module docstring),
    and, with a `probe` listener, separate connection bounds for it and for the API port.

    The deadline starts when the connection opens and again when a response completes (the
    next request on a keep-alive connection); it is cleared once h11 has a whole request head.
    Unlike uvicorn's keep-alive timer it is not reset by incoming bytes, which is the point.
    """

    head_timeout: float = 10.0
    probe: ProbeListener | None = None
    _on_probe_port: bool = False
    _limit: int | None = None

    @property  # type: ignore[override]
    def limit_concurrency(self) -> int | None:
        """What uvicorn compares the server's connections and running requests with, at each
        request (beyond it: 503). None (no check) on the probe listener, which bounds itself at
        accept; elsewhere `maxConnections` plus the probe connections open."""
        if self._on_probe_port:
            return None
        if self._limit is None or self.probe is None:
            return self._limit
        return self._limit + len(self.probe.open)

    @limit_concurrency.setter
    def limit_concurrency(self, value: int | None) -> None:  # uvicorn sets it from its Config
        self._limit = value

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_timer: asyncio.TimerHandle | None = None
        probe = self.probe
        if probe is not None and self.server is not None and self.server[1] == probe.port:
            if len(probe.open) >= probe.max_connections:
                if not probe.full_logged:  # once per episode: a flood must not flood the log
                    probe.full_logged = True
                    self.logger.warning(
                        "probe listener: %d connections open; closing new ones", len(probe.open)
                    )
                transport.close()
                return
            probe.full_logged = False
            self._on_probe_port = True
            probe.open.add(self)
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
        if self._on_probe_port and self.probe is not None:
            self.probe.open.discard(self)
        super().connection_lost(exc)


def protocol_class(limits: LimitsSection, probe_port: int | None = None) -> type[GuardedH11Protocol]:
    """A protocol class carrying this config's head timeout and, with `probe_port`, the probe
    listener's own connection bound (uvicorn instantiates the class per connection; the
    `ProbeListener` is shared by this server's connections only)."""
    attrs: dict[str, Any] = {"head_timeout": limits.header_timeout_seconds}
    if probe_port is not None:
        attrs["probe"] = ProbeListener(probe_port)
    return type("GuardedH11", (GuardedH11Protocol,), attrs)


def uvicorn_options(limits: LimitsSection, probe_port: int | None = None) -> dict[str, Any]:
    """The `uvicorn.Config` keyword arguments that bound connections (see the module docstring);
    `probe_port` is `server.metricsPort`, exempt from `maxConnections` and bounded on its own."""
    return {
        "http": protocol_class(limits, probe_port),
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
