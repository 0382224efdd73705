"""Token counts read from streams as they pass, event boundaries kept, nothing held back."""

from __future__ import annotations

import json

from slm_gateway.usage import StreamTap, Usage, read_usage


def sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


CHUNKS = [
    sse({"choices": [{"delta": {"role": "assistant", "content": ""}}], "usage": None}),
    sse({"choices": [{"delta": {"content": "Par"}}], "usage": None}),
    sse({"choices": [{"delta": {"content": "is"}}], "usage": None}),
    sse({"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}),
    b"data: [DONE]\n\n",
]


def test_sse_passes_events_through_and_reads_usage() -> None:
    tap = StreamTap("sse")
    out = b"".join(tap.feed(ch) for ch in CHUNKS) + tap.flush()
    assert out == b"".join(CHUNKS)
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (12, 2)


def test_sse_split_anywhere_still_yields_whole_events() -> None:
    stream = b"".join(CHUNKS)
    for cut in range(1, len(stream)):
        tap = StreamTap("sse", drop_usage_chunk=True, keep_text=True)
        first, second = tap.feed(stream[:cut]), tap.feed(stream[cut:])
        for part in (first, second):
            assert part == b"" or part.endswith(b"\n\n")
        assert tap.usage.total() == 14
        assert b'"usage":{' not in first + second  # the usage-only chunk the client did not ask for
        assert "".join(tap.usage.text) == "Paris"


def test_sse_event_goes_out_as_soon_as_it_is_complete() -> None:
    tap = StreamTap("sse")
    assert tap.feed(CHUNKS[1][:10]) == b""
    assert tap.feed(CHUNKS[1][10:]) == CHUNKS[1]


def test_ndjson_final_line_gives_ollama_counts() -> None:
    lines = [
        b'{"model":"m","response":"Hi","done":false}\n',
        b'{"model":"m","response":"","done":true,"prompt_eval_count":9,"eval_count":3}\n',
    ]
    tap = StreamTap("ndjson")
    assert tap.feed(lines[0]) == lines[0]
    assert tap.feed(lines[1][:20]) == b""
    assert tap.feed(lines[1][20:]) == lines[1]
    assert (tap.usage.prompt_tokens, tap.usage.completion_tokens) == (9, 3)


def test_whole_answers_in_either_api() -> None:
    u = Usage()
    read_usage({"usage": {"prompt_tokens": 5, "completion_tokens": 7}}, u)
    assert u.total() == 12
    v = Usage()
    read_usage({"prompt_eval_count": 4, "eval_count": 1, "done": True}, v)
    assert (v.prompt_tokens, v.completion_tokens) == (4, 1)
    w = Usage()
    read_usage(["not", "a", "dict"], w)
    assert w.total() == 0
