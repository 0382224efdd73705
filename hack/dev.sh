#!/usr/bin/env bash
# `make dev`: the whole product on one machine, in about a minute once the binaries are built.
#
# Without KUBECONFIG: brings up the local control plane with its KWOK GPU/NPU/CPU node pools
# (hack/local-cluster). With KUBECONFIG pointing at a reachable cluster (kind, a real one): uses it.
# Then installs the CRD, runs the operator as a local process (logs: $STATE/logs/operator.log),
# applies the examples into the `slm-demo` namespace (PodSecurity `restricted` enforced) and prints
# `kubectl get slmd -A` with the hardware, variant and readiness the operator chose.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
STATE="${SLM_CLUSTER_DIR:-$ROOT/.local-cluster}"
NS="${SLM_DEMO_NAMESPACE:-slm-demo}"
KUBECTL="${KUBECTL:-kubectl}"
[ -x bin/kubectl ] && KUBECTL="$ROOT/bin/kubectl"
log() { echo "dev: $*" >&2; }

if [ -n "${KUBECONFIG:-}" ] && "$KUBECTL" version --request-timeout=5s >/dev/null 2>&1; then
  log "using the cluster of KUBECONFIG=$KUBECONFIG"
  mkdir -p "$STATE/logs"
else
  hack/local-cluster up
  export KUBECONFIG="$STATE/kubeconfig"
fi

log "installing the CRD"
"$KUBECTL" apply --server-side --force-conflicts -f crds/slm.dev_slmdeployments.yaml >/dev/null
"$KUBECTL" wait --for=condition=Established --timeout=60s crd/slmdeployments.slm.dev >/dev/null

# The operator runs as a local process: a local control plane has no node that runs real
# containers, and a kind cluster would first need the operator image loaded (see README).
pidfile="$STATE/operator.pid"
if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  log "restarting the operator (pid $(cat "$pidfile"))"
  kill "$(cat "$pidfile")" && sleep 1
fi
# --allow-unverified-models: the cpu/gpu/npu examples name hf:// files without a sha256 (they are
# never downloaded on the KWOK pools); a production operator runs without it (docs/operations.md).
nohup .venv/bin/slm-operator run --all-namespaces --standalone --allow-unverified-models \
  >"$STATE/logs/operator.log" 2>&1 </dev/null &
echo $! >"$pidfile"
log "operator running (pid $!, log $STATE/logs/operator.log)"

"$KUBECTL" create namespace "$NS" --dry-run=client -o yaml | "$KUBECTL" apply -f - >/dev/null
"$KUBECTL" label --overwrite namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
for example in examples/cpu.yaml examples/gpu.yaml examples/npu.yaml examples/tiny.yaml; do
  [ -f "$example" ] && "$KUBECTL" apply -n "$NS" -f "$example" >/dev/null && log "applied $example"
done

log "waiting for the operator to place every SLMDeployment"
deadline=$((SECONDS + ${SLM_DEV_TIMEOUT:-120}))
until [ -z "$("$KUBECTL" get slmd -n "$NS" -o jsonpath='{range .items[?(!@.status.hardware)]}{.metadata.name}{"\n"}{end}' 2>/dev/null)" ] \
  && "$KUBECTL" get slmd -n "$NS" -o name | grep -q .; do
  if [ $SECONDS -gt $deadline ]; then
    log "timed out; operator log tail:"; tail -20 "$STATE/logs/operator.log" >&2; break
  fi
  sleep 2
done
"$KUBECTL" wait slmd --all -n "$NS" --for=condition=Ready --timeout=60s >/dev/null 2>&1 || true

# A real kubelet node (containerd, runc, CNI, kube-proxy) running the runtime image built from
# runtime-image/Dockerfile, serving examples/tiny.yaml: needs root (SLM_REAL_NODE=0 skips it).
if [ "$(id -u)" = 0 ] && [ "${SLM_REAL_NODE:-1}" != 0 ] && [ "$KUBECONFIG" = "$STATE/kubeconfig" ]; then
  bash hack/real-node/install-deps.sh >&2 || true   # Debian's containerd, runc, CNI, buildah, debootstrap
  if bash hack/real-node/demo.sh --check; then
    bash hack/real-node/demo.sh || log "the real-node demo failed (see above); the KWOK pools still work"
  else
    log "no real node (run: bash hack/real-node/install-deps.sh, then make dev again)"
  fi
fi

echo
"$KUBECTL" get slmd -A
echo
cat <<MSG
Next:
  export KUBECONFIG=$KUBECONFIG
  kubectl describe slmd -n $NS phi35-npu    # placement decisions and Events
  .venv/bin/kubectl-slm status -n $NS phi4-mini   # hardware, variant, endpoint, conditions
  make down                                 # stop the operator, the real node and the control plane
MSG
