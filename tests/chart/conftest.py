"""Fixtures of the Helm chart tests (tests/chart).

The chart is checked offline (``helm lint --strict``, rendering, the CRD copies) and against
a real API server: a private tier-1 etcd + kube-apiserver from tools/kube (fixtures
``tier1_cluster`` / ``tier1_kubeconfig``, see tools/kube/pytest_cluster.py), where the
rendered manifests go through a server-side dry-run -- schema validation, RBAC objects,
admission including Pod Security -- without anything being created.

Fixtures defined here:
  chart_dir   -- Path of charts/nasblade.
  helm        -- callable ``helm(*args, check=True) -> CompletedProcess`` running the pinned
                 helm binary (built by tools/kube/build.sh) with a private HOME.
  render      -- callable ``render(*set_args, namespace=..., api_versions=()) -> list[dict]``:
                 ``helm template`` of the chart for Kubernetes 1.33, parsed into objects.
  crds_applied -- the tier-1 kubeconfig once the repository's CRDs (crds/: DiskArray,
                 ClusterGroup, and kopf's peering CRDs that the chart does not ship) are
                 installed and Established (server-side apply).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "kube"))
import nbcluster  # noqa: E402
from pytest_cluster import *  # noqa: E402, F403 - fixtures: tier1_cluster, tier1_kubeconfig

CHART = REPO / "charts" / "nasblade"
KUBE_VERSION = nbcluster.K8S_VERSION.lstrip("v")

Helm = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    return CHART


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = nbcluster.helm_bin()
    if not binary.exists():
        nbcluster.ensure_built("tier2")
    home = tmp_path_factory.mktemp("helm-home")

    def run(*args: str, check: bool = True, kubeconfig: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {"HOME": str(home), "PATH": nbcluster.tool_path()}
        if kubeconfig:
            env["KUBECONFIG"] = kubeconfig
        return subprocess.run([str(binary), *args], capture_output=True, text=True,
                              check=check, env=env, timeout=120)

    return run


@pytest.fixture(scope="session")
def render(helm: Helm) -> Callable[..., list[dict[str, Any]]]:
    def run(*set_args: str, namespace: str = "nasblade-system", api_versions: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        argv = ["template", "nb", str(CHART), "--namespace", namespace,
                "--kube-version", KUBE_VERSION]
        for a in api_versions:
            argv += ["--api-versions", a]
        for s in set_args:
            argv += ["--set", s]
        out = helm(*argv).stdout
        return [d for d in yaml.safe_load_all(out) if d]

    return run


@pytest.fixture(scope="session")
def crds_applied(tier1_cluster: Any) -> str:
    kc = str(tier1_cluster.kubeconfig)
    kubectl = str(nbcluster.k8s_bin("kubectl"))
    # the chart's CRDs (files/crds/ is a copy of crds/), and kopf's peering CRDs (not in the
    # chart: leaderElection needs them first)
    subprocess.run([kubectl, "--kubeconfig", kc, "apply", "--server-side", "-f", str(REPO / "crds")],
                   check=True, capture_output=True, text=True)
    subprocess.run([kubectl, "--kubeconfig", kc, "wait", "--for=condition=Established",
                    "--timeout=60s", "crd", "--all"], check=True, capture_output=True, text=True)
    return kc
