"""Session fixtures: tiny models made by `slm-runtime tiny-model`, and real servers on loopback."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from readiness import wait_ready
from slm_runtime.cli import build_engine
from slm_runtime.cli import main as cli_main
from slm_runtime.config import RuntimeConfig
from slm_runtime.server.app import create_app
from slm_runtime.server.service import Service

MODEL = "tiny"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """GGUF f32/Q8_0/Q4_0 files and an ONNX folder, generated through the CLI."""
    root = tmp_path_factory.mktemp("models")
    out = {
        "f32": root / "tiny-f32.gguf",
        "q8_0": root / "tiny-q8_0.gguf",
        "q4_0": root / "tiny-q4_0.gguf",
        "onnx": root / "tiny-onnx",
    }
    for quant in ("f32", "q8_0", "q4_0"):
        assert (
            cli_main(["tiny-model", "--format", "gguf", "--quantization", quant, "--out", str(out[quant])])
            == 0
        )
    assert cli_main(["tiny-model", "--format", "onnx", "--out", str(out["onnx"])]) == 0
    return out


def settings_for(path: Path, **sections: Any) -> RuntimeConfig:
    """A config for `path` with small, fast runtime settings; `sections` are merged in.

    `runtime.parallel` is left at the runtime's default (the operator's, 4) unless given."""
    data: dict[str, Any] = {
        "model": {"name": MODEL, "path": str(path)},
        "runtime": {"contextLength": 512, "threads": 1, "batchSize": 128},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return RuntimeConfig.model_validate(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    service: Service

    def metric(self, name: str, **labels: str) -> float:
        """Current value of a metric sample from /metrics (0 if absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")) and all(
                f'{k}="{v}"' in line for k, v in labels.items()
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _serve(settings: RuntimeConfig) -> Iterator[RunningServer]:
    app = create_app(settings, build_engine(settings))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, timeout=30)
    yield RunningServer(url, app.state.service)
    server.should_exit = True
    thread.join(timeout=15)


ServerFactory = Callable[..., RunningServer]


@pytest.fixture(scope="session", params=[1, 4], ids=["parallel1", "parallel4"])
def gguf_server(models: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The engine production runs (the batching one), with one slot and with the default four:
    every HTTP test must pass on both, since `runtime.parallel` may not change an answer."""
    yield from _serve(settings_for(models["q8_0"], runtime={"parallel": request.param}))


@pytest.fixture(scope="session")
def onnx_server(models: dict[str, Path]) -> Iterator[RunningServer]:
    yield from _serve(settings_for(models["onnx"]))


@pytest.fixture
def serve(models: dict[str, Path]) -> Iterator[Callable[..., RunningServer]]:
    """Start a server with custom config sections for one test; stopped afterwards."""
    running: list[Iterator[RunningServer]] = []

    def start(model: str = "q8_0", **sections: Any) -> RunningServer:
        gen = _serve(settings_for(models[model], **sections))
        running.append(gen)
        return next(gen)

    yield start
    for gen in running:
        next(gen, None)


REAL_MODEL = "smollm2"


@pytest.fixture(scope="session")
def smollm2_server(smollm2_gguf: Path) -> Iterator[RunningServer]:
    """The real SmolLM2-135M-Instruct on the batching engine at parallel 4, as pods run it."""
    settings = RuntimeConfig.model_validate(
        {
            "model": {"name": REAL_MODEL, "path": str(smollm2_gguf)},
            "runtime": {"contextLength": 1024, "parallel": 4, "threads": 1, "batchSize": 256},
        }
    )
    yield from _serve(settings)
