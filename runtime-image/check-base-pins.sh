#!/bin/sh
# Release guard of runtime-image/Dockerfile: a release build (--build-arg RELEASE=1) must name
# every base image by digest, `name:tag@sha256:<64 hex>`. A tag can be moved to other content
# at any time (by its publisher or by whoever takes over the registry account); a digest is the
# content. Without RELEASE (the default, e.g. hack/real-node/build-image.sh's local test-bed
# base) it checks nothing. renovate.json keeps the pins current; runtime-image/README.md says how
# to pin by hand. POSIX sh: it runs first in the builder stage, before anything is installed.
# Usage: check-base-pins.sh [ARG_NAME...] (default: BASE_IMAGE BUILDER_IMAGE), the names of the
# stage's build args that hold base images; RELEASE is a build arg too. Exit 1 names each
# unpinned one. Any RELEASE other than empty or 0 is a release (a typo must not skip the check).
set -eu
case "${RELEASE:-0}" in
  0 | "") exit 0 ;;
esac
[ "$#" -gt 0 ] || set -- BASE_IMAGE BUILDER_IMAGE
unpinned=0
for arg in "$@"; do
  case "$arg" in  # a variable name, never text to evaluate
    *[!A-Za-z0-9_]* | [0-9]* | "") echo "check-base-pins.sh: not a build arg name: $arg" >&2; exit 2 ;;
  esac
  eval "ref=\${$arg:-}"
  pinned=0
  case "$ref" in
    *[!A-Za-z0-9._/:@-]* | "") ;;  # spaces, newlines or other text: not one image reference
    *) if printf '%s' "$ref" | grep -Eq '^[^@]+@sha256:[0-9a-f]{64}$'; then pinned=1; fi ;;
  esac
  if [ "$pinned" = 0 ]; then
    echo "release build: $arg=${ref:-<unset>} is not pinned by digest;" \
      "pass --build-arg $arg=<image>:<tag>@sha256:<digest of the tag you tested>" \
      "(renovate.json keeps the pins current; see runtime-image/README.md)" >&2
    unpinned=1
  fi
done
exit "$unpinned"
