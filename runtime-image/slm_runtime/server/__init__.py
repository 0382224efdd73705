"""The HTTP server: Ollama- and OpenAI-compatible APIs over one engine."""

from slm_runtime.server.app import create_app

__all__ = ["create_app"]
