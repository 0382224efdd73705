"""Operator settings: command-line flags with environment fallbacks, parsed once at the edge."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from slm_operator.render import DEFAULT_IMAGE

IMAGE_ENV = "SLM_RUNTIME_IMAGE"
RESYNC_ENV = "SLM_RESYNC_SECONDS"


@dataclass(frozen=True)
class Settings:
    """Everything `slm-operator run` can be told; handlers receive it through kopf's memo."""

    runtime_image: str = DEFAULT_IMAGE
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = False
    peering: str | None = None
    standalone: bool = True
    metrics_port: int = 9090
    liveness: str | None = None
    resync_seconds: float = 60.0
    field_manager: str = "slm-operator"
    extra: Mapping[str, str] = field(default_factory=dict)


def image_from_env(env: Mapping[str, str] | None = None) -> str:
    """The runtime image: $SLM_RUNTIME_IMAGE, else the release default."""
    return (env if env is not None else os.environ).get(IMAGE_ENV) or DEFAULT_IMAGE


def resync_from_env(env: Mapping[str, str] | None = None) -> float:
    raw = (env if env is not None else os.environ).get(RESYNC_ENV)
    return float(raw) if raw else 60.0
