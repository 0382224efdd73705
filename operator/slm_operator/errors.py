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


class PolicyError(SpecError):
    """The spec asks for something this operator's policy (its flags) does not allow; nothing is applied."""

    reason = "PolicyViolation"


class NameConflictError(SlmOperatorError):
    """A child's name is taken by an object this SLMDeployment does not control; it is left alone.

    Retried slowly: the conflict ends when the other object is deleted (or the SLMDeployment renamed);
    soon when it is `passing` (already being deleted, e.g. by the garbage collector)."""

    reason = "NameConflict"

    def __init__(self, message: str, *, passing: bool = False) -> None:
        super().__init__(message)
        self.passing = passing


class ApplyError(SlmOperatorError):
    """The API server rejected a child (400/403/422: invalid, forbidden by admission, over quota).

    Its message is the server's; a retry with the same spec fails the same way, so it backs off."""

    reason = "ApplyFailed"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KindNotServedError(KubeError):
    """An apply of an optional child kind (InferencePool) answered 404: its CRD may be gone without
    the operator having seen it go (`reconcile.discovery` then reads it again)."""

    reason = "KindNotServed"


class NamespaceTerminatingError(KubeError):
    """The namespace is being deleted: the API refuses new objects in it (403 with the status
    cause `NamespaceTerminating`), so re-creating a child there is pointless until it is gone."""

    reason = "NamespaceTerminating"
