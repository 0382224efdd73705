"""`/metrics` and the probes on a port of their own (`server.metricsPort`): one app, two sockets.

A NetworkPolicy admits by port, not by path, so the scrapers' namespace can be let in to read
metrics without reaching the model API only when the two live on different ports. Both sockets
belong to the one uvicorn server (`slm-runtime serve` binds them), so start-up, draining and
shutdown stay as they are; this middleware sends each request by the local port it arrived on:
the metrics port answers `/metrics`, `/healthz` and `/readyz` and nothing else, the API port
everything but `/metrics` (its `/healthz` and `/readyz` stay for existing users).

The probes live on the metrics port because the kubelet's probes must not share the API port's
fate: beyond `limits.maxConnections` uvicorn answers 503 to everything on the API port, and a
connection flood there would otherwise restart the pod (liveness) or take it out of its Service
(readiness). server/guard.py keeps this port out of that limit and gives it a bound of its own;
the operator points the pods' probes here. Without a metrics port (standalone use) the middleware
is not installed and everything stays on the API port.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from slm_runtime.server.errors import error_response, flavour_of

METRICS_PATH = "/metrics"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
"""Served on both ports: the kubelet probes the metrics port, older clients the API port."""


class MetricsPortMiddleware:
    """Routes by the request's local port: `metrics_port` serves `/metrics` and the probes only,
    the API port everything but `/metrics`."""

    def __init__(self, app: ASGIApp, *, metrics_port: int) -> None:
        self.app = app
        self._port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        server = scope.get("server") or (None, None)
        on_metrics_port = server[1] == self._port
        path = scope["path"]
        if path in PROBE_PATHS or on_metrics_port == (path == METRICS_PATH):
            await self.app(scope, receive, send)
            return
        where = (
            f"only {METRICS_PATH}, /healthz and /readyz are served on this port"
            if on_metrics_port
            else (f"{METRICS_PATH} is served on port {self._port}")
        )
        response = error_response(HTTPException(404, where), flavour_of(path))
        await response(scope, receive, send)
