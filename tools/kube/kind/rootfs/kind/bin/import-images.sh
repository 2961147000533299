#!/bin/bash
# Import the image tarballs shipped in the node image (/kind/images/*.tar) into containerd's
# k8s.io namespace, once per node (the node's /var, and so containerd's store, is its own volume).
set -euo pipefail
shopt -s nullglob
stamp=/var/lib/containerd/.kind-images-imported
[ -f "$stamp" ] && exit 0
for _ in $(seq 1 60); do ctr version >/dev/null 2>&1 && break; sleep 0.5; done
for t in /kind/images/*.tar; do
  echo "importing $t"
  ctr --namespace=k8s.io images import "$t"
done
touch "$stamp"
