"""GGUF -> onnxruntime-genai folder, written once per distinct input into a content-keyed cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from slm_runtime.convert.gguf_source import ConversionError, open_gguf, peek_architecture
from slm_runtime.fetch import sha256_of
from slm_runtime.tiny.onnx_model import PRECISIONS, Precision, write_model_folder

log = logging.getLogger(__name__)

CONVERTER_VERSION = "3"
"""Bump when the graph or the configs change: it is part of the cache key."""

_MARKER = "slm-convert.json"


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    key: str
    cache_hit: bool
    seconds: float


def default_cache() -> Path:
    """`$SLM_CACHE_DIR/onnx`, else `~/.cache/slm-operator/onnx` (`$XDG_CACHE_HOME` respected)."""
    if root := os.environ.get("SLM_CACHE_DIR"):
        return Path(root) / "onnx"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "slm-operator" / "onnx"


def cache_key(gguf_sha256: str, precision: Precision) -> str:
    """A short digest of everything the output depends on."""
    text = json.dumps({"gguf": gguf_sha256, "precision": precision, "converter": CONVERTER_VERSION})
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def convert_gguf_to_onnx(
    gguf_path: Path, precision: Precision, out: Path | None = None, cache: Path | None = None
) -> ConvertResult:
    """Convert (or reuse the cached conversion of) `gguf_path`; copy it to `out` if given."""
    if precision not in PRECISIONS:
        raise ConversionError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not gguf_path.is_file():
        raise ConversionError(f"no such GGUF file: {gguf_path}")
    if (peeked := peek_architecture(gguf_path)) not in (None, "llama"):
        raise ConversionError(f"only llama-architecture GGUFs convert to ONNX, this one is {peeked!r}")
    started = time.monotonic()
    digest = sha256_of(gguf_path)
    key = cache_key(digest, precision)
    folder = (cache or default_cache()) / f"{gguf_path.stem}-{precision}-{key}"
    hit = (folder / _MARKER).is_file()
    if not hit:
        arch, weights, tokenizer, meta = open_gguf(gguf_path)
        log.info("converting %s (%d layers) to ONNX %s", gguf_path.name, arch.layers, precision)
        marker = {
            "source": gguf_path.name,
            "sha256": digest,
            "precision": precision,
            "converter": CONVERTER_VERSION,
            "name": meta.get("general.name"),
            "license": meta.get("general.license"),
        }
        folder.parent.mkdir(parents=True, exist_ok=True)
        write_model_folder(
            folder, arch, weights, tokenizer, precision=precision, extra_files={_MARKER: marker}
        )
    if out is not None and out.resolve() != folder.resolve():
        _copy_atomically(folder, out)
    result = ConvertResult(out or folder, key, hit, time.monotonic() - started)
    log.info(
        "ONNX %s model at %s (%s, %.1f s)", precision, result.path, "cached" if hit else "new", result.seconds
    )
    return result


def _copy_atomically(src: Path, dest: Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(src, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
