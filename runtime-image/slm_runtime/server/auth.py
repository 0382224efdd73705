"""API-key authentication as a small ASGI middleware.

Keys come from `auth.apiKeyFile` (one per line, `#` comments) and the env var named by
`auth.apiKeyEnv` (comma-separated). Accepted as `Authorization: Bearer KEY` (OpenAI, Ollama
clients with headers) or `x-api-key: KEY`. Compared with `hmac.compare_digest` against every
key so timing does not reveal a prefix. Keys are never logged.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from slm_runtime.config import AuthSection
from slm_runtime.errors import UnauthorizedError
from slm_runtime.server.errors import error_response, flavour_of

log = logging.getLogger(__name__)

_ALWAYS_OPEN = frozenset({"/healthz", "/readyz", "/", "/api/health"})


def load_keys(auth: AuthSection) -> tuple[bytes, ...]:
    """All configured keys; empty means authentication is off."""
    keys: list[str] = []
    if auth.api_key_file:
        for raw in Path(auth.api_key_file).read_text(encoding="utf-8").splitlines():
            key = raw.strip()
            if key and not key.startswith("#"):
                keys.append(key)
    keys += [k.strip() for k in os.environ.get(auth.api_key_env, "").split(",") if k.strip()]
    return tuple(k.encode() for k in keys)


def _presented_key(scope: Scope) -> bytes | None:
    headers: dict[bytes, bytes] = dict(scope.get("headers") or [])
    value = headers.get(b"authorization")
    if value is not None:
        scheme, _, token = value.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip()
    return headers.get(b"x-api-key")


class ApiKeyMiddleware:
    """Rejects requests without a valid key (401 in the API's format); health is exempt."""

    def __init__(self, app: ASGIApp, *, keys: tuple[bytes, ...], protect_metrics: bool) -> None:
        self.app = app
        self._keys = keys
        self._open = _ALWAYS_OPEN if protect_metrics else _ALWAYS_OPEN | {"/metrics"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._keys or scope["path"] in self._open:
            await self.app(scope, receive, send)
            return
        presented = _presented_key(scope)
        ok = False
        if presented is not None:
            for key in self._keys:  # no early exit: constant work whichever key matches
                ok |= hmac.compare_digest(presented, key)
        if ok:
            await self.app(scope, receive, send)
            return
        reason = "missing API key" if presented is None else "invalid API key"
        log.info("401 %s %s: %s", scope.get("method"), scope["path"], reason)
        response = error_response(UnauthorizedError(reason), flavour_of(scope["path"]))
        await response(scope, receive, send)
