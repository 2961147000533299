#!/bin/bash
# cgroup v2 only, after systemd moved every process out of the root cgroup: enable all
# controllers for kubelet's cgroup roots (/kubelet, /kubelet.slice).
set -euo pipefail
enable_all() { sed -e 's/ / +/g' -e 's/^/+/' < "/sys/fs/cgroup/$1/cgroup.controllers" > "/sys/fs/cgroup/$1/cgroup.subtree_control"; }
enable_all /
for g in kubelet kubelet.slice; do mkdir -p "/sys/fs/cgroup/$g"; enable_all "/$g"; done
