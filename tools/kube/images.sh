#!/usr/bin/env bash
# Build the local images (never pulled) and load them into containerd (namespace k8s.io).
# Usage: images.sh build [base|pause|coredns|lpp|snapshotter|snapshot-controller|provisioner|resizer|all] -> docker images + tar cache
#        images.sh load  [all]                           -> import cached tars into containerd
#        images.sh dockerd                               -> make sure a docker daemon runs
#        images.sh import-tar <file.tar>                  -> import any docker-save tar into containerd
#        images.sh load-docker <tag>...                   -> copy docker images into the cluster
#                                                            (containerd k8s.io, or kind load)
. "$(dirname "$0")/lib.sh"
IMG_CACHE="$NASBLADE_CACHE/images"
STATE="$NASBLADE_CACHE/state"
DOCKER="${DOCKER:-/usr/bin/docker}"
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
CONTAINERD_SOCK="${CONTAINERD_SOCK:-/run/containerd/containerd.sock}"
mkdir -p "$IMG_CACHE" "$STATE"

tarname() { echo "$IMG_CACHE/$(echo "$1" | tr '/:' '__').tar"; }

ensure_dockerd() {
  if "$DOCKER" info >/dev/null 2>&1; then return 0; fi
  # A machine that was stopped without shutting its daemons down keeps their socket files; dockerd
  # would dial a dead containerd socket and give up ("failed to dial ... containerd.sock").
  if [ -S "$CONTAINERD_SOCK" ] && ! ctr -a "$CONTAINERD_SOCK" version >/dev/null 2>&1; then
    log "containerd: removing the stale socket $CONTAINERD_SOCK (no containerd answers on it)"
    rm -f "$CONTAINERD_SOCK" "$CONTAINERD_SOCK.ttrpc"
  fi
  [ -S /var/run/docker.sock ] && rm -f /var/run/docker.sock
  # ... and its pid file, whose pid may now belong to another process (dockerd would refuse)
  if [ -f /var/run/docker.pid ] && [ "$(cat "/proc/$(cat /var/run/docker.pid)/comm" 2>/dev/null)" != dockerd ]; then
    rm -f /var/run/docker.pid
  fi
  log "dockerd: starting (no bridge, no iptables: use 'docker build --network host')"
  # No docker0 bridge and no iptables rules: docker's FORWARD DROP policy would break pod traffic.
  setsid nohup dockerd --iptables=false --ip-masq=false --bridge=none \
      -H unix:///var/run/docker.sock >"$STATE/dockerd.log" 2>&1 < /dev/null &
  echo $! > "$STATE/dockerd.pid"
  for _ in $(seq 1 60); do "$DOCKER" info >/dev/null 2>&1 && return 0; sleep 1; done
  tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not start"
}

have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# restore from the tar cache if docker lost the image; returns 1 if it must be built
restore_or_missing() {
  local tag=$1 tar; tar=$(tarname "$1")
  have_image "$tag" && { [ -f "$tar" ] || "$DOCKER" save "$tag" -o "$tar"; return 0; }
  [ -f "$tar" ] && { log "image $tag: loading from cache"; "$DOCKER" load -i "$tar" >/dev/null; return 0; }
  return 1
}

save_tar() { local tar; tar=$(tarname "$1"); "$DOCKER" save "$1" -o "$tar.tmp" && mv "$tar.tmp" "$tar"; }

build_base() {
  local tag=$BASE_IMAGE
  restore_or_missing "$tag" && { log "image $tag: present"; return 0; }
  local suite=bookworm mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  local root="$NASBLADE_CACHE/src/rootfs-$(echo "$tag" | tr '/:' '__')"
  rm -rf "$root"; mkdir -p "$root"
  log "image $tag: debootstrap $suite (python3, python3-venv) from $mirror (a few minutes)"
  local t0=$SECONDS
  $NICE debootstrap --variant=minbase \
      --include=python3,python3-venv,python3-pip,ca-certificates,procps,iproute2,netbase \
      "$suite" "$root" "$mirror" > "$STATE/debootstrap.log" 2>&1 \
    || { tail -30 "$STATE/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/*.log "$root"/tmp/* "$root"/dev/*
  echo "nasblade-base" > "$root/etc/hostname"
  log "image $tag: importing ($((SECONDS-t0))s so far)"
  tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
      --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  rm -rf "$root"
  save_tar "$tag"
  log "image $tag: built in $((SECONDS-t0))s"
}

# FROM scratch image around one static binary: tag binary entrypoint-json [extra-dockerfile-lines]
build_scratch() {
  local tag=$1 bin=$2 entry=$3 extra=${4:-}
  restore_or_missing "$tag" && { log "image $tag: present"; return 0; }
  [ -x "$bin" ] || die "missing binary $bin (run build.sh first)"
  local ctx; ctx=$(mktemp -d)
  cp "$bin" "$ctx/$(basename "$bin")"
  {
    echo "FROM scratch"
    echo "COPY $(basename "$bin") /$(basename "$bin")"
    [ -n "$extra" ] && printf '%s\n' "$extra"
    echo "ENTRYPOINT $entry"
  } > "$ctx/Dockerfile"
  log "image $tag: building FROM scratch"
  DOCKER_BUILDKIT=0 "$DOCKER" build --network host -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  save_tar "$tag"
}

build_one() {
  case "$1" in
    base) build_base ;;
    pause) build_scratch "$PAUSE_IMAGE" "$BIN_ROOT/pause-1/pause" '["/pause"]' ;;
    coredns) build_scratch "$COREDNS_IMAGE" "$(coredns_bindir)/coredns" '["/coredns"]' 'EXPOSE 53 53/udp' ;;
    lpp) build_scratch "$LPP_IMAGE" "$(lpp_bindir)/local-path-provisioner" '["/local-path-provisioner"]' ;;
    snapshotter) build_scratch "$SNAPSHOTTER_IMAGE" "$(snapshotter_bindir)/csi-snapshotter" '["/csi-snapshotter"]' ;;
    snapshot-controller) build_scratch "$SNAPSHOT_CONTROLLER_IMAGE" "$(snapshotter_bindir)/snapshot-controller" \
        '["/snapshot-controller"]' ;;
    provisioner) build_scratch "$PROVISIONER_IMAGE" "$(provisioner_bindir)/csi-provisioner" '["/csi-provisioner"]' ;;
    resizer) build_scratch "$RESIZER_IMAGE" "$(resizer_bindir)/csi-resizer" '["/csi-resizer"]' ;;
    all) build_one base; build_one pause; build_one coredns; build_one lpp; build_one snapshotter
         build_one snapshot-controller; build_one provisioner; build_one resizer ;;
    *) die "unknown image $1" ;;
  esac
}

all_tags() {
  echo "$BASE_IMAGE $PAUSE_IMAGE $COREDNS_IMAGE $LPP_IMAGE $SNAPSHOTTER_IMAGE $SNAPSHOT_CONTROLLER_IMAGE" \
       "$PROVISIONER_IMAGE $RESIZER_IMAGE"
}

ctr_has() { ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls -q 2>/dev/null | grep -qx "docker.io/$1"; }

load_one() {
  local tag=$1 tar; tar=$(tarname "$1")
  ctr_has "$tag" && return 0
  if [ ! -f "$tar" ]; then
    ensure_dockerd; have_image "$tag" || die "image $tag neither in containerd nor in cache: run 'images.sh build'"
    save_tar "$tag"
  fi
  log "containerd: importing $tag"
  ctr -a "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$tar" >/dev/null 2>&1 \
    || ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$tar" >/dev/null
}

cmd=${1:-build}; shift || true
case "$cmd" in
  dockerd) ensure_dockerd ;;
  build) ensure_dockerd; for i in "${@:-all}"; do build_one "$i"; done ;;
  load) for t in $(all_tags); do load_one "$t"; done ;;
  import-tar) ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$1" ;;
  load-docker)
    [ $# -gt 0 ] || die "usage: images.sh load-docker <tag>..."
    for t in "$@"; do
      have_image "$t" || die "no docker image $t"
      if [ -f "$STATE/kind.kubeconfig" ] && command -v kind >/dev/null; then
        log "kind: loading $t"; kind load docker-image --name "${NASBLADE_KIND_NAME:-nasblade}" "$t"
      else
        log "containerd: importing $t (namespace k8s.io)"
        "$DOCKER" save "$t" | ctr -a "$CONTAINERD_SOCK" -n k8s.io images import - >/dev/null
      fi
    done ;;
  tags) all_tags ;;
  *) die "usage: images.sh build|load|dockerd|import-tar|load-docker|tags" ;;
esac
