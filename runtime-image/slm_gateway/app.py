"""`create_app(config)`: the gateway's ASGI app; routes only, the logic is in `Gateway`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from slm_gateway import __version__
from slm_gateway.access import KeyFile
from slm_gateway.audit import AuditLog
from slm_gateway.config import GatewayConfig
from slm_gateway.fleet import Fleet
from slm_gateway.gateway import Gateway
from slm_gateway.metrics import GatewayMetrics
from slm_gateway.picking import AffinityTable
from slm_gateway.quotas import Quotas
from slm_gateway.scrape import scrape_forever
from slm_gateway.upstream import UpstreamKey
from slm_runtime.server.errors import handle_exception


def build_gateway(
    config: GatewayConfig, *, audit: AuditLog | None = None, kubernetes: bool = False
) -> Gateway:
    fleet = Fleet(config.routing.eject_seconds, AffinityTable(config.routing.affinity_entries))
    fleet.replace([] if kubernetes else config.deployments)
    return Gateway(
        config=config,
        fleet=fleet,
        keys=KeyFile(config.keys_file),
        quotas=Quotas(),
        audit=audit or AuditLog(config.audit),
        metrics=GatewayMetrics(),
        client=httpx.AsyncClient(
            timeout=httpx.Timeout(None, connect=config.routing.connect_timeout),
            limits=httpx.Limits(max_connections=4096, max_keepalive_connections=512),
        ),
        started_at=time.time(),
        upstream_key=UpstreamKey(config.upstream_key_file),
        upstream_keys={
            d.name: os.environ[d.api_key_env]
            for d in config.deployments
            if d.api_key_env and os.environ.get(d.api_key_env)
        },
        synced=not kubernetes,
    )


def create_app(
    config: GatewayConfig,
    *,
    audit: AuditLog | None = None,
    background: bool = True,
    kubernetes_namespaces: list[str] | None = None,
) -> Starlette:
    """The app for `config`; `background=False` skips the scraper (tests drive health by hand).

    With `kubernetes_namespaces` (empty list: all namespaces) the fleet follows the cluster and
    `config.deployments` is ignored; /readyz answers 503 until the first full listing.
    """
    gw = build_gateway(config, audit=audit, kubernetes=kubernetes_namespaces is not None)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        every = config.routing.scrape_seconds
        scraper = asyncio.create_task(scrape_forever(gw.client, gw.fleet, every)) if background else None
        source = None
        if kubernetes_namespaces is not None:
            from slm_gateway.kube import KubeSource

            source = KubeSource(kubernetes_namespaces, gw.apply)
            source.start(asyncio.get_running_loop())
        yield
        if source is not None:
            source.stop()
        if scraper is not None:
            scraper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scraper
        await gw.client.aclose()
        gw.audit.close()

    async def v1_models(request: Request) -> Response:
        return await gw.listing(request, "openai")

    async def tags(request: Request) -> Response:
        return await gw.listing(request, "tags")

    async def ps(request: Request) -> Response:
        return await gw.listing(request, "ps")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": __version__})

    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if not gw.synced:
            return JSONResponse({"status": "waiting for the first fleet listing"}, status_code=503)
        return JSONResponse({"status": "ready", "models": len(gw.fleet.by_model)})

    async def metrics(request: Request) -> Response:
        now = time.monotonic()
        for s in gw.fleet.endpoints.values():
            healthy = 1 if s.ejected_until <= now else 0
            gw.metrics.healthy.labels(s.deployment.model, s.deployment.name, s.url).set(healthy)
        return Response(generate_latest(gw.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def demand(request: Request) -> Response:
        """Per-deployment requests in flight, held and idle seconds: what the operator scales on.

        Counts only (no prompts, keys or clients), like /metrics, and on the same port."""
        now = time.monotonic()
        deployments = [d for deps in gw.fleet.by_model.values() for d in deps]
        return JSONResponse(gw.demand.report(deployments, gw.in_flight(), now))

    app = Starlette(
        routes=[
            Route("/", root, methods=["GET", "HEAD"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/demand", demand, methods=["GET"]),
            Route("/v1/models", v1_models, methods=["GET"]),
            Route("/v1/models/{model:path}", gw.one_model, methods=["GET"]),
            Route("/api/tags", tags, methods=["GET"]),
            Route("/api/ps", ps, methods=["GET"]),
            Route("/api/version", version, methods=["GET"]),
            Route("/v1/{rest:path}", gw.model_request, methods=["POST"]),
            Route("/api/{rest:path}", gw.model_request, methods=["POST"]),
        ],
        exception_handlers={HTTPException: handle_exception},
        lifespan=lifespan,
    )
    app.state.gateway = gw
    return app
