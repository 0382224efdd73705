#!/usr/bin/env python3
"""One REAL worker node (kubelet + containerd + runc + CNI + kube-proxy) on the local control plane.

    hack/real-node/up       start containerd, kubelet and kube-proxy; wait until the node is Ready
    hack/real-node/down     drain and delete the node, stop what `up` started (only that),
                            unmount, remove the bridge, iptables chains and cgroups `up` created
    hack/real-node/status   print what runs; exit 0 when the node is Ready
    hack/real-node/env      print shell variables: REAL_NODE_NAME, REAL_NODE_IP, CONTAINERD_ADDRESS

The control plane must be up (hack/local-cluster up): the node authenticates with client
certificates signed by its CA (.local-cluster/pki/ca.{crt,key}). Needs root and the Debian packages
of hack/real-node/install-deps.sh; kubelet comes from bin/ (hack/build-bins.sh), kube-proxy is built
here from the same pinned module (hack/k8sbin) when bin/ has none.

The node:
    name        slm-real-node                         (SLM_REAL_NODE_NAME)
    labels      node.kubernetes.io/instance-type=cpu-real, slm.dev/real-node=true
    taint       slm.dev/real-node=true:NoSchedule     so that only pods that ask for it land here
                                                      (the KWOK pools' workloads never do)
    IP          10.245.0.1 on bridge slmrn0; pods get 10.245.0.0/24 (not kwok's 10.244.0.0/16)

State lives in $SLM_REAL_NODE_DIR (default <repo>/.local-cluster/real-node):
    state.json   pids, ports, and what `up` changed on the host (for `down`)
    pki/         node and kube-proxy client certificates; kubelet serving certificate
    containerd/  config.toml, root/ (images, snapshots), state/ (sockets, netns mounts)
    kubelet/     config.yaml, root dir; pod-logs/
    cni/         net.d/ (the conflist), ipam/ (host-local leases)
    logs/        containerd.log, kubelet.log, kube-proxy.log
Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLUSTER = Path(os.environ.get("SLM_CLUSTER_DIR") or ROOT / ".local-cluster").resolve()
STATE = Path(os.environ.get("SLM_REAL_NODE_DIR") or CLUSTER / "real-node").resolve()
BIN = Path(os.environ.get("SLM_BIN_DIR") or ROOT / "bin").resolve()
sys.path.insert(0, str(ROOT / "hack" / "lib"))
from supervisor import Supervisor, cmdline  # noqa: E402  (stdlib-only, shared with local-cluster)
CACHE = Path(os.environ.get("SLM_CACHE_DIR") or Path.home() / ".cache" / "slm-operator")

NODE = os.environ.get("SLM_REAL_NODE_NAME", "slm-real-node")
BRIDGE = "slmrn0"
NODE_IP = "10.245.0.1"
POD_SUBNET = "10.245.0.0/24"
# kwok hands out fake pod IPs from this range: nothing on the host may route there for real.
KWOK_POD_CIDR = "10.244.0.0/16"
# hack/local-cluster's --service-cluster-ip-range. Routed onto the bridge so that ClusterIP traffic
# from the host gets the node IP as source and, should kube-proxy not have programmed a Service
# yet, goes nowhere instead of to the default gateway.
SERVICE_CIDR = os.environ.get("SLM_SERVICE_CIDR", "10.96.0.0/16")
LABELS = {"node.kubernetes.io/instance-type": "cpu-real", "slm.dev/real-node": "true"}
TAINT = {"key": "slm.dev/real-node", "value": "true", "effect": "NoSchedule"}
PAUSE_IMAGE = "localhost/slm-pause:1"
CNI_BIN = Path(os.environ.get("SLM_CNI_BIN_DIR", "/usr/lib/cni"))
CGROUP_ROOT = "slm-real-node"
UP_TIMEOUT = float(os.environ.get("SLM_REAL_NODE_UP_TIMEOUT", "180"))
# start order; `down` stops in reverse. metrics-server serves metrics.k8s.io (the HPA's CPU and
# memory) from this node's kubelet: the KWOK pools have no kubelet to scrape.
COMPONENTS = ["containerd", "kubelet", "kube-proxy", "metrics-server"]
METRICS_SERVER_RESOLUTION = os.environ.get("SLM_METRICS_RESOLUTION", "10s")


class NodeError(RuntimeError):
    pass


# --------------------------------------------------------------------------------------------
# state and processes: hack/lib/supervisor.py, shared with hack/local-cluster

SUP = Supervisor(STATE, "real-node", NodeError)
log, load_state, save_state, locked = SUP.log, SUP.load_state, SUP.save_state, SUP.locked
running, start, stop, wait = SUP.running, SUP.start, SUP.stop, SUP.wait


def shim_pids() -> list[int]:
    """containerd-shim-runc-v2 processes of OUR containerd (their -address names our socket)."""
    sock = str(STATE / "containerd" / "containerd.sock")
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            line = cmdline(int(entry.name))
            if line and "containerd-shim" in line and sock in line:
                out.append(int(entry.name))
    return out


def run(*argv: str, check: bool = True, timeout: float = 60, quiet: bool = False) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    if not quiet and proc.returncode != 0:
        log(f"{' '.join(argv)}: {proc.stderr.strip()[-300:]}")
    return proc.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------
# the control plane (hack/local-cluster's state dir)


def cluster_state() -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((CLUSTER / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise NodeError(f"no control plane state in {CLUSTER}: run `hack/local-cluster up` ({e})") from e
    return data


def apiserver_url() -> str:
    port = cluster_state().get("ports", {}).get("apiserver")
    if not port:
        raise NodeError(f"{CLUSTER}/state.json names no apiserver port: is the control plane up?")
    return f"https://127.0.0.1:{port}"


def api(method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    pki = CLUSTER / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"}
    req = urllib.request.Request(apiserver_url() + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            raw = resp.read()
            try:
                return resp.status, json.loads(raw or b"null")
            except ValueError:
                return resp.status, raw.decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (OSError, ssl.SSLError, NodeError) as e:
        return 0, str(e)


_PATHS = {  # (apiVersion, kind) -> collection path format; {ns} for namespaced kinds
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"):
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"):
        "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    ("v1", "Service"): "/api/v1/namespaces/{ns}/services",
    ("v1", "Endpoints"): "/api/v1/namespaces/{ns}/endpoints",
    ("apiregistration.k8s.io/v1", "APIService"): "/apis/apiregistration.k8s.io/v1/apiservices",
}  # fmt: skip


def apply_object(obj: dict[str, Any]) -> None:
    """Server-side apply of one object with the admin certificate (field manager `real-node`)."""
    meta = obj["metadata"]
    path = _PATHS[(obj["apiVersion"], obj["kind"])].format(ns=meta.get("namespace", ""))
    pki = CLUSTER / "pki"
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    req = urllib.request.Request(
        f"{apiserver_url()}{path}/{meta['name']}?fieldManager=real-node&force=true",
        data=json.dumps(obj).encode(),
        method="PATCH",
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10):
            return
    except urllib.error.HTTPError as e:
        raise NodeError(f"apply {obj['kind']} {meta['name']}: {e.code} {e.read().decode(errors='replace')}") from e
    except OSError as e:
        raise NodeError(f"apply {obj['kind']} {meta['name']}: {e}") from e


def node_ready() -> tuple[bool, str]:
    status, node = api("GET", f"/api/v1/nodes/{NODE}")
    if status != 200:
        return False, f"node {NODE}: {status} {str(node)[:200]}"
    conds = {c["type"]: c for c in node.get("status", {}).get("conditions", [])}
    ready = conds.get("Ready", {})
    if ready.get("status") != "True":
        return False, f"node {NODE} not Ready: {ready.get('reason')} {ready.get('message', '')[:300]}"
    return True, f"node {NODE} Ready"


# --------------------------------------------------------------------------------------------
# certificates


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def client_cert(name: str, subj: str) -> None:
    """A client certificate signed by the cluster CA (remade when the CA changes)."""
    pki = STATE / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    ca_crt, ca_key = CLUSTER / "pki" / "ca.crt", CLUSTER / "pki" / "ca.key"
    if not ca_key.exists():
        raise NodeError(f"{ca_key} is missing: is the control plane up (hack/local-cluster up)?")
    ca_sum = hashlib.sha256(ca_crt.read_bytes()).hexdigest()
    stamp = pki / f"{name}.ca-sha256"
    if (pki / f"{name}.crt").exists() and stamp.exists() and stamp.read_text() == ca_sum:
        return
    key, csr, ext, crt = (pki / f"{name}.{s}" for s in ("key", "csr", "ext", "crt"))
    openssl("genrsa", "-out", str(key), "2048")
    key.chmod(0o600)
    openssl("req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr))
    ext.write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=clientAuth\n"
    )
    openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key), "-CAcreateserial",
        "-CAserial", str(pki / "ca.srl"), "-sha256", "-days", "3650", "-extfile", str(ext), "-out", str(crt),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()
    stamp.write_text(ca_sum)


def write_kubeconfig(path: Path, user: str) -> None:
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    pki = STATE / "pki"
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "slm-local",
                "cluster": {"server": apiserver_url(), "certificate-authority-data": b64(CLUSTER / "pki/ca.crt")},
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
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------
# host preparation (each change is recorded in state["host"] so that `down` undoes exactly it)


def cgroup_v1_controllers() -> list[Path]:
    """Mounted cgroup v1 hierarchies (this VM: cpu, cpuacct, cpuset, memory, ..., name=systemd)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] == "cgroup":
            out.append(Path(left.split()[4]))
    return sorted(set(out))


def cgroup_version() -> int:
    fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout
    return 2 if fs.strip() == "cgroup2fs" else 1


def prepare_cgroups(host: dict[str, Any]) -> None:
    """kubelet --cgroup-root must exist in every hierarchy; cpuset children need cpus/mems set."""
    made = host.setdefault("cgroups", [])
    if cgroup_version() == 2:
        dirs = [Path("/sys/fs/cgroup") / CGROUP_ROOT]
    else:
        dirs = [mnt / CGROUP_ROOT for mnt in cgroup_v1_controllers()]
    for d in dirs:
        if not d.exists():
            d.mkdir()
            made.append(str(d))
        for f in ("cpuset.cpus", "cpuset.mems"):
            if (d / f).exists() and not (d / f).read_text().strip():
                (d / f).write_text((d.parent / f).read_text())


HOSTS_MARK = "# added by hack/real-node"


def prepare_network(host: dict[str, Any]) -> None:
    links = run("ip", "-o", "link", "show")
    if f": {BRIDGE}:" not in links and f": {BRIDGE}@" not in links:
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        host["bridge"] = BRIDGE
    addrs = run("ip", "-o", "-4", "addr", "show", "dev", BRIDGE)
    if f"{NODE_IP}/" not in addrs:
        run("ip", "addr", "add", f"{NODE_IP}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    # Fake kwok pod IPs must never leave this machine (kube-proxy programs them as endpoints).
    if not run("ip", "-4", "route", "show", KWOK_POD_CIDR).strip():
        run("ip", "route", "add", "unreachable", KWOK_POD_CIDR)
        host["unreachable_route"] = KWOK_POD_CIDR
    # The apiserver reaches kubelets by the node's Hostname address first (its default
    # --kubelet-preferred-address-types); without this line `kubectl logs/port-forward` fail.
    hosts = Path("/etc/hosts")
    if HOSTS_MARK not in hosts.read_text():
        with hosts.open("a") as fh:
            fh.write(f"{NODE_IP} {NODE} {HOSTS_MARK}\n")
        host["hosts_entry"] = True
    if not run("ip", "-4", "route", "show", SERVICE_CIDR).strip():
        run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP)
        host["service_route"] = SERVICE_CIDR


def iptables_chains() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table in ("filter", "nat", "mangle"):
        text = run("iptables-save", "-t", table, check=False, quiet=True)
        out[table] = [ln[1:].split()[0] for ln in text.splitlines() if ln.startswith(":")]
    return out


# --------------------------------------------------------------------------------------------
# configuration files


CAP_SYS_RESOURCE = 24


def has_capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


def containerd_config(state: dict[str, Any]) -> Path:
    c = STATE / "containerd"
    # SLM_REAL_NODE_RUNC: another runc binary (or a debugging wrapper around it)
    runc = os.environ.get("SLM_REAL_NODE_RUNC")
    binary = f'\n        BinaryName = "{runc}"' if runc else ""
    cfg = f"""# Generated by hack/real-node: a containerd of its own (root, state, socket), CRI for one kubelet.
version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{c / "containerd.sock"}"

[debug]
  level = "{"debug" if os.environ.get("SLM_REAL_NODE_DEBUG") else "info"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{c / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  # no registry is reachable: the sandbox image is built locally (pause.c) and imported by `up`
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE (these VMs drop it) nobody may lower an oom_score_adj: runc would
  # fail every sandbox ("failed to update /proc/self/oom_score_adj"), so clamp to ours instead.
  restrict_oom_score_adj = {"false" if has_capability(CAP_SYS_RESOURCE) else "true"}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{STATE / "cni" / "net.d"}"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{c / "runc"}"
        SystemdCgroup = false{binary}
"""
    c.mkdir(parents=True, exist_ok=True)
    (c / "config.toml").write_text(cfg)
    return c / "config.toml"


def cni_config() -> None:
    d = STATE / "cni" / "net.d"
    d.mkdir(parents=True, exist_ok=True)
    conf = {
        "cniVersion": "1.0.0",
        "name": "slm-real-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # no masquerade and no ip_forward change: pods talk to this host (model server,
                # probes, Service traffic from the host) and to nothing beyond it
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(STATE / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (d / "10-slm-real-node.conflist").write_text(json.dumps(conf, indent=2) + "\n")


def kubelet_config(ports: dict[str, int]) -> Path:
    k = STATE / "kubelet"
    k.mkdir(parents=True, exist_ok=True)
    cfg = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": ports["kubelet"],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports["kubelet_healthz"],
        # The apiserver of the local control plane calls kubelets without a client certificate
        # (no --kubelet-client-certificate), so logs/exec/port-forward need anonymous access. The
        # kubelet listens only on the bridge address of this machine.
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(CLUSTER / "pki" / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "tlsCertFile": str(STATE / "pki" / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(STATE / "pki" / "kubelet-serving.key"),
        "containerRuntimeEndpoint": f"unix://{STATE / 'containerd' / 'containerd.sock'}",
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": f"/{CGROUP_ROOT}",
        "cgroupsPerQOS": True,
        # Kubernetes 1.34 refuses cgroup v1 unless told otherwise; these VMs are cgroup v1.
        "failCgroupV1": cgroup_version() != 1,
        "failSwapOn": False,
        "podLogsDir": str(k / "pod-logs"),
        "resolvConf": "/etc/resolv.conf",
        "registerNode": True,
        "registerWithTaints": [TAINT],
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
        "nodeStatusUpdateFrequency": "5s",
        "nodeStatusReportFrequency": "30s",
        "imageMinimumGCAge": "24h",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # a shared dev VM: do not evict model pods because the disk is busy with everyone's builds
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "enforceNodeAllocatable": ["pods"],
        "protectKernelDefaults": False,
        "makeIPTablesUtilChains": False,
        "maxPods": 20,
        "localStorageCapacityIsolation": True,
        "shutdownGracePeriod": "0s",
    }
    (k / "config.yaml").write_text(json.dumps(cfg, indent=2) + "\n")
    return k / "config.yaml"


def serving_cert() -> None:
    """Self-signed kubelet serving certificate for the node IP (the apiserver does not verify it)."""
    pki = STATE / "pki"
    crt, key = pki / "kubelet-serving.crt", pki / "kubelet-serving.key"
    if crt.exists() and key.exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    openssl(
        "req", "-x509", "-nodes", "-newkey", "rsa:2048", "-sha256", "-days", "3650",
        "-keyout", str(key), "-out", str(crt), "-subj", f"/CN={NODE}",
        "-addext", f"subjectAltName=IP:{NODE_IP},DNS:{NODE}",
    )  # fmt: skip
    key.chmod(0o600)


def kube_proxy_config(ports: dict[str, int]) -> Path:
    kp = STATE / "kube-proxy"
    kp.mkdir(parents=True, exist_ok=True)
    cfg = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(kp / "kubeconfig")},
        "hostnameOverride": NODE,
        "bindAddress": "127.0.0.1",
        "healthzBindAddress": f"127.0.0.1:{ports['proxy_healthz']}",
        "metricsBindAddress": f"127.0.0.1:{ports['proxy_metrics']}",
        "clusterCIDR": POD_SUBNET,
        # leave the host's sysctls alone: no conntrack table sizing, no route_localnet
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        "iptables": {"localhostNodePorts": False, "syncPeriod": "5s", "minSyncPeriod": "0s"},
        "nodePortAddresses": [f"{NODE_IP}/32"],
    }
    (kp / "config.yaml").write_text(json.dumps(cfg, indent=2) + "\n")
    return kp / "config.yaml"


# --------------------------------------------------------------------------------------------
# binaries


def metrics_server_binary() -> Path:
    path = BIN / "metrics-server"
    if not path.exists():
        raise NodeError(f"{path} not found: run `make bins` (hack/build-go-tool.sh metrics-server ...)")
    return path


def metrics_server_objects(port: int) -> list[dict[str, Any]]:
    """What registers the metrics-server process on this host as the metrics.k8s.io API: its RBAC
    (as in metrics-server's own manifest), a selector-less Service whose Endpoints is the node IP
    (the apiserver runs with --enable-aggregator-routing), and the APIService. Its serving cert is
    self-signed, hence insecureSkipTLSVerify: a test bed only."""
    rbac = "rbac.authorization.k8s.io/v1"
    user = [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:metrics-server"}]
    ns = {"name": "metrics-server", "namespace": "kube-system"}
    return [
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": "system:metrics-server"},
         "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                   {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": "system:metrics-server"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:metrics-server"}, "subjects": user},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding",
         "metadata": {"name": "metrics-server:system:auth-delegator"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": "system:auth-delegator"}, "subjects": user},
        {"apiVersion": rbac, "kind": "RoleBinding",
         "metadata": {"name": "metrics-server-auth-reader", "namespace": "kube-system"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "extension-apiserver-authentication-reader"}, "subjects": user},
        {"apiVersion": "v1", "kind": "Service", "metadata": ns,
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": ns,
         "subsets": [{"addresses": [{"ip": NODE_IP}],
                      "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.metrics.k8s.io"},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "insecureSkipTLSVerify": True,
                  "groupPriorityMinimum": 100, "versionPriority": 100,
                  "service": {"name": "metrics-server", "namespace": "kube-system", "port": 443}}},
    ]  # fmt: skip


def metrics_api_available() -> bool:
    status, body = api("GET", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io")
    if status != 200 or not isinstance(body, dict):
        return False
    conditions = body.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def kubelet_binary() -> Path:
    path = BIN / "kubelet"
    if not os.access(path, os.X_OK):
        raise NodeError(f"{path} is missing: run `bash hack/build-bins.sh` (it builds kubelet)")
    return path


def kube_proxy_binary() -> Path:
    """bin/kube-proxy if hack/build-bins.sh made one; else build it (once, cached) from hack/k8sbin."""
    own = BIN / "kube-proxy"
    if os.access(own, os.X_OK):
        return own
    out = subprocess.run(
        ["bash", str(HERE / "build-kube-proxy.sh")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise NodeError(f"building kube-proxy failed:\n{out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def ctr(*args: str, timeout: float = 300) -> str:
    return run("ctr", "--address", str(STATE / "containerd" / "containerd.sock"), "-n", "k8s.io", *args,
               timeout=timeout)  # fmt: skip


def containerd_images() -> set[str]:
    out = ctr("images", "ls", "-q")
    return set(out.split())


def pause_archive() -> Path:
    """A docker-archive tar of the sandbox image: pause.c, compiled statically, as the only file."""
    src = HERE / "pause.c"
    key = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    out = CACHE / "images" / f"slm-pause-{key}.tar"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    build = STATE / "pause-build"
    build.mkdir(parents=True, exist_ok=True)
    run("gcc", "-static", "-O2", "-s", "-o", str(build / "pause"), str(src))
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pause")
        data = (build / "pause").read_bytes()
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        tar.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/real-node/pause.c"}],
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [PAUSE_IMAGE], "Layers": ["layer/layer.tar"]}]
    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        for name, blob in [
            (config_name, config_bytes),
            ("layer/layer.tar", layer_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(blob), 0
            tar.addfile(info, io.BytesIO(blob))
    tmp.replace(out)
    return out


def import_image(archive: Path) -> None:
    ctr("images", "import", "--snapshotter", "overlayfs", str(archive), timeout=600)


# --------------------------------------------------------------------------------------------
# up


# One real node per host: the bridge, node IP, routes and cgroup root are host-wide names.
OWNER = Path(os.environ.get("SLM_REAL_NODE_OWNER_FILE", "/run/slm-real-node.owner"))


def claim_host() -> None:
    try:
        other = Path(OWNER.read_text().strip())
    except OSError:
        other = None
    if other is not None and other != STATE:
        try:
            pids = json.loads((other / "state.json").read_text()).get("pids", {})
        except (OSError, ValueError):
            pids = {}
        alive = [n for n, p in pids.items() if (cmdline(int(p)) or "").find(f"{other}/") >= 0]
        if alive:
            raise NodeError(f"another real node runs on this host (state {other}: {', '.join(alive)}); "
                            f"stop it first: SLM_REAL_NODE_DIR={other} hack/real-node/down")
    OWNER.write_text(f"{STATE}\n")


def release_host() -> None:
    with contextlib.suppress(OSError):
        if Path(OWNER.read_text().strip()) == STATE:
            OWNER.unlink()


def is_up(state: dict[str, Any]) -> bool:
    return set(running(state)) == set(COMPONENTS) and node_ready()[0]


def cmd_up() -> int:
    if os.geteuid() != 0:
        raise NodeError("must run as root (kubelet, containerd, iptables, mounts)")
    for tool in ("containerd", "runc", "ctr", "iptables", "openssl", "gcc", "ip"):
        if not shutil.which(tool):
            raise NodeError(f"{tool} not found: run `bash hack/real-node/install-deps.sh`")
    if not (CNI_BIN / "bridge").exists():
        raise NodeError(f"CNI plugins missing in {CNI_BIN}: run `bash hack/real-node/install-deps.sh`")
    t0 = time.monotonic()
    with locked():
        state = load_state()
        if is_up(state):
            log(f"already up: node {NODE} ({NODE_IP})")
            return 0
        claim_host()
        if running(state) or shim_pids():
            log("partially running: cleaning up first")
            teardown(state)
            state = load_state()
        kubelet = kubelet_binary()
        kube_proxy = kube_proxy_binary()
        metrics_server = metrics_server_binary()
        status, _ = api("GET", "/readyz")
        if status != 200:
            raise NodeError(f"control plane not ready ({status}): run `hack/local-cluster up`")
        ports = {
            "kubelet": free_port(),
            "kubelet_healthz": free_port(),
            "proxy_healthz": free_port(),
            "proxy_metrics": free_port(),
            "metrics_server": free_port(),
        }
        host: dict[str, Any] = {"chains_before": iptables_chains()}
        state = {"pids": {}, "ports": ports, "host": host, "node": NODE, "started": time.time()}
        save_state(state)
        for d in ("logs", "kubelet", "cni/ipam"):
            (STATE / d).mkdir(parents=True, exist_ok=True)
        client_cert("kubelet", f"/O=system:nodes/CN=system:node:{NODE}")
        client_cert("kube-proxy", "/CN=system:kube-proxy")
        serving_cert()
        write_kubeconfig(STATE / "kubelet" / "kubeconfig", "kubelet")
        write_kubeconfig(STATE / "kube-proxy" / "kubeconfig", "kube-proxy")
        prepare_cgroups(host)
        prepare_network(host)
        save_state(state)
        cni_config()
        deadline = t0 + UP_TIMEOUT
        try:
            start("containerd", ["containerd", "--config", str(containerd_config(state))], state)
            sock = STATE / "containerd" / "containerd.sock"
            wait("containerd socket", lambda: sock.exists() and _ctr_ok(), deadline, ["containerd"])
            if PAUSE_IMAGE not in containerd_images():
                import_image(pause_archive())
            start(
                "kubelet",
                [
                    str(kubelet),
                    f"--config={kubelet_config(ports)}",
                    f"--kubeconfig={STATE / 'kubelet' / 'kubeconfig'}",
                    f"--root-dir={STATE / 'kubelet' / 'root'}",
                    f"--cert-dir={STATE / 'pki'}",
                    f"--hostname-override={NODE}",
                    f"--node-ip={NODE_IP}",
                    "--node-labels=" + ",".join(f"{k}={v}" for k, v in LABELS.items()),
                    "--v=1",
                ],
                state,
            )
            wait("node Ready", lambda: node_ready()[0], deadline, ["containerd", "kubelet"])
            start(
                "kube-proxy",
                [str(kube_proxy), f"--config={kube_proxy_config(ports)}", "--v=1"],
                state,
            )
            wait(
                "kube-proxy /healthz",
                lambda: _http_ok(f"http://127.0.0.1:{ports['proxy_healthz']}/healthz"),
                deadline,
                ["kube-proxy"],
            )
            ms_kubeconfig = CLUSTER / "kubeconfigs" / "metrics-server.kubeconfig"
            start(
                "metrics-server",
                [
                    str(metrics_server),
                    f"--kubeconfig={ms_kubeconfig}",
                    f"--authentication-kubeconfig={ms_kubeconfig}",
                    f"--authorization-kubeconfig={ms_kubeconfig}",
                    f"--bind-address={NODE_IP}",
                    f"--secure-port={ports['metrics_server']}",
                    f"--cert-dir={STATE / 'metrics-server'}",
                    # the kubelet's serving certificate is self-signed (serving_cert)
                    "--kubelet-insecure-tls",
                    "--kubelet-preferred-address-types=InternalIP",
                    "--kubelet-use-node-status-port",
                    f"--metric-resolution={METRICS_SERVER_RESOLUTION}",
                    "--kubelet-request-timeout=5s",  # must stay below the resolution
                    "--node-selector=" + ",".join(f"{k}={v}" for k, v in LABELS.items()),
                ],
                state,
            )
            for obj in metrics_server_objects(ports["metrics_server"]):
                apply_object(obj)
            wait("metrics.k8s.io Available", metrics_api_available, deadline, ["metrics-server"])
        except (NodeError, subprocess.SubprocessError) as e:
            log(f"up failed: {e}")
            teardown(load_state())
            return 1
    log(f"up in {time.monotonic() - t0:.1f}s: node {NODE} ({NODE_IP}) Ready")
    return 0


def _ctr_ok() -> bool:
    try:
        ctr("version", timeout=5)
        return True
    except (NodeError, subprocess.SubprocessError):
        return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


# --------------------------------------------------------------------------------------------
# down


def drain(timeout: float = 60) -> None:
    """Delete the node's pods (the kubelet tears their sandboxes down through CNI), then the node."""
    status, _ = api("GET", f"/api/v1/nodes/{NODE}")
    if status != 200:
        return
    api("PATCH", f"/api/v1/nodes/{NODE}", {"spec": {"unschedulable": True}})
    status, pods = api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}")
    if status == 200:
        for pod in pods.get("items", []):
            meta = pod["metadata"]
            api("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 5})  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, pods = api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{NODE}")
        if status != 200 or not pods.get("items"):
            break
        time.sleep(1)


def sandboxes_gone(timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not ctr("tasks", "ls", "-q", timeout=10).split():
                return
        except (NodeError, subprocess.SubprocessError):
            return
        time.sleep(1)


def teardown(state: dict[str, Any]) -> None:
    """Undo everything `up` did, as far as it got. Safe to run more than once."""
    pids = running(state)
    stop_demo_operator()
    if "metrics-server" in pids:
        stop("metrics-server", pids["metrics-server"])
        with contextlib.suppress(NodeError):
            api("DELETE", "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io")
    if "kubelet" in pids and "containerd" in pids:
        with contextlib.suppress(NodeError):
            drain()
            sandboxes_gone(30)
    if "kube-proxy" in pids:
        stop("kube-proxy", pids["kube-proxy"])
    if state.get("pids", {}).get("kube-proxy") or "kube-proxy" in pids:
        with contextlib.suppress(NodeError, subprocess.SubprocessError):
            # removes every KUBE-* rule and chain kube-proxy (iptables and nftables modes) made
            run(str(kube_proxy_binary()), "--cleanup", check=False, quiet=True)
    if "kubelet" in pids:
        stop("kubelet", pids["kubelet"])
    if "containerd" in pids:
        # anything the kubelet did not tear down: kill its tasks, then stop containerd
        with contextlib.suppress(NodeError, subprocess.SubprocessError):
            for task in ctr("tasks", "ls", "-q", timeout=10).split():
                ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=10)
        time.sleep(1)
        stop("containerd", pids["containerd"])
    for pid in shim_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    unmount_all()
    host = state.get("host", {})
    clean_iptables(host.get("chains_before"))
    if host.get("hosts_entry"):
        hosts = Path("/etc/hosts")
        kept = [ln for ln in hosts.read_text().splitlines(keepends=True) if HOSTS_MARK not in ln]
        hosts.write_text("".join(kept))
    if host.get("service_route"):
        run("ip", "route", "del", host["service_route"], "dev", BRIDGE, check=False, quiet=True)
    if host.get("bridge"):
        run("ip", "link", "del", host["bridge"], check=False, quiet=True)
    else:
        run("ip", "addr", "del", f"{NODE_IP}/24", "dev", BRIDGE, check=False, quiet=True)
    if host.get("unreachable_route"):
        run("ip", "route", "del", "unreachable", host["unreachable_route"], check=False, quiet=True)
    for d in host.get("cgroups", []):
        remove_cgroup_tree(Path(d))
    shutil.rmtree(STATE / "cni" / "ipam", ignore_errors=True)
    with contextlib.suppress(NodeError):
        if api("GET", f"/api/v1/nodes/{NODE}")[0] == 200:
            api("DELETE", f"/api/v1/nodes/{NODE}")
    state["pids"] = {}
    state["host"] = {}
    save_state(state)
    release_host()


def stop_demo_operator() -> None:
    """What demo.sh started, if it still runs (their pid files are ours): `slm-operator run` and
    the model source (model_source.py serve)."""
    for name, marker in (("demo-operator.pid", "slm-operator"), ("demo-model-source.pid", "model_source.py")):
        pidfile = STATE / name
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        line = cmdline(pid)
        if line and marker in line:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        pidfile.unlink(missing_ok=True)


def unmount_all() -> None:
    """Unmount every mount under the state dir, deepest first (overlay rootfs, netns, tmpfs)."""
    for _ in range(3):
        mounts = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == str(STATE) or mnt.startswith(f"{STATE}/"):
                mounts.append(mnt)
        if not mounts:
            return
        for mnt in sorted(set(mounts), key=lambda m: m.count("/"), reverse=True):
            if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", mnt], capture_output=True)


def clean_iptables(before: dict[str, list[str]] | None) -> None:
    """Remove the KUBE-*/CNI-* chains (and the rules jumping to them) that were not there before."""
    if before is None:
        return
    now = iptables_chains()
    for table, chains in now.items():
        new = [c for c in chains if c not in before.get(table, []) and re.match(r"(KUBE|CNI)-", c)]
        if not new:
            continue
        text = run("iptables-save", "-t", table, check=False, quiet=True)
        for line in text.splitlines():
            if line.startswith("-A ") and any(f"-j {c}" in line for c in new):
                parts = line.split()
                if parts[1] not in new:
                    run("iptables", "-t", table, "-D", *parts[1:], check=False, quiet=True)
        for c in new:
            run("iptables", "-t", table, "-F", c, check=False, quiet=True)
        for c in new:
            run("iptables", "-t", table, "-X", c, check=False, quiet=True)


def remove_cgroup_tree(path: Path) -> None:
    if not path.is_dir():
        return
    for sub in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        path.rmdir()
    if path.exists():
        log(f"could not remove cgroup {path} (processes still in it?)")


def cmd_down(purge: bool) -> int:
    if not STATE.exists():
        log("not running")
        return 0
    with locked():
        state = load_state()
        pids = running(state)
        teardown(state)
        log(f"stopped {', '.join(sorted(pids)) or 'nothing'}")
    if purge:
        unmount_all()
        shutil.rmtree(STATE, ignore_errors=True)
        log(f"removed {STATE}")
    return 0


def cmd_status() -> int:
    state = load_state()
    pids = running(state)
    for name in COMPONENTS:
        print(f"{name:12s} {'running pid ' + str(pids[name]) if name in pids else 'stopped'}")
    ok, why = node_ready() if pids else (False, "not running")
    print(f"node: {why}")
    return 0 if ok and set(pids) == set(COMPONENTS) else 1


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
        if cmd == "env":
            print(f"REAL_NODE_NAME={NODE}\nREAL_NODE_IP={NODE_IP}")
            print(f"CONTAINERD_ADDRESS={STATE / 'containerd' / 'containerd.sock'}")
            print(f"REAL_NODE_STATE={STATE}")
            return 0
        if cmd == "import":  # import image archives into the node's containerd
            for a in rest:
                import_image(Path(a))
            return 0
    except NodeError as e:
        log(str(e))
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
