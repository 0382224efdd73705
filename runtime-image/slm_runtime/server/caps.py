"""What a parsed request may look like: bounded JSON, bounded shape, before any work.

`loads` parses JSON with bounded nesting and number sizes; anything else is a 400, never a 500
with a traceback (CPython's parser raises RecursionError on deep nesting and ValueError on
integers past 4300 digits). `RequestCaps.check` bounds the request's *shape* (messages, prompt
characters, stop sequences, logit_bias, JSON schemas, embedding inputs), each a 400 naming the
field, before any template is rendered or any token counted. Pure functions: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from slm_runtime.config import LimitsSection
from slm_runtime.errors import BadRequestError

_MAX_NUMBER_CHARS = 64
"""Longest number literal accepted: far past any real parameter, far below CPython's 4300-digit
int limit (whose ValueError would otherwise surface as a 500)."""


# -- JSON -------------------------------------------------------------------------------------


class _JsonLimitError(ValueError):
    pass


def _parse_int(text: str) -> int:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _JsonLimitError(f"a number in the body has {len(text)} digits (at most {_MAX_NUMBER_CHARS})")
    return int(text)


def _parse_float(text: str) -> float:
    if len(text) > _MAX_NUMBER_CHARS:
        raise _JsonLimitError(f"a number has {len(text)} characters (at most {_MAX_NUMBER_CHARS})")
    value = float(text)
    if not math.isfinite(value):
        raise _JsonLimitError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise _JsonLimitError(f"{name} is not valid JSON")


def loads(raw: bytes, max_depth: int) -> Any:
    """Parse `raw` as JSON, nested at most `max_depth` deep; BadRequestError for anything else."""
    try:
        data = json.loads(
            raw or b"{}", parse_int=_parse_int, parse_float=_parse_float, parse_constant=_no_constant
        )
    except _JsonLimitError as exc:
        raise BadRequestError(f"request body is not acceptable JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError(f"request body is nested too deeply (at most {max_depth} levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    except ValueError as exc:  # anything else the parser refuses
        raise BadRequestError(f"request body is not valid JSON: {exc}") from exc
    if depth(data, max_depth) > max_depth:
        raise BadRequestError(f"request body is nested too deeply (at most {max_depth} levels)")
    return data


def depth(value: Any, stop_after: int | None = None) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0); iterative, so any depth is safe.
    Stops counting once past `stop_after` (enough to refuse)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterator[Any] = iter(node.values())
        elif isinstance(node, list):
            children = iter(node)
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if stop_after is not None and deepest > stop_after:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest


# -- the request's shape ----------------------------------------------------------------------

_PROMPT_FIELDS = ("messages", "prompt", "input", "system", "instructions", "suffix")
"""Top-level fields whose text becomes prompt tokens (all three APIs)."""


@dataclass(frozen=True)
class RequestCaps:
    """The shape limits of `limits`, resolved against the slot size (see `LimitsSection`)."""

    max_depth: int
    max_messages: int
    max_prompt_chars: int
    max_stop: int
    max_stop_chars: int
    max_logit_bias: int
    max_schema_bytes: int
    max_schema_depth: int
    max_embedding_inputs: int

    @classmethod
    def from_limits(cls, limits: LimitsSection, context_length: int) -> RequestCaps:
        return cls(
            max_depth=limits.max_json_depth,
            max_messages=limits.max_messages,
            max_prompt_chars=limits.prompt_chars(context_length),
            max_stop=limits.max_stop,
            max_stop_chars=limits.max_stop_chars,
            max_logit_bias=limits.max_logit_bias,
            max_schema_bytes=limits.max_schema_bytes,
            max_schema_depth=limits.max_schema_depth,
            max_embedding_inputs=limits.max_embedding_inputs,
        )

    def check(self, data: Mapping[str, Any], *, embedding: bool = False) -> None:
        """Raise a BadRequestError naming the first field of `data` (a parsed body) over a cap."""
        for name in ("messages", "input"):
            items = data.get(name)
            cap = self.max_embedding_inputs if embedding and name == "input" else self.max_messages
            if isinstance(items, list) and len(items) > cap:
                what = "inputs" if embedding else "items"
                raise BadRequestError(f"{name} has {len(items)} {what}; at most {cap}", param=name)
        sizes = {name: _chars(data[name]) for name in _PROMPT_FIELDS if name in data}
        if sum(sizes.values()) > self.max_prompt_chars:
            biggest = max(sizes, key=lambda k: sizes[k])
            raise BadRequestError(
                f"prompt text is {sum(sizes.values())} characters; at most {self.max_prompt_chars} per "
                "request (limits.maxPromptChars)",
                param=biggest,
            )
        options = data.get("options")
        for where, stop in (("stop", data.get("stop")), ("options.stop", _get(options, "stop"))):
            self._check_stop(where, stop)
        bias = data.get("logit_bias")
        if isinstance(bias, dict) and len(bias) > self.max_logit_bias:
            raise BadRequestError(
                f"logit_bias has {len(bias)} entries; at most {self.max_logit_bias}", param="logit_bias"
            )
        for where, schema in _schemas(data):
            self._check_schema(where, schema)

    def _check_stop(self, where: str, stop: Any) -> None:
        entries = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
        if len(entries) > self.max_stop:
            raise BadRequestError(
                f"{where} has {len(entries)} sequences; at most {self.max_stop}", param=where
            )
        for i, entry in enumerate(entries):
            if isinstance(entry, str) and len(entry) > self.max_stop_chars:
                raise BadRequestError(
                    f"{where} sequence {i} is {len(entry)} characters; at most {self.max_stop_chars}",
                    param=where,
                )

    def _check_schema(self, where: str, schema: Any) -> None:
        if depth(schema, self.max_schema_depth) > self.max_schema_depth:
            raise BadRequestError(
                f"{where} is nested too deeply (at most {self.max_schema_depth} levels)", param=where
            )
        size = len(json.dumps(schema, separators=(",", ":")))
        if size > self.max_schema_bytes:
            raise BadRequestError(
                f"{where} is {size} bytes as JSON; at most {self.max_schema_bytes} (limits.maxSchemaBytes)",
                param=where,
            )


def _get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None


def _schemas(data: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every JSON schema a body carries that becomes a grammar: response formats and tools."""
    fmt = data.get("response_format")
    if (schema := _get(_get(fmt, "json_schema"), "schema")) is not None:
        yield "response_format.json_schema.schema", schema
    if isinstance(data.get("format"), dict):  # Ollama
        yield "format", data["format"]
    if (schema := _get(_get(data.get("text"), "format"), "schema")) is not None:  # Responses
        yield "text.format.schema", schema
    tools = data.get("tools")
    if isinstance(tools, list) and tools:
        yield "tools", tools


def _chars(value: Any) -> int:
    """Characters of all strings under `value` (iterative)."""
    total = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            total += len(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return total
