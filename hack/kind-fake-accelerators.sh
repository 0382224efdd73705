#!/usr/bin/env bash
# Advertises fake accelerators on the GPU and NPU workers of the kind cluster from kind-config.yaml.
#
# kind nodes are containers without devices and without device plugins, so their status has no
# `nvidia.com/gpu` (or NPU) capacity, and a pod that requests one stays Pending. Extended resources
# live in the node's *status*, which only the status subresource can change:
#
#   kubectl patch node NODE --subresource=status --type=json \
#     -p '[{"op":"add","path":"/status/capacity/nvidia.com~1gpu","value":"1"}]'
#
# ("/" in the resource name is written "~1" in a JSON pointer.) This script sets allocatable too,
# so the scheduler sees the resource at once. The kubelet may reset extended resources that no
# device plugin backs when it restarts (e.g. after `docker restart` of a kind node): run it again.
# Nothing is really attached: the runtime falls back to CPU in those pods.
#
#   usage: hack/kind-fake-accelerators.sh [CLUSTER_NAME]     (default: slm)
#   env:   GPUS_PER_NODE (default 1), NPUS_PER_NODE (default 1), KUBECTL (default kubectl)
set -euo pipefail

CLUSTER="${1:-slm}"
KUBECTL="${KUBECTL:-kubectl}"
GPUS="${GPUS_PER_NODE:-1}"
NPUS="${NPUS_PER_NODE:-1}"
CONTEXT="kind-${CLUSTER}"

patch_capacity() {
  local node="$1" resource="$2" count="$3"
  local pointer="${resource//\//~1}"
  "$KUBECTL" --context "$CONTEXT" patch node "$node" --subresource=status --type=json -p \
    "[{\"op\":\"add\",\"path\":\"/status/capacity/${pointer}\",\"value\":\"${count}\"},
      {\"op\":\"add\",\"path\":\"/status/allocatable/${pointer}\",\"value\":\"${count}\"}]" >/dev/null
  echo "node/${node}: ${resource}=${count}"
}

nodes_with_label() {
  "$KUBECTL" --context "$CONTEXT" get nodes -l "$1" -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}'
}

found=0
for node in $(nodes_with_label 'nvidia.com/gpu.present=true'); do
  patch_capacity "$node" nvidia.com/gpu "$GPUS"
  found=1
done
for node in $(nodes_with_label 'slm.dev/pool=npu'); do
  patch_capacity "$node" npu.intel.com/accel "$NPUS"
  found=1
done

if [ "$found" -eq 0 ]; then
  echo "no GPU/NPU workers found in context ${CONTEXT}; was the cluster created from kind-config.yaml?" >&2
  exit 1
fi
"$KUBECTL" --context "$CONTEXT" get nodes -L slm.dev/pool \
  -o custom-columns='NAME:.metadata.name,POOL:.metadata.labels.slm\.dev/pool,GPU:.status.allocatable.nvidia\.com/gpu,NPU:.status.allocatable.npu\.intel\.com/accel'
