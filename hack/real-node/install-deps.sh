#!/usr/bin/env bash
# Installs (idempotently) the Debian packages the real worker node and the image build need:
#   containerd + runc            the container runtime (containerd 1.6.20 in bookworm speaks CRI v1)
#   containernetworking-plugins  bridge, host-local, portmap, loopback CNI plugins
#   iptables + conntrack         kube-proxy's iptables mode; CNI portmap/masquerade
#   ipset                        kube-router's NetworkPolicy firewall (peer sets)
#   buildah                      builds runtime-image/Dockerfile without a Docker engine
#   debootstrap                  makes the local base image (no registry is reachable)
#   socat, ethtool, iproute2     kubelet/kube-proxy helpers
# apt-get update runs only when a package is missing. Needs root.
set -euo pipefail
PKGS=(containerd runc containernetworking-plugins iptables conntrack ipset buildah debootstrap
      socat ethtool iproute2 ca-certificates)
[ "$(id -u)" = 0 ] || { echo "install-deps: must run as root" >&2; exit 1; }
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all present" >&2
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# --no-install-recommends: buildah would otherwise pull in podman-style extras we do not use.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# containerd's Debian package enables a systemd unit; there is no systemd here, and the real node
# runs its own containerd with its own config/socket, so nothing else needs doing.
echo "install-deps: done" >&2
