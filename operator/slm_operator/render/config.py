"""The runtime ConfigMap: a `slm_runtime.config.RuntimeConfig` built from the spec and placement.

Building the runtime's own model (rather than a dict) makes a renamed or removed runtime field a
type error here instead of a pod that ignores its configuration.
"""

from __future__ import annotations

import hashlib
from typing import Any

from slm_operator.hardware import ProviderChoice, execution_providers
from slm_operator.render.context import AUTH_DIR, METRICS_PORT, RUNTIME_PORT, RenderContext
from slm_operator.render.metadata import object_meta
from slm_runtime.config import (
    AuthSection,
    ExecutionProvider,
    ModelSection,
    PromptSection,
    RuntimeConfig,
    RuntimeSection,
    SamplingDefaults,
    ServerSection,
)


def provider_chain(ctx: RenderContext) -> list[ExecutionProvider]:
    """ONNX only: the execution providers for the placed accelerator (hardware table, or the spec's
    `hardware.{gpu,npu}.executionProvider`), then CPU. GGUF and CPU placements get none (= CPU)."""
    placement = ctx.placement
    if placement.variant.format != "onnx" or placement.hardware == "cpu":
        return []
    accel = ctx.spec.hardware.gpu if placement.hardware == "gpu" else ctx.spec.hardware.npu
    override = None
    if accel is not None and accel.execution_provider is not None:
        override = ProviderChoice(accel.execution_provider.name, dict(accel.execution_provider.options or {}))
    chain = execution_providers(placement.hardware, placement.resource_name, override)
    if len(chain) == 1:
        return []
    return [ExecutionProvider.model_validate({"name": p.name, "options": dict(p.options)}) for p in chain]


def runtime_config(ctx: RenderContext) -> RuntimeConfig:
    """The config file `slm-runtime serve` reads."""
    spec, placement = ctx.spec, ctx.placement
    prompt = spec.prompt
    sampling = prompt.parameters.to_api() if prompt is not None and prompt.parameters is not None else {}
    auth = AuthSection.model_validate({})
    if spec.auth is not None:
        auth = AuthSection.model_validate(
            {
                "apiKeyFile": f"{AUTH_DIR}/{spec.auth.api_key_secret_ref.key}",
                # the gateway's key, trusted by digest (only with the user's key file: never alone)
                "trustedKeySha256": list(ctx.gateway_key_sha256) or None,
            }
        )
    return RuntimeConfig(
        model=ModelSection(
            name=spec.model.name,
            path=ctx.model_path,
            format=placement.variant.format,
            quantization=placement.variant.quantization,
        ),
        hardware=placement.hardware,
        runtime=RuntimeSection(
            contextLength=spec.runtime.context_length,
            parallel=spec.runtime.parallel,
            threads=placement.threads,
            gpuLayers=placement.gpu_layers,
            batchSize=spec.runtime.batch_size,
            executionProviders=provider_chain(ctx),
        ),
        prompt=PromptSection(
            system=prompt.system if prompt else None,
            template=prompt.template if prompt else None,
            parameters=SamplingDefaults.model_validate(sampling),
            clientSystem=(prompt.client_system if prompt else None) or "append",
            allowRaw=prompt.allow_raw if prompt else None,
        ),
        auth=auth,
        server=ServerSection(port=RUNTIME_PORT, metricsPort=METRICS_PORT),
    )


def config_yaml(ctx: RenderContext) -> str:
    """`runtime_config(ctx)` as the YAML file the runtime reads (computed once per context)."""
    return ctx.config_yaml


def config_hash(ctx: RenderContext) -> str:
    """Pod-template annotation value: a config change changes the template and rolls the pods."""
    return hashlib.sha256(config_yaml(ctx).encode()).hexdigest()[:16]


def build_config_map(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(ctx, ctx.config_map_name),
        "data": {"config.yaml": config_yaml(ctx)},
    }
