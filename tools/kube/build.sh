#!/usr/bin/env bash
# Build the pinned Go binaries into $NASBLADE_CACHE/bin/<name>-<version>/ (idempotent).
# Usage: build.sh [tier1|tier2|all|<component>...]
#   components: etcd k8s-tier1 k8s-tier2 kwok helm coredns local-path-provisioner pause snapshotter
#               provisioner resizer promtool checkov
. "$(dirname "$0")/lib.sh"

have() { local d=$1; shift; for b in "$@"; do [ -x "$d/$b" ] || return 1; done; }

# Build packages from a throw-away wrapper module (so replace directives apply).
# $1=workdir $2=outdir $3=ldflags, rest=packages
wrapper_build() {
  local wd=$1 out=$2 ldf=$3; shift 3
  mkdir -p "$out"
  ( cd "$wd" && $NICE "$GO" build -trimpath -tags selinux,notest -ldflags "$ldf" -o "$out/" "$@" )
}

build_k8s() { # binaries...
  local out; out=$(k8s_bindir)
  local want=() b
  for b in "$@"; do [ -x "$out/$b" ] || want+=("$b"); done
  [ ${#want[@]} -eq 0 ] && { log "kubernetes $K8S_VERSION: $* already built"; return 0; }
  local wd="$NASBLADE_CACHE/src/k8s-wrapper-$K8S_VERSION"
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local stv="v0.${K8S_VERSION#v1.}"
  if [ ! -f "$wd/go.mod.done" ]; then
    log "kubernetes $K8S_VERSION: preparing wrapper module (downloads ~1 GB on a cold cache)"
    mkdir -p "$wd"
    local gomod
    gomod=$(cd "$wd" && "$GO" mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ] || die "cannot download k8s.io/kubernetes@$K8S_VERSION"
    {
      echo "module nasblade.local/k8sbuild"
      echo
      echo "go $(sed -n 's/^go \([0-9.]*\).*/\1/p' "$gomod")"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      grep -E '^\s*k8s\.io/[^ ]+ v0\.0\.0\s*$' "$gomod" | awk -v v="$stv" '{print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > "$wd/go.mod"
    printf 'package main\n\nimport (\n' > "$wd/tools.go"
    for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
      printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$b" >> "$wd/tools.go"
    done
    printf ')\n\nfunc main() {}\n' >> "$wd/tools.go"
    sed -i '1i //go:build tools\n' "$wd/tools.go"
    ( cd "$wd" && $NICE "$GO" mod tidy >/dev/null 2>"$wd/tidy.log" ) || { cat "$wd/tidy.log" >&2; die "go mod tidy failed"; }
    touch "$wd/go.mod.done"
  fi
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldf="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=nasblade-gomodproxy"
  done
  local pkgs=()
  for b in "${want[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$b"); done
  log "kubernetes $K8S_VERSION: building ${want[*]} (tens of minutes cold on 2 cores)"
  local t0=$SECONDS
  wrapper_build "$wd" "$out" "$ldf" "${pkgs[@]}"
  log "kubernetes $K8S_VERSION: built ${want[*]} in $((SECONDS-t0))s"
}

build_etcd() {
  local out; out=$(etcd_bindir)
  have "$out" etcd etcdctl && { log "etcd $ETCD_VERSION already built"; return 0; }
  local wd="$NASBLADE_CACHE/src/etcd-wrapper-$ETCD_VERSION"
  mkdir -p "$wd"
  if [ ! -f "$wd/go.mod.done" ]; then
    log "etcd $ETCD_VERSION: preparing wrapper module"
    local m v="$ETCD_VERSION"
    {
      echo "module nasblade.local/etcdbuild"; echo; echo "go 1.23"; echo
      echo "require ("
      echo "	go.etcd.io/etcd/server/v3 $v"
      echo "	go.etcd.io/etcd/etcdctl/v3 $v"
      echo ")"; echo "replace ("
      for m in api/v3 client/pkg/v3 client/v3 etcdctl/v3 etcdutl/v3 pkg/v3 raft/v3 server/v3; do
        echo "	go.etcd.io/etcd/$m => go.etcd.io/etcd/$m $v"
      done
      echo "	go.etcd.io/etcd/client/v2 => go.etcd.io/etcd/client/v2 v2.305.${v#v3.5.}"
      echo ")"
    } > "$wd/go.mod"
    printf '//go:build tools\n\npackage main\n\nimport (\n\t_ "go.etcd.io/etcd/server/v3"\n\t_ "go.etcd.io/etcd/etcdctl/v3"\n)\n' > "$wd/tools.go"
    ( cd "$wd" && $NICE "$GO" mod tidy >/dev/null 2>"$wd/tidy.log" ) || { cat "$wd/tidy.log" >&2; die "etcd go mod tidy failed"; }
    touch "$wd/go.mod.done"
  fi
  log "etcd $ETCD_VERSION: building"
  local ldf="-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=nasblade"
  mkdir -p "$out"
  ( cd "$wd" && $NICE "$GO" build -trimpath -ldflags "$ldf" -o "$out/etcd" go.etcd.io/etcd/server/v3 \
      && $NICE "$GO" build -trimpath -ldflags "$ldf" -o "$out/etcdctl" go.etcd.io/etcd/etcdctl/v3 )
  have "$out" etcd etcdctl || { ls -la "$out" >&2; die "etcd build produced no binaries"; }
}

# go install of a module main package (no replace directives needed)
gobuild_install() { # outdir pkg@version ldflags
  local out=$1 pv=$2 ldf=${3:-}
  mkdir -p "$out"
  GOBIN="$out" $NICE "$GO" install -trimpath -ldflags "-s -w $ldf" "$pv"
}

build_kwok() {
  local out; out=$(kwok_bindir)
  have "$out" kwok && { log "kwok $KWOK_VERSION already built"; return 0; }
  log "kwok $KWOK_VERSION: building"
  gobuild_install "$out" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION"
}

build_helm() {
  local out; out=$(helm_bindir)
  have "$out" helm && { log "helm $HELM_VERSION already built"; return 0; }
  log "helm $HELM_VERSION: building"
  gobuild_install "$out" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
}

build_coredns() {
  local out; out=$(coredns_bindir)
  have "$out" coredns && { log "coredns $COREDNS_VERSION already built"; return 0; }
  log "coredns $COREDNS_VERSION: building"
  gobuild_install "$out" "github.com/coredns/coredns@$COREDNS_VERSION" ""
}

build_lpp() {
  local out; out=$(lpp_bindir)
  have "$out" local-path-provisioner && { log "local-path-provisioner $LPP_VERSION already built"; return 0; }
  log "local-path-provisioner $LPP_VERSION: building"
  gobuild_install "$out" "github.com/rancher/local-path-provisioner@$LPP_VERSION" "-X main.VERSION=$LPP_VERSION"
}

# csi-snapshotter and snapshot-controller (kubernetes-csi/external-snapshotter). Its go.mod
# replaces its client module with ./client, a directory the module's zip leaves out (the client
# is a module of its own), so `go install pkg@v` refuses it: the module is copied out of the
# module cache, the client module of the same release put at ./client, and built there.
build_snapshotter() {
  local out; out=$(snapshotter_bindir)
  have "$out" csi-snapshotter && have "$out" snapshot-controller \
    && { log "external-snapshotter $SNAPSHOTTER_VERSION already built"; return 0; }
  log "external-snapshotter $SNAPSHOTTER_VERSION: building csi-snapshotter and snapshot-controller"
  local mod="github.com/kubernetes-csi/external-snapshotter"
  local src client wd="$NASBLADE_CACHE/src/external-snapshotter-$SNAPSHOTTER_VERSION"
  src=$("$GO" mod download -json "$mod/v8@$SNAPSHOTTER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  client=$("$GO" mod download -json "$mod/client/v8@$SNAPSHOTTER_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$src/go.mod" ] && [ -f "$client/go.mod" ] || die "external-snapshotter $SNAPSHOTTER_VERSION: module download failed"
  rm -rf "$wd"; mkdir -p "$wd" "$out"
  cp -r "$src/." "$wd/"; cp -r "$client" "$wd/client"; chmod -R u+w "$wd"
  ( cd "$wd" && $NICE "$GO" build -trimpath -ldflags "-s -w -X main.version=$SNAPSHOTTER_VERSION" \
      -o "$out/" ./cmd/csi-snapshotter ./cmd/snapshot-controller )
  rm -rf "$wd"
}

# A kubernetes-csi sidecar whose module the Go module proxy serves by exact version only: it
# refuses the version list, which `go install pkg@v` reads (for deprecations), so the module is
# downloaded at its version, copied out of the module cache and built there, its dependencies
# from the proxy (-mod=mod: module zips leave vendor/ out).
# Usage: build_sidecar MODULE VERSION OUTDIR CMD
build_sidecar() {
  local mod=$1 version=$2 out=$3 cmd=$4
  have "$out" "$cmd" && { log "$cmd $version already built"; return 0; }
  log "$cmd $version: building ($mod)"
  local src wd="$NASBLADE_CACHE/src/$cmd-$version"
  src=$("$GO" mod download -json "$mod@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$src/go.mod" ] || die "$mod@$version: module download failed"
  rm -rf "$wd"; mkdir -p "$wd" "$out"
  cp -r "$src/." "$wd/"; chmod -R u+w "$wd"
  ( cd "$wd" && $NICE "$GO" build -mod=mod -trimpath -ldflags "-s -w -X main.version=$version" \
      -o "$out/" "./cmd/$cmd" )
  rm -rf "$wd"
}

# promtool (tests/chart: `promtool test rules` on the chart's PrometheusRule). Prometheus's
# go.mod has exclude directives, so `go install pkg@v` refuses it: a wrapper module instead.
build_promtool() {
  local out; out=$(promtool_bindir)
  have "$out" promtool && { log "promtool $PROMETHEUS_VERSION already built"; return 0; }
  local wd="$NASBLADE_CACHE/src/promtool-wrapper-$PROMETHEUS_VERSION"
  mkdir -p "$wd" "$out"
  log "promtool $PROMETHEUS_VERSION: building (module github.com/prometheus/prometheus)"
  if [ ! -f "$wd/go.mod.done" ]; then
    printf 'module nasblade.local/promtoolbuild\n\ngo 1.24\n' > "$wd/go.mod"
    ( cd "$wd" && $NICE "$GO" get "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" >/dev/null 2>"$wd/get.log" ) \
      || { cat "$wd/get.log" >&2; die "promtool: go get failed"; }
    touch "$wd/go.mod.done"
  fi
  wrapper_build "$wd" "$out" "-s -w -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" \
    github.com/prometheus/prometheus/cmd/promtool
}

# checkov (PyPI; tests/chart scans the rendered chart): a venv of its own in the cache, since
# its pinned dependencies would fight the project's.
build_checkov() {
  local dir="$NASBLADE_CACHE/tools/checkov-$CHECKOV_VERSION"
  [ -x "$dir/bin/checkov" ] && { log "checkov $CHECKOV_VERSION already installed"; return 0; }
  log "checkov $CHECKOV_VERSION: installing into $dir"
  rm -rf "$dir"
  "${PYTHON:-python3.11}" -m venv "$dir"
  PIP_CACHE_DIR="$NASBLADE_CACHE/pip" $NICE "$dir/bin/pip" install -q "checkov==$CHECKOV_VERSION"
}

build_pause() {
  local out="$BIN_ROOT/pause-1"
  have "$out" pause && return 0
  log "pause: building static binary"
  local wd="$NASBLADE_CACHE/src/pause"
  mkdir -p "$wd" "$out"
  cp "$CLUSTER_DIR/images/pause/main.go" "$wd/main.go"
  printf 'module nasblade.local/pause\n\ngo 1.22\n' > "$wd/go.mod"
  ( cd "$wd" && "$GO" build -trimpath -ldflags "-s -w" -o "$out/pause" . )
}

T1_K8S="kube-apiserver kube-controller-manager kubectl"
T2_K8S="kube-scheduler kubelet kube-proxy"

run() {
  case "$1" in
    etcd) build_etcd ;;
    k8s-tier1) build_k8s $T1_K8S ;;
    k8s-tier2) build_k8s $T1_K8S $T2_K8S ;;
    kwok) build_kwok ;;
    helm) build_helm ;;
    coredns) build_coredns ;;
    local-path-provisioner|lpp) build_lpp ;;
    pause) build_pause ;;
    snapshotter) build_snapshotter ;;
    provisioner) build_sidecar github.com/kubernetes-csi/external-provisioner/v5 "$PROVISIONER_VERSION" \
        "$(provisioner_bindir)" csi-provisioner ;;
    resizer) build_sidecar github.com/kubernetes-csi/external-resizer "$RESIZER_VERSION" "$(resizer_bindir)" csi-resizer ;;
    promtool) build_promtool ;;
    checkov) build_checkov ;;
    tier1) run etcd; run k8s-tier1; run kwok ;;
    tier2|all) run tier1; run pause; run k8s-tier2; run helm; run coredns; run lpp; run snapshotter
               run provisioner; run resizer ;;
    *) die "unknown component $1" ;;
  esac
}

[ $# -eq 0 ] && set -- tier1
for c in "$@"; do run "$c"; done
