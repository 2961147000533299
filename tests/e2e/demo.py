#!/usr/bin/env python3
"""``make demo``: install the chart and the examples on the e2e cluster and say how to reach
the NFS export.

The Makefile has already brought the cluster up (``make cluster-up``: kind when present, else
the local tier-2 cluster) and imported the images (``make image-load``). This script:

1. ``helm upgrade --install nasblade charts/nasblade -n nasblade-system --wait``;
2. applies examples/ in namespace ``nasblade-demo``;
3. waits for the DiskArray and the ClusterGroup to be Ready (bounded; on a timeout it shows
   what the resources say and exits non-zero);
4. prints the commands to look at the array and to reach the export from a client pod.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools" / "kube"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbcluster
from e2elib import (
    CHART,
    CLIENT_IMAGE,
    CSI_SIDECAR_VALUES,
    REPO,
    Kube,
    adopt_crds,
    condition,
    install_snapshot_crds,
)

NAMESPACE = "nasblade-demo"
OPERATOR_NS = "nasblade-system"


def _wait_ready(kube: Kube, kind: str, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition(kube.get(kind, name, namespace=NAMESPACE), "Ready").get("status") == "True":
            return True
        time.sleep(3)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", required=True, help="the nasblade image (repository:tag)")
    ap.add_argument("--timeout", type=float, default=420, help="seconds to wait for Ready")
    ap.add_argument("--delete", action="store_true",
                    help="remove the demo instead: examples, namespace (PVCs too), the release")
    a = ap.parse_args(argv)
    kubeconfig = str(nbcluster.STATE_ROOT / "kubeconfig")
    kube = Kube(kubeconfig)
    if a.delete:
        kube.kubectl("-n", NAMESPACE, "delete", "-f", str(REPO / "examples"), "--ignore-not-found",
                     "--timeout=180s", check=False, timeout=200)
        kube.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=180s",
                     check=False, timeout=200)
        kube.helm("uninstall", "nasblade", "-n", OPERATOR_NS, "--wait", check=False)
        kube.kubectl("delete", "namespace", OPERATOR_NS, "--ignore-not-found", check=False)
        return 0
    repo, tag = a.image.rsplit(":", 1)
    nbcluster.log("installing the chart (release nasblade, namespace nasblade-system)")
    adopt_crds(kube, release="nasblade", namespace=OPERATOR_NS)  # CRDs kept by another release
    install_snapshot_crds(kube)  # the VolumeSnapshot API, as a distribution would ship it
    kube.helm("upgrade", "--install", "nasblade", str(CHART), "-n", OPERATOR_NS,
              "--create-namespace", "--set", f"image.repository={repo}", "--set",
              f"image.tag={tag}", *CSI_SIDECAR_VALUES, "--wait", "--timeout", "5m")
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}))
    nbcluster.log(f"applying examples/ in namespace {NAMESPACE}")
    kube.kubectl("-n", NAMESPACE, "apply", "-f", str(REPO / "examples"))
    ok = True
    for kind, name in (("diskarray", "demo"), ("clustergroup", "nas")):
        nbcluster.log(f"waiting for {kind}/{name} to be Ready")
        if not _wait_ready(kube, kind, name, a.timeout):
            ok = False
            cond = condition(kube.get(kind, name, namespace=NAMESPACE), "Ready")
            nbcluster.log(f"{kind}/{name} not Ready after {a.timeout:.0f}s: {cond.get('reason')}: "
                          f"{cond.get('message')}")
    sys.stdout.write(kube.kubectl("-n", NAMESPACE, "get", "diskarrays,clustergroups,pods,svc").stdout)
    svc = kube.get("service", "demo-shared-nfs", namespace=NAMESPACE)
    ip = (svc or {}).get("spec", {}).get("clusterIP", "?")
    url = "nfs://demo-shared-nfs/shared?version=3"
    sys.stdout.write(f"""
The NFS export "shared" of DiskArray demo is served by Service demo-shared-nfs
(ClusterIP {ip}; NFSv3 2049, MOUNT 20048, portmapper 111), reachable from pods whose address
is in the export's clients (examples/diskarray.yaml: 10.0.0.0/8):

  export KUBECONFIG={kubeconfig}
  kubectl -n {NAMESPACE} get diskarrays,clustergroups
  kubectl -n {NAMESPACE} run nfs-client --rm -it --restart=Never --image {CLIENT_IMAGE} -- \\
      nfs-ls '{url}'

From a pod with a kernel NFS client: mount -t nfs -o vers=3,proto=tcp demo-shared-nfs.{NAMESPACE}:/shared /mnt
""")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
