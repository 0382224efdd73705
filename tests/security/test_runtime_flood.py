"""Issue 13, item 2 (its caveat): a connection flood on the API port does not fail the probes.

Beyond `limits.maxConnections` uvicorn answers 503 to every request of the server. The kubelet's
probes used to share the API port, so a flood of slow clients there got the pod restarted
(liveness) or taken out of its Service (readiness). Operator-made pods now probe the metrics
port (`server.metricsPort`), which serves /healthz and /readyz outside that limit and has a
bound of its own. Each test floods `slm-runtime serve` (its own process, real sockets) and
checks the other listener with fresh connections, as the kubelet probes: every answer a 200
within the readiness probe's `timeoutSeconds`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from slm_runtime.server.guard import PROBE_MAX_CONNECTIONS

from .runtime_live import (
    MODEL,
    HealthProbe,
    LiveRuntime,
    base_config,
    free_port,
    run_for,
    start_runtime,
    tiny_gguf,
)

__all__ = ["tiny_gguf"]  # a fixture, imported for pytest

MAX_CONNECTIONS = 8
FLOOD = 3 * MAX_CONNECTIONS
PROBE_TIMEOUT = 3.0
"""The rendered readiness probe's timeoutSeconds: a slower answer is a failed probe."""
DEADLINE = 30.0


@dataclass
class Flooded:
    live: LiveRuntime
    metrics_port: int

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"


@pytest.fixture(scope="module")
def flooded(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flooded]:
    """A runtime with a small connection limit, a metrics port, and a head timeout long enough
    that slow clients hold their connections for the whole attack."""
    metrics_port = free_port()
    config = base_config(
        tiny_gguf,
        limits={"maxConnections": MAX_CONNECTIONS, "headerTimeoutSeconds": 60},
        server={"metricsPort": metrics_port},
    )
    runtime = start_runtime(tmp_path_factory.mktemp("flood"), config)
    yield Flooded(runtime, metrics_port)
    runtime.stop()


def _slow_clients(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each send half a request head and then nothing (slowloris)."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        sockets.append(s)
    return sockets


def _status(url: str) -> int | str:
    """The status of a GET on a fresh connection, or the transport error's name."""
    try:
        return httpx.get(url, timeout=PROBE_TIMEOUT).status_code
    except httpx.TransportError as exc:
        return type(exc).__name__


def _wait_for(url: str, wanted: int) -> None:
    deadline = time.monotonic() + DEADLINE
    seen: int | str = ""
    while time.monotonic() < deadline:
        seen = _status(url)
        if seen == wanted:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url}: wanted {wanted}, still {seen} after {DEADLINE:g}s")


def _closed_by_server(s: socket.socket, wait: float) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_attack_slow_client_connection_flood_past_max_connections_leaves_probes_answering(
    flooded: Flooded,
) -> None:
    """Three times maxConnections slow clients on the API port: the API port answers 503 (the
    flood is past its limit), while /healthz, /readyz and /metrics on the probe port answer 200
    on fresh connections throughout; the API recovers once the flood ends."""
    live = flooded.live
    sockets = _slow_clients(live.port, FLOOD)
    try:
        _wait_for(f"{live.url}/healthz", 503)  # control: the attack works on the API port
        with (
            HealthProbe(flooded.metrics_url, "/healthz", timeout=PROBE_TIMEOUT) as liveness,
            HealthProbe(flooded.metrics_url, "/readyz", timeout=PROBE_TIMEOUT) as readiness,
        ):
            for _ in run_for(3.0):
                time.sleep(0.2)
        for probe in (liveness, readiness):
            probe.assert_answered(bound=PROBE_TIMEOUT)
            assert len(probe.latencies) >= 5, probe.path
        assert _status(f"{flooded.metrics_url}/metrics") == 200
        assert _status(f"{live.url}/readyz") == 503, "the flood ended before the probes did"
        assert all(not _closed_by_server(s, 0.01) for s in sockets), "the flood was not held"
    finally:
        for s in sockets:
            s.close()
    _wait_for(f"{live.url}/v1/models", 200)
    assert "Exceeded concurrency limit" in live.log()  # uvicorn's 503s, on the API port only


def test_attack_probe_port_connection_flood_is_bounded_and_spares_the_api_port(
    flooded: Flooded,
) -> None:
    """More idle connections on the probe port than it serves: those beyond
    PROBE_MAX_CONNECTIONS are closed at once (bounded sockets), while the API port, whose own
    limit (8) is far below the probe connections held, keeps serving: neither listener's clients
    use the other's budget."""
    extra = 4
    sockets = [
        socket.create_connection(("127.0.0.1", flooded.metrics_port), timeout=10)
        for _ in range(PROBE_MAX_CONNECTIONS + extra)
    ]
    try:
        # accepted in order: once the last ones are closed, the first ones have all been counted
        assert all(_closed_by_server(s, DEADLINE) for s in sockets[-extra:])
        held = sockets[:PROBE_MAX_CONNECTIONS]
        assert not any(_closed_by_server(s, 0.05) for s in held), "a connection within the bound was closed"
        beyond = _status(f"{flooded.metrics_url}/healthz")
        assert isinstance(beyond, str), f"a probe beyond the bound was served: {beyond}"
        models = httpx.get(f"{flooded.live.url}/v1/models", timeout=10)
        assert models.status_code == 200 and models.json()["data"][0]["id"] == MODEL
    finally:
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
    _wait_for(f"{flooded.metrics_url}/healthz", 200)
    assert f"probe listener: {PROBE_MAX_CONNECTIONS} connections open" in flooded.live.log()
