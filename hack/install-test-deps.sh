#!/usr/bin/env bash
# Installs the system packages that the chart and GitOps tests need, once. Idempotent: a package
# that is already installed is skipped, so CI can call this on every run.
#
#   lua5.4  runs examples/gitops/argocd/slmdeployment-health.lua in tests/chart/test_argocd_health.py
#           (Argo CD embeds gopher-lua, which implements Lua 5.1; the script keeps to the subset that
#           5.1 and 5.4 share).
#
# Needs root (or sudo) and network access to the Debian mirror only when something is missing.
set -euo pipefail

PACKAGES=(lua5.4)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-test-deps: all present (${PACKAGES[*]})"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
echo "install-test-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
