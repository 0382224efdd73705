"""Operator settings: command-line flags with environment fallbacks, parsed once at the edge."""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from slm_operator.policy import Policy
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
    priority: int = 0
    field_manager: str = "slm-operator"
    gateway_namespace: str | None = None
    """Namespace of slm-gateway ($SLM_GATEWAY_NAMESPACE); model pods' NetworkPolicies admit it."""
    gateway_url: str | None = None
    """The gateway's OpenAI base URL ($SLM_GATEWAY_URL), shown as status.endpoints.fleet."""
    autoscale_seconds: float = 5.0
    """How often the operator's autoscaler reads the gateway's demand ($SLM_AUTOSCALE_SECONDS)."""
    demand_url: str | None = None
    """Where it reads it ($SLM_DEMAND_URL); unset: `/demand` next to `gateway_url`."""
    workers: int = 16
    """kopf's handler threads (reconciles in parallel; each mostly waits on the API server)."""
    peering_lifetime: int = 60
    """Seconds a peer's keep-alive counts: the longest a standby waits after its leader died."""
    policy: Policy | None = None
    """What SLMDeployments may ask for (images, control-plane scheduling, annotations, checksums).
    `slm-operator run` always sets one from its flags (checksums required unless
    `--allow-unverified-models`); None, for embedding the reconciler as a library, checks nothing."""
    check_auth_secrets: bool = True
    """Whether reconciles GET the API-key Secret a spec names (needs `get secrets`, which grants
    reading their data). `slm-operator run` turns it on in namespaced mode, whose Roles grant that per
    namespace, and off cluster-wide, where the ClusterRole grants no Secret access at all and a
    missing Secret shows on the pods instead (their FailedMount Events)."""
    gateway_key_sha256: tuple[str, ...] = ()
    """SHA-256 digests (lowercase hex) of slm-gateway's upstream key (`--gateway-key-sha256`, else
    $SLM_GATEWAY_KEY_SHA256, comma-separated): written into the runtime config of every
    SLMDeployment with spec.auth, whose runtime then accepts that key besides its own. Two during a
    rotation. The gateway thus needs no access to the users' key Secrets (issue 13, item 8)."""
    extra: Mapping[str, str] = field(default_factory=dict)


def image_from_env(env: Mapping[str, str] | None = None) -> str:
    """The runtime image: $SLM_RUNTIME_IMAGE, else the release default."""
    return (env if env is not None else os.environ).get(IMAGE_ENV) or DEFAULT_IMAGE


GATEWAY_NAMESPACE_ENV = "SLM_GATEWAY_NAMESPACE"


GATEWAY_URL_ENV = "SLM_GATEWAY_URL"


def gateway_url_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The fleet endpoint the chart's gateway serves (unset: none is shown in status)."""
    return (env if env is not None else os.environ).get(GATEWAY_URL_ENV) or None


def gateway_namespace_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """Where the chart runs slm-gateway (unset: no gateway, no NetworkPolicy rule for it)."""
    return (env if env is not None else os.environ).get(GATEWAY_NAMESPACE_ENV) or None


GATEWAY_KEY_SHA256_ENV = "SLM_GATEWAY_KEY_SHA256"


def gateway_key_sha256(value: str) -> str:
    """One digest, checked and lowercased; ValueError (naming no secret: it is a digest) otherwise."""
    digest = value.strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"not a SHA-256 hex digest (64 hex digits): {value!r}")
    return digest


def gateway_key_sha256_from_env(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """$SLM_GATEWAY_KEY_SHA256: comma-separated digests (unset or empty: none)."""
    raw = (env if env is not None else os.environ).get(GATEWAY_KEY_SHA256_ENV) or ""
    return tuple(dict.fromkeys(gateway_key_sha256(d) for d in raw.split(",") if d.strip()))


def resync_from_env(env: Mapping[str, str] | None = None) -> float:
    raw = (env if env is not None else os.environ).get(RESYNC_ENV)
    return float(raw) if raw else 60.0


PRIORITY_ENV = "POD_ID"


def priority_from_env(env: Mapping[str, str] | None = None) -> int:
    """A peering priority that differs between replicas: a hash of the pod's name.

    kopf pauses *every* replica that shares the highest priority, so HA replicas must not all
    run with the default 0. The chart passes the pod name as $POD_ID (falling back to the host
    name); crc32 spreads distinct names over 1..1_000_000, so two replicas collide with a
    probability of about one in a million, and a collision only pauses them until one restarts.
    """
    source = env if env is not None else os.environ
    name = source.get(PRIORITY_ENV) or source.get("HOSTNAME") or ""
    return 1 + zlib.crc32(name.encode()) % 1_000_000 if name else 0


AUTOSCALE_ENV = "SLM_AUTOSCALE_SECONDS"
DEMAND_URL_ENV = "SLM_DEMAND_URL"


def autoscale_from_env(env: Mapping[str, str] | None = None) -> tuple[float, str | None]:
    """($SLM_AUTOSCALE_SECONDS or 5, $SLM_DEMAND_URL or None)."""
    source = env if env is not None else os.environ
    raw = source.get(AUTOSCALE_ENV)
    return (float(raw) if raw else 5.0), (source.get(DEMAND_URL_ENV) or None)
