#!/usr/bin/env bash
# Builds one Go program from its own module (its go.mod and go.sum, as its authors pinned them) with
# `go install MODULE/cmd/NAME@VERSION`, caches it outside the checkout and links it into bin/.
#
#   hack/build-go-tool.sh NAME PACKAGE@VERSION
#   e.g. hack/build-go-tool.sh metrics-server sigs.k8s.io/metrics-server/cmd/metrics-server@v0.8.0
#
# Cache: ~/.cache/slm-operator/bin/NAME-<key>/NAME, keyed by the package, version, Go version and
# this script. Env: SLM_BIN_CACHE (default ~/.cache/slm-operator/bin), SLM_BIN_DIR (default <repo>/bin),
# SLM_BUILD_NICE (default 10).
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 NAME PACKAGE@VERSION" >&2; exit 2; }
NAME=$1 PKG=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN_DIR="${SLM_BIN_DIR:-$ROOT/bin}"
CACHE_ROOT="${SLM_BIN_CACHE:-$HOME/.cache/slm-operator/bin}"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false
command -v go >/dev/null || { echo "build-go-tool: go is not installed (need Go >= 1.24)" >&2; exit 1; }

key=$( { go version; go env GOOS GOARCH; echo "$PKG"; cat "$0"; } | sha256sum | cut -c1-16)
CACHE="$CACHE_ROOT/$NAME-$key"
if [ "$(cat "$BIN_DIR/.$NAME.key" 2>/dev/null)" = "$key" ] && [ -x "$BIN_DIR/$NAME" ]; then
  exit 0
fi
mkdir -p "$CACHE_ROOT" "$BIN_DIR"
exec 9>"$CACHE_ROOT/.lock-$NAME"
flock 9
if [ ! -x "$CACHE/$NAME" ]; then
  echo "build-go-tool: building $PKG into $CACHE (nice -n ${SLM_BUILD_NICE:-10})" >&2
  tmp="$CACHE_ROOT/.tmp-$NAME-$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  start=$(date +%s)
  ( cd "$tmp" && GOBIN="$tmp" CGO_ENABLED=0 nice -n "${SLM_BUILD_NICE:-10}" go install -ldflags "-s -w" "$PKG" )
  [ -x "$tmp/$NAME" ] || { echo "build-go-tool: $PKG built no $NAME" >&2; exit 1; }
  rm -rf "$CACHE" && mv "$tmp" "$CACHE"
  trap - EXIT
  echo "build-go-tool: built $NAME in $(( $(date +%s) - start ))s" >&2
fi
rm -f "$BIN_DIR/$NAME"
ln "$CACHE/$NAME" "$BIN_DIR/$NAME" 2>/dev/null || cp "$CACHE/$NAME" "$BIN_DIR/$NAME"
echo "$key" > "$BIN_DIR/.$NAME.key"
