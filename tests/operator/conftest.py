"""Fixtures for the operator tests.

Unit tests (``test_spec.py``, ``test_builders.py``, ``test_plan.py``, ``test_conditions.py``)
need no fixture and no network. The tier-1 tests (``test_tier1_*.py``) use:

- ``tier1_cluster`` / ``use_tier1`` from tools/kube/pytest_cluster.py: a private etcd +
  kube-apiserver + kube-controller-manager (no kubelet, no scheduler);
- ``crds`` (session): the CRDs of crds/ applied and Established;
- ``namespace``: a fresh namespace per test, deleted afterwards (finalizers left by a stopped
  operator are removed first);
- ``kubelet``: ``podlife.FakeKubelet`` -- plays the kubelet for pods of that namespace (marks
  them Running/Ready with a 127.0.0.x IP) and lets a test fail or remove a pod;
- ``controller``: a real ``nasblade controller`` process on loopback with a 1 GiB sparse
  device; the operator is pointed at it through NASBLADE_ENDPOINT_OVERRIDES (a module may
  override it with ``start_controller``, e.g. two mirrored devices);
- ``blades``: ``fakeblade.FakeBlades`` -- an HTTP server speaking the blade management API
  (take over / release / backup) and recording every call, because blade pods do not really
  run in tier 1;
- ``operator``: the real operator (``kopf.testing.KopfRunner`` over
  ``nasblade_operator.handlers``) with those overrides; on exit the test checks that it exited
  cleanly and printed no Traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tools" / "kube"))
import json  # noqa: E402
import secrets  # noqa: E402
import subprocess  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from fakeblade import FakeBlades  # noqa: E402
from nasblade import ready  # noqa: E402
from podlife import FakeKubelet  # noqa: E402
from pytest_cluster import *  # noqa: E402, F403 - tier1_cluster, tier1_kubeconfig, use_tier1

REPO = HERE.parents[1]
CRDS = REPO / "crds"


@dataclass
class Kubectl:
    """kubectl against the tier-1 cluster, in one namespace."""

    cluster: Any
    namespace: str

    def __call__(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        r: subprocess.CompletedProcess[str] = self.cluster.kubectl("-n", self.namespace, *args, check=False, input=input)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def apply(self, obj: dict[str, Any], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", input=json.dumps(obj), check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        r = self("get", kind, name, "-o", "json", check=False)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def list(self, kind: str, selector: str = "") -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"] + (["-l", selector] if selector else [])
        items: list[dict[str, Any]] = json.loads(self(*args).stdout)["items"]
        return items

    def wait(self, what: str, condition: str, timeout: float = 60) -> None:
        self("wait", f"--for={condition}", what, f"--timeout={int(timeout)}s")


@pytest.fixture(scope="session")
def crds(tier1_cluster: Any) -> Any:
    """The CRDs of crds/ applied to the tier-1 API server and Established."""
    tier1_cluster.kubectl("apply", "-f", str(CRDS))
    tier1_cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/diskarrays.nasblade.io", "crd/clustergroups.nasblade.io")
    return tier1_cluster


@pytest.fixture()
def namespace(crds: Any, use_tier1: str) -> Iterator[str]:
    """A fresh namespace per test (deleted afterwards, without waiting)."""
    ns = f"op-{uuid.uuid4().hex[:8]}"
    crds.kubectl("create", "namespace", ns)
    yield ns
    # The operator is gone by now: drop its finalizers so the namespace can really go.
    for kind in ("diskarrays", "clustergroups"):
        names = crds.kubectl("-n", ns, "get", kind, "-o", "name", check=False).stdout.split()
        for obj in names:
            crds.kubectl("-n", ns, "patch", obj, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    crds.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture()
def kubectl(crds: Any, namespace: str) -> Kubectl:
    return Kubectl(crds, namespace)


@pytest.fixture()
def kubelet(use_tier1: str, namespace: str) -> Iterator[FakeKubelet]:
    k = FakeKubelet(use_tier1, namespace).start()
    yield k
    k.stop()


@dataclass
class Controller:
    api: str
    nbd: str
    token: str
    proc: subprocess.Popen[bytes]


@pytest.fixture()
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A real ``nasblade controller`` on loopback with one 1 GiB sparse device."""
    yield from start_controller(tmp_path)


def start_controller(tmp_path: Path, *, devices: int = 1, args: tuple[str, ...] = ()) -> Iterator[Controller]:
    """Run a controller with ``devices`` 1 GiB sparse devices (``dev<i>.img``) and ``args``; the
    token is both the data-path and the admin token. A generator for fixtures to yield from (a
    test module overrides ``controller`` with it, e.g. for a mirrored array)."""
    token = secrets.token_hex(16)
    tf = tmp_path / "token"
    tf.write_text(token)
    device_args = [a for i in range(devices) for a in ("--device", f"{tmp_path}/dev{i}.img:1G")]
    proc = subprocess.Popen(
        [sys.executable, "-m", "nasblade", "controller", *device_args,
         "--nbd-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0", "--token-file", str(tf),
         "--admin-token-file", str(tf), "--cache-size", "32M", *args],
        stdout=subprocess.PIPE,
    )
    try:
        line = ready.wait_ready(proc, timeout=60)
        yield Controller(api=line["endpoints"]["api"], nbd=line["endpoints"]["nbd"], token=token, proc=proc)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def blades(controller: Controller) -> Iterator[FakeBlades]:
    b = FakeBlades(controller.token).start()
    yield b
    b.stop()


@pytest.fixture()
def operator(namespace: str, controller: Controller, blades: FakeBlades, kubelet: FakeKubelet) -> Callable[[], Any]:
    """Factory of the real operator (KopfRunner) wired to ``controller`` and ``blades``.

    Use as ``with operator() as runner: ...``; afterwards call ``assert_clean(runner)``.
    """
    from kopf.testing import KopfRunner
    from nasblade_operator import settings

    def factory(**config: Any) -> Any:
        """``config``: OperatorConfig fields to change (e.g. short certificate lifetimes)."""
        settings.configure(settings.OperatorConfig(**{
            "image": "nasblade/nasblade:test",
            # the controller process here serves NBD in plaintext (no --tls-dir): the operator
            # is told so; the TLS Secrets and mounts are checked on the API server
            "endpoint_overrides": {"*": {"api": controller.api, "nbd": controller.nbd, "blade": blades.url,
                                         "nbdTLS": "off"}},
            "metrics_port": 0, "status_interval": 2.0, "retry_delay": 1.0, **config,
        }))
        return KopfRunner(["run", "-m", "nasblade_operator.handlers", "-n", namespace, "--standalone"], timeout=120)

    return factory


def assert_clean(runner: Any) -> None:
    """The operator exited cleanly, logged no traceback, and its daemons stopped when asked."""
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None, runner.exception
    assert "Traceback" not in runner.output, runner.output
    assert "is cancelled. Will escalate" not in runner.output, "a daemon did not stop when asked"


@pytest.fixture()
def token_secret(kubectl: Kubectl, controller: Controller) -> Callable[[str], None]:
    """Pre-create ``<array>-control-token`` with the test controller's token (the operator reuses it)."""
    def make(array: str) -> None:
        # the operator calls the (fake) blades with its operator-token: the same value here
        kubectl("create", "secret", "generic", f"{array}-control-token", f"--from-literal=token={controller.token}",
                f"--from-literal=operator-token={controller.token}")
    return make

