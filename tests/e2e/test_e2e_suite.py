"""End to end on a real cluster with the real images: the user's path from ``helm install`` to
``helm uninstall`` (issue 8). The steps run in file order and build on each other, as a user
would go: install the chart, apply examples/, ..., delete everything.

Which steps of the issue run here is listed in docs/install.md ("End-to-end suite").
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from e2elib import CHART, IMAGE, RELEASE_NS, REPO, Kube, condition

pytestmark = [pytest.mark.e2e, pytest.mark.tier2]

ARRAY = "demo"        # examples/diskarray.yaml
GROUP = "nas"         # examples/clustergroup.yaml
EXAMPLES = REPO / "examples"


def printer_row(kube: Kube, kind: str, name: str, *, namespace: str) -> dict[str, str]:
    """``kubectl get KIND NAME`` as the user sees it: header -> cell."""
    out = kube.kubectl("-n", namespace, "get", kind, name).stdout.splitlines()
    assert len(out) == 2, out
    header, row = out
    # columns are separated by at least two spaces; cells never contain two spaces
    starts = [i for i in range(len(header)) if header[i] != " " and (i == 0 or header[i - 1] == " ")]
    cells = {}
    for n, s in enumerate(starts):
        e = starts[n + 1] if n + 1 < len(starts) else None
        cells[header[s:e].strip()] = row[s:e].strip()
    return cells


def test_step1_helm_install_operator_ready(kube: Kube, release: str) -> None:
    """1. helm install the chart; the operator becomes Ready."""
    t0 = time.monotonic()
    kube.helm("install", release, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
              "--set", f"image.tag={IMAGE.split(':')[1]}", "--set", "statusInterval=3",
              "--wait", "--timeout", "5m")
    status = kube.helm("status", release, "-n", RELEASE_NS).stdout
    assert "STATUS: deployed" in status
    assert "rollout status deployment/" in status  # NOTES.txt prints the next command
    dep = kube.json("-n", RELEASE_NS, "get", "deployment", "nasblade-e2e")
    assert dep["status"].get("readyReplicas") == 1
    pods = kube.json("-n", RELEASE_NS, "get", "pods", "-l", "app.kubernetes.io/component=operator")
    assert len(pods["items"]) == 1
    pod = pods["items"][0]
    assert condition(pod, "Ready").get("status") == "True"
    assert pod["spec"]["containers"][0]["image"] == IMAGE
    logs = kube.kubectl("-n", RELEASE_NS, "logs", pod["metadata"]["name"]).stdout
    assert "Traceback" not in logs
    print(f"operator Ready {time.monotonic() - t0:.1f}s after helm install")


def test_step2_diskarray_ready(kube: Kube, release: str, workload_ns: str) -> None:
    """2. Apply the examples; the DiskArray reaches Ready=True and ``kubectl get`` shows its
    printer columns filled in."""
    kube.kubectl("-n", workload_ns, "apply", "-f", str(EXAMPLES))

    def ready() -> Any:
        obj = kube.get("diskarray", ARRAY, namespace=workload_ns)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    obj = kube.wait("DiskArray Ready=True", ready, timeout=300, interval=2,
                    describe=lambda: condition(kube.get("diskarray", ARRAY, namespace=workload_ns), "Ready"))
    row = printer_row(kube, "diskarray", ARRAY, namespace=workload_ns)
    assert row["READY"] == "True"
    assert row["REASON"]
    assert row["DEVICES"] == "2" and row["DEVICE-SIZE"] == "1Gi"
    assert row["FILESYSTEMS"] == "1/1"
    assert row["VERSION"] == "0.1.0"
    # the controller really runs from the image, with its devices on bound PVCs
    sts = kube.json("-n", workload_ns, "get", "statefulset", f"{ARRAY}-controller")
    assert sts["status"].get("readyReplicas") == 1
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    pvcs = kube.json("-n", workload_ns, "get", "pvc")["items"]
    assert sorted(p["metadata"]["name"] for p in pvcs) == [f"dev-0-{ARRAY}-controller-0",
                                                          f"dev-1-{ARRAY}-controller-0"]
    assert all(p["status"]["phase"] == "Bound" for p in pvcs)
    lus = {fs["name"] for fs in obj["status"].get("fileSystems", [])}
    assert lus == {"shared"}
    assert "0.1.0" in obj["status"]["software"]["seeded"]
    reasons = {e["reason"] for e in kube.json("-n", workload_ns, "get", "events", "--field-selector",
                                              f"involvedObject.name={ARRAY}")["items"]}
    assert {"LUsCreated", "ProgramSeeded"} <= reasons
    # the chart's least-privilege RBAC is enough for all of it
    logs = kube.kubectl("-n", RELEASE_NS, "logs", "deployment/nasblade-e2e").stdout
    assert "Forbidden" not in logs and "forbidden" not in logs
    assert "Traceback" not in logs


def test_step2_clustergroup_children(kube: Kube, release: str, workload_ns: str) -> None:
    """2 (the part that runs today). The ClusterGroup's blade pods come up from the image with
    their two containers, and the file system's NFS Service exists with its three ports.
    (Ready=True of the group needs the blades' file processors to serve: docs/install.md.)"""

    def pods() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = kube.json("-n", workload_ns, "get", "pods", "-l",
                                                f"nasblade.io/cluster-group={GROUP}")["items"]
        return items

    kube.wait("two blade pods", lambda: len(pods()) == 2, timeout=120, interval=2,
              describe=lambda: [p["metadata"]["name"] for p in pods()])
    for pod in pods():
        containers = pod["spec"]["containers"]
        assert [c["name"] for c in containers] == ["block-processor", "file-processor"]
        assert {c["image"] for c in containers} == {IMAGE}
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    svc = kube.get("service", f"{ARRAY}-shared-nfs", namespace=workload_ns)
    assert svc is not None
    assert sorted((p["name"], p["port"]) for p in svc["spec"]["ports"]) == [
        ("mountd", 20048), ("nfs", 2049), ("portmapper", 111)]
    # the block processors reach the controller through its Service and fetch the software
    kube.wait("block processors Ready", lambda: all(
        cs.get("ready") for p in pods() for cs in p["status"].get("containerStatuses", [])
        if cs["name"] == "block-processor") and len(pods()) == 2, timeout=180, interval=2)


CLIENT_POD = "nfs-client"


def _owner(kube: Kube, ns: str) -> str:
    svc = kube.get("service", f"{ARRAY}-shared-nfs", namespace=ns)
    assert svc is not None
    return str(svc["spec"]["selector"]["nasblade.io/blade"])


def _nfs_url(ns: str, path: str = "") -> str:
    return f"nfs://{ARRAY}-shared-nfs.{ns}.svc/shared{path}?version=3"


def _exec(kube: Kube, ns: str, *argv: str, timeout: float = 120) -> str:
    return kube.kubectl("-n", ns, "exec", CLIENT_POD, "--", *argv, timeout=timeout).stdout


def test_step2_clustergroup_ready(kube: Kube, release: str, workload_ns: str) -> None:
    """2. The ClusterGroup reaches Ready=True; its printer columns are filled in; the file
    system's NFS Service selects the blade that serves it."""

    def ready() -> Any:
        obj = kube.get("clustergroup", GROUP, namespace=workload_ns)
        return obj if condition(obj, "Ready").get("status") == "True" else None

    obj = kube.wait("ClusterGroup Ready=True", ready, timeout=300, interval=2,
                    describe=lambda: condition(kube.get("clustergroup", GROUP, namespace=workload_ns), "Ready"))
    row = printer_row(kube, "clustergroup", GROUP, namespace=workload_ns)
    assert row["ARRAY"] == ARRAY and row["READY"] == "True"
    assert row["BLADES"] == "2/2" and row["DEGRADED"] == "False"
    assert obj["status"]["activeArea"] == "portion"  # the AREA column shows with -o wide
    owner = _owner(kube, workload_ns)
    eps = kube.json("-n", workload_ns, "get", "endpoints", f"{ARRAY}-shared-nfs")
    targets = [a["targetRef"]["name"] for s in eps.get("subsets", []) for a in s.get("addresses", [])]
    assert targets == [owner]


def test_step3_client_pod_io(kube: Kube, release: str, workload_ns: str, images: list[str]) -> None:
    """3. From a client pod (libnfs tools), write files through the file system's Service and
    read them back: checksums equal."""
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": CLIENT_POD, "labels": {"app.kubernetes.io/name": "nfs-client"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10002, "runAsGroup": 10002,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "client", "image": images[1], "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", "infinity"],
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }
    kube.kubectl("-n", workload_ns, "apply", "-f", "-", stdin=json.dumps(pod))
    kube.kubectl("-n", workload_ns, "wait", "--for=condition=Ready", f"pod/{CLIENT_POD}",
                 "--timeout=120s", timeout=150)
    _exec(kube, workload_ns, "sh", "-c",
          "head -c 4194304 /dev/urandom > /tmp/big.bin && echo hello nasblade > /tmp/small.txt"
          " && : > /tmp/empty")
    # Ready=True says the owning blade runs; its block processor takes the file system over
    # on its first cluster tick (nasblade.cluster.member), a few seconds later at most
    kube.wait("the file system served through its Service", lambda: kube.kubectl(
        "-n", workload_ns, "exec", CLIENT_POD, "--", "nfs-ls", _nfs_url(workload_ns), check=False,
        timeout=60).returncode == 0, timeout=60, interval=2)
    for name in ("big.bin", "small.txt", "empty"):
        _exec(kube, workload_ns, "nfs-cp", f"/tmp/{name}", _nfs_url(workload_ns, f"/{name}"))
    for name in ("big.bin", "small.txt", "empty"):
        _exec(kube, workload_ns, "nfs-cp", _nfs_url(workload_ns, f"/{name}"), f"/tmp/back-{name}")
    sums = _exec(kube, workload_ns, "sh", "-c", "cd /tmp && sha256sum big.bin back-big.bin small.txt "
                 "back-small.txt empty back-empty").split()
    digests = sums[0::2]
    assert digests[0] == digests[1] and digests[2] == digests[3] and digests[4] == digests[5], sums
    listing = _exec(kube, workload_ns, "nfs-ls", _nfs_url(workload_ns))
    for name in ("big.bin", "small.txt", "empty"):
        assert name in listing


def test_step8_delete_everything(kube: Kube, release: str, workload_ns: str) -> None:
    """8. Delete everything; helm uninstall; nothing is left behind except the device PVCs
    the DiskArray's deletionPolicy (Retain) keeps, and the CRDs Helm never deletes."""
    kube.kubectl("-n", workload_ns, "delete", "pod", CLIENT_POD, "--ignore-not-found", "--grace-period=1",
                 timeout=120)  # step 3's client, not one of the examples
    kube.kubectl("-n", workload_ns, "delete", "-f", str(EXAMPLES), "--wait=true", timeout=300)

    def workload_left() -> list[str]:
        return kube.kubectl("-n", workload_ns, "get", "all,secrets,diskarrays,clustergroups",
                            "-o", "name").stdout.split()

    kube.wait("the examples' objects to go", lambda: not workload_left(), timeout=180, interval=2)
    pvcs = kube.json("-n", workload_ns, "get", "pvc")["items"]
    assert sorted(p["metadata"]["name"] for p in pvcs) == [f"dev-0-{ARRAY}-controller-0",
                                                          f"dev-1-{ARRAY}-controller-0"]
    kube.helm("uninstall", release, "-n", RELEASE_NS, "--wait", "--timeout", "3m")
    assert kube.helm("status", release, "-n", RELEASE_NS, check=False).returncode != 0
    sel = f"app.kubernetes.io/instance={release}"
    for kind in ("clusterroles", "clusterrolebindings", "clusterkopfpeerings"):
        assert kube.kubectl("get", kind, "-l", sel, "-o", "name").stdout.split() == [], kind
    def release_ns_left() -> list[str]:
        out = kube.kubectl("-n", RELEASE_NS, "get",
                           "all,serviceaccounts,roles,rolebindings,secrets,configmaps",
                           "-o", "name").stdout.split()
        # what Kubernetes itself puts into every namespace
        return [o for o in out if o not in ("serviceaccount/default", "configmap/kube-root-ca.crt")]

    # the operator pod gets its grace period to stop (kopf finishes its handlers)
    kube.wait(f"namespace {RELEASE_NS} to be empty", lambda: not release_ns_left(),
              timeout=90, interval=2, describe=release_ns_left)
    crds = kube.kubectl("get", "crd", "-o", "name").stdout.split()
    assert "customresourcedefinition.apiextensions.k8s.io/diskarrays.nasblade.io" in crds
