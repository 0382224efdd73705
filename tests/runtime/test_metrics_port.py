"""`server.metricsPort`: /metrics on a listener of its own, as operator-made pods run the runtime.

A NetworkPolicy admits by port, so the scrapers' port must serve metrics (and the kubelet's
probes) and nothing else, and the API port must not serve metrics. Tested with `slm-runtime serve`
in a subprocess (the pod's command), over real sockets; SIGTERM still drains and exits 0 with two
listeners.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from readiness import wait_ready
from slm_runtime.config import RuntimeConfig, ServerSection

from .conftest import MODEL, ServerFactory, free_port


@pytest.fixture(scope="module")
def runtime(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(API URL, metrics URL) of a `slm-runtime serve` with `server.metricsPort`."""
    api_port, metrics_port = free_port(), free_port()
    config = tmp_path_factory.mktemp("metrics-port") / "config.yaml"
    config.write_text(
        f"model: {{name: {MODEL}, path: {models['q8_0']}}}\n"
        "runtime: {contextLength: 512, threads: 1, batchSize: 128}\n"
        f"server: {{host: 127.0.0.1, port: {api_port}, metricsPort: {metrics_port}}}\n"
    )
    cmd = [sys.executable, "-m", "slm_runtime.cli", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    api, metrics = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}"
    try:
        wait_ready(api, process=proc, describe=lambda: _output(proc))
        yield api, metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_metrics_port_serves_metrics_only(runtime: tuple[str, str]) -> None:
    api, metrics = runtime
    answer = httpx.post(
        f"{api}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}, timeout=30
    )
    assert answer.status_code == 200
    page = httpx.get(f"{metrics}/metrics", timeout=10)
    assert page.status_code == 200
    assert "vllm:num_requests_running" in page.text
    # the request above was counted: the metrics listener reads the same registry as the API
    assert any(
        line.startswith("vllm:request_success_total") and not line.endswith(" 0.0")
        for line in page.text.splitlines()
    )
    for path in ("/v1/models", "/api/tags", "/api/version"):
        refused = httpx.get(f"{metrics}{path}", timeout=10)
        assert refused.status_code == 404, path
    openai_style = httpx.post(
        f"{metrics}/v1/chat/completions", json={"model": MODEL, "messages": []}, timeout=10
    )
    assert openai_style.status_code == 404
    assert "only /metrics" in openai_style.json()["error"]["message"]


def test_probes_are_served_on_both_ports(runtime: tuple[str, str]) -> None:
    """The kubelet probes the metrics port (outside the API port's connection limit, see
    tests/security/test_runtime_flood.py); the API port keeps /healthz and /readyz for others."""
    api, metrics = runtime
    metrics_port = int(metrics.rsplit(":", 1)[1])
    for base in (api, metrics):
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "metricsPort": metrics_port}


def test_api_port_has_no_metrics_and_names_the_port(runtime: tuple[str, str]) -> None:
    api, metrics = runtime
    assert httpx.get(f"{api}/metrics", timeout=10).status_code == 404
    assert httpx.get(f"{api}/v1/models", timeout=10).status_code == 200
    metrics_port = int(metrics.rsplit(":", 1)[1])
    assert httpx.get(f"{api}/readyz", timeout=10).json() == {"status": "ready", "metricsPort": metrics_port}


def test_without_metrics_port_metrics_stay_on_the_api_port(serve: ServerFactory) -> None:
    standalone = serve()
    assert httpx.get(f"{standalone.url}/metrics", timeout=10).status_code == 200
    assert httpx.get(f"{standalone.url}/readyz", timeout=10).json() == {"status": "ready"}


def test_metrics_port_must_differ_from_the_api_port() -> None:
    with pytest.raises(ValidationError, match="must differ"):
        ServerSection.model_validate({"port": 8080, "metricsPort": 8080})
    config = RuntimeConfig.model_validate({"server": {"metricsPort": 9090}})
    assert "metricsPort: 9090" in config.to_yaml()


def _output(proc: subprocess.Popen[bytes]) -> str:
    """What an exited server printed (read only once it has exited: a read would wait for EOF)."""
    return proc.stdout.read().decode(errors="replace") if proc.stdout and proc.poll() is not None else ""
