"""Fixtures of the end-to-end suite (tests/e2e): the real images on a real cluster.

The cluster comes from tools/kube/pytest_cluster.py (``e2e_cluster``): KUBECONFIG or
NASBLADE_E2E_KUBECONFIG when set (kind, any cluster), else ``nbcluster.py up`` -- kind when
it is installed with a node image, otherwise the local tier-2 cluster. The images
(``make images``) are imported into it by ``imagetool.load`` before the first test.

Fixtures defined here (all module-scoped: the steps of test_e2e_*.py build on each other in
file order, as a user would run them):

  kube      -- ``Kube``: kubectl/helm runner bound to the e2e kubeconfig (``kube.kubectl``,
               ``kube.json``, ``kube.helm``, ``kube.wait``).
  images    -- the image tags after they are imported into the cluster.
  release   -- the chart installed as release ``nasblade-e2e`` in namespace
               ``nasblade-e2e-system`` (helm install --wait); uninstalled at the end.
  (autouse) diagnostics -- when a step fails, its pods, Events, resources and every container's
               log (previous instances too) are saved under the cluster's state directory,
               ``e2e-diagnostics/``, and the tail of the operator's log is printed.
  workload_ns -- a namespace (Pod Security "restricted" warn/audit labels) for the examples
               and the client pod; deleted at the end.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tools" / "kube"))
sys.path.insert(0, str(HERE))
import imagetool  # noqa: E402
import nbcluster  # noqa: E402
from e2elib import (  # noqa: E402
    CLIENT_IMAGE,
    IMAGE,
    RELEASE,
    RELEASE_NS,
    Kube,
    adopt_crds,
    collect_diagnostics,
    install_snapshot_crds,
)
from pytest_cluster import *  # noqa: E402, F403 - fixtures: e2e_cluster, e2e_kubeconfig


@pytest.fixture(scope="module")
def kube(e2e_kubeconfig: str) -> Kube:
    return Kube(e2e_kubeconfig)


@pytest.fixture(scope="module")
def images(kube: Kube) -> list[str]:
    tags = [IMAGE, CLIENT_IMAGE]
    imagetool.load(tags)
    return tags


@pytest.fixture(scope="module")
def release(kube: Kube, images: list[str]) -> Iterator[str]:
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)
    # an earlier run deletes the namespace without waiting: installing into it while it is
    # still Terminating lets its deletion remove the operator in the middle of this run
    kube.kubectl("wait", "--for=delete", f"namespace/{RELEASE_NS}", "--timeout=300s", check=False,
                 timeout=330)
    others = [d for d in kube.json("get", "deployments", "-A", "-l",
                                   "app.kubernetes.io/part-of=nasblade,app.kubernetes.io/component=operator")["items"]
              if d["metadata"]["namespace"] != RELEASE_NS]
    if others:
        names = [f"{d['metadata']['namespace']}/{d['metadata']['name']}" for d in others]
        pytest.fail(f"another nasblade operator runs in this cluster ({names}); two would act on the "
                    "same resources: remove it first (e.g. `make demo-clean`)")
    # The chart installs and upgrades the CRDs (templates, kept on uninstall); ones this cluster
    # kept from an earlier run belong to no release or another one: give them to this release
    adopt_crds(kube, release=RELEASE, namespace=RELEASE_NS)
    # the cluster's VolumeSnapshot API, which the chart's VolumeSnapshotClass needs (step 3h)
    install_snapshot_crds(kube)
    yield RELEASE
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait", check=False)
    kube.kubectl("delete", "namespace", RELEASE_NS, "--ignore-not-found", "--wait=false",
                 check=False)


@pytest.fixture(scope="module")
def workload_ns(kube: Kube, release: str) -> Iterator[str]:
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    manifest = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/audit": "restricted"}}}
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
    yield ns
    # Whatever a failed step left: delete the resources while the operator still runs (it
    # removes its finalizers), then the namespace; strip finalizers only as a last resort so
    # a broken run does not leave a namespace stuck in Terminating.
    for kind in ("clustergroups", "diskarrays"):
        r = kube.kubectl("-n", ns, "delete", kind, "--all", "--timeout=120s", check=False, timeout=150)
        if r.returncode != 0:
            for name in kube.kubectl("-n", ns, "get", kind, "-o", "name", check=False).stdout.split():
                kube.kubectl("-n", ns, "patch", name, "--type=merge", "-p",
                             '{"metadata":{"finalizers":null}}', check=False)
    kube.kubectl("delete", "namespace", ns, "--ignore-not-found", "--timeout=180s", check=False,
                 timeout=200)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture(autouse=True)
def diagnostics(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    kube = request.node.funcargs.get("kube")
    if not request.node.stash.get(_FAILED, False) or kube is None:
        return
    namespaces = [ns for ns in (request.node.funcargs.get("workload_ns"),) if ns]
    dest = nbcluster.STATE_ROOT / "e2e-diagnostics" / f"{time.strftime('%Y%m%dT%H%M%S')}-{request.node.name}"
    try:
        operator_log = collect_diagnostics(kube, namespaces, dest)
    except Exception as exc:  # the cluster itself may be what failed
        print(f"diagnostics: collecting into {dest} failed: {exc!r}")
        return
    print(f"diagnostics of {request.node.name}: {dest}")
    print("".join(operator_log.read_text().splitlines(keepends=True)[-60:]))
