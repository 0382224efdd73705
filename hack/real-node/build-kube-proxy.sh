#!/usr/bin/env bash
# Builds kube-proxy from the same pinned Kubernetes module as hack/build-bins.sh (hack/k8sbin) and
# prints its path. hack/build-bins.sh does not build kube-proxy, and hack/k8sbin/go.sum lacks the
# sums of two of its dependencies (github.com/moby/ipvs, sigs.k8s.io/knftables), so this builds in
# a copy of that module under the cache, where `go build -mod=mod` may add them (Go module proxy).
# Once hack/build-bins.sh lists kube-proxy, real_node.py uses bin/kube-proxy and this is not run.
#
# Output: ~/.cache/slm-operator/bin/kube-proxy-<key>/kube-proxy, <key> = hash of go.mod, go.sum,
# versions.env, this script and the Go version.  Env: SLM_CACHE_DIR, SLM_BUILD_NICE (default 10).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SRC="$ROOT/hack/k8sbin"
CACHE_ROOT="${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}/bin"
export GOTOOLCHAIN=local GOFLAGS="-buildvcs=false"
# shellcheck source=../k8sbin/versions.env
. "$SRC/versions.env"
key=$( { go version; cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/versions.env" "$0"; } | sha256sum | cut -c1-16)
OUT="$CACHE_ROOT/kube-proxy-$key"
if [ -x "$OUT/kube-proxy" ]; then echo "$OUT/kube-proxy"; exit 0; fi
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.kube-proxy.lock"
flock 9
if [ -x "$OUT/kube-proxy" ]; then echo "$OUT/kube-proxy"; exit 0; fi
work="$CACHE_ROOT/.kube-proxy-src-$key"
rm -rf "$work" && mkdir -p "$work"
cp "$SRC/go.mod" "$SRC/go.sum" "$work/"
kube_minor=${KUBE_VERSION#v1.}; kube_minor=${kube_minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
done
echo "build-kube-proxy: building kube-proxy $KUBE_VERSION (nice -n ${SLM_BUILD_NICE:-10})" >&2
start=$(date +%s)
( cd "$work" && CGO_ENABLED=0 nice -n "${SLM_BUILD_NICE:-10}" go build -mod=mod -ldflags "$ldflags" \
    -o "$work/kube-proxy" k8s.io/kubernetes/cmd/kube-proxy ) >&2
mkdir -p "$OUT.tmp" && mv "$work/kube-proxy" "$OUT.tmp/" && rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
rm -rf "$work"
echo "build-kube-proxy: built in $(( $(date +%s) - start ))s" >&2
echo "$OUT/kube-proxy"
