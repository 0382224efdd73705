"""kubectl-slm's API layer (the `Cluster` class) against a stub API server, through a kubeconfig.

The stub answers the few read-only paths the plugin uses, in the API server's JSON shapes, so the
official client's request building and (de)serialisation run for real.
"""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from slm_operator import kubectl_slm as k

SLMD = "/apis/slm.dev/v1alpha1"


def _slmd(name: str, namespace: str, ready: str) -> dict[str, Any]:
    return {
        "apiVersion": "slm.dev/v1alpha1",
        "kind": "SLMDeployment",
        "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": f"uid-{name}"},
        "spec": {"model": {"name": f"{name}:1b"}},
        "status": {
            "observedGeneration": 1,
            "hardware": "cpu",
            "variant": {"format": "gguf", "quantization": "Q8_0"},
            "endpoints": {"openai": f"http://{name}.{namespace}.svc:8080/v1"},
            "replicas": 1,
            "readyReplicas": 1 if ready == "True" else 0,
            "conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": "m"}],
        },
    }


OBJECTS = [_slmd("qwen", "models", "True"), _slmd("phi", "models", "False"), _slmd("tiny", "dev", "True")]


def _event(reason: str, name: str, when: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{name}.{reason.lower()}", "namespace": "models"},
        "involvedObject": {
            "kind": "SLMDeployment",
            "name": name,
            "namespace": "models",
            "uid": f"uid-{name}",
        },
        "reason": reason,
        "message": f"{reason} happened",
        "type": "Normal",
        "lastTimestamp": when,
    }


def _pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "models", "labels": {"slm.dev/deployment": "qwen"}},
        "spec": {"containers": [{"name": "runtime", "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }


class _StubApiServer(BaseHTTPRequestHandler):
    seen: list[str] = []

    def _json(self, code: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        self.seen.append(self.path)
        parts = url.path.strip("/").split("/")
        if url.path == f"{SLMD}/slmdeployments":
            self._json(200, {"kind": "SLMDeploymentList", "items": OBJECTS})
        elif url.path.startswith(f"{SLMD}/namespaces/") and parts[-1] == "slmdeployments":
            items = [o for o in OBJECTS if o["metadata"]["namespace"] == parts[4]]
            self._json(200, {"kind": "SLMDeploymentList", "items": items})
        elif url.path.startswith(f"{SLMD}/namespaces/"):
            found = [
                o
                for o in OBJECTS
                if (o["metadata"]["namespace"], o["metadata"]["name"]) == (parts[4], parts[6])
            ]
            if found:
                self._json(200, found[0])
            else:
                message = f'slmdeployments.slm.dev "{parts[6]}" not found'
                self._json(404, {"kind": "Status", "status": "Failure", "message": message, "code": 404})
        elif url.path == "/api/v1/namespaces/models/events":
            assert query["fieldSelector"] == ["involvedObject.kind=SLMDeployment,involvedObject.name=qwen"]
            events = [
                _event("Scaled", "qwen", "2026-01-01T00:02:00Z"),
                _event("Placed", "qwen", "2026-01-01T00:01:00Z"),
            ]
            self._json(200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": events})
        elif url.path == "/api/v1/namespaces/models/pods":
            assert query["labelSelector"] == ["app.kubernetes.io/name=slm-runtime,slm.dev/deployment=qwen"]
            pods = [_pod("qwen-b"), _pod("qwen-a")]
            self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods})
        elif url.path.startswith("/api/v1/namespaces/models/pods/") and url.path.endswith("/log"):
            assert query["container"] == ["runtime"]
            body = f"started {parts[5]}\nserving\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self._json(404, {"kind": "Status", "message": f"no route {url.path}", "code": 404})

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Iterator[str]:
    _StubApiServer.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StubApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "me", "user": {"token": "t"}}],
        "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "me", "namespace": "models"}}],
        "current-context": "stub",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    try:
        yield str(path)
    finally:
        server.shutdown()
        server.server_close()


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = k.main(list(argv), out=out)
    return code, out.getvalue()


def test_list_uses_the_context_namespace(kubeconfig: str) -> None:
    code, out = _run("--kubeconfig", kubeconfig, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == list(k.LIST_HEADERS[1:])
    assert [line.split()[0] for line in lines[1:]] == ["phi", "qwen"]
    assert lines[2].split() == [
        "qwen",
        "qwen:1b",
        "cpu",
        "gguf/Q8_0",
        "True",
        "1/1",
        "http://qwen.models.svc:8080/v1",
    ]


def test_list_all_namespaces(kubeconfig: str) -> None:
    code, out = _run("--kubeconfig", kubeconfig, "list", "-A")
    assert code == 0
    assert [line.split()[:2] for line in out.splitlines()[1:]] == [
        ["dev", "tiny"],
        ["models", "phi"],
        ["models", "qwen"],
    ]
    assert _StubApiServer.seen[-1] == f"{SLMD}/slmdeployments"


def test_status_shows_conditions_and_events(kubeconfig: str) -> None:
    code, out = _run("--kubeconfig", kubeconfig, "status", "qwen")
    assert code == 0
    assert "Model:       qwen:1b" in out
    events = out[out.index("Events:") :].splitlines()
    assert [line.split()[2] for line in events[2:]] == ["Placed", "Scaled"]


def test_status_of_a_missing_object_is_an_error(kubeconfig: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _run("--kubeconfig", kubeconfig, "status", "nope", "-n", "models")
    assert code == 1
    assert 'slmdeployments.slm.dev "nope" not found' in capsys.readouterr().err


def test_logs_of_every_runtime_pod(kubeconfig: str) -> None:
    code, out = _run("--kubeconfig", kubeconfig, "logs", "qwen")
    assert code == 0
    assert out.splitlines() == [
        "[qwen-a] started qwen-a",
        "[qwen-a] serving",
        "[qwen-b] started qwen-b",
        "[qwen-b] serving",
    ]
