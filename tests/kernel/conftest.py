"""Fixtures for the kernel-client tests: Linux's own NFS and NBD clients against the array.

The clients run in a User-Mode Linux guest (``uml.py``; root tree built and cached by
``build-guest.sh``, ``make kernel-guest``), which reaches only the servers a test forwards.

- ``guest`` (session): a ``uml.Guest``; ``guest.run(script, forwards=..., files=...)`` boots,
  runs the bash script as root in ``/share`` and returns a ``uml.GuestResult`` (``rc``,
  ``stdout``, ``stderr``, ``share``: the host directory the script wrote into). At the end of the
  session no ``linux.uml`` or forwarder of a run may be left.
- ``array`` (module): a real standalone array, ``nasblade up`` on a temporary data directory
  with free loopback ports: one cluster group ``g1`` with one blade and one file system ``kfs``
  (512M, on its own loopback address, exported ``/kfs`` read-write to 127.0.0.0/8 without
  root squash, portmapper on a free port). A ``KernelArray``: ``.nfs`` (the ready line's NFS
  endpoint plus ``portmapPort``), ``.nfs_forwards`` (what the guest needs to reach it, port
  111 included), ``.nbd`` (host, port of the controller's NBD server), ``.control``, ``.url``
  (a libnfs URL of the export).
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uml
import yaml
from nasblade import ready
from nasblade.controller.apiclient import ControlClient

NASBLADE = [sys.executable, "-m", "nasblade"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def guest() -> Iterator[uml.Guest]:
    """A User-Mode Linux guest runner (see the module docstring)."""
    g = uml.UMLGuest(uml.guest_tree(build=True))
    yield g
    g.close()
    left = uml.leftovers()
    assert left == [], f"guest processes left behind: {left}"


@dataclass
class KernelArray:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    endpoints: dict[str, Any]
    portmap_port: int

    @property
    def nfs(self) -> dict[str, Any]:
        [ep] = [e for e in self.endpoints["nfs"] if e["fileSystem"] == "kfs"]
        return {**ep, "portmapPort": self.portmap_port}

    @property
    def nfs_forwards(self) -> list[uml.Forward]:
        """The guest's 10.0.2.2 answers on the NFS, MOUNT and (as 111) portmapper ports."""
        ep = self.nfs
        return [uml.Forward(ep["nfsPort"], ep["host"], ep["nfsPort"]),
                uml.Forward(ep["mountPort"], ep["host"], ep["mountPort"]),
                uml.Forward(111, ep["host"], self.portmap_port)]

    @property
    def url(self) -> str:
        ep = self.nfs
        return f"nfs://{ep['host']}{ep['export']}?version=3&nfsport={ep['nfsPort']}&mountport={ep['mountPort']}"

    @property
    def nbd(self) -> tuple[str, int]:
        host, port = self.endpoints["controller"]["nbd"].rsplit(":", 1)
        return host, int(port)

    @property
    def control(self) -> ControlClient:
        token = (self.data_dir / "secrets" / "controller-token").read_text().strip()
        return ControlClient(self.endpoints["controller"]["api"], token)


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelArray]:
    """A running standalone array with one file system for the kernel client."""
    tmp = tmp_path_factory.mktemp("kernel-array")
    address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.2"
    portmap = free_port()
    cfg = {
        "array": {"devices": {"count": 2, "size": "768M"}, "cacheSize": "32M",
                  "areas": {"programSize": "32M"}},
        "clusterGroups": [{"name": "g1", "blades": 1}],
        "fileSystems": [{"name": "kfs", "size": "512M", "clusterGroup": "g1", "address": address,
                         "exports": [{"path": "/", "clients": ["127.0.0.0/8"], "access": "rw",
                                      "rootSquash": False}]}],
        "network": {"nbdPort": free_port(), "apiPort": free_port(), "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": portmap},
    }
    config = tmp / "array.yaml"
    config.write_text(yaml.safe_dump(cfg))
    data_dir = tmp / "data"
    proc = subprocess.Popen([*NASBLADE, "up", "--config", str(config), "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE)
    try:
        line = ready.wait_ready(proc, timeout=240)
    except ready.NotReady:
        proc.kill()
        proc.wait()
        raise
    yield KernelArray(data_dir=data_dir, proc=proc, endpoints=line["endpoints"], portmap_port=portmap)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
