"""The gateway's Prometheus series, per key id and per model, in one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "slm_gateway_requests_total",
            "Requests answered, by key id, model and HTTP status.",
            ["key_id", "model", "status"],
            registry=r,
        )
        self.tokens = Counter(
            "slm_gateway_tokens_total",
            "Tokens in answers, by key id, model and kind (prompt, completion).",
            ["key_id", "model", "kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "slm_gateway_time_to_first_byte_seconds",
            "Arrival at the gateway to the first byte of the answer, per model.",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "slm_gateway_request_duration_seconds",
            "Arrival at the gateway to the end of the answer, per model.",
            ["model"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.refused = Counter(
            "slm_gateway_refused_total",
            "Requests refused at the door, by key id and reason (auth, model, requests, tokens).",
            ["key_id", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "slm_gateway_upstream_retries_total",
            "Requests retried on another endpoint before the first byte, per model.",
            ["model"],
            registry=r,
        )
        self.affinity = Counter(
            "slm_gateway_prefix_affinity_total",
            "Routed requests by whether a remembered prefix picked the endpoint (hit, miss).",
            ["model", "result"],
            registry=r,
        )
        self.outstanding = Gauge(
            "slm_gateway_endpoint_outstanding",
            "Requests in flight per endpoint.",
            ["model", "deployment", "endpoint"],
            registry=r,
        )
        self.held = Gauge(
            "slm_gateway_held_requests",
            "Requests waiting for a model's first ready pod (scaled to zero or starting), per model.",
            ["model"],
            registry=r,
        )
        self.holds = Counter(
            "slm_gateway_holds_total",
            "Requests that had to wait for a first pod, by model and outcome (forwarded, timeout, gone).",
            ["model", "outcome"],
            registry=r,
        )
        self.healthy = Gauge(
            "slm_gateway_endpoint_healthy",
            "1 if the endpoint takes traffic, 0 while it is set aside.",
            ["model", "deployment", "endpoint"],
            registry=r,
        )
