"""Helpers for end-to-end tests against the local control plane (hack/local-cluster).

Everything that waits takes a deadline: no loop here runs unbounded.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_CLUSTER = REPO_ROOT / "hack" / "local-cluster"
BIN_DIR = Path(os.environ.get("SLM_BIN_DIR") or REPO_ROOT / "bin")
# State dir of hack/local-cluster: kubeconfig, logs/, pki/, state.json (ports, pids).
CLUSTER_DIR = Path(os.environ.get("SLM_CLUSTER_DIR") or REPO_ROOT / ".local-cluster")


def read_versions() -> dict[str, str]:
    """The pinned versions of the test bed (hack/k8sbin/versions.env), e.g. KUBE_VERSION."""
    out: dict[str, str] = {}
    for raw in (REPO_ROOT / "hack" / "k8sbin" / "versions.env").read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def wait_for(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.2,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `predicate` until it returns something truthy, and return that.

    Raises TimeoutError naming `what` (and the last value or ignored exception) once `timeout`
    seconds have passed. Exceptions listed in `ignore` count as "not yet"; others propagate.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except ignore as e:
            last = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r:.500})")
        time.sleep(interval)


def api_get_text(api: client.ApiClient, path: str) -> str:
    """GET a non-resource path (/readyz, /version, /metrics...) with `api`'s credentials."""
    if "resource_path" in inspect.signature(api.call_api).parameters:  # kubernetes-client < 35
        text: str = api.call_api(
            path, "GET", auth_settings=["BearerToken"], response_type="str", _return_http_data_only=True
        )
        return text
    method, url, headers, _, _ = api.param_serialize("GET", path, auth_settings=["BearerToken"])
    resp = api.call_api(method, url, header_params=headers)
    resp.read()
    if resp.status != 200:
        raise client.ApiException(status=resp.status, reason=resp.reason)
    return str(resp.data.decode())


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def kubectl(
    kubeconfig: str | os.PathLike[str],
    *args: str,
    input: str | None = None,
    timeout: float = 60,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run kubectl (bin/kubectl, built with the server's version; else the one on PATH)."""
    own = BIN_DIR / "kubectl"
    exe = str(own) if os.access(own, os.X_OK) else (shutil.which("kubectl") or "kubectl")
    return subprocess.run(
        [exe, f"--kubeconfig={os.fspath(kubeconfig)}", *args],
        input=input,
        text=True,
        capture_output=True,
        timeout=timeout,
        check=check,
    )


def pod_is_ready(pod: client.V1Pod) -> bool:
    conditions = (pod.status and pod.status.conditions) or []
    return (
        pod.status is not None
        and pod.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in conditions)
    )


def wait_pod_ready(api: client.ApiClient, namespace: str, name: str, timeout: float = 30) -> client.V1Pod:
    core = client.CoreV1Api(api)

    def ready() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod_is_ready(pod) else None

    return wait_for(ready, timeout, f"pod {namespace}/{name} Ready")


def wait_deleted(read: Callable[[], Any], timeout: float, what: str) -> None:
    """Wait until `read()` raises a 404 ApiException."""

    def gone() -> bool:
        try:
            read()
        except client.ApiException as e:
            if e.status == 404:
                return True
            raise
        return False

    wait_for(gone, timeout, f"{what} to be deleted")


def create_namespace(
    api: client.ApiClient, name: str, labels: dict[str, str] | None = None, timeout: float = 30
) -> str:
    """Create a namespace and wait until its `default` ServiceAccount exists (pods need it)."""
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout,
        f"ServiceAccount {name}/default",
        ignore=(client.ApiException,),
    )
    return name


def serviceaccount_kubeconfig(
    api: client.ApiClient,
    namespace: str,
    service_account: str,
    path: str | os.PathLike[str],
    expiration_seconds: int = 3600,
) -> Path:
    """Write a kubeconfig that authenticates as `namespace/service_account` with a fresh bound token
    (TokenRequest API) and return its path. The server and CA are those of `api`."""
    core = client.CoreV1Api(api)
    token = core.create_namespaced_service_account_token(
        service_account,
        namespace,
        client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=expiration_seconds)
        ),
    ).status.token
    conf = api.configuration
    cluster: dict[str, Any] = {"server": conf.host}
    if conf.ssl_ca_cert:
        # embedded: the client's CA file may be a temporary file
        cluster["certificate-authority-data"] = base64.b64encode(Path(conf.ssl_ca_cert).read_bytes()).decode()
    else:
        cluster["insecure-skip-tls-verify"] = True
    user = f"{namespace}:{service_account}"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "cluster", "user": user, "namespace": namespace}}],
        "current-context": user,
    }
    out = Path(path)
    out.write_text(json.dumps(cfg, indent=2))
    out.chmod(0o600)
    return out
