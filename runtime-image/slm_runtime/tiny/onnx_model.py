"""Writes an onnxruntime-genai model folder: a hand-built llama decoder graph plus its configs.

One writer serves two sources: the tiny random-weight models (`write_onnx`) and real GGUF models
converted by `slm_runtime.convert` (dequantized weights, RoPE, the GGUF's own vocabulary). The
graph uses onnxruntime's contrib `GroupQueryAttention` (rotary embedding inside the op) with the
KV-cache I/O names onnxruntime-genai expects (`past_key_values.N.key/value` -> `present.N.key/value`).
The contrib ops make `onnx.checker` reject the model, so we do not run it (FACTS).

Precision `fp32` stores every matrix as float32; `int4` stores the decoder blocks' matrices as
`MatMulNBits` (4-bit, block 32 like GGUF's blocks, uint8 zero points) and the output head as 8-bit
`MatMulNBits`; norms and the embedding table stay float32.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from slm_runtime.tiny.shapes import ModelShape
from slm_runtime.tiny.vocab import build_vocab
from slm_runtime.tiny.weights import F32, LayerWeights, RandomWeights

Precision = Literal["fp32", "int4"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "int4")

_IR_VERSION = 8  # new onnx releases default to IRs the bundled onnxruntime cannot read yet
_BLOCK = 32  # quantization block along K, the same as GGUF's Q4_0/Q4_1/Q8_0 blocks
_EXTERNAL_DATA = "model.onnx.data"


@dataclass(frozen=True)
class DecoderArch:
    """A llama-style decoder's hyper-parameters (what the graph and genai_config need)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab_size: int
    context_length: int
    rms_eps: float = 1e-6
    rope_theta: float | None = None  # None: no rotary embedding (the tiny models)
    rope_interleaved: bool = True  # GGUF's llama layout: RoPE rotates adjacent pairs

    @classmethod
    def from_shape(cls, shape: ModelShape, vocab_size: int) -> DecoderArch:
        return cls(
            hidden=shape.hidden,
            layers=shape.layers,
            heads=shape.heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            ffn=shape.ffn,
            vocab_size=vocab_size,
            context_length=shape.context_length,
        )


class DecoderWeights(Protocol):
    """Float32 weights, matrices (out_features, in_features); `layers` yields one block at a time."""

    def embeddings(self) -> F32: ...
    def output(self) -> F32: ...
    def norm(self) -> F32: ...
    def layers(self) -> Iterator[LayerWeights]: ...


@dataclass(frozen=True)
class TokenizerSpec:
    """A byte-level BPE tokenizer as Hugging Face's `tokenizer.json` describes it."""

    tokens: Sequence[str]
    merges: Sequence[str]
    special_ids: frozenset[int]  # control tokens: matched whole, never split by BPE
    bos_id: int
    eos_ids: tuple[int, ...]  # first = the model's EOS; all end generation
    pad_id: int
    chat_template: str | None
    split_digits: bool = False  # SmolLM/StarCoder pre-tokenizers split digits one by one
    add_bos: bool = False


@dataclass(frozen=True)
class BlockQuantized:
    """`MatMulNBits` inputs for a (N, K) matrix: dequantized = (code - zero_point) * scale."""

    codes: npt.NDArray[np.uint8]  # (N, K / block, block), one code per weight
    scales: F32  # (N, K / block)
    zero_points: npt.NDArray[np.uint8]  # (N, K / block)
    bits: int
    block: int

    def packed(self) -> npt.NDArray[np.uint8]:
        """B as the op wants it: (N, K / block, block * bits / 8), low nibble first."""
        return _pack(self.codes, self.bits)

    def packed_zero_points(self) -> npt.NDArray[np.uint8]:
        """(N, ceil(K / block * bits / 8)), packed like B."""
        zp = self.zero_points
        if self.bits == 4 and zp.shape[1] % 2:
            zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), dtype=np.uint8)], axis=1)
        return _pack(zp, self.bits)

    def dequantize(self) -> F32:
        """The float matrix `MatMulNBits` computes with (for tests and error bounds)."""
        out = (self.codes.astype(np.float32) - self.zero_points[..., None]) * self.scales[..., None]
        return out.reshape(out.shape[0], -1).astype(np.float32)


def _pack(codes: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    if bits == 8:
        return np.ascontiguousarray(codes)
    return np.ascontiguousarray((codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8))


def quantize_blockwise(w: F32, bits: int, block: int = _BLOCK) -> BlockQuantized:
    """Round-to-nearest per block of `block` inputs, with uint8 zero points.

    4 bits: asymmetric (block min..max over 16 levels). 8 bits: symmetric, zero point 128, which
    gives a GGUF Q8_0 block (`d * q`, max |q| = 127) back exactly. Float zero points would keep a
    Q4_1 block exact too, but onnxruntime's CPU kernel has no fast path for them (measured: ~30x
    slower per MatMul) and none at all for 8 bits.
    """
    n, k = w.shape
    if k % block:
        raise ValueError(f"input features {k} are not a multiple of the block size {block}")
    blocks = w.reshape(n, k // block, block).astype(np.float32)
    if bits == 4:
        lo = np.minimum(blocks.min(axis=2), 0)
        hi = np.maximum(blocks.max(axis=2), 0)
        scale = (hi - lo) / np.float32(15)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        zero = np.clip(np.rint(-lo / scale), 0, 15).astype(np.uint8)
        codes = np.clip(np.rint(blocks / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    elif bits == 8:
        scale = np.abs(blocks).max(axis=2) / np.float32(127)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        zero = np.full(scale.shape, 128, dtype=np.uint8)
        codes = np.clip(np.rint(blocks / scale[..., None]) + 128, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported bit width {bits}")
    return BlockQuantized(codes=codes, scales=scale, zero_points=zero, bits=bits, block=block)


def _rope_caches(arch: DecoderArch) -> tuple[F32, F32]:
    half = arch.head_dim // 2
    theta = float(arch.rope_theta or 10000.0)
    inv_freq = theta ** (-np.arange(0, half, dtype=np.float64) * 2.0 / arch.head_dim)
    angles = np.outer(np.arange(arch.context_length, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _padding_nodes(arch: DecoderArch, init: Callable[[str, Any], str]) -> list[onnx.NodeProto]:
    """Nodes computing seqlens_k, total_seq_len, attn_bias and position_ids for padded batches."""
    # Batches are left-padded with `pad_id` (an id past the vocabulary, with a zero embedding row).
    # onnxruntime-genai 0.18 passes an all-ones attention_mask even for pads, so the graph finds the
    # pads itself: in the new tokens by id, in the cache by their key, which is zeroed (no real
    # token's key is exactly zero). Every row then counts as `total` tokens for GroupQueryAttention
    # (seqlens_k = total - 1), pads are hidden by an additive attention bias, and each token is
    # rotated by its own position (real tokens before it). A padded row computes what it computes
    # alone; without pads (batch 1) this is the plain causal decoder.
    pad_id = arch.vocab_size
    init("pad_id", np.array(pad_id, dtype=np.int64))
    init("one_i64", np.array(1, dtype=np.int64))
    init("zero_i64", np.array(0, dtype=np.int64))
    init("zero_f", np.array(0.0, dtype=np.float32))
    init("one_f", np.array(1.0, dtype=np.float32))
    init("big", np.array(1e9, dtype=np.float32))
    init("axes12", np.array([1, 2], dtype=np.int64))
    init("axes13", np.array([1, 3], dtype=np.int64))
    init("axis1", np.array([1], dtype=np.int64))
    init("axis_last", np.array([-1], dtype=np.int64))
    init("idx0", np.array([0], dtype=np.int64))
    init("idx1", np.array([1], dtype=np.int64))
    init("big_end", np.array([1 << 62], dtype=np.int64))
    return [
        helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "idx0"], ["batch_1d"], axis=0),
        helper.make_node("Gather", ["ids_shape", "idx1"], ["seq_1d"], axis=0),
        # real-token flags, (batch, total): the cache's (layer 0 key != 0), then the new ids
        helper.make_node("Abs", ["past_key_values.0.key"], ["past_abs"]),
        helper.make_node("ReduceSum", ["past_abs", "axes13"], ["past_norm"], keepdims=0),
        helper.make_node("Greater", ["past_norm", "zero_f"], ["past_real_b"]),
        helper.make_node("Cast", ["past_real_b"], ["past_real"], to=TensorProto.INT64),
        helper.make_node("Equal", ["input_ids", "pad_id"], ["cur_pad"]),
        helper.make_node("Not", ["cur_pad"], ["cur_real_b"]),
        helper.make_node("Cast", ["cur_real_b"], ["cur_real"], to=TensorProto.INT64),
        helper.make_node("Cast", ["cur_real_b"], ["cur_real_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["cur_real_f", "axis_last"], ["cur_keep"]),
        helper.make_node("Concat", ["past_real", "cur_real"], ["real"], axis=1),
        helper.make_node("Shape", ["real"], ["real_shape"]),
        helper.make_node("Gather", ["real_shape", "idx1"], ["total_1d"], axis=0),
        helper.make_node("Squeeze", ["total_1d"], ["total_i64"]),
        helper.make_node("Cast", ["total_i64"], ["total_seq_len"], to=TensorProto.INT32),
        helper.make_node("Sub", ["total_1d", "one_i64"], ["last_1d"]),
        helper.make_node("Expand", ["last_1d", "batch_1d"], ["seqlens_i64"]),
        helper.make_node("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32),
        # attention bias: 0 for real tokens, -1e9 for pads, (batch, 1, seq, total)
        helper.make_node("Cast", ["real"], ["real_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["real_f", "one_f"], ["real_m1"]),
        helper.make_node("Mul", ["real_m1", "big"], ["bias_2d"]),
        helper.make_node("Unsqueeze", ["bias_2d", "axes12"], ["bias_4d"]),
        helper.make_node("Concat", ["batch_1d", "idx1", "seq_1d", "total_1d"], ["bias_shape"], axis=0),
        helper.make_node("Expand", ["bias_4d", "bias_shape"], ["attn_bias"]),
        helper.make_node("CumSum", ["real", "idx1"], ["real_cumsum"]),
        helper.make_node("Sub", ["real_cumsum", "one_i64"], ["pos_raw"]),
        helper.make_node("Max", ["pos_raw", "zero_i64"], ["pos_all"]),
        helper.make_node("Neg", ["seq_1d"], ["neg_seq"]),
        helper.make_node("Slice", ["pos_all", "neg_seq", "big_end", "axis1"], ["position_ids"]),
    ]


def _kv_cache_io(i: int, arch: DecoderArch) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    """Layer i's `past_key_values.i.*` inputs and `present.i.*` outputs (BNSH)."""
    past: list[str | int] = ["batch", arch.kv_heads, "past", arch.head_dim]
    total: list[str | int] = ["batch", arch.kv_heads, "total", arch.head_dim]
    kinds = ("key", "value")
    return (
        [helper.make_tensor_value_info(f"past_key_values.{i}.{k}", TensorProto.FLOAT, past) for k in kinds],
        [helper.make_tensor_value_info(f"present.{i}.{k}", TensorProto.FLOAT, total) for k in kinds],
    )


def _graph_io(arch: DecoderArch) -> tuple[list[onnx.ValueInfoProto], list[onnx.ValueInfoProto]]:
    """The graph's inputs and outputs, with the names onnxruntime-genai's config points at."""
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", arch.vocab_size])]
    for i in range(arch.layers):
        layer_inputs, layer_outputs = _kv_cache_io(i, arch)
        inputs += layer_inputs
        outputs += layer_outputs
    return inputs, outputs


def build_decoder_graph(
    arch: DecoderArch, weights: DecoderWeights, precision: Precision = "fp32", name: str = "slm-decoder"
) -> onnx.ModelProto:
    """The decoder as one ONNX graph (input_ids, attention_mask, past KV -> logits, present KV)."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def init(init_name: str, array: Any) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), init_name))
        return init_name

    def linear(x: str, w: F32, out: str, bits: int | None) -> str:
        if bits is None:
            # Stored transposed (in, out) so the graph is a plain MatMul.
            nodes.append(helper.make_node("MatMul", [x, init(f"{out}.weight", w.T)], [out]))
            return out
        q = quantize_blockwise(w, bits)
        n, k = w.shape
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [
                    x,
                    init(f"{out}.qweight", q.packed()),
                    init(f"{out}.scales", q.scales),
                    init(f"{out}.zero_points", q.packed_zero_points()),
                ],
                [out],
                domain="com.microsoft",
                K=k,
                N=n,
                bits=bits,
                block_size=q.block,
                accuracy_level=4,  # int8 activations: onnxruntime's fast CPU kernel (~4x)
            )
        )
        return out

    def rms_norm(x: str, w: F32, out: str) -> str:
        nodes.append(
            helper.make_node(
                "SimplifiedLayerNormalization",
                [x, init(f"{out}.weight", w)],
                [out],
                axis=-1,
                epsilon=arch.rms_eps,
            )
        )
        return out

    block_bits = 4 if precision == "int4" else None
    head_bits = 8 if precision == "int4" else None
    nodes += _padding_nodes(arch, init)
    embeddings = weights.embeddings()
    table = np.concatenate([embeddings, np.zeros((1, embeddings.shape[1]), dtype=np.float32)])
    nodes.append(helper.make_node("Gather", [init("embed.weight", table), "input_ids"], ["h0"]))
    del table
    rotary: list[str] = []
    if arch.rope_theta is not None:
        cos, sin = _rope_caches(arch)
        rotary = [init("rope.cos", cos), init("rope.sin", sin)]

    def rope(x: str, out: str) -> str:
        if not rotary:
            return x
        nodes.append(
            helper.make_node(
                "RotaryEmbedding",
                [x, "position_ids", *rotary],
                [out],
                domain="com.microsoft",
                interleaved=1 if arch.rope_interleaved else 0,
            )
        )
        return out

    inputs, outputs = _graph_io(arch)
    hidden = "h0"
    for i, layer in enumerate(weights.layers()):
        p = f"l{i}"
        x = rms_norm(hidden, layer.attn_norm, f"{p}.attn_norm")
        q, k, v = (
            linear(x, w, f"{p}.{n}", block_bits) for n, w in (("q", layer.q), ("k", layer.k), ("v", layer.v))
        )
        q, k = rope(q, f"{p}.q_rot"), rope(k, f"{p}.k_rot")
        nodes.append(helper.make_node("Mul", [k, "cur_keep"], [f"{p}.k_kept"]))  # pads' keys = 0
        k = f"{p}.k_kept"
        nodes.append(
            helper.make_node(
                "GroupQueryAttention",
                [
                    q,
                    k,
                    v,
                    f"past_key_values.{i}.key",
                    f"past_key_values.{i}.value",
                    "seqlens_k",
                    "total_seq_len",
                    "",  # cos_cache, sin_cache: rotary is applied above, per token position
                    "",
                    "",  # position_ids
                    "attn_bias",
                ],
                [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"],
                domain="com.microsoft",
                num_heads=arch.heads,
                kv_num_heads=arch.kv_heads,
                scale=float(arch.head_dim) ** -0.5,
            )
        )
        o = linear(f"{p}.attn", layer.o, f"{p}.o", block_bits)
        nodes.append(helper.make_node("Add", [hidden, o], [f"{p}.res1"]))
        x = rms_norm(f"{p}.res1", layer.ffn_norm, f"{p}.ffn_norm")
        gate = linear(x, layer.gate, f"{p}.gate", block_bits)
        up = linear(x, layer.up, f"{p}.up", block_bits)
        nodes += [
            helper.make_node("Sigmoid", [gate], [f"{p}.sig"]),
            helper.make_node("Mul", [gate, f"{p}.sig"], [f"{p}.silu"]),
            helper.make_node("Mul", [f"{p}.silu", up], [f"{p}.act"]),
        ]
        down = linear(f"{p}.act", layer.down, f"{p}.down", block_bits)
        nodes.append(helper.make_node("Add", [f"{p}.res1", down], [f"{p}.out"]))
        hidden = f"{p}.out"
    x = rms_norm(hidden, weights.norm(), "final_norm")
    linear(x, weights.output(), "logits", head_bits)
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="slm-runtime",
        ir_version=_IR_VERSION,
    )


def genai_config(arch: DecoderArch, tokenizer: TokenizerSpec) -> dict[str, Any]:
    """onnxruntime-genai's `genai_config.json` for the graph above (greedy by default)."""
    return {
        "model": {
            "type": "llama",
            "bos_token_id": tokenizer.bos_id,
            "eos_token_id": list(tokenizer.eos_ids),
            "pad_token_id": arch.vocab_size,  # the graph's pad id, see build_decoder_graph
            "context_length": arch.context_length,
            "vocab_size": arch.vocab_size,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": arch.head_dim,
                "hidden_size": arch.hidden,
                "num_attention_heads": arch.heads,
                "num_hidden_layers": arch.layers,
                "num_key_value_heads": arch.kv_heads,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "max_length": arch.context_length,
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }


def tokenizer_files(spec: TokenizerSpec) -> dict[str, dict[str, Any]]:
    """`tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for `spec`."""
    added = [
        {
            "id": i,
            "content": spec.tokens[i],
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i in sorted(spec.special_ids)
    ]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre_tokenizer: dict[str, Any] = byte_level
    if spec.split_digits:
        pre_tokenizer = {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        }
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(spec.tokens) if i not in spec.special_ids},
            "merges": list(spec.merges),
        },
    }
    bos, eos, pad = (spec.tokens[spec.bos_id], spec.tokens[spec.eos_ids[0]], spec.tokens[spec.pad_id])
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": pad,
        "unk_token": None,
        "add_bos_token": spec.add_bos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
        "chat_template": spec.chat_template,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    return {
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": config,
        "special_tokens_map.json": {"bos_token": bos, "eos_token": eos, "pad_token": pad},
    }


def write_model_folder(
    folder: Path,
    arch: DecoderArch,
    weights: DecoderWeights,
    tokenizer: TokenizerSpec,
    *,
    precision: Precision = "fp32",
    extra_files: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write an onnxruntime-genai folder atomically (built beside `folder`, then renamed)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = build_decoder_graph(arch, weights, precision)
        large = sum(t.ByteSize() for t in model.graph.initializer) > (1 << 30)
        onnx.save_model(
            model,
            str(tmp / "model.onnx"),
            save_as_external_data=large,  # protobuf caps one message at 2 GiB
            all_tensors_to_one_file=True,
            location=_EXTERNAL_DATA,
        )
        del model
        files = {
            "genai_config.json": genai_config(arch, tokenizer),
            "slm-model.json": {"left_padded_batches": True, "pad_token_id": arch.vocab_size},
            **tokenizer_files(tokenizer),
        }
        files.update(extra_files or {})
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, ensure_ascii=False, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def write_onnx(folder: Path, shape: ModelShape, seed: int = 0) -> Path:
    """A tiny random-weight model (no RoPE) with the built-in BPE vocabulary."""
    vocab = build_vocab(shape.vocab_size)
    spec = TokenizerSpec(
        tokens=vocab.tokens,
        merges=vocab.merges,
        special_ids=frozenset(range(vocab.n_special_start, len(vocab.tokens))),
        bos_id=vocab.bos_id,
        eos_ids=(vocab.eos_id, vocab.bos_id),
        pad_id=vocab.bos_id,
        chat_template=vocab.chat_template,
    )
    arch = DecoderArch.from_shape(shape, len(vocab.tokens))
    return write_model_folder(folder, arch, RandomWeights(shape, vocab, seed), spec)
