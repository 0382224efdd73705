"""Reads a llama-architecture GGUF as the ONNX writer's inputs: hyper-parameters, float32
weights (dequantized with `gguf`'s own numpy implementation of each quant type) and the
tokenizer (the GGUF's vocabulary, merges, control tokens and chat template).

Weights keep llama.cpp's layout: the GGUF converter permutes Q and K so that RoPE rotates
adjacent pairs, hence the graph's `rotary_interleaved=1`. A tied output head (no `output.weight`)
reuses `token_embd.weight`, as llama.cpp does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from slm_runtime.errors import SlmError
from slm_runtime.tiny.onnx_model import DecoderArch, TokenizerSpec
from slm_runtime.tiny.weights import F32, LayerWeights


class ConversionError(SlmError):
    """The GGUF cannot be converted (unsupported architecture, tokenizer or tensor)."""


# `tokenizer.ggml.pre` values whose pre-tokenizer is GPT-2's regex, optionally after splitting
# every digit on its own (StarCoder's tokenizer, which SmolLM reuses).
_BYTE_LEVEL_PRE = {"gpt-2": False, "default": False, "smollm": True, "starcoder": True, "refact": True}
_CONTROL = int(gguf.TokenType.CONTROL)


def metadata(reader: gguf.GGUFReader) -> dict[str, Any]:
    """Every key-value field of the GGUF as plain Python values."""
    return {key: field.contents() for key, field in reader.fields.items() if not key.startswith("GGUF.")}


def arch_from_metadata(meta: dict[str, Any]) -> DecoderArch:
    """The decoder's dimensions from `llama.*` keys; anything else is a ConversionError."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ConversionError(f"only llama-architecture GGUFs convert to ONNX, this one is {arch!r}")

    def key(name: str) -> Any:
        full = f"llama.{name}"
        if full not in meta:
            raise ConversionError(f"GGUF metadata lacks {full}")
        return meta[full]

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    head_dim = hidden // heads
    rope_dim = int(meta.get("llama.rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        raise ConversionError(f"partial rotary embedding ({rope_dim} of {head_dim}) is not supported")
    if "llama.rope.scaling.type" in meta and meta["llama.rope.scaling.type"] not in ("none", ""):
        raise ConversionError(f"RoPE scaling {meta['llama.rope.scaling.type']!r} is not supported")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    return DecoderArch(
        hidden=hidden,
        layers=int(key("block_count")),
        heads=heads,
        kv_heads=int(meta.get("llama.attention.head_count_kv", heads)),
        head_dim=head_dim,
        ffn=int(key("feed_forward_length")),
        vocab_size=int(meta.get("llama.vocab_size", len(tokens))),
        context_length=int(key("context_length")),
        rms_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        rope_interleaved=True,
    )


def tokenizer_from_metadata(meta: dict[str, Any]) -> TokenizerSpec:
    """A byte-level BPE tokenizer spec from `tokenizer.ggml.*` (gpt2 model only)."""
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ConversionError(f"only byte-level BPE (gpt2) tokenizers convert, this one is {model!r}")
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    if pre not in _BYTE_LEVEL_PRE:
        raise ConversionError(
            f"pre-tokenizer {pre!r} is not supported; known: {', '.join(sorted(_BYTE_LEVEL_PRE))}"
        )
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]
    types = [int(t) for t in meta.get("tokenizer.ggml.token_type", [])]
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    bos = int(meta.get("tokenizer.ggml.bos_token_id", eos))
    eos_ids = [eos]
    # llama.cpp also ends generation on these control tokens when the vocabulary has them.
    for text in ("<|endoftext|>", "<|eot_id|>", "<|im_end|>", "<end_of_turn>"):
        if text in tokens and (i := tokens.index(text)) not in eos_ids:
            eos_ids.append(i)
    template = meta.get("tokenizer.chat_template")
    return TokenizerSpec(
        tokens=tokens,
        merges=[str(m) for m in meta.get("tokenizer.ggml.merges", [])],
        special_ids=frozenset(i for i, t in enumerate(types) if t == _CONTROL),
        bos_id=bos,
        eos_ids=tuple(eos_ids),
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)),
        chat_template=str(template) if template is not None else None,
        split_digits=_BYTE_LEVEL_PRE[pre],
        add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
    )


class GgufWeights:
    """The GGUF's tensors as float32 (out_features, in_features) matrices, one layer at a time."""

    def __init__(self, reader: gguf.GGUFReader, arch: DecoderArch) -> None:
        self._arch = arch
        self._tensors = {t.name: t for t in reader.tensors}

    def _get(self, name: str) -> F32:
        tensor = self._tensors.get(name)
        if tensor is None:
            raise ConversionError(f"GGUF lacks tensor {name}")
        try:
            out = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        except NotImplementedError as exc:
            raise ConversionError(f"cannot dequantize {name} ({tensor.tensor_type.name}): {exc}") from exc
        return np.ascontiguousarray(out, dtype=np.float32)

    @cached_property
    def _embeddings(self) -> F32:
        return self._get("token_embd.weight")

    def embeddings(self) -> F32:
        return self._embeddings

    def output(self) -> F32:
        if "output.weight" in self._tensors:
            return self._get("output.weight")
        return self._embeddings

    def norm(self) -> F32:
        return self._get("output_norm.weight")

    def layers(self) -> Iterator[LayerWeights]:
        for i in range(self._arch.layers):
            if f"blk.{i}.attn_q.bias" in self._tensors:
                raise ConversionError("attention biases are not supported")
            p = f"blk.{i}"
            yield LayerWeights(
                attn_norm=self._get(f"{p}.attn_norm.weight"),
                q=self._get(f"{p}.attn_q.weight"),
                k=self._get(f"{p}.attn_k.weight"),
                v=self._get(f"{p}.attn_v.weight"),
                o=self._get(f"{p}.attn_output.weight"),
                ffn_norm=self._get(f"{p}.ffn_norm.weight"),
                gate=self._get(f"{p}.ffn_gate.weight"),
                up=self._get(f"{p}.ffn_up.weight"),
                down=self._get(f"{p}.ffn_down.weight"),
            )


def peek_architecture(path: Path) -> str | None:
    """`general.architecture` when it is the file's first key (as llama.cpp's converters write
    it), read from the header alone: refusing a large non-llama GGUF takes no time. None if not."""
    try:
        with path.open("rb") as f:
            head = f.read(24)
            if len(head) < 24 or head[:4] != b"GGUF":
                return None
            (key_len,) = struct.unpack("<Q", f.read(8))
            if key_len > 256 or f.read(key_len) != b"general.architecture":
                return None
            value_type, value_len = struct.unpack("<IQ", f.read(12))
            return f.read(value_len).decode() if value_type == 8 and value_len < 256 else None
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def open_gguf(path: Path) -> tuple[DecoderArch, GgufWeights, TokenizerSpec, dict[str, Any]]:
    """Everything the ONNX writer needs from one GGUF file (weights are read lazily)."""
    if (peeked := peek_architecture(path)) not in (None, "llama"):
        raise ConversionError(f"only llama-architecture GGUFs convert to ONNX, this one is {peeked!r}")
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read GGUF {path}: {exc}") from exc
    meta = metadata(reader)
    arch = arch_from_metadata(meta)
    return arch, GgufWeights(reader, arch), tokenizer_from_metadata(meta), meta
