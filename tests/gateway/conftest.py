"""Real `slm-runtime` servers (tiny models, and the real SmolLM2) with a gateway in front, on loopback.

Every server runs in this process on its own uvicorn thread and port: the runtimes with the
production app and engine (`create_app` + `build_engine`), the gateway with its production app in
static mode. A small scripted upstream (`Script`) injects the failures real pods rarely produce on
cue: an answer that stops mid-stream, a 503 before the first byte, a stream that waits for the client.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from slm_gateway.app import create_app as create_gateway
from slm_gateway.config import GatewayConfig
from slm_gateway.gateway import Gateway
from slm_runtime.cli import build_engine
from slm_runtime.cli import main as runtime_cli
from slm_runtime.config import RuntimeConfig
from slm_runtime.server.app import create_app as create_runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """An ASGI app on a uvicorn thread; `stop()` shuts it down."""

    def __init__(self, app: Any, ready_path: str = "/healthz") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False)
        )
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.url} did not become ready")

    def metric(self, name: str, **labels: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=10).text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)


def serve_runtime(path: Path, name: str, parallel: int = 2, context: int = 1024, **extra: Any) -> Served:
    settings = RuntimeConfig.model_validate(
        {
            "model": {"name": name, "path": str(path)},
            "runtime": {"contextLength": context, "threads": 1, "batchSize": 256, "parallel": parallel},
            **extra,
        }
    )
    return Served(create_runtime(settings, build_engine(settings)), ready_path="/readyz")


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gw-models") / "tiny-q8_0.gguf"
    assert runtime_cli(["tiny-model", "--format", "gguf", "--quantization", "q8_0", "--out", str(out)]) == 0
    return out


@dataclass
class Fleet:
    alpha: list[Served]
    beta: Served


@pytest.fixture(scope="session")
def fleet(tiny_gguf: Path) -> Iterator[Fleet]:
    """Two replicas of model `alpha` and one of `beta` (the tiny model under two names)."""
    servers = Fleet(
        [serve_runtime(tiny_gguf, "alpha"), serve_runtime(tiny_gguf, "alpha")],
        serve_runtime(tiny_gguf, "beta"),
    )
    yield servers
    for s in [*servers.alpha, servers.beta]:
        s.stop()


@dataclass
class RunningGateway:
    url: str
    gateway: Gateway
    audit_path: Path
    served: Served

    def audit(self) -> list[dict[str, Any]]:
        """Audit lines written so far (the file is line-buffered)."""
        text = self.audit_path.read_text(encoding="utf-8") if self.audit_path.exists() else ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def wait_audit(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.audit()
            if len(lines) >= count:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"expected {count} audit lines, got {len(self.audit())}")


GatewayFactory = Callable[..., RunningGateway]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[GatewayFactory]:
    """`gateway(deployments=[...], keys=[...], **config)` starts a gateway in static mode."""
    running: list[Served] = []

    def start(
        *, keys: list[dict[str, Any]] | None = None, background: bool = False, **config: Any
    ) -> RunningGateway:
        audit_path = tmp_path / f"audit-{len(running)}.jsonl"
        data: dict[str, Any] = {"audit": {"stdout": False, "file": str(audit_path)}, **config}
        if keys is not None:
            keys_path = tmp_path / f"keys-{len(running)}.yaml"
            keys_path.write_text(yaml.safe_dump(keys))
            data["keysFile"] = str(keys_path)
        app = create_gateway(GatewayConfig.model_validate(data), background=background)
        served = Served(app)
        running.append(served)
        return RunningGateway(served.url, app.state.gateway, audit_path, served)

    yield start
    for s in running:
        s.stop()


# -- a scripted upstream for failure injection --------------------------------------------------


@dataclass
class Script:
    """What the scripted upstream does; `hits` counts the model requests it received."""

    mode: str = "ok"  # ok | fail-first | cut-mid-stream | wait-for-client
    hits: int = 0
    release: threading.Event = field(default_factory=threading.Event)


def scripted_upstream(script: Script, model: str = "alpha") -> Starlette:
    def chunk(text: str) -> bytes:
        obj = {
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": text}}],
        }
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    async def chat(request: Request) -> Response:
        script.hits += 1
        if script.mode == "fail-first" and script.hits == 1:
            return JSONResponse({"error": {"message": "loading"}}, status_code=503)

        async def events() -> Any:
            yield chunk("first")
            if script.mode == "cut-mid-stream":
                raise RuntimeError("pod died")  # uvicorn drops the connection mid-body
            if script.mode == "wait-for-client":
                released = await asyncio.to_thread(script.release.wait, 20)
                yield chunk("after-release" if released else "late")
            yield chunk("last")
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def ok(request: Request) -> Response:
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/healthz", ok),
            Route("/readyz", ok),
        ]
    )
