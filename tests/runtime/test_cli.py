"""The `slm-runtime` command as the pod runs it: serve in a subprocess, SIGTERM drains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from readiness import wait_ready
from slm_runtime.cli import EXIT_USAGE, detect_format
from slm_runtime.cli import main as cli_main

from .conftest import MODEL, free_port


def test_detect_format(models: dict[str, Path], tmp_path: Path) -> None:
    assert detect_format(models["q4_0"]) == "gguf"
    assert detect_format(models["onnx"]) == "onnx"
    (tmp_path / "x.bin").write_bytes(b"nope")
    with pytest.raises(Exception, match="format"):
        detect_format(tmp_path / "x.bin")


def test_bad_arguments_exit_with_usage_code(tmp_path: Path) -> None:
    assert (
        cli_main(["tiny-model", "--format", "gguf", "--out", str(tmp_path / "x"), "--shape", "huge"])
        == EXIT_USAGE
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {nmae: x}\n")
    assert cli_main(["serve", "--config", str(bad)]) == EXIT_USAGE
    assert cli_main(["serve"]) == EXIT_USAGE  # no model


def test_serve_drains_on_sigterm(models: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "model: {name: from-config}\n"
        "runtime: {contextLength: 32768, threads: 1}\n"
        "limits: {drainSeconds: 30}\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable,
        "-m",
        "slm_runtime.cli",
        "serve",
        "--config",
        str(config),
        "--model",
        str(models["q8_0"]),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--name",
        MODEL,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    try:
        wait_ready(url, process=proc, describe=lambda: _output(proc))
        body = {"model": MODEL, "prompt": "go", "options": {"num_predict": 1500}}
        with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=60) as r:
            lines = r.iter_lines()
            next(lines)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            ready = httpx.get(f"{url}/readyz", timeout=5)
            assert ready.status_code == 503
            assert ready.json()["status"] == "draining"
            refused = httpx.post(f"{url}/api/generate", json={"model": MODEL, "prompt": "x"}, timeout=5)
            assert refused.status_code == 503
            final = json.loads([line for line in lines if line][-1])
        assert final["done"] is True
        assert final["eval_count"] == 1500  # the in-flight request finished
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_exits_when_the_model_cannot_load(tmp_path: Path) -> None:
    bogus = tmp_path / "broken.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    cmd = [
        sys.executable,
        "-m",
        "slm_runtime.cli",
        "serve",
        "--model",
        str(bogus),
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 5, result.stderr
    assert "failed to load" in result.stderr


def _output(proc: subprocess.Popen[bytes]) -> str:
    """What an exited server printed (read only once it has exited: a read would wait for EOF)."""
    return proc.stdout.read().decode(errors="replace") if proc.stdout and proc.poll() is not None else ""
