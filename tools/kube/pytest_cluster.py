"""pytest plugin: real Kubernetes clusters for the nasblade tests.

Use it from a conftest.py::

    import sys, pathlib
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools" / "kube"))
    pytest_plugins = ["pytest_cluster"]

Fixtures
--------
tier1_cluster (session)
    A private etcd + kube-apiserver + kube-controller-manager on random 127.0.0.1 ports in a
    temporary directory, stopped at the end of the session (~5-10 s to start warm).
    If NASBLADE_TIER1_KUBECONFIG is set, that API server is used instead (e.g. the one from
    `make tier1-up`).  Attributes: .kubeconfig (Path), .server, .env() -> dict,
    .kubectl(*args), .start_kwok().
tier1_kubeconfig (session)  -> str path of the tier-1 admin kubeconfig.
use_tier1 (function)       -> sets KUBECONFIG (and PATH with kubectl/helm) for one test, e.g.
                              for kopf.testing.KopfRunner; returns the kubeconfig path.
kwok (session)             -> the tier-1 cluster with kwok running; nodes annotated
                              ``kwok.x-k8s.io/node: fake`` and their pods become Ready.
e2e_kubeconfig (session)
    The end-to-end cluster.  KUBECONFIG (or NASBLADE_E2E_KUBECONFIG) if set, so any cluster
    works (kind, ...); otherwise `tools/kube/nbcluster.py up` (kind when available, else
    the local tier-2 cluster; idempotent, quick when already up).
use_e2e (function)         -> sets KUBECONFIG/PATH for one test; returns the path.

The markers ``tier1`` and ``tier2`` are registered here too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbcluster


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "tier1: needs the tier-1 Kubernetes API server")
    config.addinivalue_line("markers", "tier2: needs the tier-2 single-node cluster")


class ExternalCluster:
    """A cluster we did not start: just a kubeconfig."""

    def __init__(self, kubeconfig: str | Path):
        self.kubeconfig = Path(kubeconfig)

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "PATH": nbcluster.tool_path()}

    def kubectl(self, *args: str, check: bool = True, input: str | None = None):  # type: ignore[no-untyped-def]
        import subprocess

        return subprocess.run([_kubectl(), "--kubeconfig", str(self.kubeconfig), *args],
                              check=check, text=True, input=input, capture_output=True)


def _kubectl() -> str:
    p = nbcluster.k8s_bin("kubectl")
    return str(p) if p.exists() else "kubectl"


# One private tier-1 cluster per pytest process, even when several conftest.py files import
# these fixtures (each import makes a separate fixture, they share this cluster).
_TIER1: dict[str, object] = {"users": 0}


@pytest.fixture(scope="session")
def tier1_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    ext = os.environ.get("NASBLADE_TIER1_KUBECONFIG")
    if ext:
        yield ExternalCluster(ext)
        return
    if "cp" not in _TIER1:
        nbcluster.ensure_built("tier1")
        cp = nbcluster.ControlPlane(tmp_path_factory.mktemp("tier1"), controller_manager=True)
        try:
            cp.start()
        except Exception:
            cp.stop()
            raise
        _TIER1["cp"] = cp
    _TIER1["users"] = int(_TIER1["users"]) + 1  # type: ignore[call-overload]
    try:
        yield _TIER1["cp"]
    finally:
        _TIER1["users"] = int(_TIER1["users"]) - 1  # type: ignore[call-overload]
        if _TIER1["users"] == 0:
            _TIER1.pop("cp").stop()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def tier1_kubeconfig(tier1_cluster: nbcluster.ControlPlane) -> str:
    return str(tier1_cluster.kubeconfig)


@pytest.fixture()
def use_tier1(tier1_cluster: nbcluster.ControlPlane,
              monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in tier1_cluster.env().items():
        monkeypatch.setenv(k, v)
    return str(tier1_cluster.kubeconfig)


@pytest.fixture(scope="session")
def kwok(tier1_cluster: nbcluster.ControlPlane) -> nbcluster.ControlPlane:
    if not isinstance(tier1_cluster, nbcluster.ControlPlane):
        pytest.fail("kwok fixture needs the private tier-1 cluster (unset NASBLADE_TIER1_KUBECONFIG)")
    tier1_cluster.start_kwok()
    return tier1_cluster


@pytest.fixture(scope="session")
def e2e_cluster() -> ExternalCluster:
    kc = os.environ.get("NASBLADE_E2E_KUBECONFIG") or os.environ.get("KUBECONFIG")
    if kc and Path(kc).exists():
        return ExternalCluster(kc)
    return ExternalCluster(nbcluster.cluster_up())


@pytest.fixture(scope="session")
def e2e_kubeconfig(e2e_cluster: ExternalCluster) -> str:
    return str(e2e_cluster.kubeconfig)


@pytest.fixture()
def use_e2e(e2e_cluster: ExternalCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in e2e_cluster.env().items():
        monkeypatch.setenv(k, v)
    return str(e2e_cluster.kubeconfig)
