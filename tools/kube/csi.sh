#!/usr/bin/env bash
# The CSI driver's build-time inputs, pinned and fetched through the Go module proxy
# (idempotent; nothing here is committed):
#   csi.sh spec     -> prints the path of csi.proto of CSI_SPEC_VERSION (module cache)
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
  sanity) sanity ;;
  *) die "usage: csi.sh spec|sanity" ;;
esac
