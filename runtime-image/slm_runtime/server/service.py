"""What both API front-ends share: model lookup, prompt building, defaults, admission, metrics.

The front-ends (`ollama.py`, `openai.py`) only translate wire formats; everything with a policy
in it lives here, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, aclosing
from dataclasses import replace
from typing import Any, Literal, TypeVar, cast

from slm_runtime.backends.base import (
    EmbeddingResult,
    FinishEvent,
    GenerationEvent,
    GenerationRequest,
    ModelInfo,
    ResponseFormat,
    SamplingParams,
    TokenEvent,
)
from slm_runtime.backends.templates import CHATML_TEMPLATE, BuiltinChatTemplate, ChatTemplate
from slm_runtime.config import RuntimeConfig
from slm_runtime.embeddings import finish_vectors
from slm_runtime.engine import Engine
from slm_runtime.errors import (
    BadRequestError,
    ModelNotFoundError,
    NotReadyError,
    OverloadedError,
    TemplateError,
    UnsupportedError,
)
from slm_runtime.server.caps import RequestCaps
from slm_runtime.server.limits import Limiter
from slm_runtime.server.metrics import Metrics
from slm_runtime.server.tools import GENERIC, Function, ToolChoice, ToolFormat, call_grammar, detect_format
from slm_runtime.server.tools import for_template as tool_messages_for_template
from slm_runtime.server.tools import system_prompt as tools_system_prompt

log = logging.getLogger(__name__)

NO_TOOLS = ToolChoice("none")

T = TypeVar("T")


class Service:
    """Per-app state and policy; created by `create_app`, never module-global."""

    def __init__(self, settings: RuntimeConfig, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.started_at = time.time()
        self.metrics = Metrics(settings.model.name)
        limits = settings.limits
        self.limiter = Limiter(limits.max_concurrent or settings.runtime.parallel, limits.queue_length)
        self.metrics.track_limiter(lambda: self.limiter.running, lambda: self.limiter.waiting)
        engine.add_observer(self.metrics.on_finish)
        self.load_error: str | None = None
        self._template: ChatTemplate | BuiltinChatTemplate | None = None
        self.tool_format: ToolFormat = GENERIC
        self._load_task: asyncio.Task[None] | None = None
        self.caps = RequestCaps.from_limits(limits, settings.runtime.context_length)
        # Template rendering and grammar building are pure Python but unbounded in CPU by the
        # input: they run here, never on the event loop. One worker: they are short once the
        # request is within `caps`, and more would only compete with the decode thread.
        self._prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="slm-prep")

    # -- lifecycle ---------------------------------------------------------------------------

    def start_loading(self) -> asyncio.Task[None]:
        """Load the model in the background so /healthz answers at once (idempotent)."""
        if self._load_task is None:
            self._load_task = asyncio.create_task(self._load(), name="slm-load-model")
        return self._load_task

    async def _load(self) -> None:
        try:
            await self.engine.start()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("model failed to load: %s", exc)
            return
        info = self.info
        source = self.settings.prompt.template or info.chat_template
        try:
            if source is None and info.builtin_template:  # a GGUF without a template: llama.cpp's
                # (C++, reads only role and content): tools go through the generic format
                self._template = BuiltinChatTemplate(info.builtin_template)
                self.tool_format = GENERIC
            else:
                source = source or CHATML_TEMPLATE
                self._template = ChatTemplate(source, bos_token=info.bos_token, eos_token=info.eos_token)
                self.tool_format = detect_format(source)
        except TemplateError as exc:
            self.load_error = str(exc)
            log.error("cannot use the chat template: %s", exc)
            return
        self.metrics.model_loaded(info, self.settings.hardware, self.engine.load_seconds or 0.0)
        kv_bytes = getattr(self.engine, "kv_bytes_per_slot", 0)  # only the batched GGUF engine knows
        if kv_bytes:
            self.metrics.kv_cache_per_slot(kv_bytes)
        usage, blocks = (
            getattr(self.engine, "kv_cache_usage", None),
            getattr(self.engine, "kv_cache_blocks", None),
        )
        if callable(usage) and callable(blocks):  # the batched GGUF engine, which knows its cells
            self.metrics.track_kv_cache(usage, blocks())
        prefix = getattr(self.engine, "prefix_cache_tokens", None)
        if callable(prefix):
            self.metrics.track_prefix_cache(prefix)

    async def wait_load_failed(self) -> str:
        """Return the error if loading fails; never returns if it succeeds (for the CLI to exit)."""
        await self.start_loading()
        if self.load_error is None:
            await asyncio.Event().wait()
        return self.load_error or ""

    async def shutdown(self) -> None:
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.engine.close()
        self._prep.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the preparation thread (never llama.cpp: that is the engine's)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prep, lambda: fn(*args, **kwargs))

    async def prompt_for(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        system_field: str = "messages",
        tools: Sequence[Function] = (),
        tool_choice: ToolChoice = NO_TOOLS,
    ) -> str:
        """`render_chat` off the event loop (a template can be slow on a large conversation)."""
        return await self.off_loop(
            self.render_chat,
            messages,
            system=system,
            system_field=system_field,
            tools=tools,
            tool_choice=tool_choice,
        )

    async def grammar_for(self, tools: Sequence[Function], tool_choice: ToolChoice) -> str | None:
        """`tool_grammar` off the event loop (JSON schema -> GBNF grows with the tools' schemas)."""
        return await self.off_loop(self.tool_grammar, tools, tool_choice)

    def check_raw(self, field: str) -> None:
        """Refuse a prompt that bypasses the chat template (and so the system prompt) unless allowed."""
        if not self.settings.prompt.raw_allowed():
            raise BadRequestError(
                f"'{field}' prompts bypass this deployment's system prompt and are not allowed "
                "(spec.prompt.allowRaw)",
                param=field,
            )

    @property
    def ready(self) -> bool:
        return self._template is not None and self.load_error is None and not self.limiter.draining

    @property
    def info(self) -> ModelInfo:
        info = self.engine.info
        if info is None or self.load_error:
            raise NotReadyError(
                (self.load_error and f"model failed to load: {self.load_error}") or "model is loading"
            )
        return info

    # -- requests ----------------------------------------------------------------------------

    def resolve_model(self, name: str | None) -> ModelInfo:
        """The served model if `name` addresses it (`name` or `name:latest`), else 404."""
        served = self.settings.model.name
        if name not in (served, f"{served}:latest"):
            raise ModelNotFoundError(
                f"model '{name}' not found; this server serves '{served}'", param="model"
            )
        return self.info

    @property
    def template_name(self) -> str:
        """The built-in template in use (`gemma`, ...), or `gguf` / `config` / `chatml`."""
        if isinstance(self._template, BuiltinChatTemplate):
            return self._template.name
        if self.settings.prompt.template:
            return "config"
        return "gguf" if self.engine.info and self.engine.info.chat_template else "chatml"

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        system: str | None = None,
        system_field: str = "messages",
        tools: Sequence[Function] = (),
        tool_choice: ToolChoice = NO_TOOLS,
    ) -> str:
        """Prompt for a conversation, with the system prompt as `prompt.clientSystem` says.

        The configured `prompt.system` is the operator's: by default (`append`) it stays first
        and a client's own system text (`system`, or system messages) follows it; `replace`
        lets the client's win; `refuse` answers 400 naming `system_field`. Without a configured
        prompt the client's is used as sent.

        Messages may carry tool calls and tool results (`tools.for_template` shapes them); `tools`
        go to the template as its `tools` variable, or into the system prompt when the template
        has no tool format of its own.
        """
        fmt = self.tool_format
        msgs = system_messages(
            tool_messages_for_template(messages, fmt),
            configured=self.settings.prompt.system,
            client=system,
            policy=self.settings.prompt.client_system,
            field=system_field,
        )
        extra: dict[str, Any] = {}
        if tools and tool_choice.mode != "none":
            if fmt.native:
                extra["tools"] = [f.as_tool() for f in tools]
            else:
                described = tools_system_prompt(tools, tool_choice)
                if msgs and msgs[0].get("role") == "system":
                    msgs[0] = {**msgs[0], "content": f"{msgs[0].get('content') or ''}\n\n{described}".strip()}
                else:
                    msgs.insert(0, {"role": "system", "content": described})
        if self._template is None:
            self.info  # noqa: B018 -- raises NotReadyError with the reason
            raise NotReadyError("model is loading")
        return self._template.render(msgs, add_generation_prompt=True, extra=extra)

    def tool_grammar(self, tools: Sequence[Function], tool_choice: ToolChoice) -> str | None:
        """GBNF forcing a call (`required` / a named function) in this model's format, else None."""
        if tool_choice.mode in ("required", "function") and not self.engine.capabilities.gbnf:
            raise UnsupportedError(
                f"tool_choice '{tool_choice.mode}' needs grammars, which this model's backend lacks",
                param="tool_choice",
            )
        return call_grammar(self.tool_format, tools, tool_choice)

    def sampling(
        self,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        repeat_penalty: float | None = None,
        seed: int | None = None,
        min_p: float | None = None,
        typical_p: float | None = None,
        repeat_last_n: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        mirostat: int | None = None,
        mirostat_tau: float | None = None,
        mirostat_eta: float | None = None,
        context_limit: int | None = None,
        logprobs: int | None = None,
        stop: Sequence[str] | None = None,
        logit_bias: Mapping[int, float] | None = None,
        response_format: ResponseFormat | None = None,
    ) -> SamplingParams:
        """Request values over the config's `prompt.parameters` over built-in defaults."""
        d = self.settings.prompt.parameters
        caps = self.engine.capabilities
        base = SamplingParams()

        def pick(value: Any, default: Any, fallback: Any) -> Any:
            return value if value is not None else default if default is not None else fallback

        limit = pick(max_tokens, d.num_predict, -1)
        slot = self.settings.runtime.context_length  # neither says: at most what one slot holds
        fmt = response_format or ResponseFormat()
        if fmt.kind != "text" and not caps.grammar:
            raise UnsupportedError(
                "this model's backend does not support structured output", param="response_format"
            )
        if logit_bias and not caps.logit_bias:
            raise UnsupportedError("this model's backend does not support logit_bias", param="logit_bias")
        return replace(
            base,
            max_tokens=slot if limit < 0 else min(limit, slot),
            temperature=float(pick(temperature, d.temperature, base.temperature)),
            top_p=float(pick(top_p, d.top_p, base.top_p)),
            top_k=int(pick(top_k, d.top_k, base.top_k)),
            repeat_penalty=float(pick(repeat_penalty, d.repeat_penalty, base.repeat_penalty)),
            seed=pick(seed, d.seed, None),
            min_p=float(pick(min_p, None, base.min_p)),
            typical_p=float(pick(typical_p, None, base.typical_p)),
            repeat_last_n=int(pick(repeat_last_n, None, base.repeat_last_n)),
            presence_penalty=float(pick(presence_penalty, None, base.presence_penalty)),
            frequency_penalty=float(pick(frequency_penalty, None, base.frequency_penalty)),
            mirostat=cast(Literal[0, 1, 2], int(pick(mirostat, None, base.mirostat))),
            mirostat_tau=float(pick(mirostat_tau, None, base.mirostat_tau)),
            mirostat_eta=float(pick(mirostat_eta, None, base.mirostat_eta)),
            context_limit=context_limit,
            logprobs=logprobs,
            stop=tuple(stop if stop is not None else d.stop),
            logit_bias=dict(logit_bias or {}),
            response_format=fmt,
        )

    async def _admit(self) -> AbstractAsyncContextManager[None]:
        """A held slot of the limiter (release with `__aexit__`), or Overloaded/NotReady, counted."""
        slot = self.limiter.slot()
        try:
            await slot.__aenter__()
        except OverloadedError:
            self.metrics.rejected("overloaded")
            raise
        except NotReadyError:
            self.metrics.rejected("draining")
            raise
        return slot

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Admit (or raise Overloaded/NotReady), run, and time one generation.

        Closing this iterator early releases the slot and cancels the engine's generation.
        """
        arrived = time.perf_counter()
        self.info  # noqa: B018 -- 503 while loading
        slot = await self._admit()
        try:
            last: float | None = None
            async with aclosing(self.engine.generate(request)) as events:
                async for event in events:
                    now = time.perf_counter()
                    if isinstance(event, TokenEvent):
                        if last is None:
                            self.metrics.ttft.observe(now - arrived)
                        else:
                            self.metrics.itl.observe(now - last)
                        last = now
                    elif isinstance(event, FinishEvent):
                        self.metrics.e2e.observe(now - arrived)
                    yield event
        finally:
            await slot.__aexit__(None, None, None)

    async def embed(
        self,
        texts: Sequence[str],
        *,
        normalize: bool = True,
        dimensions: int | None = None,
        truncate: bool = True,
    ) -> EmbeddingResult:
        """Embeddings, admitted like generations (they share the decode thread and the CPU);
        normalised and cut to `dimensions` as the calling API promises. The input count is
        capped (`limits.maxEmbeddingInputs`); callers wrap this in `until_disconnect`, so a
        client that leaves releases its slot instead of holding it for nobody."""
        self.info  # noqa: B018 -- 503 while loading
        if not self.engine.capabilities.embeddings:
            raise UnsupportedError("this model's backend does not support embeddings")
        if not texts:
            raise BadRequestError("input must not be empty", param="input")
        if len(texts) > self.caps.max_embedding_inputs:
            raise BadRequestError(
                f"input has {len(texts)} texts; at most {self.caps.max_embedding_inputs}", param="input"
            )
        slot = await self._admit()
        try:
            result = await self.engine.embed(texts, truncate=truncate)
        finally:
            await slot.__aexit__(None, None, None)
        vectors = finish_vectors(result.vectors, normalize=normalize, dimensions=dimensions)
        return replace(result, vectors=vectors)

    async def complete(self, request: GenerationRequest) -> tuple[str, FinishEvent]:
        """Non-streaming helper: the whole text and the finish event."""
        parts: list[str] = []
        finish: FinishEvent | None = None
        async with aclosing(self.generate(request)) as events:
            async for event in events:
                if isinstance(event, TokenEvent):
                    parts.append(event.text)
                else:
                    finish = event
        if finish is None:  # pragma: no cover - the engine always ends with a FinishEvent
            raise BadRequestError("generation ended without a result")
        return "".join(parts), finish


async def first_and_rest(
    events: AsyncGenerator[GenerationEvent, None],
) -> tuple[GenerationEvent, AsyncGenerator[GenerationEvent, None]]:
    """Pull the first event before the response starts, so early errors get a real status code."""
    first = await anext(events)
    return first, events


def system_messages(
    msgs: list[dict[str, Any]],
    *,
    configured: str | None,
    client: str | None,
    policy: str,
    field: str,
) -> list[dict[str, Any]]:
    """The conversation with its system message per the policy (see `Service.render_chat`).

    `client` is a request's separate system field (Ollama's `system`); system messages inside
    `msgs` count as the client's too. Pure, so the policy is tested without a model.
    """
    if client is not None:
        msgs = [{"role": "system", "content": client}] + [m for m in msgs if m.get("role") != "system"]
    theirs = [m for m in msgs if m.get("role") == "system"]
    if not configured:
        return msgs
    if not theirs:
        return [{"role": "system", "content": configured}, *msgs]
    if policy == "replace":
        return msgs
    if policy == "refuse":
        raise BadRequestError(
            f"this deployment sets the system prompt; '{field}' may not carry one "
            "(prompt.clientSystem: refuse)",
            param=field,
        )
    text = "\n\n".join([configured, *(str(m.get("content") or "") for m in theirs)]).strip()
    rest = [m for m in msgs if m.get("role") != "system"]
    return [{"role": "system", "content": text}, *rest]
