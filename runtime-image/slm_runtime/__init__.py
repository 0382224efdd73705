"""slm-runtime: the inference server the operator's pods run (GGUF via llama-cpp-python, ONNX via onnxruntime-genai)."""
