"""The gateway's scraper against real runtimes: /metrics on the port /readyz names, else the API port.

Operator-made pods serve /metrics on `server.metricsPort` only (their API port answers 404 there);
a standalone runtime serves it on its API port. The scraper must read the queue depth from both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from readiness import wait_ready
from slm_gateway.config import DeploymentConfig
from slm_gateway.fleet import Fleet
from slm_gateway.picking import AffinityTable
from slm_gateway.scrape import metrics_url, probe
from slm_runtime.cli import build_engine, listen_sockets
from slm_runtime.config import RuntimeConfig
from slm_runtime.server.app import create_app as create_runtime

from .conftest import Served, free_port, serve_runtime


@pytest.fixture(scope="module")
def split_runtime(tiny_gguf: Path) -> Iterator[tuple[str, int]]:
    """A runtime as the operator configures it (metrics on a port of their own), on the sockets
    `slm-runtime serve` binds: (API URL, metrics port)."""
    api_port, metrics_port = free_port(), free_port()
    settings = RuntimeConfig.model_validate(
        {
            "model": {"name": "split", "path": str(tiny_gguf)},
            "runtime": {"contextLength": 512, "threads": 1, "batchSize": 128, "parallel": 2},
            "server": {"host": "127.0.0.1", "port": api_port, "metricsPort": metrics_port},
        }
    )
    config = uvicorn.Config(
        create_runtime(settings, build_engine(settings)),
        host="127.0.0.1",
        port=api_port,
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    sockets = listen_sockets(config, metrics_port)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{api_port}"
    wait_ready(url, timeout=60)
    yield url, metrics_port
    server.should_exit = True
    thread.join(timeout=15)


def _scrape(url: str) -> int | None:
    fleet = Fleet(eject_base=1.0, affinity=AffinityTable(16))
    fleet.replace([DeploymentConfig.model_validate({"name": "d", "model": "m", "endpoints": [url]})])

    async def once() -> None:
        async with httpx.AsyncClient() as client:
            await probe(client, fleet, fleet.endpoints[url], 10.0)

    asyncio.run(once())
    state = fleet.endpoints[url]
    assert state.failures == 0
    return state.scraped


def test_scrapes_the_metrics_port_that_readyz_names(split_runtime: tuple[str, int]) -> None:
    url, _ = split_runtime
    assert httpx.get(f"{url}/metrics").status_code == 404  # not on the API port
    assert _scrape(url) == 0  # read (0 in flight), not None (page missing)


def test_scrapes_a_standalone_runtime_on_its_api_port(tiny_gguf: Path) -> None:
    runtime: Served = serve_runtime(tiny_gguf, "standalone")
    try:
        assert _scrape(runtime.url) == 0
    finally:
        runtime.stop()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "ready", "metricsPort": 9090}, "http://10.0.0.7:9090/metrics"),
        ({"status": "ready"}, "http://10.0.0.7:8080/metrics"),
        ({"status": "ready", "metricsPort": "9090"}, "http://10.0.0.7:8080/metrics"),
        ({"status": "ready", "metricsPort": 70000}, "http://10.0.0.7:8080/metrics"),
        ({"status": "ready", "metricsPort": True}, "http://10.0.0.7:8080/metrics"),
        (None, "http://10.0.0.7:8080/metrics"),
    ],
)
def test_metrics_url(body: object, expected: str) -> None:
    assert metrics_url("http://10.0.0.7:8080", body) == expected
    if expected.endswith(":9090/metrics"):
        assert metrics_url("http://[fd00::7]:8080", body) == "http://[fd00::7]:9090/metrics"
