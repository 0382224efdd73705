"""A byte-level BPE vocabulary (GPT-2 style) trained in code on a small built-in text.

Byte-level means every string is encodable, so the tokenizer is real, not a toy: llama.cpp
(`tokenizer.ggml.model=gpt2`) and Hugging Face's `tokenizer.json` (used by onnxruntime-genai)
both load the same tokens and merges.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from functools import cache

from slm_runtime.backends.templates import CHATML_TEMPLATE

_CORPUS = """
The quick brown fox jumps over the lazy dog. A small language model runs on a single CPU core
and answers questions about Kubernetes, containers, and the weather. Hello world! How are you
today? I am fine, thank you. The operator creates a deployment, a service, and a config map for
every model. Tokens are streamed to the client one at a time, and the server counts them.
This is a test of the tokenizer: numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000, and punctuation, too.
"""

# GPT-2's pre-tokenizer pattern, written with \p classes llama.cpp and HF both understand; we
# approximate \p{L}/\p{N} with ASCII classes for training only (the vocab is what matters).
_PRETOKEN = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+")

BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (BOS, IM_START, IM_END)


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (so BPE works on text)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += list(range(ord("®"), ord("ÿ") + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


@dataclass(frozen=True)
class Vocab:
    """Tokens in id order (bytes, merges, specials, filler), the merges, and special ids."""

    tokens: list[str]
    merges: list[str]
    bos_id: int
    eos_id: int
    im_start_id: int
    chat_template: str
    n_special_start: int  # ids >= this are special/filler (control) tokens

    @property
    def bos(self) -> str:
        return self.tokens[self.bos_id]

    @property
    def eos(self) -> str:
        return self.tokens[self.eos_id]


def _train_merges(n_merges: int) -> list[tuple[str, str]]:
    table = byte_to_unicode()
    words = Counter("".join(table[b] for b in w.encode()) for w in _PRETOKEN.findall(_CORPUS))
    splits = {w: list(w) for w in words}
    merges: list[tuple[str, str]] = []
    for _ in range(n_merges):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            parts = splits[word]
            for a, b in itertools.pairwise(parts):
                pairs[(a, b)] += count
        if not pairs:
            break
        # Ties broken by the pair itself so the vocabulary is deterministic.
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for word, parts in splits.items():
            merged: list[str] = []
            i = 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            splits[word] = merged
    return merges


@cache
def build_vocab(vocab_size: int | None = None, n_merges: int = 200) -> Vocab:
    """Bytes + learned merges + special tokens, padded with filler control tokens to `vocab_size`."""
    tokens = [byte_to_unicode()[b] for b in range(256)]
    merges = _train_merges(n_merges)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    n_special_start = len(tokens)
    tokens.extend(SPECIAL_TOKENS)
    if vocab_size is not None:
        if vocab_size < len(tokens):
            raise ValueError(f"vocab_size {vocab_size} < {len(tokens)} real tokens")
        tokens.extend(f"<|extra_{i}|>" for i in range(vocab_size - len(tokens)))
    return Vocab(
        tokens=tokens,
        merges=[f"{a} {b}" for a, b in merges],
        bos_id=tokens.index(BOS),
        eos_id=tokens.index(IM_END),
        im_start_id=tokens.index(IM_START),
        chat_template=CHATML_TEMPLATE,
        n_special_start=n_special_start,
    )
