"""The gateway's request path: authenticate → model → access and quota → pick → forward → audit.

`Gateway` holds the per-app state (no module globals); `slm_gateway.app` only routes to its
methods. A request's own context travels in one `Call`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from slm_gateway.access import ApiKey, KeyFile, presented_key
from slm_gateway.audit import AuditLog, AuditRecord, now_iso
from slm_gateway.config import DeploymentConfig, GatewayConfig
from slm_gateway.demand import DemandBook, wake_target
from slm_gateway.errors import (
    ForbiddenError,
    NoEndpointError,
    QuotaError,
    UpstreamError,
    error_response,
    flavour_of,
)
from slm_gateway.fleet import EndpointState, Fleet
from slm_gateway.metrics import GatewayMetrics
from slm_gateway.picking import Candidate, pick, prefix_chain
from slm_gateway.quotas import Quotas
from slm_gateway.upstream import UpstreamKey
from slm_gateway.usage import Kind, StreamTap, Usage, read_usage
from slm_runtime.errors import BadRequestError, ModelNotFoundError, SlmError, UnauthorizedError
from slm_runtime.server._common import ClientGoneError, until_disconnect

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({429, 502, 503, 504})
"""Upstream answers worth one more try elsewhere (overloaded, not ready, unreachable)."""
EJECT_STATUS = frozenset({502, 503, 504})
STREAM_TYPES: dict[str, Kind] = {"text/event-stream": "sse", "application/x-ndjson": "ndjson"}
USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


def prompt_text(body: dict[str, Any]) -> str:
    """What a request's prompt prefix is made of, in order: system, then messages or prompt."""
    parts: list[str] = []
    if isinstance(body.get("system"), str):
        parts.append(body["system"])
    messages = body.get("messages")
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                content = m.get("content")
                text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
                parts.append(f"{m.get('role')}\x1f{text}")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list):
        parts.extend(str(p) for p in prompt)
    return "\x1e".join(parts)


def model_of(body: dict[str, Any]) -> str:
    model = body.get("model") or body.get("name")  # /api/show takes either
    if not isinstance(model, str) or not model:
        raise BadRequestError("missing field 'model'", param="model")
    return model


def with_usage_requested(body: dict[str, Any]) -> bool:
    """Ask the runtime for a streamed usage chunk (for the audit and quotas); True if we added it."""
    options = body.get("stream_options")
    options = options if isinstance(options, dict) else {}
    if options.get("include_usage"):
        return False
    body["stream_options"] = {**options, "include_usage": True}
    return True


async def json_body(request: Request) -> tuple[bytes, dict[str, Any]]:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return raw, body


class PassThrough(StreamingResponse):
    """A streamed answer whose body iterator is closed when the response ends, however it ends.

    Starlette stops iterating when the client goes away but leaves closing the iterator to the
    garbage collector; closing it here closes the upstream stream at once, and the pod stops.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            iterator = self.body_iterator
            if isinstance(iterator, AsyncGenerator):
                with anyio.CancelScope(shield=True):
                    await iterator.aclose()


@dataclass
class Call:
    """One request's context on its way through the gateway."""

    request: Request
    record: AuditRecord
    started: float = field(default_factory=time.perf_counter)
    key: ApiKey | None = None

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 2)


@dataclass
class Gateway:
    """Per-app state; `app.state.gateway` (tests read the fleet and the quotas through it)."""

    config: GatewayConfig
    fleet: Fleet
    keys: KeyFile
    quotas: Quotas
    audit: AuditLog
    metrics: GatewayMetrics
    client: httpx.AsyncClient
    started_at: float
    upstream_key: UpstreamKey
    """The gateway's own key, sent to every deployment with `gateway_key` (see slm_gateway.upstream)."""
    upstream_keys: dict[str, str]
    """Static mode: a deployment's own key from its `apiKeyEnv`, sent instead of `upstream_key`."""
    synced: bool = True
    demand: DemandBook = field(default_factory=lambda: DemandBook(time.monotonic()))

    # -- the door ------------------------------------------------------------------------------

    def call(self, request: Request) -> Call:
        return Call(
            request,
            AuditRecord(
                time=now_iso(),
                source=request.client.host if request.client else "",
                api=flavour_of(request.url.path),
                method=request.method,
                path=request.url.path,
            ),
        )

    def authenticate(self, call: Call) -> None:
        ring = self.keys.current()
        if not ring.enabled:
            return
        presented = presented_key(call.request.headers)
        key = ring.match(presented)
        if key is None:
            self.metrics.refused.labels("", "auth").inc()
            raise UnauthorizedError("missing API key" if presented is None else "invalid API key")
        call.key, call.record.key_id = key, key.id

    def allowed_models(self, key: ApiKey | None) -> list[str]:
        return [m for m in self.fleet.models() if key is None or key.allows(m)]

    def check_model(self, call: Call, model: str) -> None:
        call.record.model = model
        if call.key is not None and not call.key.allows(model):
            self.metrics.refused.labels(call.key.id, "model").inc()
            raise ForbiddenError(f"key '{call.key.id}' may not use model '{model}'", param="model")
        if model not in self.fleet.by_model:
            raise ModelNotFoundError(f"model '{model}' not found", param="model")

    def admit(self, call: Call) -> None:
        if call.key is None:
            return
        refusal = self.quotas.admit(call.key, time.monotonic())
        if refusal is not None:
            self.metrics.refused.labels(call.key.id, refusal.reason).inc()
            raise QuotaError(refusal.message, retry_after=refusal.retry_after)

    def refuse(self, call: Call, exc: SlmError) -> Response:
        response = error_response(exc, flavour_of(call.request.url.path))
        call.record.status, call.record.error = response.status_code, exc.message
        self.finish(call, Usage())
        return response

    def finish(self, call: Call, usage: Usage) -> None:
        """Audit line, metrics and the token charge of one answered (or refused) request."""
        record = call.record
        record.duration_ms = call.elapsed_ms()
        record.prompt_tokens, record.completion_tokens = usage.prompt_tokens, usage.completion_tokens
        model, key_id = record.model or "", record.key_id or ""
        self.metrics.requests.labels(key_id, model, str(record.status)).inc()
        if record.model and record.status < 400:
            self.metrics.duration.labels(model).observe(record.duration_ms / 1000)
            if record.ttft_ms is not None:
                self.metrics.ttft.labels(model).observe(record.ttft_ms / 1000)
            self.metrics.tokens.labels(key_id, model, "prompt").inc(usage.prompt_tokens or 0)
            self.metrics.tokens.labels(key_id, model, "completion").inc(usage.completion_tokens or 0)
        if call.key is not None:
            self.quotas.charge(call.key, usage.total(), time.monotonic())
        self.audit.write(record)

    # -- model requests ------------------------------------------------------------------------

    async def model_request(self, request: Request) -> Response:
        call = self.call(request)
        try:
            self.authenticate(call)
            raw, body = await json_body(request)
            model = model_of(body)
            self.check_model(call, model)
            self.admit(call)
            return await self.forward(call, raw, body, model)
        except ClientGoneError:
            call.record.status = 499
            self.finish(call, Usage())
            return Response(status_code=499)
        except SlmError as exc:
            return self.refuse(call, exc)

    async def forward(self, call: Call, raw: bytes, body: dict[str, Any], model: str) -> Response:
        routing, record = self.config.routing, call.record
        drop_usage = False
        if call.request.url.path in USAGE_PATHS and body.get("stream") is True and with_usage_requested(body):
            raw, drop_usage = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), True
        record.stream = body.get("stream") is True or (record.api == "ollama" and body.get("stream") is None)
        text = prompt_text(body)
        if self.config.audit.log_content:
            record.content = {"prompt": text}
        if not self.fleet.endpoints_of(model):
            await self.hold(call, model)
        chain = prefix_chain(text, routing.prefix_block_chars, routing.max_prefix_blocks)
        matches = self.fleet.affinity.matches(chain)
        order = pick(
            self.fleet.candidates(model, time.monotonic()),
            matches,
            load_factor=routing.load_factor,
            tiebreak=chain[-1] if chain else random.getrandbits(63),
        )
        if not order:
            raise NoEndpointError(f"model '{model}' has no endpoint right now")
        # States are taken now: in Kubernetes mode an endpoint may leave the fleet mid-request.
        tries = [(c, self.fleet.endpoints[c.url]) for c in order[:2]]
        upstream, chosen, state = await self.send(call, raw, model, tries)
        self.fleet.affinity.record(chain, chosen.url)
        self.metrics.affinity.labels(model, "hit" if matches.get(chosen.url) else "miss").inc()
        record.deployment, record.endpoint, record.status = (
            chosen.deployment,
            chosen.url,
            upstream.status_code,
        )
        ctype = upstream.headers.get("content-type", "application/json").split(";")[0].strip()
        headers = {k: v for k, v in upstream.headers.items() if k.lower() == "retry-after"}
        kind = STREAM_TYPES.get(ctype)
        if kind is None:
            content = await self._whole(call, upstream, state)
            return Response(content, status_code=upstream.status_code, media_type=ctype, headers=headers)
        tap = StreamTap(kind, drop_usage_chunk=drop_usage, keep_text=self.config.audit.log_content)
        return PassThrough(
            self._passthrough(call, upstream, state, tap),
            status_code=upstream.status_code,
            media_type=ctype,
            headers=headers,
        )

    async def hold(self, call: Call, model: str) -> None:
        """Wait until `model` has a ready pod (the operator wakes a model at zero on the demand
        this hold reports); past `routing.holdSeconds`, 503 with Retry-After, never 404."""
        limit = self.config.routing.hold_seconds
        target = wake_target(self.fleet.by_model.get(model, []))
        if target is None or limit <= 0:
            raise NoEndpointError(f"model '{model}' has no endpoint right now")
        deadline = time.monotonic() + limit
        self.demand.hold(target, time.monotonic())
        self.metrics.held.labels(model).inc()
        outcome = "gone"  # unless forwarded or timed out: the client left (or was cancelled)
        try:
            while not self.fleet.endpoints_of(model):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    outcome = "timeout"
                    raise NoEndpointError(
                        f"model '{model}' is starting (it was scaled to zero) and had no ready pod "
                        f"after {limit:g}s; retry shortly",
                        retry_after=10,
                    )
                changed = self.demand.changed.wait()
                with contextlib.suppress(TimeoutError):
                    await until_disconnect(call.request, asyncio.wait_for(changed, min(remaining, 1.0)))
            outcome = "forwarded"
        finally:
            self.demand.release(target, time.monotonic())
            self.metrics.held.labels(model).dec()
            self.metrics.holds.labels(model, outcome).inc()
            call.record.held_ms = call.elapsed_ms()

    def in_flight(self) -> dict[str, int]:
        """Requests being answered, per deployment name (what `/demand` reports with the held)."""
        counts: dict[str, int] = {}
        for state in self.fleet.endpoints.values():
            name = state.deployment.name
            counts[name] = counts.get(name, 0) + state.outstanding
        return counts

    def _release(self, state: EndpointState) -> None:
        state.outstanding -= 1
        self.demand.touch(state.deployment.name, time.monotonic())
        dep = state.deployment
        self.metrics.outstanding.labels(dep.model, dep.name, state.url).set(state.outstanding)

    async def _whole(self, call: Call, upstream: httpx.Response, state: EndpointState) -> bytes:
        """A non-streamed answer: read it (cancelled if the client leaves), note its usage."""
        usage = Usage()
        try:
            content = await until_disconnect(call.request, upstream.aread())
        except httpx.HTTPError as exc:
            self.fleet.failed(state.url, time.monotonic())
            raise UpstreamError(f"endpoint failed while answering: {exc.__class__.__name__}") from exc
        finally:
            await upstream.aclose()
            self._release(state)
            call.record.ttft_ms = call.elapsed_ms()
        with contextlib.suppress(ValueError):
            read_usage(json.loads(content), usage)
        if call.record.content is not None:
            call.record.content["answer"] = content.decode("utf-8", "replace")
        self.finish(call, usage)
        return content

    async def _passthrough(
        self, call: Call, upstream: httpx.Response, state: EndpointState, tap: StreamTap
    ) -> AsyncGenerator[bytes, None]:
        """Each upstream event as it arrives; closing this (client gone) closes the upstream stream."""
        record = call.record
        try:
            async for chunk in upstream.aiter_raw():
                if record.ttft_ms is None:
                    record.ttft_ms = call.elapsed_ms()
                out = tap.feed(chunk)
                if out:
                    yield out
            tail = tap.flush()
            if tail:
                yield tail
        except httpx.HTTPError as exc:  # after the first byte: no retry, the stream just ends
            record.error = f"endpoint failed mid-stream: {exc.__class__.__name__}"
            self.fleet.failed(state.url, time.monotonic())
        except BaseException:
            record.status, record.error = 499, "client disconnected"
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await upstream.aclose()
            self._release(state)
            if record.content is not None:
                record.content["answer"] = "".join(tap.usage.text)
            self.finish(call, tap.usage)

    def upstream_headers(self, request: Request, dep: DeploymentConfig) -> dict[str, str]:
        """Only what the runtime needs; the caller's gateway key never leaves the gateway. The
        runtime gets the deployment's own key (static `apiKeyEnv`) or the gateway's upstream key."""
        headers = {"content-type": "application/json", "accept": request.headers.get("accept", "*/*")}
        upstream_key = self.upstream_keys.get(dep.name)
        if not upstream_key and dep.gateway_key:
            upstream_key = self.upstream_key.current()
        if upstream_key:
            headers["authorization"] = f"Bearer {upstream_key}"
        if request.client is not None:
            headers["x-forwarded-for"] = request.client.host
        return headers

    async def send(
        self, call: Call, raw: bytes, model: str, order: list[tuple[Candidate, EndpointState]]
    ) -> tuple[httpx.Response, Candidate, EndpointState]:
        """Send to `order[0]`; on a failure before any byte of the answer, once more to `order[1]`."""
        last = "no endpoint"
        for attempt, (cand, state) in enumerate(order):
            upstream_req = self.client.build_request(
                call.request.method,
                cand.url + call.request.url.path,
                content=raw,
                headers=self.upstream_headers(call.request, state.deployment),
            )
            state.outstanding += 1
            self.demand.touch(state.deployment.name, time.monotonic())
            self.metrics.outstanding.labels(model, cand.deployment, cand.url).set(state.outstanding)
            try:
                upstream = await until_disconnect(call.request, self.client.send(upstream_req, stream=True))
            except httpx.HTTPError as exc:
                self._release(state)
                self.fleet.failed(cand.url, time.monotonic())
                last = f"{cand.url}: {exc.__class__.__name__}"
                log.warning("endpoint %s failed before answering: %s", cand.url, exc.__class__.__name__)
            except BaseException:
                self._release(state)
                raise
            else:
                if upstream.status_code not in RETRY_STATUS or attempt == len(order) - 1:
                    if upstream.status_code < 500:
                        self.fleet.succeeded(cand.url)
                    return upstream, cand, state
                await upstream.aclose()
                self._release(state)
                last = f"{cand.url}: HTTP {upstream.status_code}"
                if upstream.status_code in EJECT_STATUS:
                    self.fleet.failed(cand.url, time.monotonic())
            if attempt + 1 < len(order):
                call.record.retries += 1
                self.metrics.retries.labels(model).inc()
        raise UpstreamError(f"no endpoint of model '{model}' answered ({last})")

    # -- fleet-wide listings -------------------------------------------------------------------

    async def _gather_json(self, urls: Iterable[str]) -> list[dict[str, Any]]:
        async def one(url: str) -> dict[str, Any] | None:
            try:
                r = await self.client.get(url, timeout=2.0)
                data = r.json() if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                return None
            return data if isinstance(data, dict) else None

        return [d for d in await asyncio.gather(*(one(u) for u in urls)) if d is not None]

    def _best_endpoint(self, model: str) -> list[str]:
        now = time.monotonic()
        states = sorted(
            self.fleet.endpoints_of(model), key=lambda s: (s.ejected_until > now, -s.deployment.priority)
        )
        return [s.url for s in states[:1]]

    async def listing(self, request: Request, what: str) -> Response:
        """`/v1/models` (what="openai"), `/api/tags`, `/api/ps`: the fleet, as far as the key may see."""
        call = self.call(request)
        try:
            self.authenticate(call)
        except SlmError as exc:
            return self.refuse(call, exc)
        models = self.allowed_models(call.key)
        if what == "openai":
            return JSONResponse({"object": "list", "data": [self.model_card(m) for m in models]})
        urls = [
            f"{u}/api/{what}"
            for m in models
            for u in (
                self._best_endpoint(m) if what == "tags" else [s.url for s in self.fleet.endpoints_of(m)]
            )
        ]
        seen: dict[str, dict[str, Any]] = {}
        for page in await self._gather_json(urls):
            for entry in page.get("models") or []:
                if isinstance(entry, dict) and entry.get("name") in models:
                    seen.setdefault(str(entry["name"]), entry)
        if what == "tags":  # a model whose pods did not answer is still listed
            for m in models:
                seen.setdefault(m, {"name": m, "model": m, "size": 0, "digest": "", "details": {}})
        return JSONResponse({"models": [seen[m] for m in models if m in seen]})

    def model_card(self, model: str) -> dict[str, Any]:
        return {"id": model, "object": "model", "created": int(self.started_at), "owned_by": "slm-operator"}

    async def one_model(self, request: Request) -> Response:
        call = self.call(request)
        try:
            self.authenticate(call)
            model = request.path_params["model"]
            if model not in self.allowed_models(call.key):  # a model the key may not use is not shown
                raise ModelNotFoundError(f"model '{model}' not found", param="model")
        except SlmError as exc:
            return self.refuse(call, exc)
        return JSONResponse(self.model_card(model))

    def apply(self, deployments: list[DeploymentConfig]) -> None:
        """Kubernetes mode: the fleet as the cluster now describes it."""
        self.fleet.replace(deployments)
        self.synced = True
        self.demand.fleet_changed()
