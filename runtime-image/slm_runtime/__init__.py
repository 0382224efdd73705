"""slm-runtime: the inference server the operator's pods run.

GGUF models via llama-cpp-python, ONNX models via onnxruntime-genai.
"""

__version__ = "0.1.0"
