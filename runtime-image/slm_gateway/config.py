"""The gateway's configuration file (`slm-gateway --config FILE`), one pydantic model.

Static mode names the deployments and their endpoint URLs here; Kubernetes mode fills the same
`Deployment` records from SLMDeployments and EndpointSlices. Keys live in their own file
(`keysFile`, e.g. a mounted Secret) so they rotate without a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


_S = TypeVar("_S", bound=_Strict)


def _defaults(cls: type[_S]) -> Callable[[], _S]:
    return lambda: cls.model_validate({})


class DeploymentConfig(_Strict):
    """One set of interchangeable pods serving `model` (an SLMDeployment, in Kubernetes mode)."""

    name: str = Field(description="Deployment name (shown in audit lines and metrics).")
    model: str = Field(description="Model name clients send; several deployments may share one.")
    endpoints: list[str] = Field(description="Base URLs of the pods, e.g. http://10.0.0.7:8080.")
    priority: int = Field(0, description="Higher is preferred while it has capacity.")
    capacity: int = Field(4, ge=1, description="Concurrent requests one endpoint takes before it is full.")
    api_key_env: str | None = Field(
        None,
        alias="apiKeyEnv",
        description="Static mode: env var holding a key for this deployment's runtimes, sent upstream "
        "instead of the gateway's upstream key.",
    )
    gateway_key: bool = Field(
        True,
        alias="gatewayKey",
        description="Send the gateway's upstream key (`upstreamKeyFile`) to these runtimes; Kubernetes "
        "mode sets it for SLMDeployments with spec.auth (their runtimes trust the key's SHA-256).",
    )

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        for url in value:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint {url!r} must start with http:// or https://")
        return [u.rstrip("/") for u in value]


class RoutingConfig(_Strict):
    """Endpoint picking knobs; the defaults suit small-model pods with a few slots each."""

    prefix_block_chars: int = Field(
        256, alias="prefixBlockChars", ge=16, description="Prompt characters per hashed prefix block."
    )
    max_prefix_blocks: int = Field(
        128, alias="maxPrefixBlocks", ge=1, description="Blocks hashed per request (the rest ignored)."
    )
    affinity_entries: int = Field(
        65536, alias="affinityEntries", ge=1, description="Prefix blocks remembered (LRU)."
    )
    load_factor: float = Field(
        1.25,
        alias="loadFactor",
        ge=1.0,
        description="Bounded load: an endpoint takes affinity traffic up to this times the mean load.",
    )
    eject_seconds: float = Field(
        10.0, alias="ejectSeconds", gt=0, description="How long a failing endpoint is set aside."
    )
    scrape_seconds: float = Field(
        2.0, alias="scrapeSeconds", gt=0, description="How often pods' /metrics and /readyz are read."
    )
    connect_timeout: float = Field(2.0, alias="connectTimeout", gt=0)
    hold_seconds: float = Field(
        180.0,
        alias="holdSeconds",
        ge=0,
        description="How long a request for a model with no ready pod (scaled to zero, starting) "
        "waits for one before it gets 503 with Retry-After; 0 answers 503 at once.",
    )


class AuditConfig(_Strict):
    """One JSON line per request, to stdout and optionally to a file."""

    stdout: bool = True
    file: str | None = None
    log_content: bool = Field(
        False, alias="logContent", description="Also log prompts and answers (off: never logged)."
    )


class ServerConfig(_Strict):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=1, le=65535)


class GatewayConfig(_Strict):
    """Everything `slm-gateway` needs in static mode."""

    deployments: list[DeploymentConfig] = Field(default_factory=list)
    keys_file: str | None = Field(
        None, alias="keysFile", description="YAML list of keys; none means the gateway is open."
    )
    upstream_key_file: str | None = Field(
        None,
        alias="upstreamKeyFile",
        description="File holding the gateway's own key for the runtimes (a mounted Secret; re-read "
        "on change); none: no key is sent but a deployment's apiKeyEnv.",
    )
    routing: RoutingConfig = Field(default_factory=_defaults(RoutingConfig))
    audit: AuditConfig = Field(default_factory=_defaults(AuditConfig))
    server: ServerConfig = Field(default_factory=_defaults(ServerConfig))

    @classmethod
    def from_file(cls, path: str | Path) -> GatewayConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
