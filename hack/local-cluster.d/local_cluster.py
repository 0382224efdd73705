#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, with KWOK node pools. Standard library only.

    hack/local-cluster up       start etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
                                kwok; create the node pools; wait until all of it is Ready
    hack/local-cluster down     stop the processes `up` started (only those); --purge also
                                removes the state dir
    hack/local-cluster status   print what runs; exit 0 when the cluster is up, 1 when not
    hack/local-cluster restart COMPONENT [SECONDS]
                                stop one component (etcd, kube-apiserver, ...), wait SECONDS
                                (default 0), start it again with its data; for fault tests
    hack/local-cluster env      print `export KUBECONFIG=...`

State lives in $SLM_CLUSTER_DIR (default <repo>/.local-cluster):
    kubeconfig            admin (system:masters) kubeconfig, certificates embedded
    state.json            ports and pids of the running components
    pki/                  CA, serving and client certificates, service-account key pair
    etcd/                 etcd's data (wiped at every fresh `up`)
    logs/<component>.log  each component's output
    kubeconfigs/          per-component kubeconfigs

Binaries come from $SLM_BIN_DIR (default <repo>/bin), built by hack/build-bins.sh (run it first;
`up` runs it when a binary is missing). Ports are picked free at `up` time unless set with
SLM_APISERVER_PORT, SLM_ETCD_PORT, SLM_ETCD_PEER_PORT. SLM_APISERVER_ADVERTISE_ADDRESS=IP makes
the apiserver listen on all addresses and advertise IP (for pods on a real node); default: loopback.
SLM_CLUSTER_UP_TIMEOUT (seconds, default 120) bounds `up`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "hack" / "lib"))
from supervisor import Supervisor  # noqa: E402  (stdlib-only helper shared with hack/real-node)

STATE = Path(os.environ.get("SLM_CLUSTER_DIR") or ROOT / ".local-cluster").resolve()
BIN = Path(os.environ.get("SLM_BIN_DIR") or ROOT / "bin").resolve()
NODES_MANIFEST = HERE / "nodes.yaml"

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
POD_CIDR = "10.244.0.1/16"
# Start order; `down` stops in reverse.
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
EXPECTED_NODES = ["cpu-node-1", "cpu-node-2", "gpu-node-1", "gpu-node-2", "npu-node-1"]
# An address of this host that pods on a real node (hack/real-node) can reach: kube-apiserver then
# listens on all addresses, advertises this one for the `kubernetes` Service, and its serving
# certificate names it. Unset (default): loopback only, and the `kubernetes` Service has no
# endpoints (Endpoints may not hold loopback addresses), which KWOK pods never notice.
ADVERTISE = os.environ.get("SLM_APISERVER_ADVERTISE_ADDRESS", "")
UP_TIMEOUT = float(os.environ.get("SLM_CLUSTER_UP_TIMEOUT", "120"))


class ClusterError(RuntimeError):
    pass


# Processes, state.json, the lock and logs of the state dir: shared with hack/real-node.
SUP = Supervisor(STATE, "local-cluster", ClusterError)
log, load_state, save_state, locked = SUP.log, SUP.load_state, SUP.save_state, SUP.locked
running, start, wait = SUP.running, SUP.start, SUP.wait


# --------------------------------------------------------------------------------------------
# certificates


def openssl(*args: str, stdin: bytes | None = None) -> None:
    subprocess.run(["openssl", *args], check=True, input=stdin, capture_output=True)


def make_pki(pki: Path) -> None:
    # .complete records the extra SAN: changing SLM_APISERVER_ADVERTISE_ADDRESS regenerates the PKI
    marker = f"advertise={ADVERTISE}\nfront-proxy=1\n"
    with contextlib.suppress(OSError):
        if (pki / ".complete").read_text() == marker:
            return
    shutil.rmtree(pki, ignore_errors=True)
    pki.mkdir(parents=True)
    days = "3650"

    def make_ca(name: str, cn: str) -> None:
        openssl(
            "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-sha256", "-days", days,
            "-keyout", str(pki / f"{name}.key"), "-out", str(pki / f"{name}.crt"), "-subj", f"/CN={cn}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip

    make_ca("ca", "slm-local-ca")
    # The aggregation layer's own CA (as kubeadm does): the apiserver proves itself to aggregated
    # API servers (metrics-server) with front-proxy-client, and they trust only that CA for it.
    make_ca("front-proxy-ca", "slm-front-proxy-ca")

    def leaf(name: str, subj: str, ext: str, ca: str = "ca") -> None:
        openssl("genrsa", "-out", str(pki / f"{name}.key"), "2048")
        openssl(
            "req", "-new", "-key", str(pki / f"{name}.key"), "-subj", subj, "-out", str(pki / f"{name}.csr")
        )
        (pki / f"{name}.ext").write_text(ext)
        openssl(
            "x509",
            "-req",
            "-in",
            str(pki / f"{name}.csr"),
            "-CA",
            str(pki / f"{ca}.crt"),
            "-CAkey",
            str(pki / f"{ca}.key"),
            "-CAcreateserial",
            "-sha256",
            "-days",
            days,
            "-extfile",
            str(pki / f"{name}.ext"),
            "-out",
            str(pki / f"{name}.crt"),
        )
        (pki / f"{name}.csr").unlink()
        (pki / f"{name}.ext").unlink()

    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
        + ([f"IP:{ADVERTISE}"] if ADVERTISE else [])
    )
    server_ext = (
        f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n"
    )
    client_ext = (
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    leaf("apiserver", "/CN=kube-apiserver", server_ext)
    leaf("admin", "/O=system:masters/CN=kubernetes-admin", client_ext)
    leaf("kube-controller-manager", "/CN=system:kube-controller-manager", client_ext)
    leaf("kube-scheduler", "/CN=system:kube-scheduler", client_ext)
    # kwok writes node and pod status for every fake node: it acts as the whole fleet of kubelets.
    leaf("kwok", "/O=system:masters/CN=kwok-controller", client_ext)
    leaf("front-proxy-client", "/CN=front-proxy-client", client_ext, ca="front-proxy-ca")
    # metrics-server (started with the real node, hack/real-node): RBAC in its manifest there
    leaf("metrics-server", "/CN=system:metrics-server", client_ext)
    # service-account token signing key pair
    openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
    openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for key in pki.glob("*.key"):
        key.chmod(0o600)
    (pki / ".complete").write_text(marker)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, server: str, user: str, pki: Path) -> None:
    # JSON is YAML; every client (kubectl, client-go, the Python client) reads it.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "slm-local",
                "cluster": {"server": server, "certificate-authority-data": b64(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(pki / f"{user}.crt"),
                    "client-key-data": b64(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "slm-local", "context": {"cluster": "slm-local", "user": user}}],
        "current-context": "slm-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.chmod(0o600)
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# talking to the components


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range (32768+ by default), so that no
    outgoing connection (of this cluster or another one on the machine) takes it before the
    component binds it."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError("no free port in 20000-32000")


def pick_ports() -> dict[str, int]:
    ports: dict[str, int] = {}
    for name, env in [
        ("apiserver", "SLM_APISERVER_PORT"),
        ("etcd", "SLM_ETCD_PORT"),
        ("etcd_peer", "SLM_ETCD_PEER_PORT"),
        ("controller_manager", ""),
        ("scheduler", ""),
        ("kwok", ""),
    ]:
        value = os.environ.get(env) if env else None
        port = int(value) if value else free_port()
        while port in ports.values():
            port = free_port()
        ports[name] = port
    return ports


def admin_context() -> ssl.SSLContext:
    pki = STATE / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return ctx


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def http_get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as e:
        return 0, str(e)


def api_get(state: dict[str, Any], path: str) -> Any:
    status, body = http_get(f"https://127.0.0.1:{state['ports']['apiserver']}{path}", admin_context())
    if status != 200:
        raise ClusterError(f"GET {path}: {status} {body[:200]}")
    return json.loads(body)


def nodes_ready(state: dict[str, Any]) -> tuple[bool, str]:
    try:
        items = api_get(state, "/api/v1/nodes")["items"]
    except (ClusterError, ValueError) as e:
        return False, str(e)
    by_name = {n["metadata"]["name"]: n for n in items}
    missing = [n for n in EXPECTED_NODES if n not in by_name]
    if missing:
        return False, f"missing nodes {missing}"
    for name in EXPECTED_NODES:
        node = by_name[name]
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        if conds.get("Ready") != "True":
            return False, f"{name} not Ready"
        taints = [t["key"] for t in node.get("spec", {}).get("taints") or []]
        if any(t.startswith("node.kubernetes.io/") for t in taints):
            return False, f"{name} still has {taints}"
    return True, "all nodes Ready"


# --------------------------------------------------------------------------------------------
# up / down / status


def binary(name: str) -> str:
    path = BIN / name
    if not os.access(path, os.X_OK):
        raise ClusterError(f"{path} is missing: run `bash hack/build-bins.sh` (or `make bins`)")
    return str(path)


def ensure_binaries() -> None:
    needed = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl"]
    if all(os.access(BIN / b, os.X_OK) for b in needed):
        return
    if os.environ.get("SLM_BIN_DIR"):
        raise ClusterError(f"binaries missing in SLM_BIN_DIR={BIN}")
    log("binaries missing in bin/: running hack/build-bins.sh")
    subprocess.run(["bash", str(ROOT / "hack" / "build-bins.sh")], check=True)


def command_lines(ports: dict[str, int]) -> dict[str, list[str]]:
    pki = STATE / "pki"
    kc = STATE / "kubeconfigs"
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    return {
        "etcd": [
            binary("etcd"),
            "--name=local",
            f"--data-dir={STATE / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=local={peer_url}",
            "--initial-cluster-state=new",
            # a throwaway test cluster: durability is not worth the fsync latency
            "--unsafe-no-fsync=true",
            "--log-level=warn",
            "--quota-backend-bytes=2147483648",
        ],
        "kube-apiserver": [
            binary("kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--bind-address={'0.0.0.0' if ADVERTISE else '127.0.0.1'}",
            f"--advertise-address={ADVERTISE or '127.0.0.1'}",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={pki / 'apiserver-generated'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins="
            + ",".join(
                [
                    "NamespaceLifecycle",
                    "LimitRanger",
                    "ServiceAccount",
                    "NodeRestriction",
                    "PodSecurity",
                    "DefaultTolerationSeconds",
                    "DefaultStorageClass",
                    "StorageObjectInUseProtection",
                    "PersistentVolumeClaimResize",
                    "RuntimeClass",
                    "Priority",
                    "TaintNodesByCondition",
                    "MutatingAdmissionWebhook",
                    "ValidatingAdmissionPolicy",
                    "ValidatingAdmissionWebhook",
                    "ResourceQuota",
                    # Off in upstream's defaults but on in OpenShift and hardened clusters: an
                    # operator that sets blockOwnerDeletion needs `update` on <owner>/finalizers.
                    "OwnerReferencesPermissionEnforcement",
                ]
            ),
            "--allow-privileged=true",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            # $SLM_CLUSTER_PROFILING=1: /debug/pprof for benchmarks (`kubectl get --raw
            # '/debug/pprof/profile?seconds=30'`); off otherwise, as on a hardened cluster
            "--profiling=" + ("true" if os.environ.get("SLM_CLUSTER_PROFILING") == "1" else "false"),
            "--event-ttl=1h",
            # the aggregation layer (metrics.k8s.io from metrics-server); aggregator routing sends
            # requests to the APIService's endpoint IPs, since the test bed runs no service proxy
            # on the control plane's host network path
            f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
            "--enable-aggregator-routing=true",
        ],
        "kube-controller-manager": [
            binary("kube-controller-manager"),
            f"--kubeconfig={kc / 'kube-controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={kc / 'kube-controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={kc / 'kube-controller-manager.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['controller_manager']}",
            f"--cert-dir={pki / 'kcm-generated'}",
            "--leader-elect=false",
            # '*' = every default controller: garbagecollector, deployment, replicaset,
            # horizontalpodautoscaling, serviceaccount-token, namespace, root-ca-cert-publisher, ...
            "--controllers=*",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--horizontal-pod-autoscaler-sync-period=5s",
            "--profiling=false",
        ],
        "kube-scheduler": [
            binary("kube-scheduler"),
            f"--kubeconfig={kc / 'kube-scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={kc / 'kube-scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={kc / 'kube-scheduler.kubeconfig'}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            f"--cert-dir={pki / 'scheduler-generated'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            binary("kwok"),
            f"--config={STATE / 'kwok.yaml'}",
            f"--kubeconfig={kc / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
        ],
    }


def apiserver_ready(state: dict[str, Any]) -> bool:
    status, _ = http_get(f"https://127.0.0.1:{state['ports']['apiserver']}/readyz", admin_context())
    return status == 200


def component_healthy(port: int, scheme: str = "https") -> bool:
    ctx = insecure_context() if scheme == "https" else None
    status, _ = http_get(f"{scheme}://127.0.0.1:{port}/healthz", ctx)
    return status == 200


def is_up(state: dict[str, Any]) -> bool:
    if not state.get("ports") or set(running(state)) != set(COMPONENTS):
        return False
    return apiserver_ready(state) and nodes_ready(state)[0]


def kubectl_argv() -> list[str]:
    own = BIN / "kubectl"
    return [str(own) if os.access(own, os.X_OK) else "kubectl", f"--kubeconfig={STATE / 'kubeconfig'}"]


def cmd_up() -> int:
    t0 = time.monotonic()
    with locked():
        state = load_state()
        if is_up(state):
            log(f"already up: export KUBECONFIG={STATE / 'kubeconfig'}")
            return 0
        if running(state):
            log("partially running: stopping the leftovers first")
            stop_all(state)
        ensure_binaries()
        make_pki(STATE / "pki")
        # One retry with fresh ports: a component that dies at start (a port taken between our
        # check and its bind, a starved machine) should not fail a whole test session.
        for attempt in (1, 2):
            try:
                start_cluster(t0 + UP_TIMEOUT * attempt / 2)
                break
            except (ClusterError, subprocess.SubprocessError) as e:
                if isinstance(e, subprocess.CalledProcessError):
                    log(f"{e.cmd} failed: {(e.stderr or b'').decode(errors='replace')}")
                log(f"up failed (attempt {attempt}/2): {e}")
                stop_all(load_state())
                if attempt == 2:
                    return 1
    log(f"up in {time.monotonic() - t0:.1f}s: export KUBECONFIG={STATE / 'kubeconfig'}")
    return 0


def start_cluster(deadline: float) -> None:
    pki = STATE / "pki"
    shutil.rmtree(STATE / "etcd", ignore_errors=True)
    SUP.children.clear()
    ports = pick_ports()
    state: dict[str, Any] = {"ports": ports, "pids": {}, "started": time.time(), "state_dir": str(STATE)}
    save_state(state)
    api = f"https://127.0.0.1:{ports['apiserver']}"
    for user in ["kube-controller-manager", "kube-scheduler", "kwok", "metrics-server"]:
        write_kubeconfig(STATE / "kubeconfigs" / f"{user}.kubeconfig", api, user, pki)
    (STATE / "kwok.yaml").write_text(
        "# empty on purpose: kwok uses its default (fast) node and pod stages\n"
        "apiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions: {}\n"
    )
    argv = command_lines(ports)
    start("etcd", argv["etcd"], state)
    wait(
        "etcd /health",
        lambda: http_get(f"http://127.0.0.1:{ports['etcd']}/health")[0] == 200,
        deadline,
        ["etcd"],
    )
    start("kube-apiserver", argv["kube-apiserver"], state)
    wait("kube-apiserver /readyz", lambda: apiserver_ready(state), deadline, ["etcd", "kube-apiserver"])
    # the admin kubeconfig exists only once the API answers: its presence means "usable"
    write_kubeconfig(STATE / "kubeconfig", api, "admin", pki)
    for name in ["kube-controller-manager", "kube-scheduler", "kwok"]:
        start(name, argv[name], state)
    subprocess.run(
        [*kubectl_argv(), "apply", "-f", str(NODES_MANIFEST)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait(
        "kube-controller-manager /healthz",
        lambda: component_healthy(ports["controller_manager"]),
        deadline,
        ["kube-controller-manager"],
    )
    wait(
        "kube-scheduler /healthz",
        lambda: component_healthy(ports["scheduler"]),
        deadline,
        ["kube-scheduler"],
    )
    wait("node pools Ready", lambda: nodes_ready(state)[0], deadline, COMPONENTS)
    # the serviceaccount controller works: pods can be created in `default`
    wait(
        "default/default ServiceAccount",
        lambda: sa_exists(state, "default", "default"),
        deadline,
        COMPONENTS,
    )


def sa_exists(state: dict[str, Any], ns: str, name: str) -> bool:
    try:
        api_get(state, f"/api/v1/namespaces/{ns}/serviceaccounts/{name}")
        return True
    except (ClusterError, ValueError):
        return False


def stop_all(state: dict[str, Any]) -> None:
    """Stop in reverse start order, each one gone before the next: kube-apiserver removes its
    endpoint lease from etcd while it shuts down, so etcd goes last."""
    pids = running(state)
    for name in reversed(COMPONENTS):
        if name in pids:
            SUP.stop(name, pids[name], timeout=20.0 if name == "kube-apiserver" else 10.0)
    if state:
        state["pids"] = {}
        save_state(state)
    with contextlib.suppress(FileNotFoundError):
        (STATE / "kubeconfig").unlink()


def cmd_down(purge: bool) -> int:
    if not STATE.exists():
        log("not running")
        return 0
    with locked():
        state = load_state()
        pids = running(state)
        stop_all(state)
        log(f"stopped {', '.join(sorted(pids)) or 'nothing'}")
        if purge:
            shutil.rmtree(STATE / "etcd", ignore_errors=True)
    if purge:
        shutil.rmtree(STATE, ignore_errors=True)
        log(f"removed {STATE}")
    return 0


def cmd_restart(name: str, down: float) -> int:
    """Stop one component, keep it down for `down` seconds, start it again (etcd keeps its data)."""
    if name not in COMPONENTS:
        log(f"unknown component {name!r} (one of {', '.join(COMPONENTS)})")
        return 2
    with locked():
        state = load_state()
        pids = running(state)
        if name not in pids:
            log(f"{name} is not running")
            return 1
        SUP.stop(name, pids[name], timeout=20.0)
        log(f"stopped {name}; starting it again in {down:.0f}s")
        time.sleep(down)
        ports = state["ports"]
        start(name, command_lines(ports)[name], state)
        deadline = time.monotonic() + UP_TIMEOUT
        if name == "etcd":
            check = lambda: (  # noqa: E731
                http_get(f"http://127.0.0.1:{ports['etcd']}/health")[0] == 200 and apiserver_ready(state)
            )
        else:
            check = lambda: apiserver_ready(state)  # noqa: E731
        wait(f"{name} back", check, deadline, [name])
    log(f"{name} is back")
    return 0


def cmd_status() -> int:
    state = load_state()
    pids = running(state)
    ports = state.get("ports", {})
    for name in COMPONENTS:
        pid = pids.get(name)
        print(f"{name:25s} {'running pid ' + str(pid) if pid else 'stopped'}")
    if not ports or "kube-apiserver" not in pids:
        print("cluster: down")
        return 1
    ready = apiserver_ready(state)
    ok, why = nodes_ready(state) if ready else (False, "apiserver not ready")
    print(f"apiserver: https://127.0.0.1:{ports['apiserver']} readyz={'ok' if ready else 'failing'}")
    print(f"nodes: {why}")
    print(f"kubeconfig: {STATE / 'kubeconfig'}")
    up = ready and ok and set(pids) == set(COMPONENTS)
    print(f"cluster: {'up' if up else 'degraded'}")
    return 0 if up else 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "up":
            return cmd_up()
        if cmd == "down":
            return cmd_down(purge="--purge" in rest)
        if cmd == "status":
            return cmd_status()
        if cmd == "restart" and rest:
            return cmd_restart(rest[0], float(rest[1]) if len(rest) > 1 else 0.0)
        if cmd == "env":
            print(f"export KUBECONFIG={STATE / 'kubeconfig'}")
            return 0
    except ClusterError as e:
        log(str(e))
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
