"""What every builder receives: one typed value instead of many positional arguments."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import parse_qs, urlsplit

from slm_operator.api import SLMDeploymentSpec
from slm_operator.placement import Placement

DEFAULT_IMAGE = "ghcr.io/slm-operator/slm-runtime:0.1.0"
RUNTIME_PORT = 8080
METRICS_PORT = 9090
"""The runtime's /metrics listener (`server.metricsPort`, container port `metrics`): scrapers are
admitted to this port only, not to the API on RUNTIME_PORT."""
MODELS_DIR = "/models"
CONFIG_DIR = "/etc/slm"
CONFIG_FILE = f"{CONFIG_DIR}/config.yaml"
AUTH_DIR = f"{CONFIG_DIR}/auth"
CONFIG_HASH_ANNOTATION = "slm.dev/config-hash"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IN_FLIGHT_METRIC = "vllm_num_requests_running"
"""Per-pod custom metric the HPA reads; a metrics adapter must expose the runtime's gauge under it."""


@dataclass(frozen=True)
class RenderContext:
    """An SLMDeployment's name, namespace and spec plus the placement decided for it."""

    name: str
    spec: SLMDeploymentSpec
    placement: Placement
    namespace: str | None = None
    default_image: str = DEFAULT_IMAGE
    gateway_namespace: str | None = None
    """Where slm-gateway runs (the chart's release namespace); its pods are admitted by the
    NetworkPolicy. None: no gateway rule."""
    inference_pools: bool = False
    """Whether the API server serves InferencePools (`inference.networking.k8s.io/v1`): then one is
    rendered per SLMDeployment."""
    gateway_key_sha256: tuple[str, ...] = ()
    """Digests of slm-gateway's upstream key (`Settings.gateway_key_sha256`): a spec with `auth`
    gets them as the runtime's `auth.trustedKeySha256`."""

    @property
    def image(self) -> str:
        return self.spec.image or self.default_image

    @property
    def config_map_name(self) -> str:
        return f"{self.name}-runtime"

    @property
    def cache_claim_name(self) -> str:
        return f"{self.name}-cache"

    @property
    def model_file(self) -> str:
        return model_file_name(self.placement.variant.uri, self.placement.variant.format)

    @property
    def model_path(self) -> str:
        return f"{MODELS_DIR}/{self.model_file}"

    @cached_property
    def config_yaml(self) -> str:
        """The runtime's config file, serialised once per context: the ConfigMap carries it and the
        pod template's config hash is taken of it, and YAML serialisation is most of a render."""
        from slm_operator.render.config import runtime_config  # config.py builds on this module

        return runtime_config(self).to_yaml()


def is_archive(uri: str) -> bool:
    """Whether the fetch step must unpack the download (ONNX models travel as tar archives)."""
    return urlsplit(uri).path.endswith(ARCHIVE_SUFFIXES)


def model_file_name(uri: str, fmt: str) -> str:
    """File (GGUF) or folder (ONNX) name under /models for a variant's URI.

    `tiny://gguf?quantization=q8_0` becomes `tiny-q8_0.gguf`, `tiny://onnx` becomes `tiny-onnx`,
    anything else its last path segment without the query string (and without an archive suffix:
    `slm-runtime fetch --extract` unpacks `.tar`/`.tar.gz`/`.tgz` archives into that folder).
    """
    parts = urlsplit(uri)
    if parts.scheme == "tiny":
        quant = parse_qs(parts.query).get("quantization", [""])[0]
        kind = parts.netloc or parts.path.strip("/") or fmt
        base = "-".join(p for p in ("tiny", quant.lower() if kind == "gguf" else kind) if p)
        return f"{base}.gguf" if kind == "gguf" else base
    segment = parts.path.rstrip("/").rsplit("/", 1)[-1] or parts.netloc
    for suffix in ARCHIVE_SUFFIXES:
        segment = segment.removesuffix(suffix)
    safe = re.sub(r"[^A-Za-z0-9._-]", "-", segment).strip(".-") or "model"
    if fmt == "gguf" and not safe.endswith(".gguf"):
        safe += ".gguf"
    return safe
