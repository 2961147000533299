"""Fixtures for the management-terminal tests (``nasblade.terminal``).

- ``array`` (module scope): a real standalone array, ``nasblade up`` on a temporary data
  directory with free loopback ports: two cluster groups (``g1`` with blades ``g1-0``,
  ``g1-1``; ``g2`` with ``g2-0``) and one file system per group (``fs1`` on ``g1-0``, ``fs2``
  on ``g2-0``; blade APIs on ports of their choosing, which the terminal finds in the
  controller's client registry); g1's backups also copy g2's portion (``crossGroup: [g2]``). It is an ``Array``: ``.data_dir``, ``.config`` (the YAML file), ``.endpoints``
  (the ready line's endpoints), ``.control`` (a ``ControlClient`` with the array's token),
  ``.blade(name)`` (a ``BladeClient``). Stopped with SIGTERM at the end of the module.
- ``cli``: runs ``python -m nasblade ARGS`` against ``array`` (``NASBLADE_DATA_DIR`` and
  ``NASBLADE_CONFIG`` set) and returns the ``CompletedProcess`` (text, stdout/stderr captured).
- ``snapshot``: a small hand-made ``model.Snapshot`` for the pure tests (no processes).
- Kubernetes (tier 1): ``tier1_cluster``, ``tier1_kubeconfig`` (tools/kube) and the operator
  tests' fixtures ``crds``, ``namespace``, ``kubectl``, ``kubelet`` (fake kubelet), ``controller``
  (a real controller), ``blades`` (fake blade API), ``operator`` (the real operator in
  ``KopfRunner``), ``token_secret`` -- see tests/operator/conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from nasblade import ready
from nasblade.bladeapi.client import BladeClient
from nasblade.controller.apiclient import ControlClient
from nasblade.terminal.model import Snapshot

NASBLADE = [sys.executable, "-m", "nasblade"]
Cli = Callable[..., "subprocess.CompletedProcess[str]"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port

def start_up(config: Path, data_dir: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Start ``nasblade up`` on ``config``/``data_dir`` and return it with its ready line."""
    proc = subprocess.Popen([*NASBLADE, "up", "--config", str(config), "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE)
    try:
        return proc, ready.wait_ready(proc, timeout=240)
    except ready.NotReady:
        proc.kill()
        proc.wait()
        raise



@dataclass
class Array:
    data_dir: Path
    config: Path
    proc: subprocess.Popen[bytes]
    endpoints: dict[str, Any]

    @property
    def control(self) -> ControlClient:
        token = (self.data_dir / "secrets" / "controller-token").read_text().strip()
        return ControlClient(self.endpoints["controller"]["api"], token)

    def blade(self, name: str) -> BladeClient:
        token = (self.data_dir / "secrets" / "blade-token").read_text().strip()
        [b] = [b for b in self.endpoints["blades"] if b["name"] == name]
        return BladeClient(b["api"], token)



def run_array(tmp: Path, cfg: dict[str, Any]) -> Iterator[Array]:
    """``nasblade up`` of ``cfg`` in ``tmp`` for a fixture to yield; stopped (SIGTERM, then
    SIGKILL after 60 s) when the fixture's user is done -- the process in ``Array.proc`` then,
    which a test may have started again."""
    config = tmp / "array.yaml"
    config.write_text(yaml.safe_dump(cfg))
    data_dir = tmp / "data"
    proc, line = start_up(config, data_dir)
    arr = Array(data_dir=data_dir, config=config, proc=proc, endpoints=line["endpoints"])
    yield arr
    proc = arr.proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    """A running two-group standalone array (see the module docstring)."""
    tmp = tmp_path_factory.mktemp("cli-array")
    net = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"
    cfg = {
        "array": {"devices": {"count": 2, "size": "192M"}, "cacheSize": "16M", "faultInjection": True,
                  "areas": {"programSize": "32M"}},
        "clusterGroups": [{"name": "g1", "blades": 2, "failureTimeout": "1s", "backup": {"crossGroup": ["g2"]}},
                          {"name": "g2", "blades": 1, "failureTimeout": "1s"}],
        "fileSystems": [{"name": "fs1", "size": "48M", "clusterGroup": "g1", "address": f"{net}.2"},
                        {"name": "fs2", "size": "48M", "clusterGroup": "g2", "address": f"{net}.3"}],
        "network": {"nbdPort": free_port(), "apiPort": free_port(), "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": None},
    }
    yield from run_array(tmp, cfg)


@pytest.fixture
def cli(array: Array) -> Cli:
    """``cli("status", "-o", "json")`` → CompletedProcess of ``nasblade`` against ``array``."""
    # NBD is TLS-only: `software --program nbd://...` opens the program LU with the array's
    # admin certificate, as an administrator would point the terminal at it
    env = {**os.environ, "NASBLADE_DATA_DIR": str(array.data_dir), "NASBLADE_CONFIG": str(array.config),
           "NASBLADE_NBD_TLS_DIR": str(array.data_dir / "tls" / "admin"), "COLUMNS": "160"}
    env.pop("KUBECONFIG", None)

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*NASBLADE, *args], env=env, text=True, capture_output=True, timeout=timeout,
                              check=False)

    return run


def _blade(name: str, group: str, state: str = "ok", fss: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "group": group, "state": state, "reason": "" if state == "ok" else "heartbeat 9.0s old",
            "fileSystems": list(fss), "heartbeatAge": 0.1, "softwareVersion": "1.0", "activeArea": "portion",
            "slot": 0, "api": None}


@pytest.fixture
def snapshot() -> Snapshot:
    """Array ``a`` with groups g1 (b1 serves fs1, b2 idle, b3 dead) and g2 (c1 serves fs2)."""
    snap: dict[str, Any] = {
        "target": {"kind": "standalone", "dataDir": "/x"}, "time": "2026-01-01T00:00:00Z",
        "arrays": [{"name": "a", "ready": True, "size": 2 << 30, "free": 1 << 30,
                    "devices": [{"index": 0, "size": 1 << 30, "free": 1 << 29, "path": "/d0"},
                                {"index": 1, "size": 1 << 30, "free": 1 << 29, "path": "/d1"}],
                    "lus": [{"name": n, "kind": k, "size": 64 << 20, "devices": [0, 1], "fileSystem": f, "reservation": None}
                            for n, k, f in (("program", "program", None), ("procinfo", "processorInfo", None),
                                            ("backup", "backup", None), ("fs-fs1", "fileSystem", "fs1"),
                                            ("fs-fs2", "fileSystem", "fs2"))],
                    "areas": [{"lu": "procinfo", "group": "g1", "index": 0, "offset": 0, "size": 1 << 20, "role": "portion"},
                              {"lu": "backup", "group": "g1", "index": 0, "offset": 0, "size": 1 << 20, "role": "backup"}],
                    "cache": {}, "load": {}, "software": {"current": "1.0", "versions": ["1.0"]}, "controller": None}],
        "groups": [
            {"name": "g1", "array": "a", "portion": 0, "activeArea": "portion", "failureTimeout": 2.0,
             "blades": [_blade("b1", "g1", fss=("fs1",)), _blade("b2", "g1"), _blade("b3", "g1", "dead")],
             "fileSystems": ["fs1"], "lastBackup": None, "rollout": None},
            {"name": "g2", "array": "a", "portion": 1, "activeArea": "portion", "failureTimeout": 2.0,
             "blades": [_blade("c1", "g2", fss=("fs2",))], "fileSystems": ["fs2"], "lastBackup": None, "rollout": None},
        ],
        "fileSystems": [
            {"name": "fs1", "group": "g1", "lu": "fs-fs1", "size": 64 << 20, "blade": "b1", "homeBlade": "b1", "epoch": 1, "endpoint": None},
            {"name": "fs2", "group": "g2", "lu": "fs-fs2", "size": 64 << 20, "blade": "c1", "homeBlade": "c1", "epoch": 1, "endpoint": None},
        ],
        "backups": [],
    }
    result: Snapshot = snap
    return result


# -- Kubernetes (tier 1) ------------------------------------------------------------------------
# The tier-1 API server (tools/kube/pytest_cluster.py) and the operator engineer's fixtures
# (tests/operator/conftest.py: crds, namespace, kubectl, kubelet, controller, blades, operator,
# token_secret), loaded under a module name of their own so the two conftests do not collide.
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools" / "kube"))
sys.path.insert(0, str(REPO / "tests" / "operator"))
from pytest_cluster import *  # noqa: E402, F403  tier1_cluster, tier1_kubeconfig, use_tier1

_spec = importlib.util.spec_from_file_location("nasblade_operator_test_fixtures", REPO / "tests" / "operator" / "conftest.py")
assert _spec is not None and _spec.loader is not None
operator_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = operator_fixtures
_spec.loader.exec_module(operator_fixtures)
crds = operator_fixtures.crds
namespace = operator_fixtures.namespace
kubectl = operator_fixtures.kubectl
kubelet = operator_fixtures.kubelet
controller = operator_fixtures.controller
blades = operator_fixtures.blades
operator = operator_fixtures.operator
token_secret = operator_fixtures.token_secret
