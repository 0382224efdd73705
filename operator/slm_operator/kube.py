"""The one module that talks to the Kubernetes API (through the official client's DynamicClient).

Everything else receives plain dicts. Errors of the client are mapped once, here, to `KubeError`.
Server-side apply uses the field manager `slm-operator` with `force=true`: the operator owns the
fields it sets, and an edit by someone else is reverted on the next reconcile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

from slm_operator.api import API_VERSION, KIND
from slm_operator.errors import KubeError

Obj = dict[str, Any]
T = TypeVar("T")
FIELD_MANAGER = "slm-operator"


def load_config() -> None:
    """In a pod: the ServiceAccount; elsewhere: $KUBECONFIG or ~/.kube/config."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except DynamicApiError as err:
        raise KubeError(f"{what}: {err.status} {err.reason}: {_summary(err)}", status=err.status) from err
    except client.ApiException as err:
        raise KubeError(f"{what}: {err.status} {err.reason}", status=err.status) from err
    except (OSError, ValueError) as err:
        raise KubeError(f"{what}: {err}") from err


def _summary(err: DynamicApiError) -> str:
    summary = getattr(err, "summary", None)
    return str(summary()) if callable(summary) else str(err)


class Kube:
    """Typed-by-convention access to the few API calls the operator makes."""

    def __init__(
        self, api_client: client.ApiClient | None = None, field_manager: str = FIELD_MANAGER
    ) -> None:
        self._api_client = api_client
        self._field_manager = field_manager
        self._dynamic: DynamicClient | None = None
        self._lock = threading.Lock()

    def _client(self) -> DynamicClient:
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(self._api_client or client.ApiClient())  # type: ignore[no-untyped-call]
            return self._dynamic

    def _resource(self, api_version: str, kind: str) -> Any:
        return self._client().resources.get(api_version=api_version, kind=kind)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with _mapped(what):
            return fn()

    def list_nodes(self) -> list[Obj]:
        nodes = self._call("list nodes", lambda: self._resource("v1", "Node").get())
        return [item.to_dict() for item in nodes.items]

    def list_pods(self) -> list[Obj]:
        """Pods bound to nodes that still hold resources (not Succeeded/Failed), in every namespace."""
        selector = "status.phase!=Succeeded,status.phase!=Failed,spec.nodeName!="
        pods = self._call("list pods", lambda: self._resource("v1", "Pod").get(field_selector=selector))
        return [item.to_dict() for item in pods.items]

    def read_secret(self, namespace: str, name: str) -> Obj | None:
        try:
            with _mapped(f"read secret {namespace}/{name}"):
                secret = self._resource("v1", "Secret").get(name=name, namespace=namespace)
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return dict(secret.to_dict())

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply `obj`; returns the object as the server now has it."""
        meta = obj["metadata"]
        what = f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}"
        resource = self._call(what, lambda: self._resource(obj["apiVersion"], obj["kind"]))
        result = self._call(
            what,
            lambda: self._client().server_side_apply(  # type: ignore[no-untyped-call]
                resource, body=obj, field_manager=self._field_manager, force_conflicts=True
            ),
        )
        return dict(result.to_dict())

    def list_labelled(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Obj]:
        what = f"list {kind} in {namespace}"
        resource = self._call(what, lambda: self._resource(api_version, kind))
        items = self._call(what, lambda: resource.get(namespace=namespace, label_selector=selector))
        return [dict(item.to_dict(), apiVersion=api_version, kind=kind) for item in items.items]

    def read(self, api_version: str, kind: str, namespace: str, name: str) -> Obj | None:
        """One child as the server has it now, or None when it does not exist."""
        what = f"get {kind} {namespace}/{name}"
        resource = self._call(what, lambda: self._resource(api_version, kind))
        try:
            with _mapped(what):
                found = resource.get(name=name, namespace=namespace)
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return dict(found.to_dict(), apiVersion=api_version, kind=kind)

    def delete(self, obj: Obj) -> None:
        meta = obj["metadata"]
        what = f"delete {obj['kind']} {meta.get('namespace')}/{meta['name']}"
        resource = self._call(what, lambda: self._resource(obj["apiVersion"], obj["kind"]))
        try:
            with _mapped(what):
                resource.delete(
                    name=meta["name"], namespace=meta.get("namespace"), propagation_policy="Background"
                )
        except KubeError as err:
            if err.status != 404:
                raise

    def get_slmdeployment(self, namespace: str, name: str) -> Obj | None:
        resource = self._call("discover SLMDeployment", lambda: self._resource(API_VERSION, KIND))
        try:
            with _mapped(f"get SLMDeployment {namespace}/{name}"):
                found = resource.get(name=name, namespace=namespace)
        except KubeError as err:
            if err.status == 404:
                return None
            raise
        return dict(found.to_dict())

    def list_slmdeployments(self, namespace: str | None = None) -> list[Obj]:
        resource = self._call("discover SLMDeployment", lambda: self._resource(API_VERSION, KIND))
        found = self._call("list SLMDeployments", lambda: resource.get(namespace=namespace))
        return [item.to_dict() for item in found.items]

    def post_event(self, involved: Obj, type: str, reason: str, message: str, timestamp: str) -> None:
        """Create a core/v1 Event about `involved` (what kopf.event does, for code outside a handler)."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "type": type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": self._field_manager},
            "reportingComponent": self._field_manager,
            "reportingInstance": self._field_manager,
            "firstTimestamp": timestamp,
            "lastTimestamp": timestamp,
            "count": 1,
        }
        resource = self._call("discover Event", lambda: self._resource("v1", "Event"))
        self._call(f"post event {reason}", lambda: resource.create(body=event, namespace=namespace))

    def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        """JSON merge patch of the status subresource (lists such as conditions are replaced whole)."""
        resource = self._call("discover SLMDeployment", lambda: self._resource(API_VERSION, KIND))
        try:
            with _mapped(f"patch status of SLMDeployment {namespace}/{name}"):
                self._client().patch(  # type: ignore[no-untyped-call]
                    resource.status,
                    body={"status": status},
                    name=name,
                    namespace=namespace,
                    content_type="application/merge-patch+json",
                )
        except KubeError as err:
            if err.status != 404:  # deleted meanwhile: nothing to report on
                raise


__all__ = ["FIELD_MANAGER", "Kube", "NotFoundError", "load_config"]
