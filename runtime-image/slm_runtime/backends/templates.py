"""Chat templates: Jinja2 source from the model (or the config's override), sandboxed.

A chat template ships inside a downloaded model file, so it is untrusted code. It renders in an
`ImmutableSandboxedEnvironment`: no attribute starting with `_`, no mutating lists or dicts, so
`{{ ''.__class__.__mro__ }}`-style escapes raise `TemplateError` instead of running.

A GGUF without a template gets llama.cpp's built-in one for its architecture (`gemma`,
`llama3`, `phi3`, ... through `llama_chat_apply_template`), as llama-server would use.

Either way `render` returns a `Prompt` that marks where each message's content landed, so the
engine tokenizes user text as text: `<|im_start|>system` inside a message is never a role marker.
"""

from __future__ import annotations

import ctypes
import datetime
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from slm_runtime.backends.base import Prompt
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


class _Template:
    """Renders twice: once for real, once with each content replaced by a sentinel, and lines
    the two up to find the content spans (see `literal_spans`)."""

    def _render_text(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, extra: Mapping[str, Any] | None
    ) -> str:
        raise NotImplementedError

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> Prompt:
        """Render; sandbox violations and template errors become `TemplateError` (HTTP 400)."""
        msgs = [dict(m) for m in messages]
        text = self._render_text(msgs, add_generation_prompt, extra)
        contents = [m.get("content") for m in msgs]
        probe = [dict(m) for m in msgs]
        for i, content in enumerate(contents):
            if isinstance(content, str) and content:
                probe[i]["content"] = _sentinel(i)
        try:
            skeleton = self._render_text(probe, add_generation_prompt, extra)
        except Exception:  # a template that inspects content may choke on a sentinel
            return Prompt(text)
        return Prompt(text, literal_spans(text, skeleton, contents))


def _sentinel(i: int) -> str:
    return f"\ue000{i}\ue001"


def literal_spans(text: str, skeleton: str, contents: Sequence[object]) -> list[tuple[int, int]]:
    """Where each message's content sits in `text`, given the same render with sentinels.

    The skeleton's pieces between sentinels are template text and must appear in `text` as
    they are; between them, the content (as the template may have trimmed it). Content that
    cannot be lined up exactly is left to special-token parsing (logged), never guessed.
    """
    spans: list[tuple[int, int]] = []
    pos_text = pos_skel = 0
    while True:
        start = skeleton.find("\ue000", pos_skel)
        if start < 0:
            break
        end = skeleton.find("\ue001", start)
        if end < 0:
            break
        fixed = skeleton[pos_skel:start]
        if text[pos_text : pos_text + len(fixed)] != fixed:
            return spans
        pos_text += len(fixed)
        try:
            content = contents[int(skeleton[start + 1 : end])]
        except (ValueError, IndexError):
            return spans
        if not isinstance(content, str):
            return spans
        pos_skel = end + 1
        nxt = skeleton.find("\ue000", pos_skel)
        following = skeleton[pos_skel : nxt if nxt >= 0 else len(skeleton)]
        for candidate in (content, content.strip(), content.rstrip(), content.lstrip()):
            after = pos_text + len(candidate)
            if text[pos_text:after] == candidate and text[after:].startswith(following):
                if candidate:
                    spans.append((pos_text, after))
                pos_text = after
                break
        else:
            return spans
    return spans


class ChatTemplate(_Template):
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

    def _render_text(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, extra: Mapping[str, Any] | None
    ) -> str:
        try:
            return self._template.render(
                messages=messages,
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


_ARCH_TEMPLATES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "llama4": "llama4",
    "phi3": "phi3",
    "phimoe": "phi3",
    "command-r": "command-r",
    "cohere2": "command-r",
    "deepseek2": "deepseek2",
    "chatglm": "chatglm4",
    "glm4": "chatglm4",
    "granite": "granite",
    "granitemoe": "granite",
    "exaone": "exaone3",
    "exaone4": "exaone4",
    "minicpm": "minicpm",
    "qwen2": "chatml",
    "qwen3": "chatml",
}
"""GGUF `general.architecture` -> llama.cpp built-in template name, for files without one."""

_TOKEN_TEMPLATES = (
    ("<|start_header_id|>", "llama3"),
    ("<start_of_turn>", "gemma"),
    ("<|im_start|>", "chatml"),
    ("<|assistant|>", "phi3"),
)
"""A control token in the vocabulary that names the format the model was tuned on."""


def builtin_template_for(architecture: str, is_single_token: Callable[[str], bool]) -> str:
    """The llama.cpp built-in template for a model without one: by architecture, else by the
    chat control tokens its vocabulary has, else ChatML (llama.cpp's own fallback)."""
    if architecture in _ARCH_TEMPLATES:
        return _ARCH_TEMPLATES[architecture]
    for token, name in _TOKEN_TEMPLATES:
        if is_single_token(token):
            return name
    return "chatml"


class BuiltinChatTemplate(_Template):
    """One of llama.cpp's built-in templates, applied by `llama_chat_apply_template` (C++, not
    Jinja: it reads only role and content, so nothing in it can be made to run)."""

    def __init__(self, name: str) -> None:
        import llama_cpp

        names = (ctypes.c_char_p * 128)()
        n = llama_cpp.llama_chat_builtin_templates(names, 128)
        known = {(names[i] or b"").decode() for i in range(min(n, 128))}
        if name not in known:
            raise TemplateError(f"llama.cpp has no built-in chat template {name!r}")
        self.name = name

    def _render_text(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool, extra: Mapping[str, Any] | None
    ) -> str:
        import llama_cpp

        keep = [(str(m.get("role", "")).encode(), _text(m.get("content")).encode()) for m in messages]
        chat: Any = (llama_cpp.llama_chat_message * max(1, len(keep)))()
        for i, (role, content) in enumerate(keep):
            chat[i].role = role
            chat[i].content = content
        size = 2 * sum(len(r) + len(c) for r, c in keep) + 256
        for _ in range(2):
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_chat_apply_template(
                self.name.encode(), chat, len(keep), add_generation_prompt, buf, size
            )
            if n < 0:
                raise TemplateError(f"llama.cpp's {self.name} template rejected the conversation")
            if n <= size:
                return buf.raw[:n].decode("utf-8", "replace")
            size = n + 1
        raise TemplateError("chat template output kept growing")  # pragma: no cover


def _text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    raise TemplateError("llama.cpp's built-in templates take text content only")
