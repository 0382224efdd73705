"""Kubernetes mode: the fleet from SLMDeployments and their EndpointSlices (read-only).

`deployments_from` is the pure mapping (table-tested); `KubeSource` is the thin I/O around it: one
thread per resource runs a watch with the official `kubernetes` client and, after every event,
hands the whole new fleet to the event loop (level-based: the latest picture wins, a lost event
only delays). It reads no Secret: a deployment with `spec.auth` gets the gateway's own upstream key
(slm_gateway.upstream), which its runtime trusts by digest, so the gateway's ServiceAccount needs
no access to Secrets in any namespace (issue 13, item 8).

Priority: `slm.dev/gateway-priority` on the SLMDeployment if set; otherwise from where placement put
it (`status.hardware`: npu 20, gpu 10, cpu 0), so a GPU deployment is preferred over its CPU fallback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from slm_gateway.config import DeploymentConfig

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "slm.dev", "v1alpha1", "slmdeployments"
PRIORITY_ANNOTATION = "slm.dev/gateway-priority"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
_HARDWARE_PRIORITY = {"npu": 20, "gpu": 10, "cpu": 0}

Obj = Mapping[str, Any]


def _priority(slmd: Obj) -> int:
    raw = (slmd.get("metadata", {}).get("annotations") or {}).get(PRIORITY_ANNOTATION)
    if raw is not None:
        try:
            return int(raw)
        except ValueError:
            log.warning("ignoring %s=%r: not an integer", PRIORITY_ANNOTATION, raw)
    hardware = (slmd.get("status") or {}).get("hardware")
    return _HARDWARE_PRIORITY.get(str(hardware), 0)


def ready_urls(slice_: Obj, port_name: str = "http") -> list[str]:
    """`http://ADDRESS:PORT` for each ready endpoint of an EndpointSlice."""
    ports = [p for p in slice_.get("ports") or [] if p.get("port")]
    port = next((p["port"] for p in ports if p.get("name") == port_name), ports[0]["port"] if ports else None)
    if port is None:
        return []
    urls: list[str] = []
    for ep in slice_.get("endpoints") or []:
        conditions = ep.get("conditions") or {}
        if conditions.get("ready") is False or conditions.get("terminating") is True:
            continue
        for address in ep.get("addresses") or []:
            host = f"[{address}]" if ":" in address else address
            urls.append(f"http://{host}:{port}")
    return urls


def deployments_from(slmds: Iterable[Obj], slices: Iterable[Obj]) -> list[DeploymentConfig]:
    """One `DeploymentConfig` per SLMDeployment, with the ready pod URLs of its Service's slices."""
    urls: dict[tuple[str, str], list[str]] = {}
    for s in slices:
        meta = s.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            urls.setdefault((meta.get("namespace", ""), svc), []).extend(ready_urls(s))
    out: list[DeploymentConfig] = []
    for d in slmds:
        meta, spec = d.get("metadata") or {}, d.get("spec") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        model = (spec.get("model") or {}).get("name")
        if not name or not model:
            continue
        out.append(
            DeploymentConfig.model_validate(
                {
                    "name": f"{ns}/{name}",
                    "model": model,
                    "endpoints": sorted(set(urls.get((ns, name), []))),
                    "priority": _priority(d),
                    "capacity": int((spec.get("runtime") or {}).get("parallel", 4)),
                    "gatewayKey": bool(spec.get("auth")),
                }
            )
        )
    return sorted(out, key=lambda dep: dep.name)


def _listers(
    custom: Any, discovery: Any, ns: str, selector: str
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """List functions (also what `watch.stream` calls) for SLMDeployments and EndpointSlices in `ns`."""
    if ns:

        def slmds(**kw: Any) -> Any:
            return custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, **kw)

        def slices(**kw: Any) -> Any:
            return discovery.list_namespaced_endpoint_slice(ns, label_selector=selector, **kw)

    else:

        def slmds(**kw: Any) -> Any:
            return custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kw)

        def slices(**kw: Any) -> Any:
            return discovery.list_endpoint_slice_for_all_namespaces(label_selector=selector, **kw)

    return slmds, slices


class KubeSource:
    """Watches SLMDeployments and EndpointSlices in `namespaces` (all if empty) from threads."""

    def __init__(self, namespaces: list[str], apply: Callable[[list[DeploymentConfig]], None]) -> None:
        self.namespaces = namespaces
        self._apply = apply
        self._slmds: dict[tuple[str, str], Obj] = {}
        self._slices: dict[tuple[str, str], Obj] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.synced = threading.Event()
        self._seen = {"slmd": False, "slices": False}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            # $KUBECONFIG read now: the client reads it once, when first imported
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)  # type: ignore[no-untyped-call]
        self._loop = loop
        custom, discovery = client.CustomObjectsApi(), client.DiscoveryV1Api()
        selector = "app.kubernetes.io/name=slm-runtime"
        for ns in self.namespaces or [""]:
            listers = _listers(custom, discovery, ns, selector)
            for kind, lister, table in (
                ("slmd", listers[0], self._slmds),
                ("slices", listers[1], self._slices),
            ):
                threading.Thread(
                    target=self._watch,
                    args=(kind, lister, table),
                    name=f"watch-{kind}-{ns}",
                    daemon=True,
                ).start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self, kind: str, lister: Callable[..., Any], table: dict[tuple[str, str], Obj]) -> None:
        from kubernetes import client, watch

        api: Any = client.ApiClient()  # untyped: Any keeps mypy's strictness elsewhere
        watcher: Any = watch.Watch
        while not self._stop.is_set():
            try:
                listed = lister()
                items = (
                    listed["items"]
                    if isinstance(listed, dict)
                    else [api.sanitize_for_serialization(i) for i in listed.items]
                )
                version = (
                    listed["metadata"]["resourceVersion"]
                    if isinstance(listed, dict)
                    else listed.metadata.resource_version
                )
                with self._lock:
                    table.clear()
                    for item in items:
                        table[(item["metadata"].get("namespace", ""), item["metadata"]["name"])] = item
                    self._seen[kind] = True
                self._publish()
                for event in watcher().stream(lister, resource_version=version, timeout_seconds=60):
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    item = obj if isinstance(obj, dict) else api.sanitize_for_serialization(obj)
                    ref = (item["metadata"].get("namespace", ""), item["metadata"]["name"])
                    with self._lock:
                        if event["type"] == "DELETED":
                            table.pop(ref, None)
                        else:
                            table[ref] = item
                    self._publish()
            except Exception as exc:  # the API server went away, a 410 Gone: list again
                log.warning("watch of %s failed (%s); listing again", kind, exc.__class__.__name__)
                time.sleep(2)

    def _publish(self) -> None:
        with self._lock:
            if not all(self._seen.values()):
                return
            slmds, slices = list(self._slmds.values()), list(self._slices.values())
        deployments = deployments_from(slmds, slices)
        self.synced.set()
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._apply, deployments)
