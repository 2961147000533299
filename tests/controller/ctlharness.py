"""Harness for the controller tests: ``Controller`` runs one real ``nasblade controller``
process on device files (used by conftest.py fixtures and by the benchmarks' style of start-up).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nasblade import ready
from nasblade.controller.apiclient import ControlClient

TOKEN = "user-token-for-tests"
ADMIN = "admin-token-for-tests"


@dataclass
class Controller:
    workdir: Path
    devices: list[str]
    cache_size: str = "64M"
    proc: subprocess.Popen[bytes] | None = None
    nbd: str = ""
    api: str = ""
    extra: list[str] = field(default_factory=list)
    #: seconds to wait for the ready line (crash loops on a loaded machine need more)
    ready_timeout: float = 30.0
    #: fault injection on (``--faults``): the tests inject I/O errors through the API
    faults: bool = True

    def start(self) -> None:
        (self.workdir / "token").write_text(TOKEN)
        (self.workdir / "admin").write_text(ADMIN)
        cmd = [sys.executable, "-m", "nasblade", "controller", "--nbd-listen", "127.0.0.1:0",
               "--api-listen", "127.0.0.1:0", "--token-file", str(self.workdir / "token"),
               "--admin-token-file", str(self.workdir / "admin"), "--cache-size", self.cache_size,
               *(["--faults"] if self.faults else []), *self.extra]
        for d in self.devices:
            cmd += ["--device", d]
        with open(self.workdir / "controller.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        line = ready.wait_ready(self.proc, timeout=self.ready_timeout)
        self.nbd = line["endpoints"]["nbd"]
        self.api = line["endpoints"]["api"]

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.api, TOKEN)

    @property
    def admin(self) -> ControlClient:
        return ControlClient(self.api, ADMIN)

    def url(self, lu: str) -> str:
        return f"nbd://{self.nbd}/{lu}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def restart(self) -> None:
        self.start()

    def log(self) -> str:
        return (self.workdir / "controller.log").read_text(errors="replace")
