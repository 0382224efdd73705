"""Memory estimates and the quantization ladders placement walks.

Memory estimate (bytes) for one pod::

    weights = parameters * 1e9 * bits_per_weight / 8 * 1.2   (1.2: compute buffers, graph, slack)
    kv      = contextLength * parallel * 32 KiB * parameters   (fp16 K+V cache: ~16 KiB/token at
                                                               0.5B, ~128 KiB/token at 3.8B)
    total   = weights + kv + 256 MiB                           (process, tokenizer, HTTP server)

Without `model.parameters` the variant's `sizeBytes` stands in for `parameters * bits / 8`; without
either the model size is unknown and memory fit checks are skipped (placement says so in its message).

Quantization ladders: placement takes the first rung that the spec offers and that fits.

| Class | Order                                                                           |
|-------|---------------------------------------------------------------------------------|
| gpu   | GGUF F16, BF16, Q8_0, Q6_K, Q5_K_M, Q5_K_S, Q5_1, Q5_0, Q4_K_M, Q4_K_S, Q4_1,   |
|       | Q4_0, Q3_K_M, Q2_K, F32; then ONNX FP16, INT4, INT8, FP32                       |
| cpu   | GGUF Q4_K_M, Q4_K_S, Q5_K_M, Q5_K_S, Q4_1, Q4_0, Q5_1, Q5_0, Q6_K, Q8_0, Q3_K_M, |
|       | Q2_K, F16, BF16, F32; then ONNX INT4, INT8, FP16, FP32                          |
| npu   | ONNX INT4, INT8, FP16, FP32 (GGUF cannot run on an NPU)                         |

So a GPU serves F16 when it fits in GPU memory, else Q8_0, else a 4-bit K-quant; a CPU (memory-bandwidth
bound) serves Q4_K_M, and Q8_0 only when no 4-6-bit variant is offered; an NPU serves ONNX INT4. A spec
that offers a single variant therefore always gets that variant, wherever it can run and fit.
"""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.api import HardwareClass, ModelFormat, ModelVariant, Quantization, RuntimeSettings
from slm_operator.quantity import MI

BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32.0,
    "FP32": 32.0,
    "F16": 16.0,
    "BF16": 16.0,
    "FP16": 16.0,
    "Q8_0": 8.5,
    "INT8": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.55,
    "INT4": 4.5,
    "Q3_K_M": 3.91,
    "Q2_K": 2.63,
}
WEIGHT_OVERHEAD = 1.2
KV_BYTES_PER_TOKEN_PER_BILLION = 32 * 1024
RUNTIME_BASE_BYTES = 256 * MI

Rung = tuple[ModelFormat, Quantization]
_GGUF_GPU: tuple[Quantization, ...] = (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0",
    "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_M", "Q2_K", "F32",
)  # fmt: skip
_GGUF_CPU: tuple[Quantization, ...] = (
    "Q4_K_M", "Q4_K_S", "Q5_K_M", "Q5_K_S", "Q4_1", "Q4_0", "Q5_1", "Q5_0", "Q6_K",
    "Q8_0", "Q3_K_M", "Q2_K", "F16", "BF16", "F32",
)  # fmt: skip
LADDERS: dict[HardwareClass, tuple[Rung, ...]] = {
    "gpu": tuple(("gguf", q) for q in _GGUF_GPU)
    + tuple(("onnx", q) for q in ("FP16", "INT4", "INT8", "FP32")),
    "cpu": tuple(("gguf", q) for q in _GGUF_CPU)
    + tuple(("onnx", q) for q in ("INT4", "INT8", "FP16", "FP32")),
    "npu": tuple(("onnx", q) for q in ("INT4", "INT8", "FP16", "FP32")),
}
FORMATS: dict[HardwareClass, tuple[ModelFormat, ...]] = {
    "gpu": ("gguf", "onnx"),
    "cpu": ("gguf", "onnx"),
    "npu": ("onnx",),
}


@dataclass(frozen=True)
class Estimate:
    """Estimated memory of one pod serving one variant, in bytes."""

    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + RUNTIME_BASE_BYTES


def estimate(variant: ModelVariant, parameters: float | None, runtime: RuntimeSettings) -> Estimate | None:
    """Memory estimate for `variant`, or None when neither parameters nor sizeBytes is known."""
    bits = BITS_PER_WEIGHT.get(variant.quantization, 16.0)
    if parameters is not None:
        raw = parameters * 1e9 * bits / 8
        billions = parameters
    elif variant.size_bytes is not None:
        raw = float(variant.size_bytes)
        billions = variant.size_bytes * 8 / bits / 1e9
    else:
        return None
    kv = runtime.context_length * runtime.parallel * KV_BYTES_PER_TOKEN_PER_BILLION * billions
    return Estimate(weights=int(raw * WEIGHT_OVERHEAD), kv_cache=int(kv))


def ranked(variants: list[ModelVariant], hardware: HardwareClass) -> list[ModelVariant]:
    """Offered variants that can run on `hardware`, best rung first."""
    ladder = LADDERS[hardware]
    usable = [v for v in variants if (v.format, v.quantization) in ladder]
    return sorted(usable, key=lambda v: ladder.index((v.format, v.quantization)))
