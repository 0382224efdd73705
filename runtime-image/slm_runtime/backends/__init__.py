"""Inference backends: one blocking class per model format behind `backends.base.Backend`."""

from slm_runtime.backends.base import (
    Backend,
    Capabilities,
    EmbeddingResult,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
)

__all__ = [
    "Backend",
    "Capabilities",
    "EmbeddingResult",
    "FinishEvent",
    "GenerationEvent",
    "GenerationRequest",
    "ModelInfo",
    "ResponseFormat",
    "SamplingParams",
    "TokenEvent",
]
