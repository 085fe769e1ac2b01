#!/usr/bin/env bash
# Builds the local cluster's tools (Kubernetes control plane, etcd, kwok, helm) and kstatus (Flux's
# health reader, for tests) from the Go modules pinned beside this script into a cache outside git;
# with --kueue also Kueue's manager (and a copy of its CRDs from the same module), which only clusters
# started with Kueue need (`modelops dev cluster up --kueue`).
# Idempotent: each group of tools has its own cache directory, keyed by what its binaries are built
# from (its modules' pins and code, versions and build flags), and reused when complete; so adding or
# changing one group never rebuilds another, and an edit of this script's words rebuilds nothing.
# Prints the binary directory as the last line of stdout (kstatus, and kueue and kueue-crds when built, are
# linked into it); progress goes to stderr.
set -euo pipefail
with_kueue=false
for arg in "$@"; do
  case $arg in
    --kueue) with_kueue=true ;;
    *) echo "usage: $0 [--kueue]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=v1.33.13
HELM_VERSION=v3.16.4
ETCD_VERSION=v3.5.21
KWOK_VERSION=v0.7.0
CLI_UTILS_VERSION=v0.37.2
KUEUE_VERSION=v0.17.0
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd kwok helm)

cache=${MODELOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelops}
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath"
build() {  # build <output dir> <module dir> <ldflags> <packages...>
  local out=$1 dir=$2 ldflags=$3; shift 3
  echo "tools: building $* ..." >&2
  local t0=$(date +%s)
  go build -C "$here/$dir" -ldflags "-s -w $ldflags" -o "$out/" "$@"
  echo "tools:   done in $(( $(date +%s) - t0 ))s" >&2
}
key() {  # key <words> <files...>: 12 hex digits naming what a group is built from
  local words=$1; shift
  { echo "$words"; declare -f build; (cd "$here" && cat "$@"); } | sha256sum | cut -c1-12
}
complete() {  # complete <dir> <binaries...>
  local dir=$1; shift
  for b in "$@"; do [ -x "$dir/$b" ] || return 1; done
}

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
kv="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1"
kv="$kv -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
kv="$kv -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitMajor=1"
kv="$kv -X k8s.io/client-go/pkg/version.gitMinor=$minor"
ev="-X go.etcd.io/etcd/api/v3/version.Version=${ETCD_VERSION#v}"
wv="-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
hv="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
hv="$hv -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor"
hv="$hv -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor"

# The cluster's tools.
bin="$cache/bin/k8s-$K8S_VERSION-$(key "$kv|$ev|$wv|$hv" {etcd,helm,kubernetes,kwok}/go.{mod,sum} etcd/main.go)"
if complete "$bin" "${BINARIES[@]}"; then
  echo "tools: up to date in $bin" >&2
else
  start=$(date +%s)
  mkdir -p "$bin"
  k=k8s.io/kubernetes/cmd
  build "$bin" kubernetes "$kv" $k/kube-apiserver $k/kube-controller-manager $k/kube-scheduler $k/kube-proxy $k/kubectl
  build "$bin" etcd "$ev" .
  build "$bin" kwok "$wv" sigs.k8s.io/kwok/cmd/kwok
  build "$bin" helm "$hv" helm.sh/helm/v3/cmd/helm
  complete "$bin" "${BINARIES[@]}" || { echo "tools: build incomplete in $bin" >&2; exit 1; }
  echo "tools: built ${BINARIES[*]} in $(( $(date +%s) - start ))s" >&2
fi

# kstatus (sigs.k8s.io/cli-utils), in a directory of its own, linked beside the cluster's tools.
kbin="$cache/bin/kstatus-$CLI_UTILS_VERSION-$(key "" kstatus/go.mod kstatus/go.sum kstatus/main.go)"
if ! complete "$kbin" kstatus; then
  mkdir -p "$kbin"
  build "$kbin" kstatus "" .
  complete "$kbin" kstatus || { echo "tools: build incomplete in $kbin" >&2; exit 1; }
fi
ln -sfn "$kbin/kstatus" "$bin/kstatus"

# Kueue (sigs.k8s.io/kueue), on request, in a directory of its own: the manager, and the CRDs its module
# ships (config/components/crd/bases), copied so that starting a cluster needs no Go.
if $with_kueue; then
  qv="-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION"
  qbin="$cache/bin/kueue-$KUEUE_VERSION-$(key "$qv" kueue/go.mod kueue/go.sum)"
  if ! complete "$qbin" kueue || [ ! -s "$qbin/crds/kueue.x-k8s.io_workloads.yaml" ]; then
    mkdir -p "$qbin/crds"
    build "$qbin" kueue "$qv" sigs.k8s.io/kueue/cmd/kueue
    module=$(go list -C "$here/kueue" -m -f '{{.Dir}}' sigs.k8s.io/kueue)
    cp "$module"/config/components/crd/bases/*.yaml "$qbin/crds/"
    chmod u+w "$qbin"/crds/*.yaml
    complete "$qbin" kueue || { echo "tools: build incomplete in $qbin" >&2; exit 1; }
  fi
  ln -sfn "$qbin/kueue" "$bin/kueue"
  ln -sfn "$qbin/crds" "$bin/kueue-crds"
fi

echo "$bin"
