"""`/metrics` on a port of its own (`server.metricsPort`): one app, two listening sockets.

A NetworkPolicy admits by port, not by path, so the scrapers' namespace can be let in to read
metrics without reaching the model API only when the two live on different ports. Both sockets
belong to the one uvicorn server (`slm-runtime serve` binds them), so start-up, draining and
shutdown stay as they are; this middleware sends each request by the local port it arrived on:
the metrics port answers `/metrics` and nothing else, the API port everything but `/metrics`.
Without a metrics port (standalone use) the middleware is not installed and `/metrics` stays on
the API port.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from slm_runtime.server.errors import error_response, flavour_of

METRICS_PATH = "/metrics"


class MetricsPortMiddleware:
    """Routes by the request's local port: `metrics_port` serves `/metrics` only, others the rest."""

    def __init__(self, app: ASGIApp, *, metrics_port: int) -> None:
        self.app = app
        self._port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = scope.get("server") or (None, None)
        on_metrics_port = server[1] == self._port
        if on_metrics_port == (scope["path"] == METRICS_PATH):
            await self.app(scope, receive, send)
            return
        where = (
            f"only {METRICS_PATH} is served on this port"
            if on_metrics_port
            else (f"{METRICS_PATH} is served on port {self._port}")
        )
        response = error_response(HTTPException(404, where), flavour_of(scope["path"]))
        await response(scope, receive, send)
