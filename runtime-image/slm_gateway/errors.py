"""The gateway's own refusals, in the runtime's error hierarchy so one mapping serves both.

`slm_runtime.server.errors.error_body` turns any of these into OpenAI's or Ollama's error shape;
`error_response` adds what the runtime's mapping does not know (Retry-After for quota refusals).
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response

from slm_runtime.errors import SlmError
from slm_runtime.server.errors import Flavour, error_body, flavour_of

__all__ = ["Flavour", "ForbiddenError", "QuotaError", "UpstreamError", "error_response", "flavour_of"]


class ForbiddenError(SlmError):
    """The key is valid but may not use this model."""

    status = 403
    openai_type = "permission_error"


class QuotaError(SlmError):
    """The key is over its requests or tokens per minute."""

    status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamError(SlmError):
    """No endpoint of the model could be reached (or all failed before answering)."""

    status = 502
    openai_type = "server_error"


class NoEndpointError(SlmError):
    """The model is known but has no endpoint right now (scaled to zero, rolling out)."""

    status = 503
    openai_type = "server_error"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def error_response(exc: SlmError, flavour: Flavour) -> Response:
    status, body, headers = error_body(exc, flavour)
    if isinstance(exc, QuotaError):
        headers["Retry-After"] = str(exc.retry_after)
        if flavour == "openai":
            body["error"]["code"] = "rate_limit_exceeded"
    if isinstance(exc, NoEndpointError):
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body, status_code=status, headers=headers)
