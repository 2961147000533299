# Common helpers for tools/kube scripts. Source me.
set -euo pipefail
CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLUSTER_DIR/../.." && pwd)"
# shellcheck disable=SC1091
. "$CLUSTER_DIR/versions.env"
NASBLADE_CACHE="${NASBLADE_CACHE:-$HOME/.cache/nasblade}"
export NASBLADE_CACHE
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
export GOMODCACHE="$NASBLADE_CACHE/go/mod"
export GOCACHE="$NASBLADE_CACHE/go/build"
export GOFLAGS="-mod=mod"
export CGO_ENABLED=0
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
BIN_ROOT="$NASBLADE_CACHE/bin"
NICE="${NICE:-nice -n 10}"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

k8s_bindir()     { echo "$BIN_ROOT/kubernetes-$K8S_VERSION"; }
etcd_bindir()    { echo "$BIN_ROOT/etcd-$ETCD_VERSION"; }
kwok_bindir()    { echo "$BIN_ROOT/kwok-$KWOK_VERSION"; }
helm_bindir()    { echo "$BIN_ROOT/helm-$HELM_VERSION"; }
coredns_bindir() { echo "$BIN_ROOT/coredns-$COREDNS_VERSION"; }
lpp_bindir()     { echo "$BIN_ROOT/local-path-provisioner-$LPP_VERSION"; }
snapshotter_bindir() { echo "$BIN_ROOT/external-snapshotter-$SNAPSHOTTER_VERSION"; }
provisioner_bindir() { echo "$BIN_ROOT/external-provisioner-$PROVISIONER_VERSION"; }
resizer_bindir() { echo "$BIN_ROOT/external-resizer-$RESIZER_VERSION"; }
promtool_bindir() { echo "$BIN_ROOT/promtool-$PROMETHEUS_VERSION"; }
