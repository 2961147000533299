"""Shared helpers of the end-to-end suite: constants, the kubectl/helm runner ``Kube`` and
condition lookup. Imported by tests/e2e/conftest.py (fixtures) and the test modules; kept
out of conftest.py so that test modules never import a ``conftest``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tools" / "kube"))
import nbcluster  # noqa: E402

VERSION = next(line.split('"')[1] for line in (REPO / "pyproject.toml").read_text().splitlines()
               if line.startswith("version = "))
IMAGE = f"nasblade/nasblade:{VERSION}"
CLIENT_IMAGE = f"nasblade/nfs-client:{VERSION}"
RELEASE = "nasblade-e2e"
RELEASE_NS = "nasblade-e2e-system"
CHART = REPO / "charts" / "nasblade"
# the CRDs the chart installs and upgrades (templates/customresourcedefinitions.yaml renders
# files/crds/, copies of the repository's crds/), kept by helm uninstall
CRD_NAMES = tuple(sorted(yaml.safe_load(p.read_text())["metadata"]["name"]
                         for p in (CHART / "files" / "crds").glob("*.yaml")))


class Kube:
    """kubectl and helm against one kubeconfig; every call bounded by a timeout."""

    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.env = {"KUBECONFIG": kubeconfig, "PATH": nbcluster.tool_path(),
                    "HOME": str(nbcluster.STATE_ROOT / "e2e-home")}
        Path(self.env["HOME"]).mkdir(parents=True, exist_ok=True)

    def _run(self, argv: list[str], *, check: bool, stdin: str | None,
             timeout: float) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env,
                           timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:6])}... failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run([str(nbcluster.k8s_bin("kubectl")), *args], check=check, stdin=stdin,
                         timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self._run([str(nbcluster.helm_bin()), *args], check=check, stdin=None,
                         timeout=timeout)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str, *, namespace: str) -> dict[str, Any] | None:
        r = self.kubectl("-n", namespace, "get", kind, name, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    @staticmethod
    def wait(what: str, pred: Callable[[], Any], *, timeout: float, interval: float = 1.0,
             describe: Callable[[], Any] | None = None) -> Any:
        """Poll ``pred`` until it returns something true; on timeout fail with ``describe()``
        (what was seen instead)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = pred()
            if value:
                return value
            time.sleep(interval)
        seen = describe() if describe else None
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; seen: {seen!r}")


def adopt_crds(kube: Kube, *, release: str, namespace: str) -> None:
    """Hand the chart's CRDs, where they exist, to ``release``: Helm refuses to install over
    objects that belong to no release (CRDs from before the chart templated them, applied with
    kubectl) or to another one (kept by an earlier ``helm uninstall`` -- this suite's release,
    the demo's). The same label and annotations docs/install.md ("CRDs") tells users to set;
    the install then upgrades the CRDs to this checkout's."""
    for crd in CRD_NAMES:
        if kube.kubectl("get", "crd", crd, "-o", "name", check=False).returncode != 0:
            continue
        kube.kubectl("label", "--overwrite", "crd", crd, "app.kubernetes.io/managed-by=Helm")
        kube.kubectl("annotate", "--overwrite", "crd", crd, f"meta.helm.sh/release-name={release}",
                     f"meta.helm.sh/release-namespace={namespace}")


# the upstream kubernetes-csi machinery the chart runs with the CSI driver (csi.provisioner,
# csi.resizer and csi.snapshotter in each CSI controller plugin, csi.snapshotController), built
# here (tools/kube/build.sh snapshotter provisioner resizer)
SNAPSHOTTER_IMAGE = nbcluster.VERSIONS["SNAPSHOTTER_IMAGE"]
SNAPSHOT_CONTROLLER_IMAGE = nbcluster.VERSIONS["SNAPSHOT_CONTROLLER_IMAGE"]
PROVISIONER_IMAGE = nbcluster.VERSIONS["PROVISIONER_IMAGE"]
RESIZER_IMAGE = nbcluster.VERSIONS["RESIZER_IMAGE"]
#: ``helm install`` values for them on the local clusters, which run no snapshot-controller and
#: pull no image (install_snapshot_crds first, for the VolumeSnapshotClasses)
CSI_SIDECAR_VALUES = ("--set", f"csi.provisioner.image={PROVISIONER_IMAGE}",
                      "--set", f"csi.resizer.image={RESIZER_IMAGE}",
                      "--set", f"csi.snapshotter.image={SNAPSHOTTER_IMAGE}",
                      "--set", "csi.snapshotController.enabled=true",
                      "--set", f"csi.snapshotController.image={SNAPSHOT_CONTROLLER_IMAGE}")


def install_snapshot_crds(kube: Kube) -> None:
    """The VolumeSnapshot CRDs, as a cluster gets them from its distribution
    (``nbcluster.install_snapshot_crds``)."""
    nbcluster.install_snapshot_crds(lambda *args: kube.kubectl(*args, timeout=90))


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """The condition ``type_`` of an object's status ({} when absent)."""
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def on_kind() -> bool:
    """The suite runs on the kind cluster (its nodes are containers), not on the local tier-2
    cluster whose one node is this host."""
    return (nbcluster.STATE_ROOT / "kind.kubeconfig").exists() and nbcluster.kind_available()


def kill_container(container_id: str) -> None:
    """SIGKILL a container's main process through its runtime, as a crash would: the local
    tier-2 cluster's containerd on this host, or the kind node's (``docker exec``)."""
    runtime, _, cid = container_id.partition("://")
    if runtime != "containerd":
        raise AssertionError(f"cannot kill a {runtime} container")
    argv = ["ctr", "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", cid]
    if on_kind():
        # the container runs on one of the kind nodes: the node whose containerd knows it
        for node in nbcluster.kind_nodes():
            if subprocess.run(["docker", "exec", node, *argv], capture_output=True,
                              timeout=60).returncode == 0:
                return
        raise AssertionError(f"container {cid} not found on kind nodes {nbcluster.kind_nodes()}")
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


def collect_diagnostics(kube: Kube, namespaces: list[str], dest: Path) -> Path:
    """What a failed step leaves for whoever reads the run: in ``dest``, the pods, Events and
    custom resources of ``namespaces``, and every container's log (and its previous
    instance's, for a container that restarted). Returns the file of the operator's log."""
    dest.mkdir(parents=True, exist_ok=True)

    def save(name: str, *args: str) -> Path:
        r = kube.kubectl(*args, check=False, timeout=60)
        path = dest / name
        path.write_text(r.stdout + (f"\n# stderr: {r.stderr}" if r.returncode else ""))
        return path

    for ns in namespaces:
        save(f"{ns}.pods.txt", "-n", ns, "get", "pods", "-o", "wide")
        save(f"{ns}.events.txt", "-n", ns, "get", "events", "--sort-by=.lastTimestamp")
        save(f"{ns}.resources.yaml", "-n", ns, "get", "diskarrays,clustergroups,services,endpoints", "-o", "yaml")
        pods = json.loads(kube.kubectl("-n", ns, "get", "pods", "-o", "json", check=False).stdout
                          or '{"items": []}')
        for pod in pods["items"]:
            name = pod["metadata"]["name"]
            for c in pod["status"].get("containerStatuses", []):
                save(f"{ns}.{name}.{c['name']}.log", "-n", ns, "logs", name, "-c", c["name"], "--timestamps")
                if c.get("restartCount"):
                    save(f"{ns}.{name}.{c['name']}.previous.log", "-n", ns, "logs", name, "-c", c["name"],
                         "--previous", "--timestamps")
    return save("operator.log", "-n", RELEASE_NS, "logs", f"deployment/{RELEASE}", "--timestamps")
