"""Fixtures for the cluster-group tests (heartbeats, takeover, fencing, backups, area failover).

Everything runs in standalone mode: a real ``nasblade up`` (controller + blades as local
processes, the same code as in the pods) on free ports and a random 127.0.x.y file-system
address, driven by real clients and real signals.

- ``make_array(**overrides)``: a factory fixture. Starts ``nasblade up`` with a small config
  (2 x 256M devices, group ``g1`` of two blades with 100 ms heartbeats and a 1 s failure
  timeout, one 64M file system ``fs1`` homed on ``g1-0``); keyword arguments replace top-level
  keys of that config (``clusterGroups``, ``fileSystems``). Returns an ``ArrayUp``; every
  array (and every process the test revived) is stopped at teardown.
- ``ArrayUp`` knows each blade's block-processor and file-processor pids and management API,
  and can ``kill(blade, "fp"|"bp", sig)`` them; ``nasblade up`` restarts a killed process by
  itself (``nasblade.standalone.supervisor``), and ``restarted(blade, part, old_pid)`` waits
  for that in ``DATA/run/chassis.json`` (the chassis status) and learns the new pid.
- ``wait_for(predicate, timeout)``: a bounded poll for states that change on their own
  (ownership after a heartbeat timeout); it raises ``TimeoutError`` with the last value.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from nasblade import ready
from nasblade.bladeapi.client import BladeClient
from nasblade.controller.apiclient import ControlClient

NASBLADE = [sys.executable, "-m", "nasblade"]
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(predicate: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy; ``TimeoutError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, RuntimeError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s; last value: {last!r}")


def _drain(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    while proc.stdout.read(65536):
        pass


@dataclass
class Blade:
    name: str
    api: str
    pids: dict[str, int]


@dataclass
class ArrayUp:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    endpoints: dict[str, Any]

    def __post_init__(self) -> None:
        self.token = (self.data_dir / "secrets" / "blade-token").read_text().strip()
        self.blades = {
            b["name"]: Blade(b["name"], b["api"], {"bp": b["blockProcessorPid"], "fp": b["fileProcessorPid"]})
            for b in self.endpoints["blades"]
        }
        ctl = self.endpoints["controller"]
        self.control = ControlClient(ctl["api"], (self.data_dir / "secrets" / "controller-token").read_text().strip())
        self.admin = ControlClient(ctl["api"], (self.data_dir / "secrets" / "admin-token").read_text().strip())
        self.nbd = ctl["nbd"]

    def nbd_url(self, export: str) -> str:
        """URL of an export on the controller: over TLS with the array's admin certificate
        (``nasblade up`` serves NBD only over TLS unless ``network.nbdTLS`` is false)."""
        ctl = self.endpoints["controller"]
        if ctl.get("nbdTLS"):
            return f"nbds://{self.nbd}/{export}?tls-certificates={ctl['tlsCertificates']}"
        return f"nbd://{self.nbd}/{export}"

    @property
    def nfs(self) -> dict[str, Any]:
        return dict(self.endpoints["nfs"][0])

    def client(self, blade: str) -> BladeClient:
        return BladeClient(self.blades[blade].api, self.token, timeout=90.0)

    def api(self, blade: str, method: str, path: str, body: Any = None) -> Any:
        return self.client(blade).request(method, path, body)

    def cluster(self, blade: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api(blade, "GET", "/v1/cluster")
        return result

    def owner(self, fs: str = "fs1") -> tuple[str, int] | None:
        res = self.control.get_reservation(f"fs-{fs}")
        return None if res.get("holder") is None else (str(res["holder"]), int(res["epoch"]))

    def served_by(self, blade: str, fs: str = "fs1") -> bool:
        return fs in self.cluster(blade)["serving"] and fs in self.api(blade, "GET", "/v1/status")["fileSystems"]

    def kill(self, blade: str, part: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` to ``part`` of ``blade`` (its pid as the chassis knows it now: the chassis
        may have restarted it); returns the pid it went to."""
        pid = int(self.part_status(blade, part)["pid"])
        self.blades[blade].pids[part] = pid
        os.kill(pid, sig)
        return pid

    def chassis(self) -> dict[str, Any]:
        """The chassis status ``nasblade up`` keeps in ``DATA/run/chassis.json``."""
        result: dict[str, Any] = json.loads((self.data_dir / "run" / "chassis.json").read_text())
        return result

    def part_status(self, blade: str, part: str) -> dict[str, Any]:
        key = "blockProcessor" if part == "bp" else "fileProcessor"
        result: dict[str, Any] = self.chassis()["blades"][blade][key]
        return result

    def restarted(self, blade: str, part: str, old_pid: int, *, timeout: float = 90.0) -> dict[str, Any]:
        """Wait until the supervisor runs ``part`` of ``blade`` again under a new pid."""
        st: dict[str, Any] = expect(
            self, lambda: (s := self.part_status(blade, part))["state"] == "running" and s["pid"] != old_pid and s,
            timeout=timeout, what=f"{blade}-{part} restarted by nasblade up")
        self.blades[blade].pids[part] = int(st["pid"])
        return st

    def stop(self) -> int:
        for b in self.blades.values():  # nothing of ours may stay stopped
            for part in ("bp", "fp"):
                with contextlib.suppress(OSError, KeyError, ValueError):
                    b.pids[part] = int(self.part_status(b.name, part)["pid"])
            for pid in b.pids.values():
                with _suppress():
                    os.kill(pid, signal.SIGCONT)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(90)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)  # type: ignore[arg-type]


def base_config(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "array": {"devices": {"count": 2, "size": "256M"}, "cacheSize": "32M", "faultInjection": True},
        "clusterGroups": [{"name": "g1", "blades": 2, "heartbeatInterval": "100ms", "failureTimeout": "1s",
                           "backup": {"interval": "1h", "loadThreshold": 0.8, "maxAge": "2h"}}],
        "fileSystems": [{"name": "fs1", "size": "64M",
                         "address": f"127.{random.randint(100, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"}],
        "network": {"nbdPort": 0, "apiPort": 0, "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": None},
    }
    cfg.update(overrides)
    return cfg


@pytest.fixture
def make_array(tmp_path: Path) -> Iterator[Callable[..., ArrayUp]]:
    """Factory: ``make_array(**config_overrides)`` → a running ``ArrayUp`` (see module doc)."""
    arrays: list[ArrayUp] = []

    def start(**overrides: Any) -> ArrayUp:
        n = len(arrays)
        cfg_path = tmp_path / f"array{n}.yaml"
        cfg_path.write_text(yaml.safe_dump(base_config(**overrides)))
        data_dir = tmp_path / f"data{n}"
        proc = subprocess.Popen([*NASBLADE, "up", "--config", str(cfg_path), "--data-dir", str(data_dir)],
                                stdout=subprocess.PIPE)
        line = ready.wait_ready(proc, timeout=240)
        threading.Thread(target=_drain, args=(proc,), daemon=True).start()
        arr = ArrayUp(data_dir=data_dir, proc=proc, endpoints=line["endpoints"])
        arrays.append(arr)
        # every blade's file processor heartbeats and the home blade serves fs1
        wait_for(lambda: all(m["alive"] for m in arr.cluster("g1-0")["members"]), timeout=30)
        return arr

    yield start
    for arr in arrays:
        rc = arr.stop()
        logs = arr.data_dir / "logs"
        if rc != 0:
            for f in sorted(logs.glob("*.log")):
                sys.stderr.write(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}\n")


def expect(arr: ArrayUp, predicate: Callable[[], T], *, timeout: float = 30.0, what: str = "") -> T:
    """``wait_for`` that fails the test with every blade's cluster view and the logs."""
    try:
        return wait_for(predicate, timeout=timeout)
    except TimeoutError as exc:
        views = []
        for name in arr.blades:
            try:
                views.append(as_json(arr.cluster(name)))
            except (OSError, RuntimeError) as err:
                views.append(f"{name}: {err}")
        pytest.fail(f"{what}: {exc}\n" + "\n".join(views) + "\n" + dump_logs(arr))


def dump_logs(arr: ArrayUp) -> str:
    return "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-2500:]}"
                     for f in sorted((arr.data_dir / "logs").glob("*.log")))


def as_json(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
