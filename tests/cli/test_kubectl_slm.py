"""kubectl-slm: the pure formatting and filtering functions, and `chat --url` against a stub server."""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from slm_operator import kubectl_slm as k

NOW = dt.datetime(2026, 1, 2, 12, 0, 0, tzinfo=dt.UTC)


def slmd(
    name: str = "qwen",
    namespace: str = "models",
    generation: int = 2,
    status: dict[str, Any] | None = None,
    uid: str = "uid-1",
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": namespace, "generation": generation, "uid": uid},
        "spec": {"model": {"name": "qwen2.5:0.5b"}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def ready_status(generation: int = 2) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "hardware": "gpu",
        "variant": {"format": "gguf", "quantization": "Q4_K_M", "uri": "hf://Qwen/x/q4.gguf"},
        "endpoints": {
            "openai": "http://qwen.models.svc:8080/v1",
            "ollama": "http://qwen.models.svc:8080",
        },
        "replicas": 2,
        "readyReplicas": 1,
        "message": "placed on gpu (NVIDIA-L4)",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Available",
                "message": "1/2 replicas ready",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-02T11:55:00Z",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "RollingOut",
                "message": "",
                "observedGeneration": generation,
                "lastTransitionTime": "2026-01-02T09:00:00Z",
            },
        ],
    }


def event(
    reason: str,
    when: str,
    *,
    name: str = "qwen",
    kind: str = "SLMDeployment",
    uid: str | None = "uid-1",
    message: str = "",
) -> dict[str, Any]:
    involved: dict[str, Any] = {"kind": kind, "name": name, "namespace": "models"}
    if uid is not None:
        involved["uid"] = uid
    return {
        "metadata": {"name": f"{name}.{reason}", "creationTimestamp": when},
        "involvedObject": involved,
        "type": "Normal",
        "reason": reason,
        "message": message or reason,
        "lastTimestamp": when,
    }


# ---------------------------------------------------------------------------------------------
# list


def test_summarize_a_ready_object() -> None:
    row = k.summarize(slmd(status=ready_status()))
    assert row == k.ListRow(
        namespace="models",
        name="qwen",
        model="qwen2.5:0.5b",
        hardware="gpu",
        variant="gguf/Q4_K_M",
        ready="True",
        replicas="1/2",
        endpoint="http://qwen.models.svc:8080/v1",
    )


def test_summarize_before_the_operator_wrote_a_status() -> None:
    row = k.summarize(slmd())
    assert (row.hardware, row.variant, row.ready, row.replicas, row.endpoint) == (
        "-",
        "-",
        "Unknown",
        "-",
        "-",
    )


def test_ready_is_unknown_while_a_new_generation_is_pending() -> None:
    assert k.ready_text(slmd(generation=3, status=ready_status(generation=2))) == "Unknown"
    not_ready = ready_status()
    not_ready["conditions"][0]["status"] = "False"
    assert k.ready_text(slmd(status=not_ready)) == "False"


def test_format_list_all_namespaces_is_sorted_and_aligned() -> None:
    objs = [
        slmd("zeta", "b", status=ready_status()),
        slmd("alpha", "b"),
        slmd("qwen", "a", status=ready_status()),
    ]
    text = k.format_list(objs, with_namespace=True)
    lines = text.splitlines()
    assert lines[0].split() == list(k.LIST_HEADERS)
    assert [line.split()[:2] for line in lines[1:]] == [["a", "qwen"], ["b", "alpha"], ["b", "zeta"]]
    column = lines[0].index("MODEL")
    assert all(line[column:].startswith("qwen2.5:0.5b") for line in lines[1:])
    assert text.endswith("\n") and not any(line.endswith(" ") for line in lines)


def test_format_list_one_namespace_has_no_namespace_column() -> None:
    text = k.format_list([slmd(status=ready_status())], with_namespace=False)
    assert text.splitlines()[0].split() == list(k.LIST_HEADERS[1:])
    assert text.splitlines()[1].split()[0] == "qwen"


def test_format_list_empty() -> None:
    assert k.format_list([], with_namespace=True) == "No SLMDeployments found.\n"


def test_format_table() -> None:
    assert k.format_table(("A", "BB"), [("xxx", "y")]) == "A     BB\nxxx   y\n"


# ---------------------------------------------------------------------------------------------
# status and events


def test_related_events_filters_by_kind_name_and_uid_and_sorts() -> None:
    obj = slmd()
    events = [
        event("Scaled", "2026-01-02T11:59:00Z"),
        event("Created", "2026-01-02T11:00:00Z"),
        event("Other", "2026-01-02T11:30:00Z", name="other"),
        event("Pod", "2026-01-02T11:30:00Z", kind="Pod"),
        event("OldObject", "2026-01-01T00:00:00Z", uid="uid-0"),
        event("NoUid", "2026-01-02T11:10:00Z", uid=None),
    ]
    assert [e["reason"] for e in k.related_events(events, obj)] == ["Created", "NoUid", "Scaled"]
    assert [e["reason"] for e in k.related_events(events, obj, limit=1)] == ["Scaled"]


def test_related_events_reads_events_k8s_io_shape() -> None:
    new_style = {
        "regarding": {"kind": "SLMDeployment", "name": "qwen", "uid": "uid-1"},
        "reason": "Placed",
        "note": "on gpu",
        "eventTime": "2026-01-02T11:58:00.000000Z",
    }
    assert k.related_events([new_style], slmd()) == [new_style]
    assert k.event_time(new_style) == "2026-01-02T11:58:00.000000Z"


@pytest.mark.parametrize(
    ("when", "age"),
    [
        ("2026-01-02T11:59:15Z", "45s"),
        ("2026-01-02T11:48:00Z", "12m"),
        ("2026-01-02T07:00:00+00:00", "5h"),
        ("2025-12-30T12:00:00Z", "3d"),
        ("2026-01-02T12:00:05Z", "0s"),
        ("", "<unknown>"),
        ("yesterday", "<unknown>"),
    ],
)
def test_format_age(when: str, age: str) -> None:
    assert k.format_age(when, NOW) == age


def test_format_status() -> None:
    obj = slmd(status=ready_status())
    events = [event("Placed", "2026-01-02T11:50:00Z", message="placed on gpu\nsecond line")]
    text = k.format_status(obj, events, NOW)
    assert "Name:        qwen" in text
    assert "Hardware:    gpu" in text
    assert "Variant:     gguf/Q4_K_M" in text
    assert "URI:       hf://Qwen/x/q4.gguf" in text
    assert "Replicas:    1/2 ready" in text
    assert "Generation:  2 (observed 2)" in text
    assert "OpenAI:    http://qwen.models.svc:8080/v1" in text
    assert "Message:     placed on gpu (NVIDIA-L4)" in text
    conditions = text[text.index("Conditions:") : text.index("Events:")].splitlines()
    assert conditions[1].split() == ["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]
    assert conditions[2].split()[:4] == ["Ready", "True", "Available", "5m"]
    assert conditions[3].split()[:4] == ["Progressing", "True", "RollingOut", "3h"]
    event_lines = text[text.index("Events:") :].splitlines()
    assert event_lines[2].split() == ["10m", "Normal", "Placed", "placed", "on", "gpu", "second", "line"]


def test_format_status_without_status() -> None:
    text = k.format_status(slmd(), [], NOW)
    assert "Hardware:    -" in text
    assert "Generation:  2 (observed -)" in text
    assert text.count("<none>") == 2


# ---------------------------------------------------------------------------------------------
# chat helpers


@pytest.mark.parametrize("url", ["http://h:8080", "http://h:8080/", "http://h:8080/v1", "http://h:8080/v1/"])
def test_openai_base_url(url: str) -> None:
    assert k.openai_base_url(url) == "http://h:8080/v1"


def test_chat_request() -> None:
    assert k.chat_request("m", "hi", stream=True) == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    body = k.chat_request("m", "hi", stream=False, system="be brief", max_tokens=8, temperature=0.0)
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    assert (body["max_tokens"], body["temperature"]) == (8, 0.0)


def _chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def test_stream_deltas() -> None:
    lines = [
        ": keep-alive",
        _chunk(None),
        "",
        _chunk("Hel"),
        _chunk("lo"),
        _chunk(None, "stop"),
        "data: [DONE]",
        _chunk("ignored after DONE"),
    ]
    assert "".join(k.stream_deltas(lines)) == "Hello"


def test_stream_deltas_raises_on_an_error_event() -> None:
    lines = [_chunk("a"), 'data: {"error": {"message": "queue full", "type": "rate_limit"}}']
    with pytest.raises(k.KubectlSlmError, match="queue full"):
        list(k.stream_deltas(lines))


def test_completion_text() -> None:
    assert k.completion_text({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}) == "hi"
    with pytest.raises(k.KubectlSlmError, match="bad key"):
        k.completion_text({"error": {"message": "bad key"}})
    with pytest.raises(k.KubectlSlmError):
        k.completion_text({"choices": []})


def _pod(
    name: str, *, phase: str = "Running", ready: bool = True, created: str = "2026-01-01T00:00:00Z"
) -> Any:
    return {
        "metadata": {"name": name, "creationTimestamp": created},
        "spec": {"containers": [{"name": "runtime", "ports": [{"name": "http", "containerPort": 8081}]}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_pick_ready_pod() -> None:
    pods = [
        _pod("new", created="2026-01-02T00:00:00Z"),
        _pod("pending", phase="Pending"),
        _pod("unready", ready=False),
        _pod("old", created="2026-01-01T00:00:00Z"),
    ]
    chosen = k.pick_ready_pod(pods)
    assert chosen is not None and chosen["metadata"]["name"] == "old"
    terminating = _pod("going")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    assert k.pick_ready_pod([terminating, _pod("x", ready=False)]) is None


def test_container_port() -> None:
    assert k.container_port(_pod("p")) == 8081
    assert k.container_port({"spec": {"containers": [{"name": "runtime"}]}}) == 8080


def test_runtime_selector() -> None:
    assert k.runtime_selector("qwen") == "app.kubernetes.io/name=slm-runtime,slm.dev/deployment=qwen"


def test_pump_copies_both_ways_until_close() -> None:
    left_app, left = socket.socketpair()
    right, right_app = socket.socketpair()
    stopped = threading.Event()
    thread = threading.Thread(target=k._pump, args=(left, right, stopped))
    thread.start()
    left_app.sendall(b"ping")
    assert right_app.recv(16) == b"ping"
    right_app.sendall(b"pong")
    assert left_app.recv(16) == b"pong"
    left_app.close()
    thread.join(5)
    assert not thread.is_alive()
    for sock in (left, right, right_app):
        sock.close()


# ---------------------------------------------------------------------------------------------
# parser and `chat --url` end to end against a stub OpenAI server


def test_parser() -> None:
    parser = k.build_parser()
    args = parser.parse_args(["list", "-A"])
    assert (args.command, args.all_namespaces) == ("list", True)
    args = parser.parse_args(["chat", "qwen", "hello there", "--stream", "--api-key", "k", "-n", "models"])
    assert (args.name, args.prompt, args.stream, args.api_key, args.namespace) == (
        "qwen",
        "hello there",
        True,
        "k",
        "models",
    )
    args = parser.parse_args(["logs", "qwen", "-f", "--tail", "5"])
    assert (args.follow, args.tail, args.container) == (True, 5, "runtime")
    with pytest.raises(SystemExit):
        parser.parse_args([])


class _StubOpenAI(BaseHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, dict(self.headers), body))
        if body["messages"][-1]["content"] == "overload":
            payload = json.dumps({"error": {"message": "too many requests", "type": "rate_limit"}}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ("Hello", ", ", "world"):
                self.wfile.write((_chunk(piece) + "\n\n").encode())
            self.wfile.write(b"data: [DONE]\n\n")
            return
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Hi!"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture
def stub_url() -> Iterator[str]:
    _StubOpenAI.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubOpenAI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_chat_url_streams(stub_url: str) -> None:
    out = io.StringIO()
    code = k.main(["chat", "qwen", "hi", "--url", stub_url, "--model", "qwen2.5:0.5b", "--stream"], out=out)
    assert code == 0
    assert out.getvalue() == "Hello, world\n"
    path, _, body = _StubOpenAI.requests[0]
    assert path == "/v1/chat/completions"
    assert body["model"] == "qwen2.5:0.5b" and body["stream"] is True


def test_chat_url_sends_the_api_key(stub_url: str) -> None:
    out = io.StringIO()
    code = k.main(
        ["chat", "qwen", "hi", "--url", stub_url + "/v1", "--model", "m", "--api-key", "s3cret"], out=out
    )
    assert code == 0
    assert out.getvalue() == "Hi!\n"
    headers = {key.lower(): value for key, value in _StubOpenAI.requests[0][1].items()}
    assert headers["authorization"] == "Bearer s3cret"


def test_chat_url_reports_http_errors(stub_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = k.main(["chat", "qwen", "overload", "--url", stub_url, "--model", "m"], out=io.StringIO())
    assert code == 1
    assert "HTTP 429: too many requests" in capsys.readouterr().err


def test_unreachable_url_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = k.main(["chat", "q", "hi", "--url", f"http://127.0.0.1:{port}", "--model", "m"], out=io.StringIO())
    assert code == 1
    assert "error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# autoscaling (issue 12)


def test_a_model_scaled_to_zero_by_the_autoscaler_shows_as_idle() -> None:
    status = ready_status()
    status.update(
        replicas=0,
        readyReplicas=0,
        autoscaling={
            "desiredReplicas": 0,
            "currentReplicas": 1,
            "reason": "ScaledToZero",
            "message": "no requests for 600s (scaleToZeroAfter 600s)",
        },
    )
    obj = slmd(status=status)
    assert k.summarize(obj).replicas == "zero (idle)"
    text = k.format_status(obj, [], NOW)
    assert "Replicas:    zero (idle) ready" in text
    assert "Autoscaler:  1 -> 0 (ScaledToZero): no requests for 600s" in text
    by_hand = ready_status()
    by_hand.update(replicas=0, readyReplicas=0)
    assert k.summarize(slmd(status=by_hand)).replicas == "0/0"  # spec.replicas 0: not idle, stopped
    assert "Autoscaler:" not in k.format_status(slmd(status=ready_status()), [], NOW)
