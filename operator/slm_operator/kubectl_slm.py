"""`kubectl slm`: a kubectl plugin for SLMDeployments.

    kubectl slm list [-A | -n NS]
    kubectl slm status NAME [-n NS]
    kubectl slm chat NAME "prompt" [--stream] [--api-key KEY] [--url URL]
    kubectl slm logs NAME [-f] [--tail N]

It uses the current kubeconfig context (or `--kubeconfig` / `--context`), or the pod's service
account when it runs inside the cluster. `chat` talks to the OpenAI-compatible endpoint: through
`--url` when given; through the Service's cluster DNS name when running in a pod; otherwise
through a port-forward to one ready runtime pod behind the Service, as `kubectl port-forward
svc/NAME` does.

The formatting and filtering functions at the top are pure (dicts in, text out) and unit-tested in
tests/cli/test_kubectl_slm.py; the `Cluster` class is the only code that talks to the API server.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import select
import socket
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import httpx

GROUP = "slm.dev"
VERSION = "v1alpha1"
PLURAL = "slmdeployments"
KIND = "SLMDeployment"
RUNTIME_CONTAINER = "runtime"
RUNTIME_PORT_NAME = "http"
RUNTIME_PORT = 8080
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
LIST_HEADERS = ("NAMESPACE", "NAME", "MODEL", "HARDWARE", "VARIANT", "READY", "REPLICAS", "ENDPOINT")
NONE = "-"

Obj = Mapping[str, Any]


class KubectlSlmError(Exception):
    """A failure to report to the user as `error: ...` with exit status 1."""


# ---------------------------------------------------------------------------------------------
# Pure helpers: SLMDeployment dicts (as the API server returns them) in, text out.


def _get(obj: Obj, *path: str) -> Any:
    node: Any = obj
    for key in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node


def find_condition(obj: Obj, kind: str) -> Obj | None:
    """The status condition of this type, if the operator has written one."""
    for condition in _get(obj, "status", "conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == kind:
            return condition
    return None


def is_observed(obj: Obj) -> bool:
    """Whether the operator has reconciled the object's current generation."""
    generation = _get(obj, "metadata", "generation")
    observed = _get(obj, "status", "observedGeneration")
    return generation is None or (observed is not None and observed >= generation)


def ready_text(obj: Obj) -> str:
    """READY column: the Ready condition's status, `Unknown` while a new generation is pending."""
    condition = find_condition(obj, "Ready")
    if condition is None:
        return "Unknown"
    status = str(condition.get("status", "Unknown"))
    if status == "True" and not is_observed(obj):
        return "Unknown"
    return status


def variant_text(obj: Obj) -> str:
    variant = _get(obj, "status", "variant") or {}
    parts = [str(variant[key]) for key in ("format", "quantization") if variant.get(key)]
    return "/".join(parts) or NONE


def replicas_text(obj: Obj) -> str:
    """ready/desired, or `zero (idle)` for a model the autoscaler scaled to zero (it wakes on the
    next request at the gateway)."""
    status = obj.get("status") or {}
    if status.get("replicas") is None and status.get("readyReplicas") is None:
        return NONE
    if not status.get("replicas") and (status.get("autoscaling") or {}).get("desiredReplicas") == 0:
        return "zero (idle)"
    return f"{status.get('readyReplicas') or 0}/{status.get('replicas') or 0}"


def autoscaling_text(obj: Obj) -> str | None:
    """The autoscaler line of `kubectl slm status`: desired vs current and why."""
    scaling = (obj.get("status") or {}).get("autoscaling") or {}
    if not scaling:
        return None
    text = f"{scaling.get('currentReplicas')} -> {scaling.get('desiredReplicas')} ({scaling.get('reason')})"
    return f"{text}: {scaling['message']}" if scaling.get("message") else text


@dataclass(frozen=True)
class ListRow:
    """One line of `kubectl slm list`."""

    namespace: str
    name: str
    model: str
    hardware: str
    variant: str
    ready: str
    replicas: str
    endpoint: str

    def cells(self, with_namespace: bool) -> tuple[str, ...]:
        cells = (
            self.namespace,
            self.name,
            self.model,
            self.hardware,
            self.variant,
            self.ready,
            self.replicas,
            self.endpoint,
        )
        return cells if with_namespace else cells[1:]


def summarize(obj: Obj) -> ListRow:
    return ListRow(
        namespace=str(_get(obj, "metadata", "namespace") or NONE),
        name=str(_get(obj, "metadata", "name") or NONE),
        model=str(_get(obj, "spec", "model", "name") or NONE),
        hardware=str(_get(obj, "status", "hardware") or NONE),
        variant=variant_text(obj),
        ready=ready_text(obj),
        replicas=replicas_text(obj),
        endpoint=str(_get(obj, "status", "endpoints", "openai") or NONE),
    )


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, as kubectl prints them."""
    table = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[column]) for row in table) for column in range(len(headers))]
    lines = [
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    return "\n".join(lines) + "\n"


def format_list(objs: Iterable[Obj], with_namespace: bool) -> str:
    rows = sorted((summarize(obj) for obj in objs), key=lambda row: (row.namespace, row.name))
    if not rows:
        return "No SLMDeployments found.\n"
    headers = LIST_HEADERS if with_namespace else LIST_HEADERS[1:]
    return format_table(headers, (row.cells(with_namespace) for row in rows))


def event_time(event: Obj) -> str:
    """The most recent timestamp of an Event (core/v1 or events.k8s.io/v1 shape), RFC 3339."""
    for value in (
        _get(event, "series", "lastObservedTime"),
        event.get("lastTimestamp"),
        event.get("eventTime"),
        event.get("firstTimestamp"),
        _get(event, "metadata", "creationTimestamp"),
    ):
        if value:
            return str(value)
    return ""


def related_events(events: Iterable[Obj], obj: Obj, limit: int = 10) -> list[Obj]:
    """Events about this SLMDeployment (same kind, name and, when known, uid), oldest first."""
    name = _get(obj, "metadata", "name")
    uid = _get(obj, "metadata", "uid")
    mine = []
    for event in events:
        involved = event.get("involvedObject") or event.get("regarding") or {}
        if involved.get("kind") != KIND or involved.get("name") != name:
            continue
        if uid and involved.get("uid") and involved.get("uid") != uid:
            continue  # an earlier object of the same name
        mine.append(event)
    mine.sort(key=event_time)
    return mine[-limit:] if limit > 0 else mine


def parse_time(value: str) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def format_age(value: str, now: dt.datetime) -> str:
    """`45s`, `12m`, `5h`, `3d`: how long ago an RFC 3339 time was, kubectl style."""
    then = parse_time(value) if value else None
    if then is None:
        return "<unknown>"
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_status(obj: Obj, events: Sequence[Obj], now: dt.datetime) -> str:
    """The text of `kubectl slm status NAME`."""
    status = obj.get("status") or {}
    generation = _get(obj, "metadata", "generation")
    observed = status.get("observedGeneration")
    endpoints = status.get("endpoints") or {}
    variant = status.get("variant") or {}
    lines = [
        f"Name:        {_get(obj, 'metadata', 'name')}",
        f"Namespace:   {_get(obj, 'metadata', 'namespace')}",
        f"Model:       {_get(obj, 'spec', 'model', 'name') or NONE}",
        f"Hardware:    {status.get('hardware') or NONE}",
        f"Variant:     {variant_text(obj)}",
    ]
    if variant.get("uri"):
        lines.append(f"  URI:       {variant['uri']}")
    lines += [
        f"Replicas:    {replicas_text(obj)} ready",
        f"Generation:  {generation if generation is not None else NONE} "
        f"(observed {observed if observed is not None else NONE})",
        "Endpoints:",
        f"  OpenAI:    {endpoints.get('openai') or NONE}",
        f"  Ollama:    {endpoints.get('ollama') or NONE}",
    ]
    if status.get("message"):
        lines.append(f"Message:     {status['message']}")
    scaling = autoscaling_text(obj)
    if scaling is not None:
        lines.append(f"Autoscaler:  {scaling}")
    lines.append("Conditions:")
    conditions = status.get("conditions") or []
    if conditions:
        rows = [
            (
                str(c.get("type", "")),
                str(c.get("status", "")),
                str(c.get("reason", "")),
                format_age(str(c.get("lastTransitionTime") or ""), now),
                str(c.get("message", "")),
            )
            for c in conditions
        ]
        lines += [
            "  " + line
            for line in format_table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), rows).splitlines()
        ]
    else:
        lines.append("  <none>")
    lines.append("Events:")
    if events:
        event_rows = [
            (
                format_age(event_time(e), now),
                str(e.get("type", "")),
                str(e.get("reason", "")),
                str(e.get("message") or e.get("note") or "").strip().replace("\n", " "),
            )
            for e in events
        ]
        lines += [
            "  " + line
            for line in format_table(("AGE", "TYPE", "REASON", "MESSAGE"), event_rows).splitlines()
        ]
    else:
        lines.append("  <none>")
    return "\n".join(lines) + "\n"


def openai_base_url(url: str) -> str:
    """`http://host:8080`, `.../v1` or `.../v1/` → `.../v1`."""
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def chat_request(
    model: str,
    prompt: str,
    *,
    stream: bool,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
) -> dict[str, Any]:
    """The body of an OpenAI chat completion request."""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if temperature is not None:
        body["temperature"] = temperature
    return body


def _error_text(payload: Obj) -> str:
    error = payload.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error)
    return str(error)


def stream_deltas(lines: Iterable[str]) -> Iterator[str]:
    """The text deltas of an OpenAI chat completion event stream (`data: {...}` lines)."""
    for raw in lines:
        line = raw.strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, other SSE fields
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        payload = json.loads(data)
        if "error" in payload:
            raise KubectlSlmError(_error_text(payload))
        for choice in payload.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield str(content)


def completion_text(body: Obj) -> str:
    """The assistant's text in a (non-streamed) chat completion response."""
    if "error" in body:
        raise KubectlSlmError(_error_text(body))
    choices = body.get("choices") or []
    if not choices:
        raise KubectlSlmError("the response has no choices")
    return str((choices[0].get("message") or {}).get("content") or "")


def pod_is_ready(pod: Obj) -> bool:
    if _get(pod, "metadata", "deletionTimestamp"):
        return False
    if _get(pod, "status", "phase") != "Running":
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in _get(pod, "status", "conditions") or ()
    )


def pick_ready_pod(pods: Iterable[Obj]) -> Obj | None:
    """A ready pod to port-forward to (the oldest, for stable choices), or None."""
    ready = [pod for pod in pods if pod_is_ready(pod)]
    ready.sort(
        key=lambda pod: (str(_get(pod, "metadata", "creationTimestamp") or ""), _get(pod, "metadata", "name"))
    )
    return ready[0] if ready else None


def container_port(pod: Obj, name: str = RUNTIME_PORT_NAME, default: int = RUNTIME_PORT) -> int:
    """The number of the pod's container port with this name."""
    for container in _get(pod, "spec", "containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == name and port.get("containerPort"):
                return int(port["containerPort"])
    return default


def runtime_selector(name: str) -> str:
    """Label selector of an SLMDeployment's runtime pods."""
    return f"app.kubernetes.io/name=slm-runtime,slm.dev/deployment={name}"


# ---------------------------------------------------------------------------------------------
# I/O: the API server and the model endpoint.


class Cluster:
    """The Kubernetes API, through the official client; the only code here that calls it."""

    def __init__(self, api_client: Any, namespace: str, in_cluster: bool) -> None:
        from kubernetes import client

        self.api_client = api_client
        self.namespace = namespace
        self.in_cluster = in_cluster
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, kubeconfig: str | None, context: str | None) -> Cluster:
        """The current (or named) kubeconfig context; the service account inside a pod."""
        from kubernetes import client
        from kubernetes import config as kube_config

        # The client's config helpers are untyped: use them through Any.
        config: Any = kube_config
        if kubeconfig is None and context is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            with contextlib.suppress(config.ConfigException):
                config.load_incluster_config()
                namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
                namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
                return cls(client.ApiClient(), namespace, in_cluster=True)
        try:
            configuration = client.Configuration()
            config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
            _, active = config.list_kube_config_contexts(config_file=kubeconfig)
        except (config.ConfigException, OSError) as err:
            raise KubectlSlmError(f"cannot load the kubeconfig: {err}") from err
        if context is not None:
            contexts, _ = config.list_kube_config_contexts(config_file=kubeconfig)
            active = next((c for c in contexts if c.get("name") == context), active)
        namespace = str(((active or {}).get("context") or {}).get("namespace") or "default")
        return cls(client.ApiClient(configuration), namespace, in_cluster=False)

    def _plain(self, value: Any) -> Any:
        """A client model as the API's JSON (camelCase keys, RFC 3339 times)."""
        return self.api_client.sanitize_for_serialization(value)

    def _call(self, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, **kwargs)
        except HTTPError as err:
            host = getattr(self.api_client.configuration, "host", "the API server")
            raise KubectlSlmError(f"{what}: cannot reach {host}: {err}") from err
        except ApiException as err:
            reason = str(err.reason)
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                reason = json.loads(err.body or "").get("message") or reason
            raise KubectlSlmError(f"{what}: {reason}") from err

    def list_slmdeployments(self, namespace: str | None) -> list[Obj]:
        if namespace is None:
            result = self._call(
                "listing SLMDeployments", self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL
            )
        else:
            result = self._call(
                "listing SLMDeployments",
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
            )
        items: list[Obj] = list(result.get("items") or [])
        return items

    def get_slmdeployment(self, namespace: str, name: str) -> Obj:
        result: Obj = self._call(
            f"SLMDeployment {namespace}/{name}",
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
        )
        return result

    def events_about(self, obj: Obj) -> list[Obj]:
        namespace = str(_get(obj, "metadata", "namespace"))
        name = str(_get(obj, "metadata", "name"))
        selector = f"involvedObject.kind={KIND},involvedObject.name={name}"
        result = self._call(
            "listing events", self.core.list_namespaced_event, namespace, field_selector=selector
        )
        items: list[Obj] = self._plain(result).get("items") or []
        return items

    def runtime_pods(self, namespace: str, name: str) -> list[Obj]:
        result = self._call(
            "listing runtime pods",
            self.core.list_namespaced_pod,
            namespace,
            label_selector=runtime_selector(name),
        )
        items: list[Obj] = self._plain(result).get("items") or []
        return items

    def service_port(self, namespace: str, name: str) -> int:
        service = self._plain(
            self._call(f"Service {namespace}/{name}", self.core.read_namespaced_service, name, namespace)
        )
        for port in _get(service, "spec", "ports") or ():
            if port.get("name") == RUNTIME_PORT_NAME:
                return int(port["port"])
        return RUNTIME_PORT

    def stream_logs(
        self, namespace: str, pod: str, *, follow: bool, tail: int | None, container: str
    ) -> Iterator[str]:
        """Lines of a pod's log; with follow, until the pod's container stops."""
        response = self._call(
            f"logs of {namespace}/{pod}",
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            container=container,
            follow=follow,
            tail_lines=tail,
            _preload_content=False,
        )
        pending = b""
        try:
            for chunk in response.stream(4096, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", errors="replace")
            if pending:
                yield pending.decode("utf-8", errors="replace")
        finally:
            response.release_conn()

    def port_forward(self, namespace: str, pod: str, port: int) -> PortForward:
        return PortForward(self.core, namespace, pod, port)


class PortForward:
    """A local TCP port relayed to a pod's port through the API server (like `kubectl port-forward`).

    Every accepted local connection opens its own port-forward stream, so that an HTTP client may
    open several connections.
    """

    def __init__(self, core: Any, namespace: str, pod: str, port: int) -> None:
        self._core = core
        self._namespace = namespace
        self._pod = pod
        self._port = port
        self._server: socket.socket | None = None
        self._stopped = threading.Event()

    def __enter__(self) -> int:
        self._server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, name="kubectl-slm port-forward", daemon=True).start()
        port: int = self._server.getsockname()[1]
        return port

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopped.is_set():
            try:
                local, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(local,), daemon=True).start()

    def _relay(self, local: socket.socket) -> None:
        from kubernetes.stream import portforward

        forward = portforward(
            self._core.connect_get_namespaced_pod_portforward,
            self._pod,
            self._namespace,
            ports=str(self._port),
        )
        remote = forward.socket(self._port)
        remote.setblocking(True)
        try:
            _pump(local, remote, self._stopped)
        finally:
            with contextlib.suppress(OSError):
                local.close()
            forward.close()


def _pump(a: Any, b: Any, stopped: threading.Event) -> None:
    """Copy bytes both ways between two sockets until either side closes."""
    peers = {a: b, b: a}
    while not stopped.is_set():
        readable, _, _ = select.select(list(peers), [], [], 0.5)
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            peers[sock].sendall(data)


def _chat(base_url: str, body: dict[str, Any], api_key: str | None, out: TextIO, timeout: float) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = openai_base_url(base_url) + "/chat/completions"
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0)) as http:
            if body.get("stream"):
                with http.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise KubectlSlmError(_http_error(response))
                    for delta in stream_deltas(response.iter_lines()):
                        out.write(delta)
                        out.flush()
                out.write("\n")
            else:
                response = http.post(url, json=body, headers=headers)
                if response.status_code >= 400:
                    raise KubectlSlmError(_http_error(response))
                out.write(completion_text(response.json()) + "\n")
    except httpx.HTTPError as err:
        raise KubectlSlmError(f"{url}: {err}") from err


def _http_error(response: httpx.Response) -> str:
    try:
        detail = _error_text(response.json())
    except ValueError:
        detail = response.text.strip()
    return f"HTTP {response.status_code}: {detail}"


# ---------------------------------------------------------------------------------------------
# Commands


def _cmd_list(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    namespace = None if args.all_namespaces else (args.namespace or cluster.namespace)
    out.write(format_list(cluster.list_slmdeployments(namespace), with_namespace=namespace is None))
    return 0


def _cmd_status(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    namespace = args.namespace or cluster.namespace
    obj = cluster.get_slmdeployment(namespace, args.name)
    events = related_events(cluster.events_about(obj), obj, limit=args.events)
    out.write(format_status(obj, events, dt.datetime.now(dt.UTC)))
    return 0


def _cmd_chat(args: argparse.Namespace, cluster: Cluster | None, out: TextIO) -> int:
    api_key = args.api_key or os.environ.get("SLM_API_KEY") or None
    obj: Obj = {}
    namespace = args.namespace or (cluster.namespace if cluster is not None else "default")
    if cluster is not None:
        obj = cluster.get_slmdeployment(namespace, args.name)
    model = str(args.model or _get(obj, "spec", "model", "name") or args.name)
    body = chat_request(
        model,
        args.prompt,
        stream=args.stream,
        system=args.system,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
    )
    if args.url:
        _chat(args.url, body, api_key, out, args.timeout)
    elif cluster is None:
        raise KubectlSlmError("no cluster and no --url to reach the model")
    elif cluster.in_cluster:
        endpoint = _get(obj, "status", "endpoints", "openai")
        if not endpoint:
            port = cluster.service_port(namespace, args.name)
            endpoint = f"http://{args.name}.{namespace}.svc:{port}/v1"
        _chat(str(endpoint), body, api_key, out, args.timeout)
    else:
        pod = pick_ready_pod(cluster.runtime_pods(namespace, args.name))
        if pod is None:
            raise KubectlSlmError(
                f"SLMDeployment {namespace}/{args.name} has no ready runtime pod "
                f"(see `kubectl slm status {args.name} -n {namespace}`)"
            )
        with cluster.port_forward(
            namespace, str(_get(pod, "metadata", "name")), container_port(pod)
        ) as local:
            _chat(f"http://127.0.0.1:{local}", body, api_key, out, args.timeout)
    return 0


def _cmd_logs(args: argparse.Namespace, cluster: Cluster, out: TextIO) -> int:
    namespace = args.namespace or cluster.namespace
    pods = sorted(str(_get(p, "metadata", "name")) for p in cluster.runtime_pods(namespace, args.name))
    if not pods:
        raise KubectlSlmError(f"SLMDeployment {namespace}/{args.name} has no runtime pods")
    prefix = len(pods) > 1
    lock = threading.Lock()

    def copy(pod: str) -> None:
        for line in cluster.stream_logs(
            namespace, pod, follow=args.follow, tail=args.tail, container=args.container
        ):
            with lock:
                out.write(f"[{pod}] {line}\n" if prefix else line + "\n")
                out.flush()

    if not args.follow or len(pods) == 1:
        for pod in pods:
            copy(pod)
        return 0
    threads = [threading.Thread(target=copy, args=(pod,), daemon=True) for pod in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.5)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl slm", description="Inspect and talk to SLMDeployments (slm.dev/v1alpha1)."
    )
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    namespace = argparse.ArgumentParser(add_help=False)
    namespace.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ls = sub.add_parser("list", aliases=["ls"], parents=[namespace], help="list SLMDeployments")
    ls.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")

    status = sub.add_parser("status", parents=[namespace], help="show an SLMDeployment's state and events")
    status.add_argument("name")
    status.add_argument("--events", type=int, default=10, help="most recent events to show (default 10)")

    chat = sub.add_parser("chat", parents=[namespace], help="send a prompt to an SLMDeployment's OpenAI API")
    chat.add_argument("name")
    chat.add_argument("prompt")
    chat.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    chat.add_argument("--api-key", help="API key (default: $SLM_API_KEY)")
    chat.add_argument("--url", help="base URL of the API instead of a port-forward, e.g. http://host:8080")
    chat.add_argument("--model", help="model name to request (default: the SLMDeployment's spec.model.name)")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--max-tokens", type=int, help="most tokens to generate")
    chat.add_argument("--temperature", type=float, help="sampling temperature")
    chat.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the answer (default 300)"
    )

    logs = sub.add_parser(
        "logs", parents=[namespace], help="print the logs of an SLMDeployment's runtime pods"
    )
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new log lines")
    logs.add_argument("--tail", type=int, help="lines of recent log to show per pod")
    logs.add_argument("-c", "--container", default=RUNTIME_CONTAINER, help="container (default: runtime)")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    stdout = out or sys.stdout
    try:
        if args.command == "chat" and args.url and args.model:
            return _cmd_chat(args, None, stdout)  # the URL is enough: no kubeconfig needed
        cluster = Cluster.connect(args.kubeconfig, args.context)
        if args.command in ("list", "ls"):
            return _cmd_list(args, cluster, stdout)
        if args.command == "status":
            return _cmd_status(args, cluster, stdout)
        if args.command == "chat":
            return _cmd_chat(args, cluster, stdout)
        return _cmd_logs(args, cluster, stdout)
    except KubectlSlmError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
