"""Helpers for the operator's end-to-end tests: SLMDeployments, their children, conditions, Events.

Everything that waits takes a deadline (through `wait_for`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml
from kubernetes import client

from ..helpers import REPO_ROOT, wait_deleted, wait_for

GROUP, VERSION, PLURAL, KIND = "slm.dev", "v1alpha1", "slmdeployments", "SLMDeployment"
EXAMPLES = REPO_ROOT / "examples"
DEPLOYMENT_LABEL = "slm.dev/deployment"
CONFIG_HASH = "slm.dev/config-hash"

Obj = dict[str, Any]


def example(name: str) -> Obj:
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    assert isinstance(data, dict)
    return data


def tiny(name: str, **spec: Any) -> Obj:
    """The tiny example (cheap: 250m CPU, tiny:// model) renamed, with top-level spec overrides."""
    body = example("tiny")
    body["metadata"] = {"name": name}
    body["spec"].update(copy.deepcopy(spec))
    return body


def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def create(api: client.ApiClient, namespace: str, body: Mapping[str, Any]) -> Obj:
    obj: Obj = custom(api).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dict(body))
    return obj


def get(api: client.ApiClient, namespace: str, name: str) -> Obj:
    obj: Obj = custom(api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    return obj


def patch_spec(api: client.ApiClient, namespace: str, name: str, spec: Mapping[str, Any]) -> Obj:
    obj: Obj = custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": dict(spec)}
    )
    return obj


def delete(api: client.ApiClient, namespace: str, name: str) -> None:
    custom(api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def condition(obj: Mapping[str, Any], kind: str) -> Obj | None:
    for cond in (obj.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return None


def wait_condition(
    api: client.ApiClient,
    namespace: str,
    name: str,
    kind: str,
    status: str = "True",
    *,
    reason: str | None = None,
    current: bool = True,
    timeout: float = 60,
) -> Obj:
    """Wait until condition `kind` has `status` (and `reason`); with `current`, also for the
    operator to have observed the latest generation. Returns the SLMDeployment."""

    def check() -> Obj | None:
        obj = get(api, namespace, name)
        cond = condition(obj, kind)
        if cond is None or cond.get("status") != status:
            return None
        if reason is not None and cond.get("reason") != reason:
            return None
        generation = obj["metadata"]["generation"]
        if current and (obj.get("status") or {}).get("observedGeneration") != generation:
            return None
        return obj

    return wait_for(
        check, timeout, f"SLMDeployment {namespace}/{name} condition {kind}={status} ({reason or 'any'})"
    )


def deployment(api: client.ApiClient, namespace: str, name: str) -> client.V1Deployment:
    return client.AppsV1Api(api).read_namespaced_deployment(name, namespace)


def children(api: client.ApiClient, namespace: str, name: str) -> dict[str, list[Any]]:
    """The objects labelled as children of SLMDeployment `name`, by kind."""
    selector = f"{DEPLOYMENT_LABEL}={name}"
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    return {
        "Deployment": apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "Service": core.list_namespaced_service(namespace, label_selector=selector).items,
        "ServiceAccount": core.list_namespaced_service_account(namespace, label_selector=selector).items,
        "ConfigMap": core.list_namespaced_config_map(namespace, label_selector=selector).items,
        "NetworkPolicy": client.NetworkingV1Api(api)
        .list_namespaced_network_policy(namespace, label_selector=selector)
        .items,
        "HorizontalPodAutoscaler": client.AutoscalingV2Api(api)
        .list_namespaced_horizontal_pod_autoscaler(namespace, label_selector=selector)
        .items,
        "PodDisruptionBudget": client.PolicyV1Api(api)
        .list_namespaced_pod_disruption_budget(namespace, label_selector=selector)
        .items,
        "PersistentVolumeClaim": core.list_namespaced_persistent_volume_claim(
            namespace, label_selector=selector
        ).items,
    }


def pods(api: client.ApiClient, namespace: str, name: str) -> list[client.V1Pod]:
    selector = f"{DEPLOYMENT_LABEL}={name}"
    items: list[client.V1Pod] = (
        client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    )
    return [p for p in items if p.metadata.deletion_timestamp is None]


def events_for(api: client.ApiClient, namespace: str, kind: str, name: str) -> list[client.CoreV1Event]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    items: list[client.CoreV1Event] = (
        client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=selector).items
    )
    return items


def wait_gone(api: client.ApiClient, namespace: str, name: str, timeout: float = 30) -> None:
    wait_deleted(lambda: get(api, namespace, name), timeout, f"SLMDeployment {namespace}/{name}")
