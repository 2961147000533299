"""Harness for the NFS component tests: a real controller, LUs with a file system, and real
``nasblade file-processor`` processes (used by conftest.py and the crash/DRC tests).

``Controller`` runs ``nasblade controller`` on one sparse device file; ``new_lu`` creates an
LU through the control API and runs ``nasblade mkfs`` on it over NBD. ``FileProcessor``
runs ``nasblade file-processor`` with a JSON config, waits for its ready line, and offers
``url(export, path, **params)`` for libnfs tools, ``kill()`` (SIGKILL) and ``stop()``.
``one_file_fs`` makes a device file holding a file system with one file, for in-process servers.
"""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasblade import ready
from nasblade.blockdev import FileBlockDevice
from nasblade.controller.apiclient import ControlClient
from nasblade.fs import fs as fsmod
from nasblade.nfs import handles
from nasblade.nfs.exports import Export

TOKEN = "nfs-test-token"
ADMIN = "nfs-test-admin-token"
_names = itertools.count()


def one_file_fs(path: Path, *exports: Export) -> tuple[str, tuple[bytes, ...]]:
    """A 64 MiB device file with a file system holding one file ``f``: the device's path and the
    file's handle through each of ``exports``."""
    dev = FileBlockDevice(path, size=64 << 20)
    fsmod.mkfs(dev)
    f = fsmod.FileSystem(dev)
    ino, _ = f.create(fsmod.ROOT_INO, b"f", fsmod.ROOT)
    gen = f.generation(ino)
    assert gen is not None
    fhs = tuple(handles.encode(handles.Handle(e.export_id, f.fsid, ino, gen), f.secret) for e in exports)
    f.close()
    dev.close()
    return str(path), fhs


def nasblade(*args: str) -> list[str]:
    return [sys.executable, "-m", "nasblade", *args]


@dataclass
class Controller:
    workdir: Path
    size: str = "6G"
    proc: subprocess.Popen[bytes] | None = None
    nbd: str = ""
    api: str = ""

    def start(self) -> None:
        (self.workdir / "token").write_text(TOKEN)
        (self.workdir / "admin").write_text(ADMIN)
        cmd = nasblade(
            "controller", "--nbd-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0",
            "--token-file", str(self.workdir / "token"), "--admin-token-file", str(self.workdir / "admin"),
            "--cache-size", "128M", "--device", f"{self.workdir / 'dev0'}:{self.size}",
            "--nbd-unix", str(self.unix_socket),
        )
        with open(self.workdir / "controller.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        line = ready.wait_ready(self.proc, timeout=60)
        self.nbd = line["endpoints"]["nbd"]
        self.api = line["endpoints"]["api"]

    @property
    def unix_socket(self) -> Path:
        return self.workdir / "nbd.sock"

    def unix_url(self, nbd_url: str) -> str:
        """The ``nbd+unix://`` URL of the LU behind ``nbd_url``."""
        return f"nbd+unix:///{nbd_url.rsplit('/', 1)[1]}?socket={self.unix_socket}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def new_lu(self, size: int = 512 << 20, *, mkfs: bool = True) -> str:
        """Create an LU (and a file system on it); returns its NBD URL."""
        name = f"nfs{next(_names)}"
        ControlClient(self.api, TOKEN).create_lu(name, size)
        url = f"nbd://{self.nbd}/{name}"
        if mkfs:
            subprocess.run(nasblade("mkfs", url), check=True, capture_output=True, timeout=120)
        return url


def export(path: str, clients: list[str] | None = None, **opts: Any) -> dict[str, Any]:
    return {"path": path, "clients": clients or ["127.0.0.0/8"], **opts}


@dataclass
class FileProcessor:
    workdir: Path
    device: str
    exports: list[dict[str, Any]]
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    ready_line: dict[str, Any] = field(default_factory=dict)
    nfs_port: int = 0
    mount_port: int = 0
    portmap_port: int = 0

    def start(self) -> None:
        cfg = {
            "fileSystems": [
                {
                    "fsName": "fs",
                    "device": self.device,
                    "exports": self.exports,
                    "listen": {"host": self.host, "nfsPort": 0, "mountPort": 0, "portmapPort": 0},
                }
            ]
        }
        path = self.workdir / f"fp-{next(_names)}.json"
        path.write_text(json.dumps(cfg))
        self.log_path = self.workdir / "file-processor.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                nasblade("file-processor", "--config", str(path), "--log-level", "INFO"), stdout=subprocess.PIPE, stderr=log
            )
        self.ready_line = ready.wait_ready(self.proc, timeout=60)
        eps = self.ready_line["endpoints"]
        self.nfs_port = int(eps["nfs"].rsplit(":", 1)[1])
        self.mount_port = int(eps["mount"].rsplit(":", 1)[1])
        self.portmap_port = int(eps["portmap"].rsplit(":", 1)[1])

    @property
    def verifier(self) -> str:
        return str(self.ready_line["fileSystems"]["fs"]["writeVerifier"])

    def url(self, export: str, path: str = "", **params: Any) -> str:
        q = {"version": 3, "nfsport": self.nfs_port, "mountport": self.mount_port, **params}
        query = "&".join(f"{k}={v}" for k, v in q.items())
        return f"nfs://{self.host}{export}{'/' + path.lstrip('/') if path else ''}?{query}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if hasattr(self, "log_path") else ""
