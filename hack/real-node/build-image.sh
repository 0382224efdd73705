#!/usr/bin/env bash
# Builds the runtime image from runtime-image/Dockerfile with buildah (no Docker engine, no registry)
# and, with --import, loads it into the real node's containerd. Prints the image reference.
#
#   1. base image localhost/slm-base:bookworm: a debootstrap'd Debian bookworm (variant minbase)
#      with python3 + python3-venv (+ the C/C++ runtime libraries llama.cpp links), committed with
#      `buildah from scratch` + copy + `buildah commit`. Cached as an OCI archive.
#   2. `buildah bud --build-arg BASE_IMAGE=localhost/slm-base:bookworm -f runtime-image/Dockerfile`
#      on a copy of the files the Dockerfile COPYs (CONTEXT_PATHS below; git's tracked and
#      untracked-not-ignored files), with the cached llama-cpp-python wheel from
#      hack/build-llama-wheel.sh put in the context and named by --build-arg LLAMA_WHEEL_DIR
#      (SLM_IMAGE_COMPILE_LLAMA=1 leaves it out: the Dockerfile then compiles llama-cpp-python).
#   3. `buildah push` to docker-archive:~/.cache/slm-operator/images/slm-runtime-<key>.tar, where
#      <key> hashes the base key, the build context (Dockerfile, runtime sources, pyproject) and the
#      wheel: an unchanged tree reuses the archive without running buildah at all.
#   4. --import: `ctr -n k8s.io images import` into the containerd of hack/real-node/up.
#
# Usage: hack/real-node/build-image.sh [--import] [--print-key]
# Env:   SLM_CACHE_DIR (default ~/.cache/slm-operator), SLM_BUILD_NICE (default 10),
#        SLM_IMAGE_COMPILE_LLAMA=1, SLM_DEBIAN_MIRROR (default: the host's apt source)
# Needs root, buildah and debootstrap (hack/real-node/install-deps.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/hack/real-node"
CACHE="${SLM_CACHE_DIR:-$HOME/.cache/slm-operator}"
IMAGES="$CACHE/images"
NICE="nice -n ${SLM_BUILD_NICE:-10}"
BASE_REF=localhost/slm-base:bookworm
REPO=localhost/slm-runtime
SUITE=bookworm
BASE_PKGS=python3,python3-venv,ca-certificates,libgomp1,libstdc++6,libssl3
DO_IMPORT=0
PRINT_KEY=0
for a in "$@"; do
  case "$a" in
    --import) DO_IMPORT=1 ;;
    --print-key) PRINT_KEY=1 ;;
    *) echo "usage: $0 [--import] [--print-key]" >&2; exit 2 ;;
  esac
done
log() { echo "build-image: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root (buildah, debootstrap)"; exit 1; }
for t in buildah debootstrap; do
  command -v "$t" >/dev/null || { log "$t missing: run hack/real-node/install-deps.sh"; exit 1; }
done
mkdir -p "$IMAGES"
exec 8>"$IMAGES/.lock"
flock 8

# ---- 1. base image -------------------------------------------------------------------------
base_key=$(printf '%s|%s|%s' "$SUITE" "$BASE_PKGS" "$(sed -n '/^# ---- 1/,/^# ---- 2/p' "$0")" \
  | sha256sum | cut -c1-12)
base_archive="$IMAGES/slm-base-$SUITE-$base_key.tar"

mirror() {
  if [ -n "${SLM_DEBIAN_MIRROR:-}" ]; then echo "$SLM_DEBIAN_MIRROR"; return; fi
  # the host's own Debian source (deb822 or one-line format)
  local m
  m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
      | grep -v security | head -1 || true)
  [ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
  echo "${m:?no Debian mirror found in /etc/apt: set SLM_DEBIAN_MIRROR}"
}

base_present() {
  [ "$(buildah inspect --type image --format '{{index .OCIv1.Config.Labels "slm.dev/base-key"}}' \
        "$BASE_REF" 2>/dev/null)" = "$base_key" ]
}

if ! base_present; then
  if [ ! -f "$base_archive" ]; then
    t0=$(date +%s)
    work=$(mktemp -d "$IMAGES/.base-XXXXXX")
    trap 'rm -rf "$work"' EXIT
    log "debootstrap $SUITE (minbase + $BASE_PKGS) from $(mirror)"
    $NICE debootstrap --variant=minbase --include="$BASE_PKGS" "$SUITE" "$work/rootfs" "$(mirror)" \
      > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
    # an image needs no package caches, docs or the build host's resolver
    rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
      "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/locale/* \
      "$work"/rootfs/var/log/*.log
    : > "$work/rootfs/etc/resolv.conf"
    ctr_id=$(buildah from scratch)
    mnt=$(buildah mount "$ctr_id")
    cp -a "$work/rootfs/." "$mnt/"
    buildah umount "$ctr_id" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd /bin/bash --os linux --arch amd64 \
      --annotation "slm.dev/base-key=$base_key" --label "slm.dev/base-key=$base_key" "$ctr_id"
    buildah commit --rm --quiet "$ctr_id" "$BASE_REF" >/dev/null
    buildah push --quiet "$BASE_REF" "oci-archive:$base_archive.tmp:$BASE_REF" >/dev/null
    mv "$base_archive.tmp" "$base_archive"
    rm -rf "$work"
    trap - EXIT
    log "base image built in $(( $(date +%s) - t0 ))s -> $base_archive"
  else
    log "loading base image from $base_archive"
    buildah tag "$(buildah pull --quiet "oci-archive:$base_archive")" "$BASE_REF"
  fi
fi

# ---- 2. build context + key ----------------------------------------------------------------
ctx=$(mktemp -d "$IMAGES/.ctx-XXXXXX")
trap 'rm -rf "$ctx"' EXIT
# What the Dockerfile COPYs (git's tracked + untracked-not-ignored files under these paths), so
# that the cache key changes only when the image would. A new COPY source must be added here.
CONTEXT_PATHS=(pyproject.toml README.md operator runtime-image)
( cd "$ROOT" && git ls-files -z --cached --others --exclude-standard -- "${CONTEXT_PATHS[@]}" \
    | tar --null -T - --ignore-failed-read -cf - 2>/dev/null ) | tar -C "$ctx" -xf -
wheel_args=()
if [ "${SLM_IMAGE_COMPILE_LLAMA:-0}" != 1 ]; then
  wheel_dir=$(bash "$ROOT/hack/build-llama-wheel.sh")
  mkdir -p "$ctx/.wheels"
  cp "$wheel_dir"/*.whl "$ctx/.wheels/"
  wheel_args=(--build-arg LLAMA_WHEEL_DIR=.wheels)
fi
key=$( { echo "$base_key"; echo "${wheel_args[*]:-}";
         cd "$ctx" && find . -type f ! -path './.git/*' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; } \
       | sha256sum | cut -c1-12)
if [ "$PRINT_KEY" = 1 ]; then echo "$key"; exit 0; fi
IMAGE="$REPO:$key"
archive="$IMAGES/slm-runtime-$key.tar"

# ---- 3. build (unless cached) --------------------------------------------------------------
if [ ! -f "$archive" ]; then
  t0=$(date +%s)
  log "buildah bud -f runtime-image/Dockerfile (BASE_IMAGE=$BASE_REF ${wheel_args[*]:-compile llama-cpp-python})"
  # chroot isolation + host network: no runc/CNI inside the build; RUN steps reach PyPI/apt as the
  # host does, trusting the host's CA bundle (a build secret: not stored in the image).
  # --pull-never: the base comes from local storage only.
  $NICE buildah bud --quiet --isolation chroot --network host --pull-never --layers=false \
    --secret "id=ca-bundle,src=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" \
    --build-arg "BASE_IMAGE=$BASE_REF" "${wheel_args[@]}" \
    -f "$ctx/runtime-image/Dockerfile" -t "$IMAGE" "$ctx" >&2
  buildah push --quiet "$IMAGE" "docker-archive:$archive.tmp:$IMAGE" >/dev/null
  mv "$archive.tmp" "$archive"
  log "runtime image built in $(( $(date +%s) - t0 ))s -> $archive ($(du -h "$archive" | cut -f1))"
  # keep the cache bounded: the two newest runtime archives, and only their tags in buildah's store
  ls -t "$IMAGES"/slm-runtime-*.tar | tail -n +3 | while read -r old; do
    rm -f "$old"
    buildah rmi "$REPO:$(basename "$old" .tar | sed 's/^slm-runtime-//')" >/dev/null 2>&1 || true
  done
else
  log "cached: $archive"
  # keep buildah's store in step (a derived image, like the e2e test's, starts FROM it)
  if ! buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    buildah tag "$(buildah pull --quiet "docker-archive:$archive")" "$IMAGE"
  fi
fi

# ---- 4. import into the real node's containerd ---------------------------------------------
if [ "$DO_IMPORT" = 1 ]; then
  t0=$(date +%s)
  sock=$(python3 "$HERE/real_node.py" env | sed -n 's/^CONTAINERD_ADDRESS=//p')
  if ctr --address "$sock" -n k8s.io images ls -q 2>/dev/null | grep -qx "$IMAGE"; then
    log "$IMAGE already in the node's containerd"
  else
    ctr --address "$sock" -n k8s.io images import --snapshotter overlayfs "$archive" >&2
    log "imported into containerd in $(( $(date +%s) - t0 ))s"
  fi
  # older builds (and the e2e test's CA-trusting derivatives of them) would pile up in the node's
  # store (~500 MB each): drop their names; containerd collects what no container still uses
  ctr --address "$sock" -n k8s.io images ls -q | grep -E "^$REPO(-testca)?:" | grep -v ":$key\$" \
    | xargs -r ctr --address "$sock" -n k8s.io images rm >/dev/null 2>&1 || true
fi
echo "$IMAGE"
