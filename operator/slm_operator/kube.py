"""The one module that talks to the Kubernetes API (through the official client's DynamicClient).

Everything else receives plain dicts. Errors of the client are mapped once, here, to `KubeError`.
Server-side apply uses the field manager `slm-operator` with `force=true`: the operator owns the
fields it sets, and an edit by someone else is reverted on the next reconcile.

Requests go out raw (`raw_request`: our own JSON in, `json.loads` out) rather than through the
DynamicClient's `ResourceInstance` wrappers, whose per-request discovery search and recursive
(de)serialisation were most of the operator's CPU in a burst of creates; the DynamicClient is kept
for discovery only (a kind's plural and scope, looked up once per kind).

`Informer` keeps a `reconcile.cache.Store` current with one list and then one long watch (resumed
from the last resourceVersion, re-listed after a 410 Gone or a lost connection, with a short capped
backoff so that the caches are fresh within seconds of the API server's return). Every HTTP request
this module makes is counted by verb (`Kube.requests`), which the operator exports as
`slm_operator_api_requests_total`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError

from slm_operator.api import API_VERSION, KIND
from slm_operator.errors import KubeError, NamespaceTerminatingError

Obj = dict[str, Any]
T = TypeVar("T")
FIELD_MANAGER = "slm-operator"
HANDOVER_SUFFIX = "-handover"
"""`FIELD_MANAGER` + this: the field manager of `Kube.hand_over` (see `autoscale.handover`)."""
AUTOSCALER_SUFFIX = "-autoscaler"
"""`FIELD_MANAGER` + this: the field manager of `Kube.scale`, the operator's own autoscaler."""
log = logging.getLogger("slm_operator.kube")


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
    except KubeError as err:
        raise type(err)(f"{what}: {err}", status=err.status) from err
    except client.ApiException as err:
        mapped = api_error(int(err.status or 0), str(err.reason), getattr(err, "body", None))
        raise type(mapped)(f"{what}: {mapped}", status=err.status) from err
    except (OSError, ValueError, urllib3.exceptions.HTTPError) as err:
        # connection refused / reset, timeouts, MaxRetryError while the API server is away
        raise KubeError(f"{what}: {err}") from err


def _summary(err: DynamicApiError) -> str:
    summary = getattr(err, "summary", None)
    return str(summary()) if callable(summary) else str(err)


class Kube:
    """Typed-by-convention access to the few API calls the operator makes."""

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        field_manager: str = FIELD_MANAGER,
        *,
        connections: int = 20,
        kinds: Mapping[tuple[str, str], tuple[str, bool]] | None = None,
    ) -> None:
        """`kinds`: (apiVersion, kind) -> (plural, namespaced) known in advance (else discovered
        once per kind)."""
        self._api_client = api_client
        self._watch_client: client.ApiClient | None = api_client
        self._field_manager = field_manager
        self._connections = connections
        self._dynamic: DynamicClient | None = None
        self._lock = threading.Lock()
        self._discovery_lock = threading.RLock()
        """One discovery at a time: the DynamicClient's cache is not thread-safe (two threads
        refreshing it at once raised KeyError 'resources' in the e2e suite)."""
        self._kinds: dict[tuple[str, str], tuple[str, bool]] = dict(kinds or {})
        self.requests = RequestCounter()
        self.watch_connections = 8
        """Connections the informers' client keeps: one per informer (set before they start)."""

    def _new_client(self, connections: int) -> client.ApiClient:
        """A client on the loaded configuration with a pool of `connections` kept connections
        (the default, 5 per CPU, would open a new TLS connection for each request beyond it)."""
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = max(connections, 1)
        return client.ApiClient(configuration)

    def watch_client(self) -> client.ApiClient:
        """The informers' own client: their long watches never take the reconciles' connections."""
        with self._lock:
            if self._watch_client is None:
                self._watch_client = self._new_client(self.watch_connections)
            if not getattr(self._watch_client, "_slm_counted", False):
                self.requests.wrap(self._watch_client)
            return self._watch_client

    def api_client(self) -> client.ApiClient:
        """The client every request goes through, counting its requests by verb."""
        with self._lock:
            if self._api_client is None:
                self._api_client = self._new_client(self._connections)
            if not getattr(self._api_client, "_slm_counted", False):
                self.requests.wrap(self._api_client)
            return self._api_client

    def _client(self) -> DynamicClient:
        api = self.api_client()
        with self._lock:
            if self._dynamic is None:
                self._dynamic = DynamicClient(api)  # type: ignore[no-untyped-call]
            return self._dynamic

    def _resource(self, api_version: str, kind: str) -> Any:
        with self._discovery_lock:
            return self._client().resources.get(api_version=api_version, kind=kind)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        with _mapped(what):
            return fn()

    def _path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        """The URL path of a kind's collection (or of one object): its plural and scope come from
        discovery once per kind, not per request."""
        found = self._kinds.get((api_version, kind))
        if found is None:
            with self._discovery_lock:
                found = self._kinds.get((api_version, kind))
                if found is None:
                    resource = self._call(f"discover {kind}", lambda: self._resource(api_version, kind))
                    found = (str(resource.name), bool(resource.namespaced))
                    self._kinds[(api_version, kind)] = found
        plural, namespaced = found
        path = collection_path(api_version, plural, namespace if namespaced else None)
        return f"{path}/{name}" if name else path

    def _send(
        self,
        what: str,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Obj | None = None,
        content_type: str = "application/json",
        missing_ok: bool = False,
    ) -> Obj | None:
        """One request; the decoded JSON answer (None for a 404 when `missing_ok`)."""
        try:
            with _mapped(what):
                data = raw_request(
                    self.api_client(),
                    method,
                    path,
                    query=query or [],
                    body=body,
                    content_type=content_type,
                    timeout=(10, 60),
                )
        except KubeError as err:
            if missing_ok and err.status == 404:
                return None
            raise
        found = json.loads(data) if data else None
        return found if isinstance(found, dict) else None

    def _object(self, what: str, found: Obj | None, api_version: str, kind: str) -> Obj:
        if found is None:
            raise KubeError(f"{what}: empty answer")
        found.setdefault("apiVersion", api_version)
        found.setdefault("kind", kind)
        return found

    def list_nodes(self) -> list[Obj]:
        return self.list_labelled("v1", "Node", None, "")

    def list_pods(self) -> list[Obj]:
        """Pods bound to nodes that still hold resources (not Succeeded/Failed), in every namespace."""
        selector = "status.phase!=Succeeded,status.phase!=Failed,spec.nodeName!="
        found = self._send(
            "list pods", "GET", self._path("v1", "Pod", None), query=[("fieldSelector", selector)]
        )
        return list((found or {}).get("items") or [])

    def read_secret(self, namespace: str, name: str) -> Obj | None:
        what = f"read secret {namespace}/{name}"
        return self._send(what, "GET", self._path("v1", "Secret", namespace, name), missing_ok=True)

    def apply(self, obj: Obj) -> Obj:
        """Server-side apply `obj`; returns the object as the server now has it."""
        meta = obj["metadata"]
        what = f"apply {obj['kind']} {meta.get('namespace')}/{meta['name']}"
        path = self._path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        found = self._send(
            what,
            "PATCH",
            path,
            query=[("fieldManager", self._field_manager), ("force", "true")],
            body=obj,
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )
        return self._object(what, found, obj["apiVersion"], obj["kind"])

    def hand_over(self, obj: Obj) -> bool:
        """Server-side apply `obj` under the hand-over field manager, without force.

        See `slm_operator.autoscale.handover`; the manager is this client's own plus `-handover`.

        False when another manager owns a field of `obj` with a different value (409): it is
        no longer the operator's to hand over."""
        meta = obj["metadata"]
        what = f"hand over {obj['kind']} {meta.get('namespace')}/{meta['name']}"
        resource = self._call(what, lambda: self._resource(obj["apiVersion"], obj["kind"]))
        try:
            with _mapped(what):
                self._client().server_side_apply(  # type: ignore[no-untyped-call]
                    resource,
                    body=obj,
                    field_manager=self._field_manager + HANDOVER_SUFFIX,
                    force_conflicts=False,
                )
        except KubeError as err:
            if err.status != 409:
                raise
            log.info("%s: %s", what, err)
            return False
        return True

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Set a Deployment's replica count through its scale subresource, as the autoscaler.

        An update of the subresource under its own field manager (as the HPA does): the
        Deployment's managedFields show who set `spec.replicas`, and the operator's apply (which
        leaves the field out while autoscaled) never contends with it."""
        what = f"scale Deployment {namespace}/{name} to {replicas}"
        resource = self._call(what, lambda: self._resource("apps/v1", "Deployment"))
        self._call(
            what,
            lambda: self._client().patch(  # type: ignore[no-untyped-call]
                resource.scale,
                body={"spec": {"replicas": replicas}},
                name=name,
                namespace=namespace,
                content_type="application/merge-patch+json",
                field_manager=self._field_manager + AUTOSCALER_SUFFIX,
            ),
        )

    def list_labelled(self, api_version: str, kind: str, namespace: str | None, selector: str) -> list[Obj]:
        """Objects with the label `selector` in `namespace` (None: in every namespace)."""
        what = f"list {kind} in {namespace or 'all namespaces'}"
        query = [("labelSelector", selector)] if selector else []
        found = self._send(what, "GET", self._path(api_version, kind, namespace), query=query)
        return [dict(item, apiVersion=api_version, kind=kind) for item in (found or {}).get("items") or ()]

    def read(
        self, api_version: str, kind: str, namespace: str, name: str, *, cached: bool = False
    ) -> Obj | None:
        """One child as the server has it now, or None when it does not exist.

        `cached`: from the API server's watch cache (`resourceVersion=0`) rather than a quorum
        read of etcd: the name check before a first apply asks whether an object exists at all,
        and a watch cache a moment behind answers that as well as etcd (the apply follows anyway)."""
        what = f"get {kind} {namespace}/{name}"
        query = [("resourceVersion", "0")] if cached else None
        path = self._path(api_version, kind, namespace, name)
        found = self._send(what, "GET", path, query=query, missing_ok=True)
        return None if found is None else self._object(what, found, api_version, kind)

    def delete(self, obj: Obj) -> None:
        meta = obj["metadata"]
        what = f"delete {obj['kind']} {meta.get('namespace')}/{meta['name']}"
        path = self._path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        self._send(what, "DELETE", path, body=body, missing_ok=True)

    def read_crd(self, name: str) -> Obj | None:
        """The CustomResourceDefinition `name` (None: there is none), read from the API server now.

        A LIST by name, not a GET: kopf's RBAC already grants list on CRDs (`slm_operator.rbac`),
        and the answer is as fresh as a GET's. Used for optional children such as InferencePools."""
        found = self._send(
            f"read CRD {name}",
            "GET",
            collection_path("apiextensions.k8s.io/v1", "customresourcedefinitions", None),
            query=[("fieldSelector", f"metadata.name={name}")],
        )
        items = (found or {}).get("items") or []
        return next((item for item in items if (item.get("metadata") or {}).get("name") == name), None)

    def get_slmdeployment(self, namespace: str, name: str) -> Obj | None:
        what = f"get SLMDeployment {namespace}/{name}"
        found = self._send(what, "GET", self._path(API_VERSION, KIND, namespace, name), missing_ok=True)
        return None if found is None else self._object(what, found, API_VERSION, KIND)

    def list_slmdeployments(self, namespace: str | None = None) -> list[Obj]:
        found = self._send("list SLMDeployments", "GET", self._path(API_VERSION, KIND, namespace))
        return [dict(item, apiVersion=API_VERSION, kind=KIND) for item in (found or {}).get("items") or ()]

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
        self._send(f"post event {reason}", "POST", self._path("v1", "Event", namespace), body=event)

    def patch_status(self, namespace: str, name: str, status: Obj) -> Obj | None:
        """JSON merge patch of the status subresource (lists such as conditions are replaced whole).

        Returns the SLMDeployment as the patch left it (None when it is gone), which the caller
        writes through into its cache."""
        what = f"patch status of SLMDeployment {namespace}/{name}"
        found = self._send(
            what,
            "PATCH",
            self._path(API_VERSION, KIND, namespace, name) + "/status",
            body={"status": status},
            content_type="application/merge-patch+json",
            missing_ok=True,  # deleted meanwhile: nothing to report on
        )
        return None if found is None else self._object(what, found, API_VERSION, KIND)


WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RequestCounter:
    """HTTP requests of one client by verb (`WATCH` for a watch, else the HTTP method)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._listeners: list[Callable[[str], None]] = []

    def add(self, verb: str) -> None:
        with self._lock:
            self._counts[verb] = self._counts.get(verb, 0) + 1
        for listener in self._listeners:
            listener(verb)

    def listen(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def writes(self) -> int:
        with self._lock:
            return sum(n for verb, n in self._counts.items() if verb in WRITE_VERBS)

    def wrap(self, api_client: client.ApiClient) -> None:
        """Count every request `api_client` makes (the DynamicClient's and the informers')."""
        rest: Any = api_client.rest_client  # untyped in some client versions, typed in others
        original = rest.request

        def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            query = kwargs.get("query_params") or ()
            watching = "watch=true" in str(url) or any(
                k == "watch" and str(v).lower() in ("1", "true") for k, v in query
            )
            self.add("WATCH" if watching else str(method).upper())
            return original(method, url, *args, **kwargs)

        rest.request = counted
        api_client._slm_counted = True  # type: ignore[attr-defined]


def raw_request(
    api_client: client.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]],
    body: Obj | None,
    content_type: str,
    timeout: tuple[float, float],
) -> bytes:
    """One request with a JSON body (a plain dict); the answer's bytes, undecoded.

    Bypasses the client's model (de)serialisation, which walks every object recursively. A non-2xx
    answer raises `client.ApiException` (mapped by the caller). Works with both generations of the
    client's transport (`call_api(path, ...)` before 35, `param_serialize` + `call_api(method,
    url, ...)` since)."""
    headers = {"Accept": "application/json", "Content-Type": content_type}
    api: Any = api_client  # two transport generations with different signatures
    if hasattr(api, "param_serialize"):
        # body given to call_api, not param_serialize: the transport json.dumps it (JSON and
        # structured-YAML content types alike) without the model walk
        method, url, header_params, _, _ = api.param_serialize(
            method, path, query_params=query, header_params=headers, auth_settings=["BearerToken"]
        )
        response = api.call_api(method, url, header_params=header_params, body=body, _request_timeout=timeout)
        payload = bytes(response.read() or b"")
        if not 200 <= response.status <= 299:
            raise api_error(int(response.status), str(response.reason), payload)
        return payload
    # the old transport encodes only JSON content types itself; apply-patch+yaml goes as text
    data: Any = body if body is None or "json" in content_type else json.dumps(body)
    response = api.call_api(
        path,
        method,
        query_params=query,
        header_params=headers,
        body=data,
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
        _request_timeout=timeout,
    )
    return bytes(response.data or b"")


def api_error(status: int, reason: str, payload: bytes | str | None) -> KubeError:
    """The error for a non-2xx answer, from the API's `Status` body when it has one."""
    try:
        body = json.loads(payload or b"{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or reason)
    causes = {str(c.get("reason") or c.get("type")) for c in (body.get("details") or {}).get("causes") or ()}
    text = f"{status} {body.get('reason') or reason}: {message}"
    if "NamespaceTerminating" in causes:
        return NamespaceTerminatingError(text, status=status)
    return KubeError(text, status=status)


def raw_get(
    api_client: client.ApiClient, path: str, query: list[tuple[str, str]], timeout: tuple[float, float]
) -> Any:
    """GET `path` without deserialising: the urllib3 response, to read or stream JSON from.

    Works with both generations of the client's transport (`call_api(path, ...)` before 35,
    `param_serialize` + `call_api(method, url, ...)` since)."""
    headers = {"Accept": "application/json"}
    api: Any = api_client  # two transport generations with different signatures
    if hasattr(api, "param_serialize"):
        method, url, header_params, _, _ = api.param_serialize(
            "GET", path, query_params=query, header_params=headers, auth_settings=["BearerToken"]
        )
        response = api.call_api(method, url, header_params=header_params, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            body = response.read()
            raise KubeError(
                f"GET {path}: {response.status} {response.reason}: {body[:200]!r}", response.status
            )
        return response.response
    with _mapped(f"GET {path}"):
        return api.call_api(
            path,
            "GET",
            query_params=query,
            header_params=headers,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
            _request_timeout=timeout,
        )


class Sink(Protocol):
    """Where an informer puts what it lists and watches (`reconcile.cache.Store`)."""

    def replace(self, objects: list[Obj], namespace: str | None = None) -> None: ...
    def upsert(self, obj: Mapping[str, Any]) -> None: ...
    def remove(self, obj: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class WatchTarget:
    """One collection to list and watch: its URL path and selectors."""

    path: str
    label_selector: str | None = None
    field_selector: str | None = None
    namespace: str | None = None
    """Set for a namespaced path: a re-list replaces only this namespace's part of the store."""

    def query(self, **extra: str) -> list[tuple[str, str]]:
        params = [("labelSelector", self.label_selector), ("fieldSelector", self.field_selector)]
        return [(k, v) for k, v in params if v] + list(extra.items())


def collection_path(api_version: str, plural: str, namespace: str | None = None) -> str:
    """`/api/v1/pods`, `/api/v1/namespaces/ns/pods`, `/apis/slm.dev/v1alpha1/...`."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"


class _GoneError(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Informer:
    """List once, then watch (in a daemon thread), keeping `sink` equal to the server's state."""

    def __init__(
        self,
        kube: Kube,
        target: WatchTarget,
        sink: Sink,
        *,
        watch_seconds: int = 300,
        max_backoff: float = 2.0,
        page_size: int = 500,
    ) -> None:
        self._kube = kube
        self._target = target
        self._sink = sink
        self._watch_seconds = watch_seconds
        self._max_backoff = max_backoff
        self._page_size = page_size
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None
        self.relists = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"informer {self._target.path}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the watch now: the socket is shut down, which wakes the thread blocked reading it.

        Not `response.close()`: with TLS that waits for the SSL object's lock, held by the thread
        blocked in the read, so the operator hung on SIGTERM until the watch's own timeout (seen
        in the e2e suite: kopf's cleanup stuck in `HTTPResponse._close_conn`)."""
        self._stop.set()
        sock = _socket_of(self._response)
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _run(self) -> None:
        backoff = 0.1
        version: str | None = None
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list()
                    self.relists += 1
                version = self._watch(version)
                backoff = 0.1
            except _GoneError:
                version = None
            except Exception as err:
                if self._stop.is_set():
                    return
                log.info("watch %s: %s (retrying in %.1fs)", self._target.path, err, backoff)
                self._stop.wait(backoff)
                backoff = min(self._max_backoff, backoff * 2)

    def _get(self, query: list[tuple[str, str]], timeout: tuple[float, float]) -> Any:
        return raw_get(self._kube.watch_client(), self._target.path, query, timeout)

    def _list(self) -> str:
        items: list[Obj] = []
        token = ""
        while True:
            extra = {"limit": str(self._page_size)}
            if token:
                extra["continue"] = token
            response = self._get(self._target.query(**extra), (10, 60))
            page = json.loads(response.data)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                break
        self._sink.replace(items, self._target.namespace)
        return str(meta.get("resourceVersion") or "")

    def _watch(self, version: str) -> str:
        query = self._target.query(
            watch="true",
            resourceVersion=version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(self._watch_seconds),
        )
        response = self._get(query, (10, self._watch_seconds + 30))
        self._response = response
        try:
            for line in _lines(response):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _GoneError()
                    raise KubeError(f"watch {self._target.path}: {obj.get('message')}", obj.get("code"))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                if kind in ("ADDED", "MODIFIED"):
                    self._sink.upsert(obj)
                elif kind == "DELETED":
                    self._sink.remove(obj)
        finally:
            self._response = None
            response.release_conn()
        return version


def _socket_of(response: Any) -> socket.socket | None:
    """The socket a streamed urllib3 response reads from: its connection's while the connection
    stays open (HTTP/1.1 keep-alive, the API server's watches), else the one http.client handed
    over to the response (a server that closes the connection after the response)."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is None:
        raw = getattr(getattr(getattr(response, "_fp", None), "fp", None), "raw", None)
        sock = getattr(raw, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events of a streamed watch response."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


__all__ = [
    "FIELD_MANAGER",
    "WRITE_VERBS",
    "Informer",
    "Kube",
    "NotFoundError",
    "RequestCounter",
    "WatchTarget",
    "collection_path",
    "load_config",
    "raw_request",
]
