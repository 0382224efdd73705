"""Writes an onnxruntime-genai model folder: a hand-built decoder graph plus its configs.

The graph uses onnxruntime's contrib `GroupQueryAttention` with the KV-cache I/O names
onnxruntime-genai expects (`past_key_values.N.key/value` -> `present.N.key/value`). The contrib
ops make `onnx.checker` reject the model, so we do not run it (FACTS).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from slm_runtime.tiny.shapes import ModelShape
from slm_runtime.tiny.vocab import SPECIAL_TOKENS, Vocab, build_vocab
from slm_runtime.tiny.weights import F32, RandomWeights

_EPS = 1e-6
_IR_VERSION = 8  # new onnx releases default to IRs the bundled onnxruntime cannot read yet


def _graph(shape: ModelShape, weights: RandomWeights) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def init(name: str, array: Any) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def linear(x: str, w: F32, name: str) -> str:
        # Stored transposed (in, out) so the graph is a plain MatMul.
        nodes.append(helper.make_node("MatMul", [x, init(f"{name}.weight", w.T)], [name]))
        return name

    def rms_norm(x: str, w: F32, name: str) -> str:
        nodes.append(
            helper.make_node(
                "SimplifiedLayerNormalization",
                [x, init(f"{name}.weight", w)],
                [name],
                axis=-1,
                epsilon=_EPS,
            )
        )
        return name

    init("one_i64", np.array([1], dtype=np.int64))
    init("axis1", np.array([1], dtype=np.int64))
    init("idx1", np.array(1, dtype=np.int64))
    nodes += [
        helper.make_node("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0),
        helper.make_node("Sub", ["mask_sum", "one_i64"], ["seqlens_i64"]),
        helper.make_node("Cast", ["seqlens_i64"], ["seqlens_k"], to=TensorProto.INT32),
        helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
        helper.make_node("Gather", ["mask_shape", "idx1"], ["total_i64"], axis=0),
        helper.make_node("Cast", ["total_i64"], ["total_seq_len"], to=TensorProto.INT32),
        helper.make_node("Gather", [init("embed.weight", weights.embeddings()), "input_ids"], ["h0"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "total"]),
    ]
    outputs = [
        helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch", "seq", len(weights.vocab.tokens)]
        )
    ]
    hidden = "h0"
    for i, layer in enumerate(weights.layers()):
        p = f"l{i}"
        kv_dims: list[str | int] = ["batch", shape.kv_heads, "past", shape.head_dim]
        present_dims: list[str | int] = ["batch", shape.kv_heads, "total", shape.head_dim]
        for kind in ("key", "value"):
            inputs.append(
                helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_dims)
            )
            outputs.append(
                helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, present_dims)
            )
        x = rms_norm(hidden, layer.attn_norm, f"{p}.attn_norm")
        q, k, v = (linear(x, w, f"{p}.{n}") for n, w in (("q", layer.q), ("k", layer.k), ("v", layer.v)))
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
                ],
                [f"{p}.attn", f"present.{i}.key", f"present.{i}.value"],
                domain="com.microsoft",
                num_heads=shape.heads,
                kv_num_heads=shape.kv_heads,
                scale=float(shape.head_dim) ** -0.5,
            )
        )
        o = linear(f"{p}.attn", layer.o, f"{p}.o")
        nodes.append(helper.make_node("Add", [hidden, o], [f"{p}.res1"]))
        x = rms_norm(f"{p}.res1", layer.ffn_norm, f"{p}.ffn_norm")
        gate = linear(x, layer.gate, f"{p}.gate")
        up = linear(x, layer.up, f"{p}.up")
        nodes += [
            helper.make_node("Sigmoid", [gate], [f"{p}.sig"]),
            helper.make_node("Mul", [gate, f"{p}.sig"], [f"{p}.silu"]),
            helper.make_node("Mul", [f"{p}.silu", up], [f"{p}.act"]),
        ]
        down = linear(f"{p}.act", layer.down, f"{p}.down")
        nodes.append(helper.make_node("Add", [f"{p}.res1", down], [f"{p}.out"]))
        hidden = f"{p}.out"
    x = rms_norm(hidden, weights.norm(), "final_norm")
    nodes.append(helper.make_node("MatMul", [x, init("lm_head.weight", weights.output().T)], ["logits"]))
    graph = helper.make_graph(nodes, "slm-tiny", inputs, outputs, inits)
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        producer_name="slm-runtime tiny-model",
        ir_version=_IR_VERSION,
    )


def _genai_config(shape: ModelShape, vocab: Vocab) -> dict[str, Any]:
    return {
        "model": {
            "type": "llama",
            "bos_token_id": vocab.bos_id,
            "eos_token_id": [vocab.eos_id, vocab.bos_id],
            "pad_token_id": vocab.bos_id,
            "context_length": shape.context_length,
            "vocab_size": len(vocab.tokens),
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": shape.head_dim,
                "hidden_size": shape.hidden,
                "num_attention_heads": shape.heads,
                "num_hidden_layers": shape.layers,
                "num_key_value_heads": shape.kv_heads,
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
            "max_length": shape.context_length,
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


def _tokenizer_files(vocab: Vocab) -> tuple[dict[str, Any], dict[str, Any]]:
    added = [
        {
            "id": vocab.tokens.index(tok) if tok in SPECIAL_TOKENS else i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, tok in enumerate(vocab.tokens)
        if i >= vocab.n_special_start
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
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
            "vocab": {tok: i for i, tok in enumerate(vocab.tokens) if i < vocab.n_special_start},
            "merges": vocab.merges,
        },
    }
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": vocab.bos,
        "eos_token": vocab.eos,
        "pad_token": vocab.bos,
        "unk_token": None,
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "chat_template": vocab.chat_template,
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
    }
    return tokenizer, config


def write_onnx(folder: Path, shape: ModelShape, seed: int = 0) -> Path:
    """Write the model folder atomically (built beside `folder`, then renamed into place)."""
    vocab = build_vocab(shape.vocab_size)
    weights = RandomWeights(shape, vocab, seed)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        onnx.save_model(_graph(shape, weights), str(tmp / "model.onnx"))
        tokenizer, tok_config = _tokenizer_files(vocab)
        files = {
            "genai_config.json": _genai_config(shape, vocab),
            "tokenizer.json": tokenizer,
            "tokenizer_config.json": tok_config,
            "special_tokens_map.json": {
                "bos_token": vocab.bos,
                "eos_token": vocab.eos,
                "pad_token": vocab.bos,
            },
        }
        for name, content in files.items():
            (tmp / name).write_text(json.dumps(content, ensure_ascii=False, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
