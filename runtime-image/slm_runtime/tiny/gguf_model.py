"""Writes a llama-architecture GGUF that llama.cpp loads: metadata, tokenizer, random weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import gguf
import numpy as np

from slm_runtime.tiny.shapes import ModelShape
from slm_runtime.tiny.vocab import Vocab, build_vocab
from slm_runtime.tiny.weights import F32, RandomWeights

log = logging.getLogger(__name__)

Quantization = Literal["f32", "q8_0", "q4_0"]

_QTYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (gguf.GGMLQuantizationType.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}


def _add_metadata(
    writer: gguf.GGUFWriter,
    shape: ModelShape,
    vocab: Vocab,
    qtype: gguf.GGMLQuantizationType,
    file_type: gguf.LlamaFileType,
) -> None:
    """llama.* hyper-parameters, the gpt2-style tokenizer and the chat template (FACTS)."""
    writer.add_name(f"slm-tiny-{qtype.name.lower()}")
    writer.add_file_type(int(file_type))
    if qtype != gguf.GGMLQuantizationType.F32:
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ffn)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_pooling_type(gguf.PoolingType.MEAN)  # one embedding per input for /api/embed

    token_types = [
        int(gguf.TokenType.NORMAL) if i < vocab.n_special_start else int(gguf.TokenType.CONTROL)
        for i in range(len(vocab.tokens))
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(token_types)
    writer.add_token_merges(vocab.merges)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(vocab.chat_template)


def write_gguf(path: Path, shape: ModelShape, quantization: Quantization = "f32", seed: int = 0) -> Path:
    """Write the model to `path` atomically (a temp file renamed into place)."""
    if quantization not in _QTYPES:
        raise ValueError(f"unsupported quantization {quantization!r}")
    qtype, file_type = _QTYPES[quantization]
    vocab = build_vocab(shape.vocab_size)
    weights = RandomWeights(shape, vocab, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")

    writer = gguf.GGUFWriter(str(tmp), arch="llama")
    _add_metadata(writer, shape, vocab, qtype, file_type)

    def add(name: str, data: F32, quantize: bool = True) -> None:
        if quantize and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:  # norms stay F32: llama.cpp expects them so
            writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))

    add("token_embd.weight", weights.embeddings())
    for i, layer in enumerate(weights.layers()):
        add(f"blk.{i}.attn_norm.weight", layer.attn_norm, quantize=False)
        add(f"blk.{i}.attn_q.weight", layer.q)
        add(f"blk.{i}.attn_k.weight", layer.k)
        add(f"blk.{i}.attn_v.weight", layer.v)
        add(f"blk.{i}.attn_output.weight", layer.o)
        add(f"blk.{i}.ffn_norm.weight", layer.ffn_norm, quantize=False)
        add(f"blk.{i}.ffn_gate.weight", layer.gate)
        add(f"blk.{i}.ffn_up.weight", layer.up)
        add(f"blk.{i}.ffn_down.weight", layer.down)
    add("output_norm.weight", weights.norm(), quantize=False)
    if not shape.tie_embeddings:
        add("output.weight", weights.output())

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, %.1f MB)", path, quantization, path.stat().st_size / 1e6)
    return path
