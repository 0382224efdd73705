"""Reading each pod's queue depth and readiness in the background (the only periodic I/O)."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from slm_gateway.fleet import EndpointState, Fleet

log = logging.getLogger(__name__)

_LOAD_SERIES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def parse_load(text: str) -> int | None:
    """`vllm:num_requests_running` + `vllm:num_requests_waiting` from a /metrics page (None if absent)."""
    total: float | None = None
    for line in text.splitlines():
        if line.startswith(_LOAD_SERIES):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in _LOAD_SERIES:
                try:
                    total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
                except (ValueError, IndexError):
                    continue
    return None if total is None else round(total)


def metrics_url(endpoint: str, ready_body: object) -> str:
    """Where `endpoint`'s /metrics is: on the port its /readyz names (`metricsPort`, the runtime's
    `server.metricsPort`, which operator-made pods always set), else on the endpoint's own port."""
    port = ready_body.get("metricsPort") if isinstance(ready_body, dict) else None
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        return f"{endpoint}/metrics"
    parts = httpx.URL(endpoint)
    return str(parts.copy_with(port=port, path="/metrics"))


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


async def probe(client: httpx.AsyncClient, fleet: Fleet, state: EndpointState, timeout: float) -> None:
    """One endpoint: /readyz decides health, /metrics (on the port /readyz names) its load."""
    try:
        ready = await client.get(f"{state.url}/readyz", timeout=timeout)
        if ready.status_code != 200:
            fleet.failed(state.url, time.monotonic())
            return
        at_scrape = state.outstanding
        page = await client.get(metrics_url(state.url, _json(ready)), timeout=timeout)
    except httpx.HTTPError as exc:
        log.info("endpoint %s set aside: %s", state.url, exc.__class__.__name__)
        fleet.failed(state.url, time.monotonic())
        return
    if state.failures:
        log.info("endpoint %s is back", state.url)
    fleet.succeeded(state.url)
    if page.status_code == 200:
        state.scraped = parse_load(page.text)
        state.outstanding_at_scrape = min(at_scrape, state.outstanding)


async def scrape_forever(client: httpx.AsyncClient, fleet: Fleet, every: float) -> None:
    while True:
        states = list(fleet.endpoints.values())
        if states:
            await asyncio.gather(*(probe(client, fleet, s, min(every, 2.0)) for s in states))
        await asyncio.sleep(every)
