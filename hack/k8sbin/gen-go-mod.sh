#!/usr/bin/env bash
# Regenerates hack/k8sbin/go.mod + go.sum from versions.env. Run by hand after bumping a version;
# hack/build-bins.sh only builds what is committed.
#
# k8s.io/kubernetes requires its staging modules (k8s.io/api, k8s.io/client-go, ...) at v0.0.0 and
# replaces them with ./staging/src/... in its own go.mod, which a dependent module cannot see. So
# every `=> ./staging/src/k8s.io/X` line of upstream's go.mod becomes `replace k8s.io/X => k8s.io/X
# v0.MINOR.PATCH` (the published tag of that staging module for this Kubernetes release).
set -euo pipefail
cd "$(dirname "$0")"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
# shellcheck source=versions.env
. ./versions.env
staging_version="v0.${KUBE_VERSION#v1.}"   # v1.34.4 -> v0.34.4

upstream_mod=$(go mod download -json "k8s.io/kubernetes@${KUBE_VERSION}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
mapfile -t staging < <(sed -nE 's#^[[:space:]]*(k8s\.io/[A-Za-z0-9._/-]+) => \./staging/src/.*#\1#p' "$upstream_mod" | sort -u)
[ "${#staging[@]}" -gt 10 ] || { echo "found only ${#staging[@]} staging modules in $upstream_mod" >&2; exit 1; }

go_directive=$(sed -nE 's/^go ([0-9.]+)$/\1/p' "$upstream_mod")
rm -f go.mod go.sum
go mod init github.com/slm-operator/slm-operator/hack/k8sbin >/dev/null 2>&1
go mod edit -go="$go_directive"
for m in "${staging[@]}"; do
  go mod edit -replace="$m=$m@$staging_version"
done
go mod edit -require="k8s.io/kubernetes@${KUBE_VERSION}"
go mod edit -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
go mod edit -require="helm.sh/helm/v3@${HELM_VERSION}"
# Main packages of other modules can't be imported, but `go build` builds them when they are tools
# of this module. (kwok is not one: v0.7.0 does not compile against k8s.io/apimachinery v0.34, so
# hack/build-bins.sh builds it with `go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION`, from
# kwok's own go.mod/go.sum.)
go mod edit -tool=helm.sh/helm/v3/cmd/helm
go mod tidy
echo "go.mod: ${#staging[@]} staging replaces at $staging_version, kubernetes $KUBE_VERSION" >&2
