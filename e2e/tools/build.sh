#!/usr/bin/env bash
# Builds the local cluster's tools (Kubernetes control plane, etcd, kwok, helm)
# from the Go modules pinned beside this script into a cache outside git.
# Idempotent: a cache directory keyed by the pins is reused when complete.
# Prints the binary directory as the last line of stdout; progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=v1.33.13
HELM_VERSION=v3.16.4
ETCD_VERSION=v3.5.21
KWOK_VERSION=v0.7.0
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd kwok helm)

stamp=$(cd "$here" && cat build.sh */go.mod */go.sum etcd/main.go | sha256sum | cut -c1-12)
cache=${MODELOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelops}
bin="$cache/bin/k8s-$K8S_VERSION-$stamp"

complete() { for b in "${BINARIES[@]}"; do [ -x "$bin/$b" ] || return 1; done; }
if complete; then
  echo "tools: up to date in $bin" >&2
  echo "$bin"
  exit 0
fi

start=$(date +%s)
mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath"
build() {  # build <module dir> <ldflags> <packages...>
  local dir=$1 ldflags=$2; shift 2
  echo "tools: building $* ..." >&2
  local t0=$(date +%s)
  go build -C "$here/$dir" -ldflags "-s -w $ldflags" -o "$bin/" "$@"
  echo "tools:   done in $(( $(date +%s) - t0 ))s" >&2
}

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
kv="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
kv="$kv -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
kv="$kv -X k8s.io/client-go/pkg/version.gitMinor=$minor"
k=k8s.io/kubernetes/cmd
build kubernetes "$kv" $k/kube-apiserver $k/kube-controller-manager $k/kube-scheduler $k/kube-proxy $k/kubectl
build etcd "-X go.etcd.io/etcd/api/v3/version.Version=${ETCD_VERSION#v}" .
build kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
hv="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
hv="$hv -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
hv="$hv -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"
build helm "$hv" helm.sh/helm/v3/cmd/helm

complete || { echo "tools: build incomplete in $bin" >&2; exit 1; }
echo "tools: built ${BINARIES[*]} in $(( $(date +%s) - start ))s" >&2
echo "$bin"
