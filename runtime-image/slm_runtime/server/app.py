"""`create_app(settings, engine)`: the ASGI app, with no module-level mutable state."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from slm_runtime.config import RuntimeConfig
from slm_runtime.engine import Engine
from slm_runtime.errors import SlmError
from slm_runtime.server import ollama, openai, responses
from slm_runtime.server.auth import ApiKeyMiddleware, load_keys
from slm_runtime.server.errors import handle_exception
from slm_runtime.server.guard import BodyGuardMiddleware
from slm_runtime.server.metrics_port import MetricsPortMiddleware
from slm_runtime.server.service import Service

log = logging.getLogger(__name__)


def create_app(settings: RuntimeConfig, engine: Engine) -> Starlette:
    """Build the app; the model loads in the background once the app starts (lifespan).

    `app.state.service` is the per-app `Service` (tests and the CLI's drain logic use it).
    """
    service = Service(settings, engine)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        service.start_loading()
        yield
        await service.shutdown()

    # names the metrics port for slm-gateway's scraper, which reads /readyz first
    metrics_port = settings.server.metrics_port
    ready_body = {"status": "ready", **({"metricsPort": metrics_port} if metrics_port else {})}
    by_port = [Middleware(MetricsPortMiddleware, metrics_port=metrics_port)] if metrics_port else []

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if service.ready:
            return JSONResponse(ready_body)
        if service.limiter.draining:
            reason = "draining"
        elif service.load_error:
            reason = f"model failed to load: {service.load_error}"
        else:
            reason = "loading"
        return JSONResponse({"status": reason}, status_code=503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    keys = load_keys(settings.auth)  # AuthConfigError: configured but unusable keys never serve
    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            *ollama.routes(service),
            *openai.routes(service),
            *responses.routes(service),
        ],
        middleware=[
            *by_port,
            Middleware(ApiKeyMiddleware, keys=keys, protect_metrics=settings.auth.protect_metrics),
            Middleware(
                BodyGuardMiddleware,
                max_bytes=settings.limits.max_body_bytes,
                timeout=settings.limits.body_timeout_seconds,
            ),
        ],
        exception_handlers={
            SlmError: handle_exception,
            HTTPException: handle_exception,
            Exception: handle_exception,
        },
        lifespan=lifespan,
    )
    app.state.service = service
    return app
