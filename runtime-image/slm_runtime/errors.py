"""One exception hierarchy for the runtime.

Backends, the scheduler and the request parsers raise these; the HTTP layer maps them once, at
the edge (`slm_runtime.server.errors`), to each API's error body. The CLI maps them to exit codes.
Every class carries its HTTP status so the mapping is a table, not a chain of `isinstance` checks.
"""

from __future__ import annotations


class SlmError(Exception):
    """Root of every error the runtime raises on purpose."""

    status: int = 500
    openai_type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class BadRequestError(SlmError):
    """The request is malformed or asks for something invalid."""

    status = 400
    openai_type = "invalid_request_error"


class PayloadTooLargeError(BadRequestError):
    """The request body is larger than `limits.maxBodyBytes`."""

    status = 413


class RequestTimeoutError(BadRequestError):
    """The client did not send its request body within `limits.bodyTimeoutSeconds`."""

    status = 408


class UnsupportedError(BadRequestError):
    """The loaded backend cannot do what was asked (e.g. embeddings on ONNX)."""


class TemplateError(BadRequestError):
    """The chat template failed to render, or tried something the sandbox forbids."""


class UnauthorizedError(SlmError):
    """Missing or wrong API key."""

    status = 401
    openai_type = "authentication_error"


class AuthConfigError(SlmError):
    """The configured API keys are unusable (none, or too short): refuse to start, never open."""


class ModelsDeclaredError(SlmError):
    """A model-management call (create, copy, delete, push, pull of another model): the pod
    serves the model its SLMDeployment declares, and nothing else."""

    status = 403
    openai_type = "invalid_request_error"


class ModelNotFoundError(SlmError):
    """The request names a model this pod does not serve."""

    status = 404
    openai_type = "invalid_request_error"


class OverloadedError(SlmError):
    """Admission control refused the request; the client should retry later."""

    status = 429
    openai_type = "rate_limit_error"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReadyError(SlmError):
    """The model is still loading, failed to load, or the pod is draining."""

    status = 503
    openai_type = "server_error"


class EngineError(SlmError):
    """The inference engine failed while generating."""

    status = 500


class FetchError(SlmError):
    """Downloading or verifying a model failed."""


class ChecksumError(FetchError):
    """The downloaded bytes do not match the expected sha256."""
