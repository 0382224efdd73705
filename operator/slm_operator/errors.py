"""One exception hierarchy for the operator; the handlers map each family to kopf's errors once."""

from __future__ import annotations


class SlmOperatorError(Exception):
    """Root of every error the operator raises on purpose."""

    reason = "Error"


class SpecError(SlmOperatorError):
    """The SLMDeployment's spec cannot be served as written; retrying will not help."""

    reason = "InvalidSpec"


class PlacementError(SpecError):
    """No preferred hardware class can serve the model; carries one reason per class."""

    reason = "PlacementFailed"

    def __init__(self, message: str, reasons: tuple[str, ...] = (), *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reasons = reasons
        self.retryable = retryable
        if retryable:
            self.reason = "NoCapacity"


class SecretNotFoundError(SlmOperatorError):
    """The API key Secret (or its key) is missing; it may appear later, so retry."""

    reason = "SecretNotFound"


class KubeError(SlmOperatorError):
    """The Kubernetes API answered with an error; usually transient."""

    reason = "KubernetesAPIError"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NamespaceTerminatingError(KubeError):
    """The namespace is being deleted: the API refuses new objects in it (403 with the status
    cause `NamespaceTerminating`), so re-creating a child there is pointless until it is gone."""

    reason = "NamespaceTerminating"
