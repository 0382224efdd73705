"""Format-independent pieces of decoding: stop strings and incremental UTF-8 text.

Kept apart from the backends so a batching scheduler reuses them per sequence.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class StopMatcher:
    """Finds stop strings in streamed text, holding back only what could start one.

    `push` returns the text that is safe to send now, and whether a stop string was hit (in
    which case the text before it is returned and the stop string itself is dropped, like the
    OpenAI and Ollama APIs do).
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        buffer = self._pending + text
        first = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self._pending = ""
            return buffer[:first], True
        hold = self._longest_partial_suffix(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        """Text held back when generation ended for another reason."""
        rest, self._pending = self._pending, ""
        return rest

    def _longest_partial_suffix(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


class Utf8Stream:
    """Turns token byte pieces into text; a character split across tokens waits for its tail."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
