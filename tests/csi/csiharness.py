"""Processes for the CSI driver's tests: a real storage controller (``nasblade controller`` on
two sparse device files) and the driver (``nasblade-csi``) on a Unix socket in front of it;
a gRPC client of the driver's services; csi-sanity, built from the Go module proxy by
``tools/kube/csi.sh sanity`` into ``~/.cache/nasblade/bin``."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from nasblade import ready
from nasblade.controller.apiclient import ControlClient
from nasblade_csi import proto

REPO = Path(__file__).resolve().parents[2]
TOKEN = "csi-test-token"
pb, pb_grpc = proto.load()


def csi_sanity() -> str:
    out = subprocess.run([str(REPO / "tools" / "kube" / "csi.sh"), "sanity"], check=True,
                         capture_output=True, text=True, timeout=1800)
    return out.stdout.strip().splitlines()[-1]


@dataclass
class Proc:
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    line: dict[str, Any] = field(default_factory=dict)

    def start(self) -> dict[str, Any]:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log)
        self.line = ready.wait_ready(self.proc, timeout=60)
        return self.line

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Array:
    """A storage controller on ``devices`` sparse files of ``size`` each."""

    work: Path
    size: str = "1G"
    devices: int = 2
    proc: Proc | None = None
    api: str = ""
    nbd: str = ""

    def start(self) -> None:
        (self.work / "token").write_text(TOKEN)
        (self.work / "admin").write_text(TOKEN + "-admin")
        argv = [sys.executable, "-m", "nasblade", "controller", "--nbd-listen", "127.0.0.1:0",
                "--api-listen", "127.0.0.1:0", "--token-file", str(self.work / "token"),
                "--admin-token-file", str(self.work / "admin"), "--cache-size", "64M"]
        for i in range(self.devices):
            argv += ["--device", f"{self.work / f'dev{i}'}:{self.size}"]
        self.proc = Proc(argv, self.work / "controller.log")
        line = self.proc.start()
        self.api, self.nbd = line["endpoints"]["api"], "nbd://" + line["endpoints"]["nbd"]

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.api, TOKEN)


@dataclass
class Driver:
    """``nasblade-csi`` in front of ``array``; ``endpoint`` is its unix:// address."""

    work: Path
    array: Array
    role: str = "all"
    extra: list[str] = field(default_factory=list)
    proc: Proc | None = None

    @property
    def socket(self) -> Path:
        return self.work / "csi.sock"

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> None:
        argv = [sys.executable, "-m", "nasblade_csi.main", "--endpoint", self.endpoint, "--role", self.role,
                "--array-api", self.array.api, "--array-nbd", self.array.nbd,
                "--token-file", str(self.array.work / "token"), *self.extra]
        self.proc = Proc(argv, self.work / "csi.log")
        self.proc.start()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.endpoint)

    def controller(self) -> Any:
        return pb_grpc.ControllerStub(self.channel())

    def identity(self) -> Any:
        return pb_grpc.IdentityStub(self.channel())

    def node(self) -> Any:
        return pb_grpc.NodeStub(self.channel())
