"""Prometheus metrics under vLLM's names, so dashboards and autoscalers built for vLLM work.

Each app gets its own `CollectorRegistry` (no global state; tests can build many apps).
Prometheus allows ':' in metric names and prometheus-client accepts them.
Token counters and finish reasons are fed from the engine's finish observer, so aborted
generations (client gone) are counted with the tokens they really produced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from slm_runtime.backends.base import FinishEvent, GenerationRequest, ModelInfo

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_ITL_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """All series for one served model."""

    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.model_name = model_name
        r, labels = self.registry, ["model_name"]
        self._running = Gauge("vllm:num_requests_running", "Requests generating now.", labels, registry=r)
        self._waiting = Gauge("vllm:num_requests_waiting", "Requests queued for a slot.", labels, registry=r)
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Arrival to first token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between streamed tokens.",
            labels,
            buckets=_ITL_BUCKETS,
            registry=r,
        ).labels(model_name)
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        ).labels(model_name)
        self._prompt_tokens = Counter(
            "vllm:prompt_tokens_total", "Prompt tokens processed.", labels, registry=r
        ).labels(model_name)
        self._generation_tokens = Counter(
            "vllm:generation_tokens_total", "Tokens generated.", labels, registry=r
        ).labels(model_name)
        self._success = Counter(
            "vllm:request_success_total",
            "Finished generations by reason (abort = cancelled).",
            ["model_name", "finished_reason"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "slm_model_load_seconds", "Seconds the model took to load.", labels, registry=r
        )
        self._kv_per_slot = Gauge(
            "slm_kv_cache_bytes_per_slot",
            "KV-cache bytes reserved per concurrent sequence (slot).",
            labels,
            registry=r,
        )
        self._info = Gauge(
            "slm_model_info",
            "The loaded model (value 1).",
            ["model", "format", "quantization", "hardware"],
            registry=r,
        )
        self._provider = Gauge(
            "slm_execution_provider",
            "The execution provider the model runs on (value 1); fallback=true when not the requested one.",
            ["model_name", "provider", "requested", "fallback"],
            registry=r,
        )
        self._kv_usage = Gauge(
            "vllm:kv_cache_usage_perc",
            "Fraction (0..1) of the KV cache held by running sequences (GIE's KVCacheUtilization).",
            labels,
            registry=r,
        )
        self._cache_config = Gauge(
            "vllm:cache_config_info",
            "KV cache layout for prefix-aware pickers (value 1): block size in tokens, block count.",
            ["model_name", "block_size", "num_gpu_blocks"],
            registry=r,
        )
        self._rejected = Counter(
            "slm_requests_rejected_total",
            "Requests refused by admission control or drain.",
            ["model_name", "reason"],
            registry=r,
        )

    def track_limiter(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        self._running.labels(self.model_name).set_function(lambda: float(running()))
        self._waiting.labels(self.model_name).set_function(lambda: float(waiting()))

    def model_loaded(self, info: ModelInfo, hardware: str, seconds: float) -> None:
        self.load_seconds.labels(self.model_name).set(seconds)
        self._info.labels(info.name, info.format, info.quantization, hardware).set(1)
        if info.provider is not None:
            p = info.provider
            self._provider.labels(self.model_name, p.provider, p.requested, str(p.fallback).lower()).set(1)

    def track_kv_cache(self, usage: Callable[[], float], blocks: tuple[int, int]) -> None:
        """Export the KV cache's utilisation (read at each scrape) and its block layout."""
        self._kv_usage.labels(self.model_name).set_function(lambda: float(usage()))
        self._cache_config.labels(self.model_name, str(blocks[0]), str(blocks[1])).set(1)

    def track_prefix_cache(self, tokens: Callable[[], tuple[int, int]]) -> None:
        """Export vLLM's prefix-cache counters, in prompt tokens, from `tokens()` = (queried, hit)
        read at each scrape: how much of the prompts the KV cells of earlier requests served."""
        self.registry.register(_PrefixCacheCollector(self.model_name, tokens))

    def kv_cache_per_slot(self, nbytes: int) -> None:
        self._kv_per_slot.labels(self.model_name).set(nbytes)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(self.model_name, reason).inc()

    def on_finish(self, request: GenerationRequest, event: FinishEvent) -> None:
        """Engine observer; runs on the decode thread (prometheus-client is thread-safe)."""
        self._prompt_tokens.inc(event.prompt_tokens)
        self._generation_tokens.inc(event.completion_tokens)
        self._success.labels(self.model_name, event.reason).inc()


class _PrefixCacheCollector(Collector):
    """`vllm:prefix_cache_queries_total` and `vllm:prefix_cache_hits_total` from the engine's own
    counters (the engine counts on its scheduler thread; a scrape only reads two integers)."""

    def __init__(self, model_name: str, tokens: Callable[[], tuple[int, int]]) -> None:
        self._model_name = model_name
        self._tokens = tokens

    def collect(self) -> Iterator[Metric]:
        queried, hit = self._tokens()
        for name, text, value in (
            ("vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", queried),
            ("vllm:prefix_cache_hits", "Prompt tokens served from the prefix cache.", hit),
        ):
            family = CounterMetricFamily(name, text, labels=["model_name"])
            family.add_metric([self._model_name], float(value))
            yield family
