"""Generated models: tiny random-weight ones for tests, real-shaped ones for benchmarks.

They carry a real byte-level BPE tokenizer (trained in code on a built-in text) and a ChatML
chat template, so every server path (templates, streaming UTF-8, stop strings) is exercised.
"""

from slm_runtime.tiny.shapes import SHAPES, ModelShape
from slm_runtime.tiny.vocab import Vocab, build_vocab

__all__ = ["SHAPES", "ModelShape", "Vocab", "build_vocab"]
