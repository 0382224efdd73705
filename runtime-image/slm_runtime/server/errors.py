"""The one place runtime errors become HTTP responses, per API.

`/v1/...` answers in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`; everything
else in Ollama's `{"error": "..."}`. Overload is 429 for OpenAI clients (they back off on it)
and 503 for Ollama clients (what Ollama itself returns when its queue is full).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from slm_runtime.errors import OverloadedError, SlmError, UnauthorizedError
from slm_runtime.server._common import ClientGoneError

log = logging.getLogger(__name__)

Flavour = Literal["openai", "ollama"]


def flavour_of(path: str) -> Flavour:
    return "openai" if path.startswith("/v1/") or path == "/v1" else "ollama"


def _as_slm(exc: BaseException) -> SlmError:
    if isinstance(exc, SlmError):
        return exc
    if isinstance(exc, HTTPException):
        err = SlmError(str(exc.detail))
        err.status = exc.status_code
        err.openai_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return err
    log.error("unhandled error: %s", exc, exc_info=exc)
    return SlmError("internal error")


def error_body(exc: BaseException, flavour: Flavour) -> tuple[int, dict[str, Any], dict[str, str]]:
    """Status, JSON body and headers for `exc` in `flavour`'s format."""
    err = _as_slm(exc)
    status = err.status
    headers: dict[str, str] = {}
    if isinstance(err, OverloadedError):
        headers["Retry-After"] = str(err.retry_after)
        status = 429 if flavour == "openai" else 503
    if isinstance(err, UnauthorizedError):
        headers["WWW-Authenticate"] = "Bearer"
    if flavour == "openai":
        code = {401: "invalid_api_key", 404: "model_not_found", 429: "rate_limit_exceeded"}.get(status)
        body: dict[str, Any] = {
            "error": {
                "message": err.message if hasattr(err, "message") else str(err),
                "type": err.openai_type,
                "param": err.param,
                "code": code,
            }
        }
    else:
        body = {"error": err.message if hasattr(err, "message") else str(err)}
    return status, body, headers


def error_response(exc: BaseException, flavour: Flavour) -> Response:
    status, body, headers = error_body(exc, flavour)
    return JSONResponse(body, status_code=status, headers=headers)


async def handle_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for SlmError, HTTPException and anything unexpected."""
    if isinstance(exc, ClientGoneError):  # nobody will read it; nginx's "client closed request"
        return Response(status_code=499)
    return error_response(exc, flavour_of(request.url.path))
