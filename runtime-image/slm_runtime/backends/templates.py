"""Chat templates: Jinja2 source from the model (or the config's override), sandboxed.

A chat template ships inside a downloaded model file, so it is untrusted code. It renders in an
`ImmutableSandboxedEnvironment`: no attribute starting with `_`, no mutating lists or dicts, so
`{{ ''.__class__.__mro__ }}`-style escapes raise `TemplateError` instead of running.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slm_runtime.errors import TemplateError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""Used when a model has no template of its own; also what `slm-runtime tiny-model` embeds."""


def _raise_exception(message: str) -> NoReturn:
    raise TemplateError(f"chat template rejected the conversation: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime(fmt)


class ChatTemplate:
    """A compiled chat template; `render` turns messages into the prompt string."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        # Same whitespace handling as Hugging Face's apply_chat_template, which templates assume.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, autoescape=False)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateError(f"chat template does not compile: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> str:
        """Render; sandbox violations and template errors become `TemplateError` (HTTP 400)."""
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self._bos,
                eos_token=self._eos,
                **(extra or {}),
            )
        except TemplateError:
            raise
        except SecurityError as exc:
            raise TemplateError(f"chat template tried an unsafe operation: {exc}") from exc
        except jinja2.TemplateError as exc:
            raise TemplateError(f"chat template failed: {exc}") from exc
