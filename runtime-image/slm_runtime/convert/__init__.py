"""`slm-runtime convert`: turn a GGUF into an onnxruntime-genai model folder, cached.

The result lives under `~/.cache/slm-operator/onnx/<key>/` where the key is a digest of the
inputs (the GGUF's sha256, the precision and the converter's version), so converting the same
file twice is a cache hit and a changed converter never serves a stale folder. `--out` receives
a copy (or, when it is the cache folder itself, nothing more).
"""

from __future__ import annotations

from slm_runtime.convert.gguf_source import ConversionError
from slm_runtime.convert.to_onnx import CONVERTER_VERSION, ConvertResult, convert_gguf_to_onnx, default_cache

__all__ = ["CONVERTER_VERSION", "ConversionError", "ConvertResult", "convert_gguf_to_onnx", "default_cache"]
