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
  endpoint plus ``portmapPort``), ``.target`` (an ``NFSTarget``), ``.nbd`` (host, port of the
  controller's NBD server), ``.control``.
- ``nasblade_nfs`` (module): ``array``'s export as an ``NFSTarget`` (what a mount needs: address,
  ports, export path, the guest's forwards, a libnfs URL).
- ``ganesha_nfs`` (session): the reference, Debian's nfs-ganesha (FSAL VFS) exporting a temporary
  directory on 127.0.0.1 with no root squash, started by ``tests/nfs/ganesha.py`` (private
  /run and /var/lib/nfs, its rpcbind unreachable from here: mounts give explicit ports).
"""

from __future__ import annotations

import importlib.util
import random
import signal
import socket
import subprocess
import sys
import threading
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
    left = g.leftovers()
    assert left == [], f"guest processes left behind: {left}"


@dataclass(frozen=True)
class NFSTarget:
    """An NFSv3 server for the guest to mount."""

    name: str
    host: str
    nfs_port: int
    mount_port: int
    export: str
    portmap_port: int | None  # None: the guest cannot ask a portmapper; mount with ports

    @property
    def forwards(self) -> list[uml.Forward]:
        """The guest's 10.0.2.2 answers on the NFS, MOUNT and (as 111) portmapper ports."""
        fw = [uml.Forward(self.nfs_port, self.host, self.nfs_port),
              uml.Forward(self.mount_port, self.host, self.mount_port)]
        if self.portmap_port is not None:
            fw.append(uml.Forward(111, self.host, self.portmap_port))
        return fw

    @property
    def url(self) -> str:
        return f"nfs://{self.host}{self.export}?version=3&nfsport={self.nfs_port}&mountport={self.mount_port}"


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
    def target(self) -> NFSTarget:
        ep = self.nfs
        return NFSTarget(name="nasblade", host=ep["host"], nfs_port=ep["nfsPort"], mount_port=ep["mountPort"],
                         export=ep["export"], portmap_port=self.portmap_port)

    @property
    def nbd(self) -> tuple[str, int]:
        host, port = self.endpoints["controller"]["nbd"].rsplit(":", 1)
        return host, int(port)

    @property
    def control(self) -> ControlClient:
        token = (self.data_dir / "secrets" / "controller-token").read_text().strip()
        return ControlClient(self.endpoints["controller"]["api"], token)


def kernel_config(*, blades: int, fs_size: str, device_size: str, group: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """An array configuration for the kernel client: one group ``g1`` of ``blades`` blades, one
    file system ``kfs`` on its own loopback address exported read-write to 127.0.0.0/8 without
    root squash, every port free, the portmapper included."""
    address = f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
    return {
        "array": {"devices": {"count": 2, "size": device_size}, "cacheSize": "32M",
                  "areas": {"programSize": "32M"}},
        "clusterGroups": [{"name": "g1", "blades": blades, **(group or {})}],
        "fileSystems": [{"name": "kfs", "size": fs_size, "clusterGroup": "g1", "address": address,
                         "exports": [{"path": "/", "clients": ["127.0.0.0/8"], "access": "rw",
                                      "rootSquash": False}]}],
        "network": {"nbdPort": free_port(), "apiPort": free_port(), "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": free_port()},
    }


def run_array(tmp: Path, cfg: dict[str, Any]) -> Iterator[KernelArray]:
    """``nasblade up`` with ``cfg`` in ``tmp`` for the length of a fixture (stopped after)."""
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
    threading.Thread(target=lambda: proc.stdout.read() if proc.stdout else None, daemon=True).start()
    yield KernelArray(data_dir=data_dir, proc=proc, endpoints=line["endpoints"],
                      portmap_port=int(cfg["network"]["portmapPort"]))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelArray]:
    """A running standalone array with one file system for the kernel client."""
    yield from run_array(tmp_path_factory.mktemp("kernel-array"),
                         kernel_config(blades=1, fs_size="512M", device_size="768M"))


@pytest.fixture(scope="module")
def nasblade_nfs(array: KernelArray) -> NFSTarget:
    """The array's ``kfs`` export (see the module docstring)."""
    return array.target


@pytest.fixture(scope="session")
def ganesha_nfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NFSTarget]:
    """nfs-ganesha, the reference server (see the module docstring)."""
    path = Path(__file__).resolve().parents[1] / "nfs" / "ganesha.py"
    spec = importlib.util.spec_from_file_location("nasblade_kernel_ganesha", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.Ganesha(tmp_path_factory.mktemp("ganesha"))
    try:
        yield NFSTarget(name="ganesha", host="127.0.0.1", nfs_port=server.nfs_port, mount_port=server.mount_port,
                        export=server.export_path, portmap_port=None)
    finally:
        server.close()
