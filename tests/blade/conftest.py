"""Fixtures for the blade tests (processor information, program storage, block processor,
blade API and the standalone array).

- ``device``: a 4 MiB ``FileBlockDevice`` in a temporary directory, for the pure-library tests
  of ``nasblade.procinfo`` and ``nasblade.program`` (no processes, no network).
- ``controller``: a real ``nasblade controller`` process on fixed free loopback ports with one
  512 MiB device file and the LUs ``program`` (16M), ``procinfo`` (1M), ``backup`` (1M) and
  ``fs1`` (64M).
  It is a ``Controller`` object: ``.nbd`` (``HOST:PORT``), ``.api`` (URL), ``.client``
  (``ControlClient``), ``.kill()`` (SIGKILL) and ``.start()`` (again, same ports and device).
- ``start_bp``: a factory that starts ``nasblade block-processor`` against ``controller``
  and returns a ``BladeProc`` with its ready line's endpoints; all are stopped at teardown.
- ``fs_spec``: LU fs1 formatted, and the ``--fs-spec`` JSON of a blade serving it on a loopback
  address of its own (free NFS and MOUNT ports, no portmapper).
- ``start_fp``: a factory that starts ``nasblade blade-file-processor`` beside a ``BladeProc``
  (control socket ``fp.sock`` in its run directory), serving ``fs`` when given.

Processes are started with ``subprocess.Popen`` and awaited with ``ready.wait_ready``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from nasblade import ready
from nasblade.blockdev import FileBlockDevice
from nasblade.controller.apiclient import ControlClient
from nasblade.fs import fs as fsmod
from nasblade.nbd.client import NBDBlockDevice

NASBLADE = [sys.executable, "-m", "nasblade"]
TOKEN = "test-token"
BLADE_TOKEN = "blade-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], *, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@pytest.fixture
def device(tmp_path: Path) -> Iterator[FileBlockDevice]:
    """A sparse 4 MiB file-backed block device, closed after the test."""
    dev = FileBlockDevice(tmp_path / "lu.img", size=4 << 20)
    yield dev
    dev.close()


@dataclass
class Controller:
    workdir: Path
    nbd_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def nbd(self) -> str:
        return f"127.0.0.1:{self.nbd_port}"

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.api, TOKEN)

    def start(self) -> None:
        tok = self.workdir / "token"
        tok.write_text(TOKEN)
        self.proc = subprocess.Popen(
            [*NASBLADE, "controller", "--device", f"{self.workdir / 'dev0'}:512M",
             "--nbd-listen", self.nbd, "--api-listen", f"127.0.0.1:{self.api_port}",
             "--token-file", str(tok), "--admin-token-file", str(tok), "--cache-size", "64M"],
            stdout=subprocess.PIPE,
        )
        ready.wait_ready(self.proc)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[Controller]:
    """A running controller with LUs program, procinfo and fs1 (see the module docstring)."""
    ctl = Controller(tmp_path / "ctl")
    ctl.workdir.mkdir()
    ctl.start()
    for name, size in (("program", 16 << 20), ("procinfo", 1 << 20), ("backup", 1 << 20), ("fs1", 64 << 20)):
        ctl.client.create_lu(name, size)
    yield ctl
    if ctl.proc is not None:
        stop(ctl.proc)


@dataclass
class BladeProc:
    proc: subprocess.Popen[bytes]
    ready: dict[str, Any]
    rundir: Path

    @property
    def nbd_socket(self) -> str:
        return str(self.ready["endpoints"]["nbdUnix"])

    def url(self, lu: str) -> str:
        return f"nbd+unix:///{lu}?socket={self.nbd_socket}"

    @property
    def api(self) -> str:
        return str(self.ready["endpoints"]["api"])

    @property
    def local(self) -> str:
        return str(self.ready["endpoints"]["local"])

    def call(self, method: str, path: str, body: bytes | None = None, *,
             token: str = BLADE_TOKEN) -> tuple[int, Any]:
        """One request to the blade API with ``token``: its status and JSON body."""
        u = urlparse(self.api if "://" in self.api else f"http://{self.api}")
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
        conn.request(method, path, body=body, headers={"Authorization": f"Bearer {token}",
                                                       "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        return resp.status, json.loads(data) if data else None


@pytest.fixture
def start_bp(tmp_path: Path, controller: Controller) -> Iterator[Callable[..., BladeProc]]:
    """Factory: ``start_bp(blade="b0", own=["fs1"], extra=[...])`` → a running ``BladeProc``."""
    procs: list[subprocess.Popen[bytes]] = []
    (tmp_path / "ctl-token").write_text(TOKEN)
    (tmp_path / "blade-token").write_text(BLADE_TOKEN)

    def start(*, blade: str = "b0", slot: int = 0, own: tuple[str, ...] = ("fs1",),
              extra: tuple[str, ...] = ()) -> BladeProc:
        rundir = tmp_path / blade
        rundir.mkdir(exist_ok=True)
        args = [*NASBLADE, "block-processor", "--blade", blade, "--group", "g1", "--slot", str(slot),
                "--controller-nbd", controller.nbd, "--controller-api", controller.api,
                "--token-file", str(tmp_path / "ctl-token"),
                "--software-dir", str(rundir / "software"),
                "--nbd-unix", str(rundir / "nbd.sock"), "--local-unix", str(rundir / "local.sock"),
                "--api-listen", "127.0.0.1:0", "--api-token-file", str(tmp_path / "blade-token"),
                *extra]
        for lu in own:
            args += ["--own", lu]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, env=dict(os.environ))
        procs.append(proc)
        return BladeProc(proc=proc, ready=ready.wait_ready(proc), rundir=rundir)

    yield start
    for p in procs:
        stop(p)


@pytest.fixture
def fs_spec(controller: Controller) -> dict[str, Any]:
    """fs1 formatted (root mode 1777) and the spec every blade gets: its address and ports."""
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/fs1") as dev:
        fsmod.mkfs(dev, root_mode=0o1777)
        dev.flush()
    return {
        "name": "fs1", "lu": "fs1",
        "address": f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}",
        "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": None,
        "exports": [{"path": "/fs1", "subdir": "/", "clients": ["127.0.0.0/8"], "access": "rw",
                     "rootSquash": True}],
    }


@pytest.fixture
def start_fp() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Factory: ``start_fp(bp, fs=None)`` runs ``nasblade blade-file-processor`` for ``bp``."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(bp: BladeProc, blade: str, fs: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
        argv = [*NASBLADE, "blade-file-processor", "--blade", blade, "--local-unix", bp.local,
                "--control-unix", str(bp.rundir / "fp.sock")]
        if fs is not None:
            spec = {k: v for k, v in fs.items() if k != "lu"}
            spec["device"] = bp.url(fs["lu"])
            argv += ["--fs", json.dumps(spec)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
        procs.append(proc)
        ready.wait_ready(proc, timeout=120)
        return proc

    yield start
    for p in procs:
        stop(p)
