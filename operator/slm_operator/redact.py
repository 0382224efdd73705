"""Credentials inside model URIs never leave the spec: not into status, Events or the operator's log.

A variant's URI may carry a user and password (`https://user:token@host/model.gguf`) or a signed
query (`?X-Amz-Signature=…`, `?token=…`). The spec holds them because the fetch step needs them;
everything the operator *writes* about a URI goes through `uri()` (status.variant.uri) or `text()`
(condition messages, Events, log lines that may quote a URI, such as a fetch failure's last line).
Pure string functions.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "REDACTED"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s?#]+@")
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&](?:[^=&\s]*(?:token|sig|signature|secret|password|passwd|key|credential|auth)"
    r"[^=&\s]*)=)[^&\s#]+",
    re.IGNORECASE,
)
_KEEP_QUERY_SCHEMES = ("tiny",)
"""Generated models: their query (`?quantization=q8_0`) is a setting, never a credential."""


def uri(value: str) -> str:
    """`value` without its user info, and with every query value masked (tiny:// kept as is)."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return text(value)
    if parts.scheme in _KEEP_QUERY_SCHEMES:
        return value
    netloc = parts.netloc.rpartition("@")[2] if "@" in parts.netloc else parts.netloc
    if netloc != parts.netloc:
        netloc = f"{MASK}@{netloc}"
    query = parts.query
    if query:
        query = urlencode([(k, MASK) for k, _ in parse_qsl(query, keep_blank_values=True)], safe=MASK)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def text(value: str) -> str:
    """Free text (a message, a log line) with the user info of any URL in it and the values of
    credential-like query parameters masked."""
    value = _USERINFO.sub(lambda m: f"{m.group('scheme')}{MASK}@", value)
    return _SECRET_PARAM.sub(lambda m: f"{m.group('name')}{MASK}", value)
