"""The test bed itself: a real apiserver, controller-manager and scheduler over KWOK node pools."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubernetes import client, config

from .helpers import (
    api_get_text,
    create_namespace,
    read_versions,
    serviceaccount_kubeconfig,
    unique_name,
    wait_deleted,
    wait_for,
    wait_pod_ready,
)

POOLS = {
    "cpu-node-1": {"cpu": "8", "memory": "32Gi", "pods": "110"},
    "cpu-node-2": {"cpu": "8", "memory": "32Gi", "pods": "110"},
    "gpu-node-1": {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "1"},
    "gpu-node-2": {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "1"},
    "npu-node-1": {"cpu": "8", "memory": "32Gi", "pods": "110", "npu.intel.com/accel": "1"},
}
TAINTS = {
    "gpu-node-1": ("nvidia.com/gpu", "present"),
    "gpu-node-2": ("nvidia.com/gpu", "present"),
    "npu-node-1": ("npu.intel.com/accel", "present"),
}
PAUSE = "registry.k8s.io/pause:3.10"


def _pod(name: str, **spec: object) -> client.V1Pod:
    container = client.V1Container(name="main", image=PAUSE, resources=spec.pop("resources", None))
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(containers=[container], **spec),
    )


def test_apiserver_ready_and_version(kube_api: client.ApiClient) -> None:
    body = api_get_text(kube_api, "/readyz")
    assert body == "ok"
    info = client.VersionApi(kube_api).get_code()
    assert info.git_version == read_versions()["KUBE_VERSION"]


def test_node_pools_ready_with_allocatable(kube_api: client.ApiClient) -> None:
    nodes = {
        n.metadata.name: n for n in client.CoreV1Api(kube_api).list_node(label_selector="type=kwok").items
    }
    assert set(POOLS) <= set(nodes)
    for name, expected in POOLS.items():
        node = nodes[name]
        ready = {c.type: c.status for c in node.status.conditions}["Ready"]
        assert ready == "True", name
        for resource, quantity in expected.items():
            assert node.status.allocatable[resource] == quantity, (name, resource)
        taints = {(t.key, t.value, t.effect) for t in node.spec.taints or []}
        want = {(*TAINTS[name], "NoSchedule")} if name in TAINTS else set()
        assert taints == want, name
    gpu = nodes["gpu-node-1"].metadata.labels
    assert gpu["nvidia.com/gpu.product"] == "NVIDIA-L4"
    assert gpu["nvidia.com/gpu.present"] == "true"
    assert gpu["node.kubernetes.io/instance-type"] == "gpu-l4-16"
    assert nodes["npu-node-1"].metadata.labels["intel.feature.node.kubernetes.io/npu"] == "true"
    assert nodes["cpu-node-2"].metadata.labels["topology.kubernetes.io/zone"] == "zone-b"


def test_scheduler_places_gpu_and_plain_pods(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    gpu = _pod(
        "gpu",
        resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "1"}),
        tolerations=[client.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")],
    )
    plain = _pod("plain", resources=client.V1ResourceRequirements(requests={"cpu": "100m", "memory": "64Mi"}))
    core.create_namespaced_pod(namespace, gpu)
    core.create_namespaced_pod(namespace, plain)
    gpu_pod = wait_pod_ready(kube_api, namespace, "gpu")
    plain_pod = wait_pod_ready(kube_api, namespace, "plain")
    assert gpu_pod.spec.node_name in {"gpu-node-1", "gpu-node-2"}
    # the accelerator nodes are tainted, so a pod without tolerations lands on a cpu node
    assert plain_pod.spec.node_name in {"cpu-node-1", "cpu-node-2"}
    assert gpu_pod.status.pod_ip  # kwok hands out pod IPs


def test_unsatisfiable_gpu_request_stays_pending(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_pod(
        namespace,
        _pod(
            "too-big",
            resources=client.V1ResourceRequirements(limits={"nvidia.com/gpu": "2"}),
            tolerations=[client.V1Toleration(key="nvidia.com/gpu", operator="Exists")],
        ),
    )

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("too-big", namespace)
        conds = {c.type: c for c in pod.status.conditions or []}
        return "PodScheduled" in conds and conds["PodScheduled"].reason == "Unschedulable"

    wait_for(unschedulable, 20, "scheduler to mark the 2-GPU pod Unschedulable")


def test_pod_security_restricted_rejects_privileged(kube_api: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_api)
    ns = create_namespace(
        kube_api, unique_name("e2e-restricted"), labels={"pod-security.kubernetes.io/enforce": "restricted"}
    )
    try:
        privileged = _pod("priv")
        privileged.spec.containers[0].security_context = client.V1SecurityContext(privileged=True)
        with pytest.raises(client.ApiException) as err:
            core.create_namespaced_pod(ns, privileged)
        assert err.value.status == 403
        assert "violates PodSecurity" in err.value.body
        # a pod that meets "restricted" is admitted
        ok = _pod(
            "ok",
            security_context=client.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=65532,
                seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
            ),
        )
        ok.spec.containers[0].security_context = client.V1SecurityContext(
            allow_privilege_escalation=False, capabilities=client.V1Capabilities(drop=["ALL"])
        )
        core.create_namespaced_pod(ns, ok)
    finally:
        core.delete_namespace(ns)


def test_deployment_rolls_out(kube_api: client.ApiClient, namespace: str) -> None:
    apps = client.AppsV1Api(kube_api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="main", image=PAUSE)]),
                ),
            ),
        ),
    )
    wait_for(
        lambda: (apps.read_namespaced_deployment_status("web", namespace).status.ready_replicas or 0) == 2,
        30,
        "deployment web to have 2 ready replicas",
    )
    rs = apps.list_namespaced_replica_set(namespace).items
    assert len(rs) == 1
    assert rs[0].metadata.owner_references[0].kind == "Deployment"
    # the namespace got the cluster CA (root-ca-cert-publisher) for in-cluster clients
    cm = client.CoreV1Api(kube_api).read_namespaced_config_map("kube-root-ca.crt", namespace)
    assert "BEGIN CERTIFICATE" in cm.data["ca.crt"]


def test_garbage_collector_deletes_dependents(kube_api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube_api)
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref]))
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_deleted(
        lambda: core.read_namespaced_config_map("dependent", namespace),
        30,
        "ConfigMap dependent (owner deleted)",
    )


def test_serviceaccount_kubeconfig_obeys_rbac(
    kube_api: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="bot"))
    )
    sa_api = config.new_client_from_config(
        config_file=str(serviceaccount_kubeconfig(kube_api, namespace, "bot", tmp_path / "bot.kubeconfig"))
    )
    try:
        sa_core = client.CoreV1Api(sa_api)
        with pytest.raises(client.ApiException) as err:
            sa_core.list_namespaced_pod(namespace)
        assert err.value.status == 403
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="pod-reader"),
                rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"], verbs=["list"])],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="bot-reads-pods"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="pod-reader"
                ),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name="bot", namespace=namespace)],
            ),
        )
        wait_for(
            lambda: sa_core.list_namespaced_pod(namespace) is not None,
            10,
            "RBAC to allow the bot",
            ignore=(client.ApiException,),
        )
    finally:
        sa_api.close()
