"""A request for a model with no ready pod (scaled to zero) is held, not refused.

The gateway app runs in-process (`httpx.ASGITransport`) on the test's own event loop, so the test
can change the fleet the way the Kubernetes source does (`Gateway.apply`, on the loop) while a
request waits; the pod behind it is a real uvicorn server on loopback (the scripted upstream).
Held: counted in `/demand` (what the operator's autoscaler reads), forwarded once a pod appears,
with the wait in the audit line; past `holdSeconds`: 503 with Retry-After in each API's own error
format, never 404; a client that leaves while held is let go.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slm_gateway.app import create_app
from slm_gateway.config import DeploymentConfig, GatewayConfig
from slm_gateway.gateway import Gateway

from .conftest import Script, Served, scripted_upstream

CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@pytest.fixture(scope="module")
def pod() -> Iterator[Served]:
    served = Served(scripted_upstream(Script()))
    yield served
    served.stop()


def _app(tmp_path: Path, hold: float) -> tuple[Any, Gateway, Path]:
    audit = tmp_path / "audit.jsonl"
    config = GatewayConfig.model_validate(
        {
            "deployments": [{"name": "ns/alpha", "model": "alpha", "endpoints": []}],
            "routing": {"holdSeconds": hold},
            "audit": {"stdout": False, "file": str(audit)},
        }
    )
    app = create_app(config, background=False)
    return app, app.state.gateway, audit


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_a_held_request_is_forwarded_when_a_pod_turns_ready(tmp_path: Path, pod: Served) -> None:
    app, gw, audit = _app(tmp_path, hold=30)

    async def main() -> tuple[httpx.Response, dict[str, Any], dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            before = (await client.get("/demand")).json()
            request = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
            await _wait_for(lambda: gw.demand.held.get("ns/alpha") == 1)
            during = (await client.get("/demand")).json()
            assert not request.done()
            # what the Kubernetes source does when the EndpointSlice lists a ready pod
            gw.apply([DeploymentConfig(name="ns/alpha", model="alpha", endpoints=[pod.url])])
            response = await request
            assert before["deployments"]["ns/alpha"]["inFlight"] == 0
            return response, during, (await client.get("/demand")).json()

    response, during, after = asyncio.run(main())
    assert response.status_code == 200
    assert "first" in response.text and "[DONE]" in response.text
    assert during["deployments"]["ns/alpha"] == {
        "model": "alpha",
        "inFlight": 1,
        "held": 1,
        "idleSeconds": 0.0,
    }
    assert after["deployments"]["ns/alpha"]["held"] == 0
    assert after["deployments"]["ns/alpha"]["inFlight"] == 0
    line = json.loads(audit.read_text().splitlines()[-1])
    assert line["status"] == 200 and line["held_ms"] > 0
    holds = gw.metrics.registry.get_sample_value(
        "slm_gateway_holds_total", {"model": "alpha", "outcome": "forwarded"}
    )
    assert holds == 1


@pytest.mark.parametrize(
    ("path", "body", "error_of"),
    [
        ("/v1/chat/completions", CHAT, lambda b: b["error"]["message"]),
        (
            "/api/chat",
            {"model": "alpha", "messages": [{"role": "user", "content": "hi"}]},
            lambda b: b["error"],
        ),
    ],
)
def test_past_the_hold_timeout_a_503_with_retry_after_in_the_api_format(
    tmp_path: Path, path: str, body: dict[str, Any], error_of: Any
) -> None:
    app, gw, _ = _app(tmp_path, hold=0.3)

    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            return await client.post(path, json=body)

    response = asyncio.run(main())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"
    assert "scaled to zero" in error_of(response.json())
    assert gw.demand.held == {}
    timeouts = gw.metrics.registry.get_sample_value(
        "slm_gateway_holds_total", {"model": "alpha", "outcome": "timeout"}
    )
    assert timeouts == 1


def test_an_unknown_model_is_still_404_and_hold_zero_refuses_at_once(tmp_path: Path) -> None:
    app, _, _ = _app(tmp_path, hold=0)

    async def main() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            unknown = await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
            at_once = await client.post("/v1/chat/completions", json=CHAT)
            return unknown, at_once

    unknown, at_once = asyncio.run(main())
    assert unknown.status_code == 404
    assert at_once.status_code == 503 and at_once.headers["retry-after"] == "1"


def test_idle_seconds_count_from_the_last_request(tmp_path: Path, pod: Served) -> None:
    app, gw, _ = _app(tmp_path, hold=30)
    gw.apply([DeploymentConfig(name="ns/alpha", model="alpha", endpoints=[pod.url])])

    async def main() -> tuple[float, float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            gw.demand.last_activity["ns/alpha"] -= 42  # as if the request ended 42 s ago
            first = (await client.get("/demand")).json()["deployments"]["ns/alpha"]["idleSeconds"]
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            second = (await client.get("/demand")).json()["deployments"]["ns/alpha"]["idleSeconds"]
            return first, second

    first, second = asyncio.run(main())
    assert 42 <= first < 60
    assert second < 5


def test_a_client_that_leaves_while_held_is_let_go(tmp_path: Path) -> None:
    app, gw, _ = _app(tmp_path, hold=30)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as client:
            request = asyncio.create_task(client.post("/v1/chat/completions", json=CHAT))
            await _wait_for(lambda: gw.demand.held.get("ns/alpha") == 1)
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request

    asyncio.run(main())
    assert gw.demand.held == {}
    gone = gw.metrics.registry.get_sample_value(
        "slm_gateway_holds_total", {"model": "alpha", "outcome": "gone"}
    )
    assert gone == 1
