"""Opening an onnxruntime-genai model on the execution provider placement chose, with fallback.

The operator renders `runtime.executionProviders` from placement (e.g. OpenVINO with
`device_type: NPU` on an Intel NPU node, CUDA on an NVIDIA node). Here each provider in that
chain is tried in order; one that cannot load (library missing, no matching device, the graph
unsupported) is logged with its error and the next is tried, ending with onnxruntime's CPU
provider, which always exists. The outcome is a `ProviderReport`: exported as the
`slm_execution_provider` info metric and written to `providerReportFile` when configured, from
where the operator learns of a fallback (see `slm-runtime select-provider`).

Providers that ship as plugin libraries (PyPI `onnxruntime-ep-openvino`) are registered with
onnxruntime-genai first; built-in ones (CUDA in `onnxruntime-genai-cuda`, QNN, VitisAI) are
appended by name. Every call here runs on the engine's decode thread (backends are
single-threaded), so plugin registration needs no lock.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slm_runtime.backends.base import ProviderReport
from slm_runtime.config import ExecutionProvider

log = logging.getLogger(__name__)

# Our provider names -> the names onnxruntime-genai's Config.append_provider takes.
OG_PROVIDER_NAMES: dict[str, str] = {
    "cuda": "cuda",
    "openvino": "OpenVINO",
    "qnn": "QNN",
    "vitisai": "VitisAI",
    "dml": "dml",
    "webgpu": "WebGPU",
}

# Providers shipped as onnxruntime plugin libraries: the Python package that carries the library
# (it offers get_ep_name() and get_library_path()).
PLUGIN_PACKAGES: dict[str, str] = {"openvino": "onnxruntime_ep_openvino"}

CPU = ExecutionProvider(name="cpu")

_REGISTERED: set[str] = set()
"""Plugin libraries registered with onnxruntime-genai. Registration is process-wide in the native
library (a second one fails), so this mirrors that state rather than adding any of our own."""


def provider_chain(configured: Sequence[ExecutionProvider]) -> list[ExecutionProvider]:
    """The configured providers without repeats, always ending with CPU (nothing after it)."""
    chain: list[ExecutionProvider] = []
    for provider in configured:
        if provider.name == "cpu":
            break
        if all(p.name != provider.name for p in chain):
            chain.append(provider)
    return [*chain, CPU]


def _register_plugin(og: Any, name: str) -> None:
    package = PLUGIN_PACKAGES.get(name)
    if package is None:
        return
    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        raise RuntimeError(f"plugin package {package.replace('_', '-')} is not installed ({exc})") from exc
    ep_name, library = module.get_ep_name(), module.get_library_path()
    if name not in _REGISTERED:
        og.register_execution_provider_library(ep_name, library)
        _REGISTERED.add(name)
    devices = plugin_devices(ep_name, library)
    if not devices:
        # onnxruntime-genai would go on to say "not supported in this build", which misleads.
        raise RuntimeError(f"the {ep_name} plugin ({package}) loaded but offers no device on this host")
    log.info("%s plugin registered; its devices: %s", ep_name, ", ".join(devices))


def plugin_devices(ep_name: str, library: str) -> list[str]:
    """Hardware device types (CPU, GPU, NPU) a plugin library offers here, asked of onnxruntime."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    if not any(d.ep_name == ep_name for d in ort.get_ep_devices()):
        try:
            ort.register_execution_provider_library(ep_name, library)
        except Exception as exc:  # already registered, or the library does not load
            log.debug("registering %s with onnxruntime: %s", ep_name, exc)
    return sorted({d.device.type.name for d in ort.get_ep_devices() if d.ep_name == ep_name})


def _open(og: Any, path: Path, provider: ExecutionProvider) -> Any:
    config = og.Config(str(path))
    config.clear_providers()
    if provider.name != "cpu":
        _register_plugin(og, provider.name)
        og_name = OG_PROVIDER_NAMES[provider.name]
        config.append_provider(og_name)
        for key, value in sorted(provider.options.items()):
            config.set_provider_option(og_name, key, value)
    return og.Model(config)


def open_model(
    path: Path,
    configured: Sequence[ExecutionProvider],
    *,
    og: Any = None,
    opener: Callable[[Any, Path, ExecutionProvider], Any] = _open,
) -> tuple[Any, ProviderReport]:
    """The loaded `og.Model` on the first provider of the chain that loads, and the report."""
    if og is None:
        import onnxruntime_genai

        og = onnxruntime_genai
    chain = provider_chain(configured)
    errors: list[str] = []
    for provider in chain:
        try:
            model = opener(og, path, provider)
        except Exception as exc:  # any provider failure means: try the next one
            message = " ".join(str(exc).split())[:400] or type(exc).__name__
            log.warning("execution provider %s failed to load the model: %s", provider.name, message)
            if provider.name == "cpu":
                raise
            errors.append(f"{provider.name}: {message}")
            continue
        report = ProviderReport(provider.name, chain[0].name, tuple(errors), dict(provider.options))
        (log.warning if report.fallback else log.info)("%s", report.summary())
        return model, report
    raise AssertionError("unreachable: the chain ends with CPU, which re-raises")
