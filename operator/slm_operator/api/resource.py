"""Identity of the SLMDeployment custom resource (group, version, names) and its top-level model."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from slm_operator.api.common import ApiModel
from slm_operator.api.spec import SLMDeploymentSpec
from slm_operator.api.status import SLMDeploymentStatus

GROUP = "slm.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SLMDeployment"
PLURAL = "slmdeployments"
SINGULAR = "slmdeployment"
SHORT_NAMES = ("slmd", "slm")


class SLMDeployment(ApiModel):
    """A small language model served behind OpenAI- and Ollama-compatible endpoints."""

    api_version: str = Field(API_VERSION, description="slm.dev/v1alpha1.")
    kind: str = Field(KIND, description="SLMDeployment.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Standard object metadata.")
    spec: SLMDeploymentSpec = Field(description="Desired state.")
    status: SLMDeploymentStatus | None = Field(None, description="Observed state.")

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")
