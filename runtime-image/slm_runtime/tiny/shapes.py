"""Model dimensions for generated models."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """Transformer dimensions; every row length is a multiple of 32 so Q8_0/Q4_0 blocks fit."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab_size: int | None = None  # None: just the BPE vocabulary; else padded with filler tokens
    context_length: int = 2048
    tie_embeddings: bool = False  # GGUF: no output.weight; llama.cpp reuses token_embd (as Qwen2.5 does)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, ModelShape] = {
    "tiny": ModelShape(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128),
    # Qwen2.5-0.5B's dimensions (without its q/k/v biases): ~0.5B parameters, ~0.5 GB at Q8_0.
    "qwen2.5-0.5b": ModelShape(
        hidden=896,
        layers=24,
        heads=14,
        kv_heads=2,
        ffn=4864,
        vocab_size=151936,
        context_length=32768,
        tie_embeddings=True,
    ),
    # A middle size for ONNX benchmarks (float32 weights, so kept smaller).
    "small": ModelShape(hidden=512, layers=8, heads=8, kv_heads=2, ffn=1408, vocab_size=32000),
}
