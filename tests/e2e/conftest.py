"""Session fixtures for end-to-end tests: a real control plane (hack/local-cluster) with KWOK pools.

Fixtures:
    kubeconfig  (session)  path of an admin (system:masters) kubeconfig
    kube_api    (session)  kubernetes.client.ApiClient built from it
    namespace   (function) a fresh namespace whose `default` ServiceAccount exists; deleted after

Env:
    SLM_E2E_KUBECONFIG     use this cluster instead of starting the local one
    SLM_E2E_KEEP_CLUSTER=1 leave a cluster that this session started running at the end
    SLM_CLUSTER_DIR        state dir of hack/local-cluster (default <repo>/.local-cluster)

Every test under tests/e2e is marked `e2e`.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes import config as kube_config

from .helpers import CLUSTER_DIR, LOCAL_CLUSTER, create_namespace, unique_name
from .realnode import fleet_gateway, model_server, operator_ns, real_node, runtime_image, test_image

# The real-node session fixtures, shared by every real-node module (tests/e2e/realnode.py).
__all__ = ["fleet_gateway", "model_server", "operator_ns", "real_node", "runtime_image", "test_image"]

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.e2e)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_cluster(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LOCAL_CLUSTER), *args], check=False, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def kubeconfig() -> Iterator[str]:
    external = os.environ.get("SLM_E2E_KUBECONFIG")
    if external:
        yield external
        return

    # Several sessions may share one working tree (and so one cluster): each registers itself in
    # users/, and the session that started the cluster stops it only when no other user is alive.
    users = CLUSTER_DIR / "users"
    users.mkdir(parents=True, exist_ok=True)
    me = users / str(os.getpid())
    me.touch()
    was_up = _local_cluster("status", timeout=30).returncode == 0
    try:
        if not was_up:
            # Cold binaries are built by `make bins` before pytest; this only starts processes.
            up = _local_cluster("up", timeout=300)
            if up.returncode != 0:
                pytest.fail(f"hack/local-cluster up failed:\n{up.stdout}\n{up.stderr}", pytrace=False)
        yield str(CLUSTER_DIR / "kubeconfig")
    finally:
        me.unlink(missing_ok=True)
        others = [p for p in users.iterdir() if p.name.isdigit() and _pid_alive(int(p.name))]
        if not was_up and not others and os.environ.get("SLM_E2E_KEEP_CLUSTER") != "1":
            _local_cluster("down", timeout=60)


@pytest.fixture(scope="session")
def kube_api(kubeconfig: str) -> Iterator[client.ApiClient]:
    api = kube_config.new_client_from_config(config_file=kubeconfig)
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def namespace(kube_api: client.ApiClient) -> Iterator[str]:
    name = create_namespace(kube_api, unique_name("e2e"))
    yield name
    with contextlib.suppress(client.ApiException):
        client.CoreV1Api(kube_api).delete_namespace(name)
