"""Random weights shared by the GGUF and ONNX generators."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from slm_runtime.tiny.shapes import ModelShape
from slm_runtime.tiny.vocab import Vocab

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class LayerWeights:
    """One decoder block; matrices are (out_features, in_features) like PyTorch and GGUF."""

    attn_norm: F32
    q: F32
    k: F32
    v: F32
    o: F32
    ffn_norm: F32
    gate: F32
    up: F32
    down: F32


class RandomWeights:
    """Deterministic (seeded) weights, produced one layer at a time to bound peak memory.

    The output rows of special and filler tokens are zero, so their logit is exactly 0 while
    real tokens' logits have a standard deviation of about 4: a random model then (almost) never
    emits end-of-generation by chance, and tests can rely on getting `max_tokens` tokens.
    """

    def __init__(self, shape: ModelShape, vocab: Vocab, seed: int) -> None:
        self.shape = shape
        self.vocab = vocab
        self._rng = np.random.default_rng(seed)

    def _normal(self, rows: int, cols: int, std: float) -> F32:
        out = self._rng.standard_normal((rows, cols), dtype=np.float32)
        out *= np.float32(std)
        return out

    def embeddings(self) -> F32:
        out = self._normal(len(self.vocab.tokens), self.shape.hidden, 1.0)
        if self.shape.tie_embeddings:  # it is the output matrix too: same zero-logit rule
            out[self.vocab.n_special_start :] = 0.0
        return out

    def output(self) -> F32:
        out = self._normal(len(self.vocab.tokens), self.shape.hidden, 4.0 / self.shape.hidden**0.5)
        out[self.vocab.n_special_start :] = 0.0
        return out

    def norm(self) -> F32:
        return np.ones(self.shape.hidden, dtype=np.float32)

    def layers(self) -> Iterator[LayerWeights]:
        s = self.shape
        kv = s.kv_heads * s.head_dim
        for _ in range(s.layers):
            yield LayerWeights(
                attn_norm=self.norm(),
                q=self._normal(s.hidden, s.hidden, s.hidden**-0.5),
                k=self._normal(kv, s.hidden, s.hidden**-0.5),
                v=self._normal(kv, s.hidden, s.hidden**-0.5),
                o=self._normal(s.hidden, s.hidden, s.hidden**-0.5),
                ffn_norm=self.norm(),
                gate=self._normal(s.ffn, s.hidden, s.hidden**-0.5),
                up=self._normal(s.ffn, s.hidden, s.hidden**-0.5),
                down=self._normal(s.hidden, s.ffn, s.ffn**-0.5),
            )
