#!/usr/bin/env bash
# kind on this machine, without any registry (docs/testing.md, "kind").
# Usage: kind.sh build        kind, crictl and kubeadm from the Go module proxy ($NASBLADE_CACHE/bin)
#        kind.sh node-image   the kind node image $KIND_NODE_IMAGE: a debootstrap'd Debian base
#                             (systemd, containerd, runc, CNI plugins) + the Kubernetes binaries of
#                             build.sh + the control-plane images, laid out as kind expects
#        kind.sh dockerd      start kind's own docker daemon (see ensure_kind_dockerd), print DOCKER_HOST
#        kind.sh copy-images <tag>...  copy images from the shared docker daemon into kind's
#        kind.sh path         print the directory holding the kind binary (for PATH)
# Everything is cached in $NASBLADE_CACHE (bin/, images/) keyed by version: a warm run is quick.
. "$(dirname "$0")/lib.sh"
IMG_CACHE="$NASBLADE_CACHE/images"
STATE="$NASBLADE_CACHE/state"
DOCKER="${DOCKER:-/usr/bin/docker}"
[ -x "$DOCKER" ] || DOCKER=$(command -v docker)
KIND_FILES="$CLUSTER_DIR/kind"
mkdir -p "$IMG_CACHE" "$STATE"

kind_bindir()   { echo "$BIN_ROOT/kind-$KIND_VERSION"; }
crictl_bindir() { echo "$BIN_ROOT/crictl-$CRICTL_VERSION"; }
have() { local d=$1; shift; for b in "$@"; do [ -x "$d/$b" ] || return 1; done; }

build_kind() {
  local out; out=$(kind_bindir)
  have "$out" kind && { log "kind $KIND_VERSION already built"; return 0; }
  log "kind $KIND_VERSION: building"
  mkdir -p "$out"
  GOBIN="$out" $NICE "$GO" install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION"
}

build_crictl() { # kind load checks images with crictl; Debian bookworm does not package it
  local out; out=$(crictl_bindir)
  have "$out" crictl && { log "crictl $CRICTL_VERSION already built"; return 0; }
  log "crictl $CRICTL_VERSION: building"
  mkdir -p "$out"
  GOBIN="$out" $NICE "$GO" install -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
}

# kubeadm from the same wrapper module as build.sh's other Kubernetes binaries (same version stamp)
build_kubeadm() {
  local out; out=$(k8s_bindir)
  have "$out" kubeadm && { log "kubeadm $K8S_VERSION already built"; return 0; }
  local wd="$NASBLADE_CACHE/src/k8s-wrapper-$K8S_VERSION"
  [ -f "$wd/go.mod.done" ] || "$CLUSTER_DIR/build.sh" k8s-tier1
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ldf="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldf+=" -X $p.gitTreeState=clean -X $p.buildDate=$date -X $p.gitCommit=nasblade-gomodproxy"
  done
  log "kubeadm $K8S_VERSION: building"
  local t0=$SECONDS
  ( cd "$wd" && $NICE "$GO" build -trimpath -tags selinux,notest -ldflags "$ldf" -o "$out/kubeadm" \
      k8s.io/kubernetes/cmd/kubeadm )
  log "kubeadm $K8S_VERSION: built in $((SECONDS-t0))s"
}

# kind's node containers run --privileged; docker 20.10 then asks runc for every capability the
# kernel knows, and root on these VMs lacks CAP_SYS_RESOURCE in its bounding set: every node
# fails with "unable to apply caps: operation not permitted". kind therefore gets a docker daemon
# of its own whose default runtime is kind/nbrunc (runc minus the capabilities nobody here has).
# The shared daemon is never touched; this one keeps its images in $NASBLADE_CACHE/kind/docker.
KIND_DOCKER_SOCK=/run/nbkind-docker.sock
KIND_DOCKER_HOST="unix://$KIND_DOCKER_SOCK"
kdocker() { "$DOCKER" -H "$KIND_DOCKER_HOST" "$@"; }
ensure_kind_dockerd() {
  # the runtime is read at every container start: keep the daemon's copy current
  mkdir -p "$NASBLADE_CACHE/kind"
  cmp -s "$KIND_FILES/nbrunc" "$NASBLADE_CACHE/kind/nbrunc" \
    || install -m 0755 "$KIND_FILES/nbrunc" "$NASBLADE_CACHE/kind/nbrunc"
  kdocker info >/dev/null 2>&1 && return 0
  local root="$NASBLADE_CACHE/kind/docker" exec_root=/run/nbkind-docker
  mkdir -p "$root" "$exec_root"
  [ -S "$KIND_DOCKER_SOCK" ] && rm -f "$KIND_DOCKER_SOCK"
  if [ -f "$exec_root.pid" ] && [ "$(cat "/proc/$(cat "$exec_root.pid")/comm" 2>/dev/null)" != dockerd ]; then
    rm -f "$exec_root.pid"
  fi
  log "kind dockerd: starting (runtime nbrunc, data in $root)"
  # own containerd namespaces: should it share a containerd with the other daemon, neither
  # takes the other's containers for its own stale ones
  setsid nohup dockerd -H "$KIND_DOCKER_HOST" --data-root "$root" --exec-root "$exec_root" \
      --pidfile "$exec_root.pid" --containerd-namespace nbkind --containerd-plugins-namespace nbkind-plugins \
      --iptables=false --ip-masq=false --bridge=none \
      --add-runtime "nbrunc=$NASBLADE_CACHE/kind/nbrunc" --default-runtime nbrunc \
      >"$STATE/kind-dockerd.log" 2>&1 < /dev/null &
  echo $! > "$STATE/kind-dockerd.pid"
  for _ in $(seq 1 60); do kdocker info >/dev/null 2>&1 && return 0; sleep 1; done
  tail -20 "$STATE/kind-dockerd.log" >&2; die "kind dockerd did not start"
}

# copy images from the shared docker daemon into kind's (skipped when the ids already match)
copy_to_kind_docker() {
  ensure_kind_dockerd
  local t
  for t in "$@"; do
    local id; id=$("$DOCKER" image inspect -f '{{.Id}}' "$t") || die "no docker image $t"
    [ "$(kdocker image inspect -f '{{.Id}}' "$t" 2>/dev/null)" = "$id" ] && continue
    log "kind dockerd: copying $t"
    "$DOCKER" save "$t" | kdocker load >/dev/null
  done
}

tarname() { echo "$IMG_CACHE/$(echo "$1" | tr '/:' '__').tar"; }
have_image() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
restore_or_missing() {
  local tag=$1 tar; tar=$(tarname "$1")
  have_image "$tag" && { [ -f "$tar" ] || save_tar "$tag"; return 0; }
  [ -f "$tar" ] && { log "image $tag: loading from cache"; "$DOCKER" load -i "$tar" >/dev/null; return 0; }
  return 1
}
save_tar() { local tar; tar=$(tarname "$1"); "$DOCKER" save "$1" -o "$tar.tmp" && mv "$tar.tmp" "$tar"; }

# The packages kind's images/base/Dockerfile installs (services, Kubernetes, runtime, kind's own
# tools) plus what kind builds from source there and Debian packages: containerd, runc, the CNI
# plugins. Storage-over-network clients (nfs-common, open-iscsi) are left out: no test needs them.
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,socat,containerd,runc,containernetworking-plugins

# the base layer: debootstrap -> docker import (cached as a tar keyed by $KIND_BASE_IMAGE)
build_node_base() {
  local tag=$KIND_BASE_IMAGE
  restore_or_missing "$tag" && { log "image $tag: present"; return 0; }
  local suite=bookworm mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  local root="$NASBLADE_CACHE/src/rootfs-$(echo "$tag" | tr '/:' '__')"
  rm -rf "$root"; mkdir -p "$root"
  log "image $tag: debootstrap $suite from $mirror (a few minutes)"
  local t0=$SECONDS
  $NICE debootstrap --variant=minbase --include="$NODE_PACKAGES" "$suite" "$root" "$mirror" \
      > "$STATE/kind-debootstrap.log" 2>&1 \
    || { tail -30 "$STATE/kind-debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/log/*.log "$root"/tmp/* "$root"/dev/*
  log "image $tag: importing ($((SECONDS-t0))s so far)"
  tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
  rm -rf "$root"
  save_tar "$tag"
  log "image $tag: built in $((SECONDS-t0))s"
}

# kubeadm's image names for this version (kubeadm config images list), e.g.
# registry.k8s.io/kube-apiserver:v1.33.13 registry.k8s.io/etcd:3.5.21-0 ...
kubeadm_images() { "$(k8s_bindir)/kubeadm" config images list --kubernetes-version "$K8S_VERSION" 2>/dev/null; }

# A control-plane image under kubeadm's name, FROM scratch (or FROM $2) around built binaries.
# $1=name:tag $2=FROM $3...=binaries (copied to /usr/local/bin)
image_from_bins() {
  local tag=$1 from=$2; shift 2
  local ctx; ctx=$(mktemp -d)
  local b
  { echo "FROM $from"
    for b in "$@"; do cp "$b" "$ctx/"; echo "COPY $(basename "$b") /usr/local/bin/$(basename "$b")"; done
    echo "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "ENTRYPOINT [\"/usr/local/bin/$(basename "$1")\"]"
  } > "$ctx/Dockerfile"
  DOCKER_BUILDKIT=0 "$DOCKER" build --network none -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
}

# the node image: base + kind's files + binaries + /kind/images/*.tar (imported at first boot)
build_node_image() {
  local tag=$KIND_NODE_IMAGE
  restore_or_missing "$tag" && { log "image $tag: present"; return 0; }
  local kb; kb=$(k8s_bindir)
  have "$kb" kubeadm kubelet kubectl kube-apiserver kube-controller-manager kube-scheduler kube-proxy \
    || die "Kubernetes binaries missing in $kb: run 'build.sh tier2' and 'kind.sh build'"
  have "$(crictl_bindir)" crictl || die "crictl missing: run 'kind.sh build'"
  build_node_base
  local t0=$SECONDS ctx; ctx=$(mktemp -d)
  mkdir -p "$ctx/images"
  log "image $tag: control-plane images under kubeadm's names"
  local img name
  for img in $(kubeadm_images); do
    name=${img##*/}; name=${name%%:*}
    case "$name" in
      kube-apiserver|kube-controller-manager|kube-scheduler) image_from_bins "$img" scratch "$kb/$name" ;;
      # kube-proxy programs iptables: it needs the iptables tools of the node's own base
      kube-proxy) image_from_bins "$img" "$KIND_BASE_IMAGE" "$kb/kube-proxy" ;;
      etcd) image_from_bins "$img" scratch "$(etcd_bindir)/etcd" "$(etcd_bindir)/etcdctl" ;;
      coredns) image_from_bins "$img" scratch "$(coredns_bindir)/coredns" ;;
      pause) image_from_bins "$img" scratch "$BIN_ROOT/pause-1/pause" ;;
      *) die "no local build for kubeadm image $img" ;;
    esac
    "$DOCKER" save "$img" -o "$ctx/images/$name.tar"
    # only the node image carries them: no upstream-looking names left in the shared daemon
    "$DOCKER" rmi "$img" >/dev/null
  done
  # the default CNI (nbkindnet runs in the base image) and storage (local-path-provisioner, whose
  # helper pods also use the base image): tools/kube/manifests/20-local-path-storage.yaml as is
  "$DOCKER" save "$BASE_IMAGE" -o "$ctx/images/nasblade-base.tar"
  "$DOCKER" save "$LPP_IMAGE" -o "$ctx/images/local-path-provisioner.tar"
  cp -a "$KIND_FILES/rootfs" "$ctx/rootfs"
  python3 - "$CLUSTER_DIR/versions.env" "$CLUSTER_DIR/manifests/20-local-path-storage.yaml" \
      > "$ctx/rootfs/kind/manifests/default-storage.yaml" <<'PY'
import string, sys
env = dict(l.strip().split("=", 1) for l in open(sys.argv[1]) if "=" in l and not l.startswith("#"))
sys.stdout.write(string.Template(open(sys.argv[2]).read()).substitute(env))
PY
  mkdir -p "$ctx/bin"
  cp "$kb/kubeadm" "$kb/kubelet" "$kb/kubectl" "$(crictl_bindir)/crictl" "$ctx/bin/"
  sed -i -e "s|@PAUSE_IMAGE@|$(kubeadm_images | grep /pause:)|g" -e "s|@BASE_IMAGE@|$BASE_IMAGE|g" \
      "$ctx/rootfs/etc/containerd/config.toml" "$ctx/rootfs/kind/manifests/default-cni.yaml"
  cat > "$ctx/Dockerfile" <<EOF
FROM $KIND_BASE_IMAGE
COPY rootfs/ /
COPY bin/ /usr/bin/
COPY images/ /kind/images/
RUN chmod 0755 /usr/local/bin/* /kind/bin/* /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl /usr/bin/crictl \\
 && echo "$K8S_VERSION" > /kind/version \\
 && mkdir -p /etc/kubernetes/manifests /opt/cni/bin /var/lib/kubelet \\
 && for p in /usr/lib/cni/*; do ln -sf "\$p" /opt/cni/bin/; done \\
 && find /lib/systemd/system/sysinit.target.wants/ -name systemd-tmpfiles-setup.service -delete \\
 && rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \\
          /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \\
          /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/* \\
 && echo "ReadKMsg=no" >> /etc/systemd/journald.conf \\
 && systemctl enable kubelet.service containerd.service undo-mount-hacks.service kind-import-images.service \\
 && systemctl mask systemd-binfmt.service \\
 && ctr oci spec > /etc/containerd/cri-base.json.orig \\
 && jq 'del(.process.rlimits)' /etc/containerd/cri-base.json.orig > /etc/containerd/cri-base.json \\
 && rm /etc/containerd/cri-base.json.orig
ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
EOF
  log "image $tag: building"
  DOCKER_BUILDKIT=0 "$DOCKER" build --network none -q -t "$tag" "$ctx" >/dev/null
  rm -rf "$ctx"
  save_tar "$tag"
  log "image $tag: built in $((SECONDS-t0))s"
}

cmd=${1:-}; shift || true
case "$cmd" in
  build) build_kind; build_crictl; build_kubeadm ;;
  kind) build_kind ;;
  crictl) build_crictl ;;
  kubeadm) build_kubeadm ;;
  node-base) "$CLUSTER_DIR/images.sh" dockerd; build_node_base ;;
  node-image) "$CLUSTER_DIR/images.sh" dockerd; build_node_image; copy_to_kind_docker "$KIND_NODE_IMAGE" ;;
  dockerd) ensure_kind_dockerd; echo "export DOCKER_HOST=$KIND_DOCKER_HOST" ;;
  copy-images) [ $# -gt 0 ] || die "usage: kind.sh copy-images <tag>..."; copy_to_kind_docker "$@" ;;
  path) kind_bindir ;;
  *) die "usage: kind.sh build|kind|crictl|kubeadm|node-base|node-image|dockerd|copy-images|path" ;;
esac
