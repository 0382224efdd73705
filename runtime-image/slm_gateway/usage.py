"""Reading token counts out of answers as they pass through, without holding them back.

`StreamTap` splits a streamed body into whole events (SSE `\\n\\n`, NDJSON `\\n`) and hands each on
at once; it notes the usage the runtime reports (OpenAI's `usage` chunk, Ollama's final
`prompt_eval_count`/`eval_count`) and, when asked, the answer's text. Events are decoded only when
they can carry what it looks for, so the per-token cost stays small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["sse", "ndjson"]


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    events: int = 0
    text: list[str] = field(default_factory=list)

    def total(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def _content(obj: dict[str, Any]) -> str:
    """Text of one OpenAI chunk/answer or Ollama line."""
    parts: list[str] = []
    for choice in obj.get("choices") or []:
        if isinstance(choice, dict):
            delta = choice.get("delta") or choice.get("message") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            text = text if text is not None else choice.get("text")
            if isinstance(text, str):
                parts.append(text)
    for key in ("response",):
        if isinstance(obj.get(key), str):
            parts.append(obj[key])
    msg = obj.get("message")
    if isinstance(msg, dict) and isinstance(msg.get("content"), str):
        parts.append(msg["content"])
    return "".join(parts)


def read_usage(obj: Any, into: Usage) -> None:
    """Take the token counts from a whole JSON answer (either API) into `into`."""
    if not isinstance(obj, dict):
        return
    usage = obj.get("usage")
    if isinstance(usage, dict):
        if isinstance(usage.get("prompt_tokens"), int):
            into.prompt_tokens = usage["prompt_tokens"]
        if isinstance(usage.get("completion_tokens"), int):
            into.completion_tokens = usage["completion_tokens"]
    if isinstance(obj.get("prompt_eval_count"), int):
        into.prompt_tokens = obj["prompt_eval_count"]
    if isinstance(obj.get("eval_count"), int):
        into.completion_tokens = obj["eval_count"]


class StreamTap:
    """Cuts a stream into events, reads usage, optionally drops the usage-only SSE chunk."""

    def __init__(self, kind: Kind, *, drop_usage_chunk: bool = False, keep_text: bool = False) -> None:
        self.kind = kind
        self.usage = Usage()
        self._sep = b"\n\n" if kind == "sse" else b"\n"
        self._tail = b""
        self._drop_usage_chunk = drop_usage_chunk
        self._keep_text = keep_text

    def feed(self, chunk: bytes) -> bytes:
        """The complete events in `tail + chunk`, to send on now; the partial rest is kept."""
        data = self._tail + chunk
        cut = data.rfind(self._sep)
        if cut < 0:
            self._tail = data
            return b""
        ready, self._tail = data[: cut + len(self._sep)], data[cut + len(self._sep) :]
        if not self._drop_usage_chunk and not self._keep_text and b'"usage":{' not in ready:
            if self.kind == "ndjson" and b'"done":true' in ready:
                pass  # the final line: decode it below
            else:
                self.usage.events += ready.count(self._sep)
                return ready
        return b"".join(self._event(e) for e in ready.split(self._sep)[:-1])

    def flush(self) -> bytes:
        rest, self._tail = self._tail, b""
        return self._event(rest, sep=False) if rest else b""

    def _event(self, event: bytes, *, sep: bool = True) -> bytes:
        out = event + (self._sep if sep else b"")
        payload = event
        if self.kind == "sse":
            if not event.startswith(b"data:"):
                return out
            payload = event[5:].strip()
            if payload == b"[DONE]":
                return out
        self.usage.events += 1
        wanted = self._keep_text or b'"usage":{' in payload or b'"done":true' in payload
        if not wanted:
            return out
        try:
            obj = json.loads(payload)
        except ValueError:
            return out
        if not isinstance(obj, dict):
            return out
        read_usage(obj, self.usage)
        if self._keep_text:
            self.usage.text.append(_content(obj))
        if self._drop_usage_chunk and self.kind == "sse" and obj.get("choices") == [] and obj.get("usage"):
            self.usage.events -= 1
            return b""
        return out
