#!/bin/sh
# Release guard of runtime-image/Dockerfile: a release build (--build-arg RELEASE=1) must name
# every base image by digest, `name:tag@sha256:<64 hex>`. A tag can be moved to other content
# at any time (by its publisher or by whoever takes over the registry account); a digest is the
# content. Without RELEASE (the default, e.g. hack/real-node/build-image.sh's local test-bed
# base) it checks nothing. renovate.json keeps the pins current; runtime-image/README.md says how
# to pin by hand. POSIX sh: it runs first in the builder stage, before anything is installed.
# Env (the stage's build args): RELEASE, BASE_IMAGE, BUILDER_IMAGE. Exit 1 names each unpinned one.
set -eu
case "${RELEASE:-0}" in
  0 | "") exit 0 ;;
esac
unpinned=0
for arg in BASE_IMAGE BUILDER_IMAGE; do
  eval "ref=\${$arg:-}"
  # shellcheck disable=SC2154  # set by the eval above
  if ! printf '%s\n' "$ref" | grep -Eq '^[^@[:space:]]+@sha256:[0-9a-f]{64}$'; then
    echo "release build: $arg=${ref:-<unset>} is not pinned by digest;" \
      "pass --build-arg $arg=<image>:<tag>@sha256:<digest of the tag you tested>" \
      "(renovate.json keeps the pins current; see runtime-image/README.md)" >&2
    unpinned=1
  fi
done
exit "$unpinned"
