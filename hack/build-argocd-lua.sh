#!/usr/bin/env bash
# Builds bin/argocd-lua: our harness that runs an Argo CD health check in gopher-lua, the Lua 5.1
# VM Argo CD embeds (hack/argocd-lua/main.go says how it mirrors Argo CD). Small: ~15 s cold.
#
# Cached like the other binaries, outside the checkout in ~/.cache/slm-operator/bin/argocd-lua-<key>/,
# keyed by the module's sources and the Go version; a warm machine only links it into bin/.
# Env: SLM_BIN_CACHE (default ~/.cache/slm-operator/bin), SLM_BIN_DIR (default <repo>/bin).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC="$ROOT/hack/argocd-lua"
BIN_DIR="${SLM_BIN_DIR:-$ROOT/bin}"
CACHE_ROOT="${SLM_BIN_CACHE:-$HOME/.cache/slm-operator/bin}"
export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"
command -v go >/dev/null || { echo "build-argocd-lua: go is not installed (need Go >= 1.24)" >&2; exit 1; }

key=$( { go version; go env GOOS GOARCH; cat "$SRC/go.mod" "$SRC/go.sum" "$SRC"/*.go "$0"; } | sha256sum | cut -c1-16)
CACHE="$CACHE_ROOT/argocd-lua-$key"
if [ "$(cat "$BIN_DIR/.argocd-lua.key" 2>/dev/null)" = "$key" ] && [ -x "$BIN_DIR/argocd-lua" ]; then
  exit 0
fi
mkdir -p "$CACHE_ROOT" "$BIN_DIR"
if [ ! -x "$CACHE/argocd-lua" ]; then
  echo "build-argocd-lua: building into $CACHE" >&2
  tmp="$CACHE_ROOT/.tmp-argocd-lua-$$"
  rm -rf "$tmp" && mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  ( cd "$SRC" && CGO_ENABLED=0 go build -ldflags "-s -w" -o "$tmp/argocd-lua" . )
  rm -rf "$CACHE" && mv "$tmp" "$CACHE"
  trap - EXIT
fi
rm -f "$BIN_DIR/argocd-lua"
ln "$CACHE/argocd-lua" "$BIN_DIR/argocd-lua" 2>/dev/null || cp "$CACHE/argocd-lua" "$BIN_DIR/argocd-lua"
echo "$key" > "$BIN_DIR/.argocd-lua.key"
