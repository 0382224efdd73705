"""What an SLMDeployment may ask for on this cluster: the operator's policy, set by its flags.

The API server enforces the fixed rules at admission (CEL in the CRD: label syntax, reserved label
keys, the name). What differs between clusters cannot be in the CRD, because a CEL rule cannot see
the operator's flags; it is checked here, before anything is applied, and a violation becomes
`Degraded` with reason `PolicyViolation` (`errors.PolicyError`), naming the field:

- the runtime image must start with one of the allowed prefixes (`--allowed-image-prefix`);
- a toleration may not match every taint (`operator: Exists` without a key) or a control-plane
  taint, and a node selector may not pick control-plane nodes, unless `--allow-control-plane`;
- pod annotations may not use keys in the denied domains (`--denied-annotation-domain`, default
  kubernetes.io and k8s.io with their subdomains: apparmor, seccomp and kubectl keys live there);
- every downloaded model variant needs a `sha256` (a model file is code: a GGUF carries a chat
  template, an ONNX folder its graph), unless `--allow-unverified-models`; `tiny://` models are
  generated inside the pod and need none.

Pure: no I/O, unit-tested without a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from slm_operator.api import SLMDeploymentSpec
from slm_operator.errors import PolicyError

CONTROL_PLANE_KEYS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
DEFAULT_DENIED_ANNOTATION_DOMAINS = ("kubernetes.io", "k8s.io")
GENERATED_SCHEME = "tiny://"


@dataclass(frozen=True)
class Policy:
    """The cluster's policy for SLMDeployments (`slm-operator run` flags, the chart's `policy` values)."""

    allowed_image_prefixes: tuple[str, ...] = ()
    """Runtime images must start with one of these (empty: any image)."""
    allow_control_plane: bool = False
    """Whether tolerations of every taint or of control-plane taints, and control-plane node
    selectors, are allowed."""
    denied_annotation_domains: tuple[str, ...] = DEFAULT_DENIED_ANNOTATION_DOMAINS
    """Annotation key prefixes (domains, subdomains included) a CR may not set on its pods."""
    allow_unverified_models: bool = False
    """Whether model variants without a sha256 may be downloaded."""


def _in_domain(key: str, domains: tuple[str, ...]) -> bool:
    prefix, slash, _ = key.rpartition("/")
    return bool(slash) and any(prefix == d or prefix.endswith(f".{d}") for d in domains)


def violations(spec: SLMDeploymentSpec, policy: Policy, *, default_image: str) -> list[str]:
    """Each thing `spec` asks for that `policy` forbids, naming the field (empty: allowed)."""
    found: list[str] = []
    image = spec.image or default_image
    if policy.allowed_image_prefixes and not image.startswith(policy.allowed_image_prefixes):
        where = "spec.image" if spec.image else "the operator's runtime image"
        allowed = ", ".join(policy.allowed_image_prefixes)
        found.append(f"{where} {image!r} does not start with an allowed prefix ({allowed})")
    hardware = spec.hardware
    if not policy.allow_control_plane:
        for i, tol in enumerate(hardware.tolerations or ()):
            if tol.operator == "Exists" and not tol.key:
                found.append(
                    f"spec.hardware.tolerations[{i}] tolerates every taint (operator Exists without a "
                    "key), including the control plane's"
                )
            elif tol.key in CONTROL_PLANE_KEYS:
                found.append(f"spec.hardware.tolerations[{i}] tolerates the control-plane taint {tol.key}")
        for key in sorted(hardware.node_selector or {}):
            if key in CONTROL_PLANE_KEYS:
                found.append(f"spec.hardware.nodeSelector[{key}] selects control-plane nodes")
    for key in sorted(spec.pod_annotations or {}):
        if _in_domain(key, policy.denied_annotation_domains):
            domains = ", ".join(policy.denied_annotation_domains)
            found.append(f"spec.podAnnotations[{key}] uses a denied domain ({domains})")
    if not policy.allow_unverified_models:
        found += _unverified(spec)
    return found


def _unverified(spec: SLMDeploymentSpec) -> list[str]:
    model = spec.model
    if model.variants is not None:
        return [
            f"spec.model.variants[{i}].sha256 is required: {v.quantization} is downloaded unverified"
            for i, v in enumerate(model.variants)
            if v.sha256 is None and not v.uri.startswith(GENERATED_SCHEME)
        ]
    if (model.uri_template or "").startswith(GENERATED_SCHEME):
        return []
    sums = model.sha256 or {}
    return [
        f"spec.model.sha256[{q}] is required: {q} is downloaded unverified"
        for q in model.quantizations or ()
        if q not in sums
    ]


def check(spec: SLMDeploymentSpec, policy: Policy, *, default_image: str) -> None:
    """Raise `PolicyError` listing every violation (operators started with
    `--allow-unverified-models` accept variants without a checksum)."""
    found = violations(spec, policy, default_image=default_image)
    if found:
        hint = (
            " (or start the operator with --allow-unverified-models)"
            if any(".sha256" in f for f in found)
            else ""
        )
        raise PolicyError("not allowed by the operator's policy: " + "; ".join(found) + hint)
