"""The operator at fleet scale on the local control plane: N SLMDeployments applied at once.

Not a test. Uses the running local control plane (hack/local-cluster) or brings one up, and the
operator that `make dev` started (its pid in .local-cluster/operator.pid) or starts its own
(`slm-operator run --all-namespaces --standalone`, resync every `--resync-seconds`, short on
purpose: the idle window then covers several resync passes); it stops what it started.

For each N (default 500, then 1,000, each in a fresh namespace, the previous one deleted first):
  - applies N SLMDeployments (the tiny example, replicas 0) from 16 threads at once; the first
    `--ready` of them want 1 replica with tiny requests, so KWOK runs their pods;
  - times, from the first create, with watches (not polls): every Deployment created
    (`children_s`), every status written for its generation (`status_s`), the replicas-1 subset
    Ready (`ready_s`); `converge_s` = max(children_s, status_s);
  - counts API requests: the operator's own client (`slm_operator_api_requests_total`) and the
    API server's `apiserver_request_total` for the resources the operator touches (SLMDeployments,
    the child kinds, Events; the benchmark's own creates subtracted), per CR;
  - then, with nothing changing, for `--idle-seconds`: the operator's CPU (% of one core, from
    /proc), its writes per minute (API server side, same resources), and its RSS.

Last line: `converge_s_500=… rss_mb_1000=… idle_cpu_pct=… idle_writes_per_min=…`.

`--direct` measures the floor under that: no operator runs; right after each create, the creating
thread runs the operator's reconcile core (`reconciler.reconcile`: the name-check GETs, the applies,
the status patch, then the Events) with the operator's own client. What is left is the control
plane's cost of the requests themselves; the last line is `direct_converge_s_500=…`.

    nice .venv/bin/python benchmarks/operator_scale.py [--counts 500,1000] [--ready 50]
                                                       [--idle-seconds 60] [--resync-seconds 15]
                                                       [--direct]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes import config as kube_config

from slm_operator.kube import Informer, Kube, WatchTarget, collection_path, raw_get
from slm_operator.reconcile.plan import Observed
from slm_operator.reconcile.reconciler import reconcile
from slm_operator.reconcile.status import now_rfc3339

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_DIR = Path(os.environ.get("SLM_CLUSTER_DIR") or ROOT / ".local-cluster")
LOCAL_CLUSTER = ROOT / "hack" / "local-cluster"
VENV_BIN = Path(sys.executable).parent
GROUP, VERSION, PLURAL = "slm.dev", "v1alpha1", "slmdeployments"
TOUCHED = {
    "slmdeployments",
    "serviceaccounts",
    "configmaps",
    "persistentvolumeclaims",
    "services",
    "deployments",
    "horizontalpodautoscalers",
    "poddisruptionbudgets",
    "networkpolicies",
    "events",
}
WRITES = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the cluster and the operator ----------------------------------------------------------------


@contextlib.contextmanager
def local_cluster() -> Iterator[Path]:
    status = subprocess.run([str(LOCAL_CLUSTER), "status"], capture_output=True, timeout=60, check=False)
    up = status.returncode == 0
    if not up:
        log("bringing up the local control plane")
        subprocess.run([str(LOCAL_CLUSTER), "up"], check=True, timeout=400)
    try:
        yield CLUSTER_DIR / "kubeconfig"
    finally:
        if not up:
            log("stopping the local control plane this benchmark started")
            subprocess.run([str(LOCAL_CLUSTER), "down"], check=False, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@dataclass
class Operator:
    pid: int
    metrics_url: str | None
    process: subprocess.Popen[bytes] | None = None

    def metric_sum(self, name: str) -> float:
        if not self.metrics_url:
            return float("nan")
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(name))

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.contextmanager
def operator(
    kubeconfig: Path,
    resync: float,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    wrapper: list[str] | None = None,
) -> Iterator[Operator]:
    pidfile = CLUSTER_DIR / "operator.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text().strip())
        if _alive(pid):
            log(f"using the running operator (pid {pid}); no metrics port known")
            yield Operator(pid, None)
            return
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    out = (workdir / "operator.log").open("wb")
    argv = [
        *(wrapper or []),
        str(VENV_BIN / "slm-operator"),
        "run",
        "--all-namespaces",
        "--standalone",
        f"--metrics-port={port}",
        f"--resync-seconds={resync}",
    ]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    op = Operator(process.pid, f"http://127.0.0.1:{port}/metrics", process)
    log(f"started the operator (pid {process.pid}, log {workdir / 'operator.log'})")
    try:
        deadline = time.monotonic() + 180  # a loaded machine, or an operator under a profiler, starts slowly
        while True:
            try:
                op.metric_sum("slm_operator_reconciles_total")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the operator did not come up; see {workdir / 'operator.log'}"
                    ) from None
                time.sleep(0.5)
        time.sleep(3)  # informers listed, kopf's watches established
        yield op
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        out.close()


@contextlib.contextmanager
def no_operator() -> Iterator[Operator]:
    """`--direct`: this process does the operator's work; one running besides would do it twice."""
    with contextlib.suppress(OSError, ValueError):
        pid = int((CLUSTER_DIR / "operator.pid").read_text().strip())
        if _alive(pid):
            raise SystemExit(f"--direct: an operator is running (pid {pid}); stop it first (make down)")
    yield Operator(os.getpid(), None)


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_pids() -> dict[str, int]:
    """The local control plane's processes (etcd, kube-apiserver, ...) from its state file."""
    try:
        state = json.loads((CLUSTER_DIR / "state.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): int(v) for k, v in (state.get("pids") or {}).items()}


def cpu_by_component(op: Operator) -> dict[str, float]:
    """CPU seconds used so far by the operator and each control-plane component: per CR, a measure
    of cost that does not depend on how loaded the machine is (wall-clock times do)."""
    used = {name: process_cpu_seconds(pid) for name, pid in control_plane_pids().items()}
    used["operator"] = op.cpu_seconds()
    if op.pid != os.getpid():  # this process's own cost (under --direct it is the "operator")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used["benchmark"] = usage.ru_utime + usage.ru_stime
    return used


# --- API server metrics ----------------------------------------------------------------------------


def apiserver_counts(api: client.ApiClient) -> dict[tuple[str, str], float]:
    """apiserver_request_total summed by (verb, resource) for the resources the operator touches."""
    text = raw_get(api, "/metrics", [], (10, 60)).data.decode()
    counts: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition(" ")
        labels = dict(
            part.split("=", 1)
            for part in labels_text[len("apiserver_request_total{") : -1].split(",")
            if "=" in part
        )
        resource = labels.get("resource", "").strip('"')
        if resource not in TOUCHED:
            continue
        verb = labels.get("verb", "").strip('"')
        counts[(verb, resource)] = counts.get((verb, resource), 0.0) + float(value)
    return counts


def delta(
    after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def writes(counts: dict[tuple[str, str], float]) -> float:
    return sum(v for (verb, _), v in counts.items() if verb in WRITES)


class Direct:
    """`--direct`: the operator's reconcile core (`reconciler.reconcile`: name-check GETs, applies,
    status patch) and its Events, called right after each create by the creating thread, with the
    operator's own client; no operator process, no kopf, no informers, no status refresh.

    What the control plane needs for these requests alone, on the same machine: a floor that no
    change of the operator's event plumbing can go below."""

    def __init__(self, api: client.ApiClient) -> None:
        self.kube = Kube(api, connections=32)
        self.nodes = self.kube.list_nodes()

    def reconcile(self, body: dict[str, Any]) -> None:
        outcome = reconcile(body, self.kube, Observed(nodes=self.nodes), check_secrets=False)
        for kind, reason, message in outcome.events:
            self.kube.post_event(body, kind, reason, message, now_rfc3339())


# --- one burst -------------------------------------------------------------------------------------


def _tiny(name: str, ready: bool) -> dict[str, Any]:
    body = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    body["metadata"] = {"name": name}
    body["spec"]["replicas"] = 1 if ready else 0
    body["spec"]["resources"] = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}
    return copy.deepcopy(body)


@dataclass
class Timeline:
    """When each object first met its condition (seconds after the burst started)."""

    start: float
    children: dict[str, float] = field(default_factory=dict)
    status: dict[str, float] = field(default_factory=dict)
    ready: dict[str, float] = field(default_factory=dict)
    cpu_at_converge: dict[str, float] = field(default_factory=dict)
    """CPU seconds by component when every child and status was first seen (`cpu_by_component`)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def mark(self, which: dict[str, float], name: str) -> None:
        with self.lock:
            which.setdefault(name, time.monotonic() - self.start)


class _Marks:
    """An informer's sink that hands each listed or watched object to `on` (deletions ignored)."""

    def __init__(self, on: Callable[[dict[str, Any]], None]) -> None:
        self._on = on

    def replace(self, objects: list[dict[str, Any]], namespace: str | None = None) -> None:
        for obj in objects:
            self._on(obj)

    def upsert(self, obj: Mapping[str, Any]) -> None:
        self._on(dict(obj))

    def remove(self, obj: Mapping[str, Any]) -> None:
        pass


def _watch(kube: Kube, path: str, on: Callable[[dict[str, Any]], None]) -> Informer:
    """The operator's own informer (list once, then watch; raw JSON): the kubernetes client's typed
    watch turned every Deployment event into model objects, seconds of this process's CPU in a
    burst, taken from the 2 cores the operator and the control plane share."""
    informer = Informer(kube, WatchTarget(path), _Marks(on))
    informer.start()
    return informer


def burst(
    api: client.ApiClient,
    namespace: str,
    n: int,
    ready: int,
    timeout: float,
    *,
    direct: Direct | None = None,
    cpu: Callable[[], dict[str, float]] = dict,
) -> Timeline:
    """Create `n` SLMDeployments at once and time them (`direct`: each create is followed, in the
    creating thread, by the operator's reconcile core, no operator process running; `cpu`: the
    CPU seconds by component, taken when the burst has converged)."""
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wanted_ready = {f"m{i:04d}" for i in range(min(ready, n))}
    timeline = Timeline(start=time.monotonic())

    def on_deployment(obj: dict[str, Any]) -> None:
        timeline.mark(timeline.children, obj["metadata"]["name"])

    def on_owner(obj: dict[str, Any]) -> None:
        meta, status = obj["metadata"], obj.get("status") or {}
        if status.get("observedGeneration") == meta.get("generation"):
            timeline.mark(timeline.status, meta["name"])
        conds = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
        if meta["name"] in wanted_ready and conds.get("Ready") == "True":
            timeline.mark(timeline.ready, meta["name"])

    kube = Kube(api, connections=32)
    watchers = [
        _watch(kube, collection_path("apps/v1", "deployments", namespace), on_deployment),
        _watch(kube, collection_path(f"{GROUP}/{VERSION}", PLURAL, namespace), on_owner),
    ]
    time.sleep(1)
    timeline.start = time.monotonic()
    bodies = [_tiny(f"m{i:04d}", f"m{i:04d}" in wanted_ready) for i in range(n)]

    def create(body: dict[str, Any]) -> None:
        created = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        if direct is not None and isinstance(created, dict):
            direct.reconcile(created)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(create, bodies))
    log(f"{n} SLMDeployments created in {time.monotonic() - timeline.start:.1f}s")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with timeline.lock:
            converged = len(timeline.children) >= n and len(timeline.status) >= n
            done = converged and len(timeline.ready) >= len(wanted_ready)
        if converged and not timeline.cpu_at_converge:
            timeline.cpu_at_converge = cpu()
        if done:
            break
        time.sleep(0.5)
    for informer in watchers:
        informer.stop()
    return timeline


def settle(op: Operator, api: client.ApiClient, quiet: float = 5.0, timeout: float = 300.0) -> None:
    """Wait until nothing changes for `quiet` seconds: the operator's reconciles and requests (its
    status refreshes are no reconciles) and every client's writes to the resources it touches.

    The Deployment controller writes each Deployment's status about three times, at its client's
    rate limit (20 per second by default): after a 1,000 burst that goes on for minutes after
    convergence, and the operator refreshes each status it changes; an idle window measured
    before that ends measures that work, not idleness."""

    def activity() -> float:
        own = 0.0
        if op.metrics_url:
            own = op.metric_sum("slm_operator_reconciles_total") + op.metric_sum(
                "slm_operator_api_requests_total"
            )
        return own + writes(apiserver_counts(api))

    deadline = time.monotonic() + timeout
    last, since = activity(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(1)
        now = activity()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    log(f"the cluster was still busy after {timeout:.0f}s; measuring anyway")


def delete_namespace(api: client.ApiClient, namespace: str, timeout: float = 180) -> None:
    core = client.CoreV1Api(api)
    with contextlib.suppress(client.ApiException):
        core.delete_namespace(namespace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            core.read_namespace(namespace)
        except client.ApiException as err:
            if err.status == 404:
                return
        time.sleep(2)
    log(f"namespace {namespace} still terminating after {timeout:.0f}s; going on")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def own_requests(op: Operator, direct: Direct | None) -> float:
    """Requests of the operator's own client so far (in `--direct` mode, this process's)."""
    if direct is not None:
        return float(sum(direct.kube.requests.snapshot().values()))
    return op.metric_sum("slm_operator_api_requests_total")


def phase(
    api: client.ApiClient,
    op: Operator,
    namespace: str,
    n: int,
    args: argparse.Namespace,
    *,
    direct: Direct | None = None,
) -> dict[str, float]:
    """One burst of `n` SLMDeployments, then an idle window; the numbers of both (`direct`: the
    burst only; no status refresh makes anything Ready, so no replicas-1 subset)."""
    before_api, before_own = apiserver_counts(api), own_requests(op, direct)
    before_cpu = cpu_by_component(op)
    log(f"--- {n} SLMDeployments in {namespace} (load average {os.getloadavg()[0]:.1f})")
    timeline = burst(
        api,
        namespace,
        n,
        0 if direct else args.ready,
        args.timeout,
        direct=direct,
        cpu=lambda: cpu_by_component(op),
    )
    children = max(timeline.children.values(), default=float("nan"))
    status = max(timeline.status.values(), default=float("nan"))
    ready = max(timeline.ready.values(), default=float("nan"))
    complete = len(timeline.children) >= n and len(timeline.status) >= n
    settle(op, api)
    cpu_ms = {k: (v - before_cpu.get(k, 0.0)) * 1000 / n for k, v in cpu_by_component(op).items()}
    burst_api = delta(apiserver_counts(api), before_api)
    burst_api[("POST", "slmdeployments")] = burst_api.get(("POST", "slmdeployments"), 0) - n
    own = own_requests(op, direct) - before_own
    log(
        f"children_s={children:.1f} status_s={status:.1f} ready_s={ready:.1f} "
        f"(p50 status {_pct(list(timeline.status.values()), 0.5):.1f}s; "
        f"{len(timeline.children)}/{n} children, {len(timeline.status)}/{n} statuses, "
        f"{len(timeline.ready)}/{0 if direct else min(args.ready, n)} ready)"
    )
    per_cr = {f"{v} {r}": round(c / n, 2) for (v, r), c in sorted(burst_api.items()) if c > 0}
    log(f"API requests per CR (API server, all clients but the creates): {json.dumps(per_cr)}")
    log(f"API requests per CR (operator's own client): {own / n:.2f}")
    log(
        f"CPU ms per CR (burst and settling; load average {os.getloadavg()[0]:.1f}): "
        + json.dumps({k: round(v, 1) for k, v in sorted(cpu_ms.items())})
    )
    window = {k: (v - before_cpu.get(k, 0.0)) * 1000 / n for k, v in timeline.cpu_at_converge.items()}
    log(
        "CPU ms per CR until converged (what the converge window had to fit into 2 cores): "
        + json.dumps({k: round(v, 1) for k, v in sorted(window.items())})
        + f", in all {sum(window.values()) * n / 1000:.1f} CPU-s"
    )
    results = {
        f"converge_s_{n}": max(children, status) if complete else float("inf"),
        f"ready_s_{n}": ready,
        f"api_per_cr_{n}": sum(burst_api.values()) / n,
        f"own_api_per_cr_{n}": own / n,
        f"operator_cpu_ms_per_cr_{n}": cpu_ms.get("operator", float("nan")),
        f"apiserver_cpu_ms_per_cr_{n}": cpu_ms.get("kube-apiserver", float("nan")),
    }
    if direct is not None:
        return results
    idle_api, cpu0, t0 = apiserver_counts(api), op.cpu_seconds(), time.monotonic()
    own0 = op.metric_sum("slm_operator_api_requests_total")
    time.sleep(args.idle_seconds)
    elapsed = time.monotonic() - t0
    cpu = (op.cpu_seconds() - cpu0) / elapsed * 100
    idle = delta(apiserver_counts(api), idle_api)
    idle_writes = writes(idle) / elapsed * 60
    own_idle = (op.metric_sum("slm_operator_api_requests_total") - own0) / elapsed * 60
    rss = op.rss_mb()
    log(
        f"idle {elapsed:.0f}s: cpu {cpu:.2f}% of a core, writes/min {idle_writes:.1f} "
        f"({json.dumps({f'{v} {r}': c for (v, r), c in idle.items()})}), "
        f"own requests/min {own_idle:.1f}, rss {rss:.0f} MB"
    )
    results.update({f"rss_mb_{n}": rss, f"idle_cpu_pct_{n}": cpu, f"idle_writes_per_min_{n}": idle_writes})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="500,1000")
    parser.add_argument("--ready", type=int, default=50)
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--resync-seconds", type=float, default=15)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument(
        "--operator-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the operator this run starts (e.g. MALLOC_ARENA_MAX=2)",
    )
    parser.add_argument(
        "--operator-wrapper", default="", help="command prefix for the operator (a profiler), split on spaces"
    )
    parser.add_argument(
        "--direct",
        action="store_true",
        help="no operator: run its reconcile core right after each create, in this process (the floor)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop_on_term)
    counts = [int(c) for c in args.counts.split(",")]
    results: dict[str, float] = {}
    run_id = f"{int(time.time()) % 100000}"
    with local_cluster() as kubeconfig:
        api = kube_config.new_client_from_config(config_file=str(kubeconfig))
        crd = subprocess.run([str(VENV_BIN / "slm-operator"), "crd"], check=True, capture_output=True).stdout
        kubectl = ROOT / "bin" / "kubectl"
        subprocess.run(
            [
                str(kubectl),
                f"--kubeconfig={kubeconfig}",
                "apply",
                "--server-side",
                "--force-conflicts",
                "-f",
                "-",
            ],
            input=crd,
            check=True,
            capture_output=True,
            timeout=60,
        )
        time.sleep(2)
        previous: str | None = None
        try:
            direct = Direct(api) if args.direct else None
            started = (
                no_operator()
                if direct
                else operator(
                    kubeconfig,
                    args.resync_seconds,
                    ROOT / "benchmarks" / ".work" / "operator_scale",
                    dict(e.split("=", 1) for e in args.operator_env),
                    args.operator_wrapper.split(),
                )
            )
            with started as op:
                for n in counts:
                    if previous:
                        log(f"deleting {previous}")
                        delete_namespace(api, previous)
                        settle(op, api)
                    previous = f"bench-{n}-{run_id}"
                    results.update(phase(api, op, previous, n, args, direct=direct))
            # the operator is stopped first: nothing then reacts to the deletion below
            report(results, counts, direct=direct is not None)
        finally:
            if previous:
                log(f"deleting {previous} (bounded: the control plane may be stopped right after)")
                delete_namespace(api, previous, timeout=90)
            api.close()
    return 0


def report(results: dict[str, float], counts: list[int], *, direct: bool = False) -> None:
    """All numbers as JSON, then the summary line (stdout's last line; teardown logs to stderr)."""
    if direct:
        print(json.dumps(results, sort_keys=True))
        print(" ".join(f"direct_converge_s_{n}={results[f'converge_s_{n}']:.1f}" for n in counts), flush=True)
        return
    last = counts[-1]
    summary = {
        f"converge_s_{counts[0]}": results[f"converge_s_{counts[0]}"],
        f"rss_mb_{last}": results[f"rss_mb_{last}"],
        "idle_cpu_pct": max(results[f"idle_cpu_pct_{n}"] for n in counts),
        "idle_writes_per_min": max(results[f"idle_writes_per_min_{n}"] for n in counts),
    }
    print(json.dumps(results, sort_keys=True))
    print(
        " ".join(f"{k}={v:.1f}" if k != "idle_cpu_pct" else f"{k}={v:.2f}" for k, v in summary.items()),
        flush=True,
    )


def _stop_on_term(signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so that the operator and the cluster this run started stop."""
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    raise SystemExit(main())
