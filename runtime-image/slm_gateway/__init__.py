"""slm-gateway: one OpenAI- and Ollama-compatible endpoint in front of a fleet of slm-runtime pods.

Routes each request by its model to the pods serving it, picks a pod per request (outstanding load,
scraped queue depth, prompt-prefix affinity, health), checks per-key access and quotas, and writes
one audit line per request. See docs/gateway.md.
"""

__version__ = "0.1.0"
