"""Client text made safe for a log line: no forged lines, no terminal escapes, bounded length.

A request path is percent-decoded by the server (`%0A` becomes a real newline), so logging it
as is lets a client write a line of its own choosing into the pod's log. `safe` escapes every
control character (and the backslash, so an escape cannot be faked either) and cuts the text.
"""

from __future__ import annotations

_MAX = 200


def safe(text: object, limit: int = _MAX) -> str:
    """`text` with control characters escaped as `\\xNN` / `\\uNNNN` and cut to `limit` characters."""
    value = str(text)
    cut = len(value) > limit
    value = value[:limit]
    out = []
    for ch in value:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out) + ("..." if cut else "")
