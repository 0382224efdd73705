"""The model Deployment (fetch init container + runtime container), its ServiceAccount and cache PVC.

Pods meet the `restricted` Pod Security Standard: non-root uid 10001, read-only root filesystem
(a writable emptyDir at /tmp), no privilege escalation, all capabilities dropped, RuntimeDefault
seccomp, and no service account token (the runtime never talks to the API server).
Rollouts: on cpu a new pod surges before an old one goes (maxSurge 1, maxUnavailable 0); on an
accelerator, where a spare device is rarely free, an old pod goes first (maxSurge 0, maxUnavailable 1).
When autoscaling is enabled `spec.replicas` is omitted so that the operator never fights the HPA.
"""

from __future__ import annotations

from typing import Any

from slm_operator.render.config import config_hash, provider_chain
from slm_operator.render.context import (
    AUTH_DIR,
    CONFIG_DIR,
    CONFIG_FILE,
    CONFIG_HASH_ANNOTATION,
    METRICS_PORT,
    MODELS_DIR,
    RUNTIME_PORT,
    RenderContext,
    is_archive,
)
from slm_operator.render.metadata import object_meta, selector_labels, standard_labels

RUN_AS = 10001
FETCH_RESOURCES = {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}


def container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probe(path: str, *, period: int, failures: int, timeout: int = 3) -> dict[str, Any]:
    # The metrics port, not the API port: beyond limits.maxConnections the API port answers 503
    # to everything, so a client connection flood would fail the probes (restart, or out of the
    # Service). The runtime serves /healthz and /readyz on both; the probe port has its own bound.
    # The kubelet probes from the node, which NetworkPolicy enforcers let through.
    return {
        "httpGet": {"path": path, "port": "metrics"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _fetch_container(ctx: RenderContext) -> dict[str, Any]:
    variant = ctx.placement.variant
    args = ["fetch", "--uri", variant.uri]
    if variant.sha256:
        args += ["--sha256", variant.sha256.lower()]
    if ctx.spec.cache.size:  # the fetch stops at what the cache can hold (an endless download)
        args += ["--max-bytes", str(ctx.spec.cache.size)]
    args += ["--dest", ctx.model_path]
    if is_archive(variant.uri):
        args.append("--extract")
    elif variant.format == "onnx" and variant.uri.startswith("hf://"):
        args.append("--folder")  # an ONNX model on the hub is a folder: fetched file by file
    container: dict[str, Any] = {
        "name": "fetch-model",
        # The last log line ("sha256 mismatch: ...") becomes the termination message, which the
        # operator copies into the Ready condition when the fetch fails.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "image": ctx.image,
        "command": ["slm-runtime"],
        "args": args,
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": FETCH_RESOURCES,
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if ctx.spec.image_pull_policy:
        container["imagePullPolicy"] = ctx.spec.image_pull_policy
    return container


PROVIDER_CONTAINER = "select-provider"


def _provider_container(ctx: RenderContext, runtime: dict[str, Any]) -> dict[str, Any]:
    """ONNX on an accelerator: open the model on the configured execution providers (falling back
    to CPU) and write which one loaded it to the termination message, where the operator reads a
    fallback (runtime pods have no API access, so this is their only channel to the status).
    It holds the same resources as the runtime container; Kubernetes reuses them after it exits."""
    container = {
        key: runtime[key]
        for key in ("image", "command", "env", "resources", "securityContext", "volumeMounts")
    }
    container |= {
        "name": PROVIDER_CONTAINER,
        "args": ["select-provider", "--config", CONFIG_FILE, "--model", ctx.model_path],
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if "imagePullPolicy" in runtime:
        container["imagePullPolicy"] = runtime["imagePullPolicy"]
    return container


def _runtime_container(ctx: RenderContext) -> dict[str, Any]:
    placement = ctx.placement
    mounts = [
        {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if ctx.spec.auth is not None:
        mounts.append({"name": "api-keys", "mountPath": AUTH_DIR, "readOnly": True})
    resources: dict[str, Any] = {"requests": dict(placement.requests)}
    if placement.limits:
        resources["limits"] = dict(placement.limits)
    container: dict[str, Any] = {
        "name": "runtime",
        "image": ctx.image,
        "command": ["slm-runtime"],
        "args": ["serve", "--config", CONFIG_FILE, "--model", ctx.model_path],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "ports": [
            {"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "resources": resources,
        "startupProbe": _probe("/healthz", period=5, failures=120),
        "readinessProbe": _probe("/readyz", period=5, failures=3),
        "livenessProbe": _probe("/healthz", period=10, failures=3, timeout=5),
        # Endpoints controllers and kube-proxy need a moment to drop a terminating pod; until then
        # new requests still arrive. Sleeping before SIGTERM lets them go elsewhere, and the
        # runtime then drains what it has (drainSeconds 30 + 5 < terminationGracePeriodSeconds 45).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}},
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
    }
    if ctx.spec.image_pull_policy:
        container["imagePullPolicy"] = ctx.spec.image_pull_policy
    return container


def _volumes(ctx: RenderContext) -> list[dict[str, Any]]:
    cache = ctx.spec.cache
    models: dict[str, Any] = {"name": "models"}
    if cache.type == "pvc":
        models["persistentVolumeClaim"] = {"claimName": ctx.cache_claim_name}
    else:
        models["emptyDir"] = {"sizeLimit": cache.size} if cache.size else {}
    volumes = [
        models,
        {"name": "config", "configMap": {"name": ctx.config_map_name}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
    ]
    if ctx.spec.auth is not None:
        ref = ctx.spec.auth.api_key_secret_ref
        volumes.append(
            {
                "name": "api-keys",
                "secret": {
                    "secretName": ref.name,
                    "items": [{"key": ref.key, "path": ref.key}],
                    "defaultMode": 0o440,
                },
            }
        )
    return volumes


def _spread(name: str) -> list[dict[str, Any]]:
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(name)},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def _pod_spec(ctx: RenderContext) -> dict[str, Any]:
    placement = ctx.placement
    runtime = _runtime_container(ctx)
    init = [_fetch_container(ctx)]
    if provider_chain(ctx):
        init.append(_provider_container(ctx, runtime))
    pod: dict[str, Any] = {
        "serviceAccountName": ctx.name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": 45,
        "initContainers": init,
        "containers": [runtime],
        "volumes": _volumes(ctx),
        "topologySpreadConstraints": _spread(ctx.name),
    }
    if placement.node_selector:
        pod["nodeSelector"] = dict(placement.node_selector)
    if placement.node_affinity:
        pod["affinity"] = {"nodeAffinity": placement.node_affinity}
    if placement.tolerations:
        pod["tolerations"] = [dict(t) for t in placement.tolerations]
    return pod


def _strategy(ctx: RenderContext) -> dict[str, Any]:
    if ctx.placement.resource_name:
        rolling = {"maxSurge": 0, "maxUnavailable": 1}
    else:
        rolling = {"maxSurge": 1, "maxUnavailable": 0}
    return {"type": "RollingUpdate", "rollingUpdate": rolling}


def build_deployment(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    annotations = {**(spec.pod_annotations or {}), CONFIG_HASH_ANNOTATION: config_hash(ctx)}
    labels = {**(spec.pod_labels or {}), **standard_labels(ctx.name)}
    deployment_spec: dict[str, Any] = {}
    if not spec.autoscaled:
        deployment_spec["replicas"] = spec.replicas
    deployment_spec |= {
        "revisionHistoryLimit": 3,
        "selector": {"matchLabels": selector_labels(ctx.name)},
        "strategy": _strategy(ctx),
        "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": _pod_spec(ctx)},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(ctx),
        "spec": deployment_spec,
    }


def build_service_account(ctx: RenderContext) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(ctx),
        "automountServiceAccountToken": False,
    }


def build_cache_claim(ctx: RenderContext) -> dict[str, Any] | None:
    """The model cache PVC (cache.type=pvc). ReadWriteMany once more than one pod may share it."""
    cache = ctx.spec.cache
    if cache.type != "pvc":
        return None
    shared = ctx.spec.autoscaled or ctx.spec.replicas > 1
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany" if shared else "ReadWriteOnce"],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name:
        spec["storageClassName"] = cache.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(ctx, ctx.cache_claim_name),
        "spec": spec,
    }
