#!/usr/bin/env bash
# The CSI driver's build-time inputs, pinned and fetched through the Go module proxy
# (idempotent; nothing here is committed):
#   csi.sh spec     -> prints the path of csi.proto of CSI_SPEC_VERSION (module cache)
#   csi.sh registration -> prints the path of the kubelet's plugin-registration api.proto
#                      (k8s.io/kubelet $KUBELET_API_VERSION)
#   csi.sh snapshot-crds -> prints the paths of the VolumeSnapshot (and VolumeGroupSnapshot)
#                      CRDs of kubernetes-csi/external-snapshotter's client module
#                      $SNAPSHOTTER_VERSION (versions.env), one per line
#   csi.sh sanity   -> builds csi-sanity (kubernetes-csi/csi-test) into
#                      $NASBLADE_CACHE/bin/csi-sanity-$CSI_TEST_VERSION/ and prints its path
# The Python driver (operator/nasblade_csi/proto.py) generates its gRPC code from that
# csi.proto with grpcio-tools into $NASBLADE_CACHE/csi/ on first use.
. "$(dirname "$0")/lib.sh"

# the spec release csi-test $CSI_TEST_VERSION is built against (its go.mod), so the driver
# and the conformance suite speak the same csi.proto
CSI_SPEC_VERSION=v1.13.0
CSI_TEST_VERSION=v5.6.0

spec() {
  local dir
  dir=$("$GO" mod download -json "github.com/container-storage-interface/spec@$CSI_SPEC_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$dir/csi.proto" ] || die "no csi.proto in github.com/container-storage-interface/spec@$CSI_SPEC_VERSION"
  echo "$dir/csi.proto"
}

# the kubelet's plugin-registration API (v1, unchanged on the wire since Kubernetes 1.13); the
# first k8s.io/kubelet release whose api.proto no longer imports gogoproto
KUBELET_API_VERSION=v0.34.0

registration() {
  local dir version="$KUBELET_API_VERSION"
  dir=$("$GO" mod download -json "k8s.io/kubelet@$version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$dir/pkg/apis/pluginregistration/v1/api.proto" ] || die "no pluginregistration api.proto in k8s.io/kubelet@$version"
  echo "$dir/pkg/apis/pluginregistration/v1/api.proto"
}

snapshot_crds() {
  local dir
  dir=$("$GO" mod download -json "github.com/kubernetes-csi/external-snapshotter/client/v8@$SNAPSHOTTER_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  ls "$dir"/config/crd/*.storage.k8s.io_*.yaml 2>/dev/null | grep . \
    || die "no CRDs in external-snapshotter/client/v8@$SNAPSHOTTER_VERSION"
}

sanity() {
  local out="$BIN_ROOT/csi-sanity-$CSI_TEST_VERSION"
  if [ ! -x "$out/csi-sanity" ]; then
    log "csi-sanity $CSI_TEST_VERSION: building"
    mkdir -p "$out"
    GOBIN="$out" $NICE "$GO" install -trimpath -ldflags "-s -w" \
      "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_TEST_VERSION"
  fi
  echo "$out/csi-sanity"
}

case "${1:-}" in
  spec) spec ;;
  registration) registration ;;
  snapshot-crds) snapshot_crds ;;
  sanity) sanity ;;
  *) die "usage: csi.sh spec|registration|snapshot-crds|sanity" ;;
esac
