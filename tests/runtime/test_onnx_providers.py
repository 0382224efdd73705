"""ONNX execution providers: the configured chain, fallback to CPU, the metric and the report the
operator reads. On these machines no accelerator provider can load (the CPU build of
onnxruntime-genai has no CUDA/QNN; the OpenVINO plugin offers no device on an AMD CPU), which is
exactly what the fallback tests need: the failures are real, not simulated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slm_operator.reconcile.status import provider_fallback
from slm_runtime.backends.onnx_providers import open_model, provider_chain
from slm_runtime.cli import main as cli_main
from slm_runtime.config import ExecutionProvider, RuntimeConfig

from .conftest import MODEL, RunningServer, _serve, settings_for


def _providers(*items: dict[str, Any]) -> list[ExecutionProvider]:
    return [ExecutionProvider.model_validate(i) for i in items]


def test_chain_ends_with_cpu_and_drops_repeats() -> None:
    chain = provider_chain(
        _providers({"name": "openvino", "options": {"device_type": "NPU"}}, {"name": "openvino"})
    )
    assert [(p.name, p.options) for p in chain] == [("openvino", {"device_type": "NPU"}), ("cpu", {})]
    assert [p.name for p in provider_chain([])] == ["cpu"]
    assert [p.name for p in provider_chain(_providers({"name": "cpu"}, {"name": "cuda"}))] == ["cpu"]


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="executionProviders"):
        RuntimeConfig.model_validate({"runtime": {"executionProviders": [{"name": "tpu"}]}})


def test_a_provider_that_cannot_load_falls_back_to_cpu(models: dict[str, Path]) -> None:
    model, report = open_model(
        models["onnx"],
        _providers({"name": "cuda"}, {"name": "openvino", "options": {"device_type": "NPU"}}),
    )
    assert model is not None
    assert (report.provider, report.requested, report.fallback) == ("cpu", "cuda", True)
    assert [e.split(":")[0] for e in report.errors] == ["cuda", "openvino"]
    assert "cuda" in report.summary() and "running on cpu" in report.summary()


def test_cpu_only_is_no_fallback(models: dict[str, Path]) -> None:
    _, report = open_model(models["onnx"], [])
    assert (report.provider, report.fallback, report.errors) == ("cpu", False, ())


@pytest.fixture(scope="module")
def fallback_server(models: dict[str, Path]) -> Iterator[RunningServer]:
    chain = [{"name": "openvino", "options": {"device_type": "NPU"}}]
    yield from _serve(settings_for(models["onnx"], runtime={"executionProviders": chain}))


def test_server_serves_on_cpu_and_exports_the_fallback(fallback_server: RunningServer) -> None:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 3}
    r = httpx.post(f"{fallback_server.url}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] == 3
    labels = {"provider": "cpu", "requested": "openvino", "fallback": "true"}
    assert fallback_server.metric("slm_execution_provider", **labels) == 1


def test_select_provider_report_reaches_the_operator_status(models: dict[str, Path], tmp_path: Path) -> None:
    """What the init container writes to its termination message is what the operator parses."""
    config = tmp_path / "config.yaml"
    chain = [{"name": "openvino", "options": {"device_type": "NPU"}}]
    config.write_text(RuntimeConfig.model_validate({"runtime": {"executionProviders": chain}}).to_yaml())
    report_file = tmp_path / "termination-log"
    argv = ["select-provider", "--config", str(config), "--model", str(models["onnx"])]
    assert cli_main([*argv, "--report", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    assert (report["provider"], report["requested"], report["fallback"]) == ("cpu", "openvino", True)
    pod = {
        "metadata": {"name": "demo-abc"},
        "status": {
            "initContainerStatuses": [
                {
                    "name": "select-provider",
                    "state": {"terminated": {"exitCode": 0, "message": report_file.read_text()}},
                }
            ]
        },
    }
    message = provider_fallback([pod])
    assert message is not None
    assert message.startswith("pod demo-abc: execution provider openvino failed, running on cpu: openvino:")


def test_select_provider_refuses_a_gguf(models: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(RuntimeConfig().to_yaml())
    argv = ["select-provider", "--config", str(config), "--model", str(models["q8_0"])]
    assert cli_main([*argv, "--report", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_openvino_plugin_runs_the_model_or_says_why_not(models: dict[str, Path]) -> None:
    """With PyPI's onnxruntime-ep-openvino: on a host where the plugin offers a CPU device the
    model runs through OpenVINO (no fallback); where it offers none (this workplace's AMD EPYC
    CPUs) the fallback names that reason instead of onnxruntime-genai's misleading one."""
    ov = pytest.importorskip("onnxruntime_ep_openvino")
    from slm_runtime.backends.onnx_providers import plugin_devices

    devices = plugin_devices(ov.get_ep_name(), ov.get_library_path())
    _, report = open_model(
        models["onnx"], _providers({"name": "openvino", "options": {"device_type": "CPU"}})
    )
    if "CPU" in devices:
        assert (report.provider, report.fallback) == ("openvino", False)
    else:
        assert report.fallback
        assert "offers no device on this host" in report.errors[0]
