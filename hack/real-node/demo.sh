#!/usr/bin/env bash
# A real model on a real node: control plane (if not up) -> real node -> runtime image built from
# runtime-image/Dockerfile and imported -> the real SmolLM2-135M-Instruct (from the model cache,
# hack/fetch-models.sh) served over HTTPS by hack/real-node/model_source.py, downloaded and verified
# by the pod's init container -> an SLMDeployment pinned to the real node, at the operator's default
# `parallel` -> Ready -> one answer through the Service -> how to chat with it.
#
# For hack/dev.sh (`make dev`): call it when running as root with hack/real-node/install-deps.sh's
# packages present, e.g.  [ "$(id -u)" = 0 ] && bash hack/real-node/demo.sh --check && bash hack/real-node/demo.sh
#   --check   exit 0 if the prerequisites are met (prints what is missing otherwise), do nothing else
#
# Env: SLM_DEMO_NAMESPACE (default slm-demo); SLM_DEMO_START_OPERATOR=auto|1|0 (auto: start
#      `slm-operator run` for that namespace unless .local-cluster/operator.pid names a live one).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/hack/real-node"
NS="${SLM_DEMO_NAMESPACE:-slm-demo}"
CLUSTER_DIR="${SLM_CLUSTER_DIR:-$ROOT/.local-cluster}"
KUBECONFIG="$CLUSTER_DIR/kubeconfig"
export KUBECONFIG
KUBECTL="$ROOT/bin/kubectl"
[ -x "$KUBECTL" ] || KUBECTL=kubectl
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
log() { echo "real-node demo: $*" >&2; }

missing=()
[ "$(id -u)" = 0 ] || missing+=("root")
for t in containerd runc ctr buildah debootstrap iptables gcc openssl; do
  command -v "$t" >/dev/null || missing+=("$t (bash hack/real-node/install-deps.sh)")
done
[ -x /usr/lib/cni/bridge ] || missing+=("CNI plugins (bash hack/real-node/install-deps.sh)")
[ -x "$ROOT/bin/kubelet" ] || missing+=("bin/kubelet (bash hack/build-bins.sh)")
if [ "${1:-}" = --check ]; then
  if [ ${#missing[@]} -gt 0 ]; then printf 'missing: %s\n' "${missing[@]}" >&2; exit 1; fi
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then printf 'real-node demo: missing: %s\n' "${missing[@]}" >&2; exit 1; fi

t0=$(date +%s)
"$ROOT/hack/local-cluster" status >/dev/null 2>&1 || "$ROOT/hack/local-cluster" up
"$HERE/up"
t_node=$(date +%s)
IMAGE=$("$HERE/build-image.sh" --import)
log "image $IMAGE"

# The real model: the API takes https:// among network schemes, so model_source.py serves the cache
# over HTTPS from the node's address, and the pods run the image plus a layer trusting its CA.
MODELS="${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/models"
MODEL_FILE="smollm2-135m-instruct-q4_1.gguf"
[ -f "$MODELS/$MODEL_FILE.sha256" ] || bash "$ROOT/hack/fetch-models.sh" >&2
SRC="$CLUSTER_DIR/real-node/model-source"
mkdir -p "$SRC/files" "$CLUSTER_DIR/real-node/logs"
ln -sfn "$MODELS/$MODEL_FILE" "$SRC/files/$MODEL_FILE"
srcpid="$CLUSTER_DIR/real-node/demo-model-source.pid"
old=$(cat "$srcpid" 2>/dev/null || true)
if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then kill "$old"; sleep 1; fi
rm -f "$SRC/port"
nohup python3 "$HERE/model_source.py" serve "$SRC/files" --tls-dir "$SRC/tls" --port-file "$SRC/port" \
  > "$CLUSTER_DIR/real-node/logs/model-source.log" 2>&1 &
echo $! > "$srcpid"
for _ in $(seq 1 60); do [ -s "$SRC/port" ] && break; sleep 0.5; done
[ -s "$SRC/port" ] || { cat "$CLUSTER_DIR/real-node/logs/model-source.log" >&2; log "the model source did not start"; exit 1; }
MODEL_URI="https://10.245.0.1:$(cat "$SRC/port")/$MODEL_FILE"
MODEL_SHA=$(cat "$MODELS/$MODEL_FILE.sha256")
IMAGE=$(python3 "$HERE/model_source.py" image "$IMAGE" "$SRC/tls/ca.crt")
t_image=$(date +%s)
log "model $MODEL_URI, image $IMAGE (the runtime image + the model source's CA)"

"$KUBECTL" apply -f "$ROOT/crds/slm.dev_slmdeployments.yaml" >/dev/null
"$KUBECTL" wait --for=condition=Established crd/slmdeployments.slm.dev --timeout=60s >/dev/null
"$KUBECTL" get ns "$NS" >/dev/null 2>&1 || "$KUBECTL" create ns "$NS" >/dev/null

start_op="${SLM_DEMO_START_OPERATOR:-auto}"
if [ "$start_op" = auto ]; then
  start_op=1
  pid=$(cat "$CLUSTER_DIR/operator.pid" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then start_op=0; fi
fi
if [ "$start_op" = 1 ]; then
  pidfile="$CLUSTER_DIR/real-node/demo-operator.pid"
  old=$(cat "$pidfile" 2>/dev/null || true)
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null; then kill "$old"; sleep 1; fi
  nohup "$ROOT/.venv/bin/slm-operator" run --namespace "$NS" --standalone --metrics-port 0 \
    > "$CLUSTER_DIR/real-node/logs/demo-operator.log" 2>&1 &
  echo $! > "$pidfile"
  log "started slm-operator for namespace $NS (pid $!, log $CLUSTER_DIR/real-node/logs/demo-operator.log)"
fi

# SmolLM2 pinned to the real node (its label and taint), the operator's defaults otherwise
name=smollm2
t_apply=$(date +%s)
NAME=$name IMAGE="$IMAGE" MODEL_URI="$MODEL_URI" MODEL_SHA="$MODEL_SHA" python3 -c '
import json, os
print(json.dumps({
    "apiVersion": "slm.dev/v1alpha1",
    "kind": "SLMDeployment",
    "metadata": {"name": os.environ["NAME"]},
    "spec": {
        "model": {"name": "smollm2", "variants": [{"format": "gguf", "quantization": "Q4_1",
                  "uri": os.environ["MODEL_URI"], "sha256": os.environ["MODEL_SHA"]}]},
        "hardware": {
            "preference": ["cpu"],
            "nodeSelector": {"slm.dev/real-node": "true"},
            "tolerations": [{"key": "slm.dev/real-node", "operator": "Equal", "value": "true",
                             "effect": "NoSchedule"}],
        },
        "runtime": {"contextLength": 2048},
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "image": os.environ["IMAGE"],
        "imagePullPolicy": "Never",
    },
}))' | "$KUBECTL" -n "$NS" apply -f - >/dev/null

log "waiting for $NS/$name to be Ready on the real node"
deadline=$(( $(date +%s) + 300 ))
until "$KUBECTL" -n "$NS" get pods -l "app.kubernetes.io/instance=$name" \
        -o jsonpath='{range .items[*]}{.spec.nodeName}={.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' \
        2>/dev/null | grep -q "=True"; do
  if [ "$(date +%s)" -gt "$deadline" ]; then
    "$KUBECTL" -n "$NS" get slmd,deploy,pods -o wide >&2 || true
    "$KUBECTL" -n "$NS" describe pods -l "app.kubernetes.io/instance=$name" | tail -30 >&2 || true
    log "not Ready after 300s"; exit 1
  fi
  sleep 2
done
t_ready=$(date +%s)
ip=$("$KUBECTL" -n "$NS" get svc "$name" -o jsonpath='{.spec.clusterIP}')
port=$("$KUBECTL" -n "$NS" get svc "$name" -o jsonpath='{.spec.ports[0].port}')
QUESTION='{"model":"smollm2","messages":[{"role":"user","content":"What is the capital of France? Answer in one word."}],"max_tokens":24,"temperature":0}'
answer=""
for _ in $(seq 1 30); do
  answer=$(curl -sf --max-time 60 "http://$ip:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "$QUESTION" || true)
  [ -n "$answer" ] && break
  sleep 1
done
t_answer=$(date +%s)
[ -n "$answer" ] || { log "no answer from http://$ip:$port"; exit 1; }
content=$(printf '%s' "$answer" | python3 -c 'import json, sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"])')

cat <<EOF

Real node up in $(( t_node - t0 ))s, image and model source ready in $(( t_image - t_node ))s,
kubectl apply -> pod Ready in $(( t_ready - t_apply ))s -> first answer in $(( t_answer - t_apply ))s.
SmolLM2-135M-Instruct on the real node, asked "What is the capital of France? Answer in one word.":
  $content
(through Service $NS/$name, cluster IP $ip, via kube-proxy; the whole response: $answer)

Chat with it:
  export KUBECONFIG=$KUBECONFIG
  # from this host, straight to the Service (kube-proxy's iptables rules):
  curl http://$ip:$port/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"smollm2","messages":[{"role":"user","content":"Hello"}]}'
  # or, as from any machine, through the API server:
  $KUBECTL -n $NS port-forward svc/$name 8080:$port &
  curl http://127.0.0.1:8080/api/chat -d '{"model":"smollm2","messages":[{"role":"user","content":"Hello"}],"stream":false}'
  $PY -c 'import openai; c = openai.OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="-"); print(c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hello"}]).choices[0].message.content)'
Stop: hack/real-node/down   (the control plane: hack/local-cluster down)
EOF
