#!/usr/bin/env bash
# Takes the InferencePool CRD (inference.networking.k8s.io/v1) of the Gateway API Inference
# Extension from its Go module at a pinned version, the same bytes its release installs, and puts
# it in bin/gie-inferencepools.yaml for the test bed (tests/e2e/operator/test_inference_pool.py
# installs it into the real API server; tests/operator validate our InferencePools against it).
#
#   hack/fetch-gie-crd.sh
#
# `go mod download` fetches the module zip through the Go module proxy; the zip's hash is checked
# against the pinned go.sum line below before anything is taken from it. Cache:
# ~/.cache/slm-operator/gie/<version>/ (SLM_GIE_CACHE), so a warm machine needs no network.
# Env: SLM_BIN_DIR (default <repo>/bin).
set -euo pipefail
MODULE=sigs.k8s.io/gateway-api-inference-extension
VERSION=v1.6.0
SUM="h1:cjtwMJYcTnLXBYE5ffR1/hHhn7U1aIFfe2RITYmOXVA="
MEMBER=config/crd/bases/inference.networking.k8s.io_inferencepools.yaml
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR="${SLM_BIN_DIR:-$ROOT/bin}"
CACHE="${SLM_GIE_CACHE:-$HOME/.cache/slm-operator/gie}/$VERSION"
OUT="$BIN_DIR/gie-inferencepools.yaml"
log() { echo "fetch-gie-crd: $*" >&2; }

mkdir -p "$CACHE" "$BIN_DIR"
if [ ! -s "$CACHE/inferencepools.yaml" ]; then
  command -v go >/dev/null || { log "go is not installed"; exit 1; }
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  # Outside any module; GOFLAGS of the caller (e.g. -mod=readonly) do not apply to a download.
  ( cd "$tmp" && GOFLAGS= GOTOOLCHAIN=local go mod download -json "$MODULE@$VERSION" ) > "$tmp/info.json"
  python3 - "$tmp/info.json" "$SUM" "$MODULE@$VERSION/$MEMBER" "$tmp/inferencepools.yaml" <<'EOF'
import json, sys, zipfile
info_path, want_sum, member, out = sys.argv[1:]
info = json.load(open(info_path))
if info.get("Error"):
    sys.exit(f"fetch-gie-crd: {info['Error']}")
if info.get("Sum") != want_sum:
    sys.exit(f"fetch-gie-crd: module sum {info.get('Sum')} is not the pinned {want_sum}")
with zipfile.ZipFile(info["Zip"]) as archive, open(out, "wb") as f:
    f.write(archive.read(member))
EOF
  grep -q "bundle-version: $VERSION" "$tmp/inferencepools.yaml" || { log "unexpected CRD content"; exit 1; }
  mv "$tmp/inferencepools.yaml" "$CACHE/inferencepools.yaml"
  log "took $MEMBER from $MODULE@$VERSION into $CACHE"
fi
cmp -s "$CACHE/inferencepools.yaml" "$OUT" 2>/dev/null || cp "$CACHE/inferencepools.yaml" "$OUT"
