"""Pure pieces: templates (sandbox), stop strings, UTF-8 streaming, hf:// mapping, limiter, vocab."""

from __future__ import annotations

import asyncio

import pytest

from slm_runtime.backends.sampling import StopMatcher, Utf8Stream
from slm_runtime.backends.templates import CHATML_TEMPLATE, ChatTemplate
from slm_runtime.errors import FetchError, NotReadyError, OverloadedError, TemplateError
from slm_runtime.fetch import hf_url
from slm_runtime.server.limits import Limiter
from slm_runtime.tiny.vocab import build_vocab


def test_chatml_template_renders() -> None:
    out = ChatTemplate(CHATML_TEMPLATE).render([{"role": "user", "content": "hi"}])
    assert out == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.append({'role': 'x'}) }}",
        "{% set x = messages[0].update({'content': 'pwned'}) %}{{ x }}",
        "{{ raise_exception('no system messages') }}",
        "{% for %}",
    ],
)
def test_sandboxed_template_refuses_unsafe_access(source: str) -> None:
    with pytest.raises(TemplateError):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_stop_matcher_holds_back_partial_matches() -> None:
    m = StopMatcher(["STOP", "\n\n"])
    assert m.push("hello ST") == ("hello ", False)
    assert m.push("O") == ("", False)
    assert m.push("P and more") == ("", True)
    m = StopMatcher(["STOP"])
    assert m.push("abc S") == ("abc ", False)
    assert m.push("x") == ("Sx", False)
    assert m.push("S") == ("", False)
    assert m.flush() == "S"
    assert StopMatcher([]).push("anything") == ("anything", False)


def test_utf8_stream_joins_split_characters() -> None:
    s = Utf8Stream()
    data = "é€🙂".encode()
    assert "".join(s.push(data[i : i + 1]) for i in range(len(data))) + s.flush() == "é€🙂"


def test_hf_url_mapping() -> None:
    assert hf_url("hf://Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q8_0.gguf") == (
        "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct-GGUF/resolve/main/qwen2.5-0.5b-instruct-q8_0.gguf"
    )
    assert hf_url("hf://org/repo@v1.0/sub/dir/model.gguf") == (
        "https://huggingface.co/org/repo/resolve/v1.0/sub/dir/model.gguf"
    )
    with pytest.raises(FetchError):
        hf_url("hf://org/repo")


def test_limiter_admits_queues_and_refuses() -> None:
    async def run() -> None:
        limiter = Limiter(max_concurrent=1, queue_length=1)
        gate = asyncio.Event()

        async def hold() -> None:
            async with limiter.slot():
                await gate.wait()

        first = asyncio.create_task(hold())
        await asyncio.sleep(0)
        second = asyncio.create_task(hold())
        await asyncio.sleep(0)
        assert (limiter.running, limiter.waiting) == (1, 1)
        with pytest.raises(OverloadedError):
            async with limiter.slot():
                pass
        gate.set()
        await asyncio.gather(first, second)
        assert limiter.in_flight == 0
        assert await limiter.drain(1.0)
        with pytest.raises(NotReadyError):
            async with limiter.slot():
                pass

    asyncio.run(run())


def test_vocab_is_byte_level_and_deterministic() -> None:
    vocab = build_vocab()
    assert len(set(vocab.tokens)) == len(vocab.tokens)
    assert vocab.tokens[:256] == build_vocab().tokens[:256]
    assert vocab.tokens[vocab.eos_id] == "<|im_end|>"
    padded = build_vocab(1024)
    assert len(padded.tokens) == 1024
