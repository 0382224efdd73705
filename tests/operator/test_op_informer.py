"""The informer over a real socket with the real Kubernetes client: list, then watch from the list's
resourceVersion; a 410 Gone or a dropped connection leads to a re-list that drops what was deleted
meanwhile. A small HTTP server on loopback plays the API server's list and watch protocol."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client

from slm_operator.errors import NamespaceTerminatingError
from slm_operator.kube import Informer, Kube, WatchTarget, collection_path
from slm_operator.reconcile.cache import Store, slim_pod
from slm_operator.reconcile.context import OperatorContext
from slm_operator.reconcile.plan import CHILDREN
from slm_operator.reconcile.runner import informers
from slm_operator.settings import Settings

Obj = dict[str, Any]


def _pod(name: str, rv: int) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv), "labels": {}},
        "spec": {"nodeName": "n", "containers": []},
        "status": {"phase": "Running"},
    }


class FakeApi:
    """Scripted answers: lists in order, and for each watch a list of events (or a 410)."""

    def __init__(self) -> None:
        self.lists = [
            {"metadata": {"resourceVersion": "10"}, "items": [_pod("a", 5), _pod("b", 6)]},
            {"metadata": {"resourceVersion": "20"}, "items": [_pod("b", 6), _pod("c", 11), _pod("d", 19)]},
        ]
        self.watches: list[list[Obj] | int] = [
            [{"type": "ADDED", "object": _pod("c", 11)}, {"type": "DELETED", "object": _pod("a", 12)}],
            410,
            [],  # then the watch from 20 stays quiet
        ]
        self.seen: list[dict[str, list[str]]] = []
        self.lock = threading.Lock()


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *_: Any) -> None:
            pass

        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            with api.lock:
                api.seen.append(query)
                watching = query.get("watch") == ["true"]
                answer: Any = (api.watches.pop(0) if api.watches else []) if watching else api.lists.pop(0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if not watching:
                self.wfile.write(json.dumps(answer).encode())
                return
            if answer == 410:
                gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
                self.wfile.write(json.dumps(gone).encode() + b"\n")
                return
            for event in answer:
                self.wfile.write(json.dumps(event).encode() + b"\n")
                self.wfile.flush()
            if not api.watches:
                time.sleep(0.5)  # a quiet watch that the server ends after a while

    return Handler


@pytest.fixture
def fake_api() -> Iterator[tuple[FakeApi, str]]:
    api = FakeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def test_list_watch_gone_relist(fake_api: tuple[FakeApi, str]) -> None:
    api, url = fake_api
    config = client.Configuration(host=url)
    kube = Kube(api_client=client.ApiClient(config))
    store = Store(slim_pod)
    informer = Informer(kube, WatchTarget("/api/v1/pods", field_selector="status.phase!=Failed"), store)
    informer.start()
    try:
        _until(lambda: informer.relists >= 2 and len(store) == 3, "the re-list after 410")
    finally:
        informer.stop()
    assert sorted(p["metadata"]["name"] for p in store.items()) == ["b", "c", "d"]
    first_watch = next(q for q in api.seen if q.get("watch") == ["true"])
    assert first_watch["resourceVersion"] == ["10"] and first_watch["fieldSelector"] == [
        "status.phase!=Failed"
    ]
    assert first_watch["allowWatchBookmarks"] == ["true"]
    counts = kube.requests.snapshot()
    assert counts.get("GET", 0) >= 2 and counts.get("WATCH", 0) >= 2
    assert kube.requests.writes() == 0


def _paths(ctx: OperatorContext) -> list[str]:
    return sorted(i._target.path for i in informers(Kube(), ctx) if isinstance(i, Informer))


def test_namespaced_mode_lists_nothing_cluster_wide_but_nodes() -> None:
    class NoCluster:
        pass

    ctx = OperatorContext(settings=Settings(namespaces=("a", "b"), peering="slm"), cluster=NoCluster())  # type: ignore[arg-type]
    children = [c for c in CHILDREN if not c.optional]
    assert _paths(ctx) == sorted(
        [
            "/api/v1/nodes",
            collection_path("v1", "pods", "a"),
            collection_path("v1", "pods", "b"),
            "/apis/slm.dev/v1alpha1/namespaces/a/slmdeployments",
            "/apis/slm.dev/v1alpha1/namespaces/b/slmdeployments",
            "/apis/kopf.dev/v1/namespaces/a/kopfpeerings",
            "/apis/kopf.dev/v1/namespaces/b/kopfpeerings",
            *(collection_path(c.api_version, c.plural, ns) for c in children for ns in ("a", "b")),
        ]
    )
    wide = OperatorContext(settings=Settings(all_namespaces=True), cluster=NoCluster())  # type: ignore[arg-type]
    assert _paths(wide) == sorted(
        [
            "/api/v1/nodes",
            "/api/v1/pods",
            "/apis/slm.dev/v1alpha1/slmdeployments",
            *(collection_path(c.api_version, c.plural) for c in children),
        ]
    )


def test_child_informers_watch_only_the_operators_children_and_no_optional_kind() -> None:
    class NoCluster:
        pass

    ctx = OperatorContext(settings=Settings(all_namespaces=True), cluster=NoCluster())  # type: ignore[arg-type]
    children = [i for i in informers(Kube(), ctx) if isinstance(i, Informer) and i._target.label_selector]
    assert {i._target.label_selector for i in children} == {"app.kubernetes.io/managed-by=slm-operator"}
    assert not any("inferencepools" in i._target.path for i in children)
    assert len(children) == len([c for c in CHILDREN if not c.optional])


# --- the raw requests of a reconcile -----------------------------------------------------------


class RecordingApi(BaseHTTPRequestHandler):
    """Answers like the API server: apply echoes the body with a resourceVersion, a missing object
    is a 404 Status, a create in the namespace `gone` is refused as terminating."""

    protocol_version = "HTTP/1.0"
    seen: list[tuple[str, str, str, Any]] = []

    def log_message(self, *_: Any) -> None:
        pass

    def _answer(self, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.seen.append((self.command, self.path, str(self.headers.get("Content-Type")), body))
        path = urlsplit(self.path).path
        if "/namespaces/gone/" in path:
            cause = {"reason": "NamespaceTerminating", "message": "namespace gone is being terminated"}
            self._answer(
                403,
                {
                    "kind": "Status",
                    "reason": "Forbidden",
                    "message": "unable to create new content in namespace gone: it is being terminated",
                    "details": {"causes": [cause]},
                    "code": 403,
                },
            )
        elif self.command == "PATCH":
            self._answer(
                200,
                {**(body or {}), "metadata": {**(body or {}).get("metadata", {}), "resourceVersion": "7"}},
            )
        elif self.command == "GET" and path.endswith("/missing"):
            self._answer(404, {"kind": "Status", "reason": "NotFound", "message": "not found", "code": 404})
        else:
            self._answer(200, {"kind": "Status", "status": "Success"})

    def do_GET(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()


def test_requests_go_out_raw_and_errors_keep_the_api_status() -> None:
    RecordingApi.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), RecordingApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kinds = {
        ("apps/v1", "Deployment"): ("deployments", True),
        ("slm.dev/v1alpha1", "SLMDeployment"): ("slmdeployments", True),
    }
    try:
        config = client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
        kube = Kube(api_client=client.ApiClient(config), field_manager="fm", kinds=kinds)
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"replicas": 0},
        }
        applied = kube.apply(deployment)
        assert applied["metadata"]["resourceVersion"] == "7" and applied["spec"] == {"replicas": 0}
        method, path, content_type, sent = RecordingApi.seen[-1]
        assert (method, content_type, sent) == ("PATCH", "application/apply-patch+yaml", deployment)
        assert urlsplit(path).path == "/apis/apps/v1/namespaces/ns/deployments/d"
        assert parse_qs(urlsplit(path).query) == {"fieldManager": ["fm"], "force": ["true"]}
        assert kube.read("apps/v1", "Deployment", "ns", "missing") is None
        kube.patch_status("ns", "m", {"phase": "Ready"})
        method, path, content_type, sent = RecordingApi.seen[-1]
        assert (method, path, content_type) == (
            "PATCH",
            "/apis/slm.dev/v1alpha1/namespaces/ns/slmdeployments/m/status",
            "application/merge-patch+json",
        )
        assert sent == {"status": {"phase": "Ready"}}
        with pytest.raises(NamespaceTerminatingError) as refused:
            kube.apply({**deployment, "metadata": {"name": "d", "namespace": "gone"}})
        assert refused.value.status == 403 and "being terminated" in str(refused.value)
        assert kube.requests.snapshot() == {"PATCH": 3, "GET": 1}
    finally:
        server.shutdown()
        server.server_close()


def test_stop_ends_a_quiet_watch_at_once(fake_api: tuple[FakeApi, str]) -> None:
    """The operator's SIGTERM cleanup stops every informer; a watch that is blocked reading a quiet
    stream must end now, not when the API server ends the stream (up to five minutes)."""
    api, _ = fake_api
    api.lists, api.watches = [{"metadata": {"resourceVersion": "10"}, "items": [_pod("a", 5)]}], [[]]
    server_waits = threading.Event()

    quiet = _handler(api)

    class Quiet(quiet):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if parse_qs(urlsplit(self.path).query).get("watch") == ["true"]:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.flush()
                server_waits.wait(30)  # the API server sends nothing for a long while
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kube = Kube(
        api_client=client.ApiClient(client.Configuration(host=f"http://127.0.0.1:{server.server_address[1]}"))
    )
    informer = Informer(kube, WatchTarget("/api/v1/pods"), Store(slim_pod))
    try:
        informer.start()
        _until(lambda: informer._response is not None, "the watch to start")
        stopping = threading.Thread(target=informer.stop)  # the old stop() blocked in close()
        stopping.start()
        stopping.join(timeout=10)
        assert not stopping.is_alive(), "stop() waits for the quiet watch"
        assert informer._thread is not None
        informer._thread.join(timeout=10)
        assert not informer._thread.is_alive(), "the informer thread still reads the quiet watch"
    finally:
        server_waits.set()
        server.shutdown()
        server.server_close()


def test_kinds_are_discovered_once_even_when_many_threads_ask_at_once() -> None:
    """The DynamicClient's discovery cache is not thread-safe: parallel name checks of a new kind
    (InferencePool, once its CRD appears) raised KeyError 'resources' in the e2e suite."""

    class Discovery:
        """The DynamicClient's `resources`: records calls and whether two ran at once."""

        def __init__(self) -> None:
            self.calls: list[str] = []
            self.inside = self.overlaps = 0
            self.lock = threading.Lock()

        def get(self, *, api_version: str, kind: str) -> Any:
            with self.lock:
                self.inside += 1
                self.overlaps += self.inside > 1
                self.calls.append(kind)
            time.sleep(0.05)
            with self.lock:
                self.inside -= 1
            return type("Resource", (), {"name": "inferencepools", "namespaced": True})()

    class Dynamic:
        resources = Discovery()

    kube = Kube(api_client=client.ApiClient(client.Configuration(host="http://127.0.0.1:9")))
    kube._client = Dynamic  # type: ignore[assignment, method-assign]
    args = ("inference.networking.k8s.io/v1", "InferencePool", "ns", "p")
    threads = [threading.Thread(target=kube._path, args=args) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert Dynamic.resources.calls == ["InferencePool"] and Dynamic.resources.overlaps == 0
    assert kube._path(*args) == "/apis/inference.networking.k8s.io/v1/namespaces/ns/inferencepools/p"
