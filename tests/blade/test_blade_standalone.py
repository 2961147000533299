"""``nasblade up``: the whole array on this machine, driven by libnfs's command-line clients.

The full-stack test writes and reads files through NFS → file processor → block processor →
controller, checks each blade's slot in the processor-information portion, stops the array
with SIGTERM and starts it again on the same data directory: the data is still there.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import NASBLADE, free_port
from nasblade import ready
from nasblade.bladeapi.client import BladeClient
from nasblade.controller.apiclient import ControlClient
from nasblade.nbd.client import NBDBlockDevice, NBDError
from nasblade.procinfo.portion import PortionStore
from nasblade.standalone.config import ConfigError, parse

pytestmark = pytest.mark.component


def test_config_refuses_unknown_keys_and_impossible_sizes(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"fileSystems": [{"size": "5T"}]}, "fileSystems[0].size: 5T is larger than the array's free space"),
        ({"array": {"devices": {"count": 1, "size": "1G", "colour": "red"}}}, "array.devices.colour: unknown key"),
        ({"fileSystems": [{"exports": [{"acess": "rw"}]}]}, "fileSystems[0].exports[0].acess: unknown key"),
        ({"clusterGroups": [{"blades": 0}]}, "clusterGroups[0].blades: 0 is outside 1..16"),
        ({"fileSystems": [{"address": "10.0.0.1"}]}, "fileSystems[0].address: 10.0.0.1 is not a loopback"),
        ({"fileSystems": [{"preferredBlade": "nope"}]}, "fileSystems[0].preferredBlade: 'nope' is not a blade of g1"),
        ({"array": {"cacheSize": "lots"}}, "array.cacheSize: 'lots' is not a size"),
        ({"clusterGroups": [{"controllerWait": "0s"}]}, "clusterGroups[0].controllerWait: must be positive"),
        ({"array": {"faultInjection": "yes"}}, "array.faultInjection"),
    ]
    for data, message in cases:
        with pytest.raises(ConfigError) as err:
            parse(data)
        assert message in str(err.value)
    assert parse({}).groups[0].controller_wait == 120.0
    assert parse({}).fault_injection is False and parse({"array": {"faultInjection": True}}).fault_injection
    assert parse({"clusterGroups": [{"controllerWait": "30s"}]}).groups[0].controller_wait == 30.0
    # the command refuses before starting anything, naming the field
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"fileSystems": [{"name": "fs1", "size": "5T"}]}))
    out = subprocess.run([*NASBLADE, "up", "--config", str(bad), "--data-dir", str(tmp_path / "d")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2
    assert "fileSystems[0].size: 5T is larger than the array's free space" in out.stderr
    assert not (tmp_path / "d").exists()


class Up:
    """One ``nasblade up`` process on ``data_dir`` with ``config``."""

    def __init__(self, config: Path, data_dir: Path) -> None:
        self.proc = subprocess.Popen([*NASBLADE, "up", "--config", str(config), "--data-dir", str(data_dir)],
                                     stdout=subprocess.PIPE)
        self.ready = ready.wait_ready(self.proc, timeout=180)
        self.endpoints: dict[str, Any] = self.ready["endpoints"]

    def stop(self) -> int:
        """SIGTERM and wait; generous because fsync on a busy CI disk can take long."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(300)


@pytest.fixture
def array_config(tmp_path: Path) -> Iterator[Path]:
    """A small array: 2 x 256M devices, one group of two blades, one 128M file system on a
    random loopback address with free ports (no portmapper, so no privileged port)."""
    cfg = {
        "array": {"devices": {"count": 2, "size": "256M"}, "cacheSize": "32M"},
        "clusterGroups": [{"name": "g1", "blades": 2}],
        "fileSystems": [{"name": "fs1", "size": "128M", "address": f"127.0.{random.randint(1, 250)}.{random.randint(2, 250)}"}],
        "network": {"nbdPort": free_port(), "apiPort": free_port(), "bladeApiPort": 0,
                    "nfsPort": free_port(), "mountPort": free_port(), "portmapPort": None},
    }
    path = tmp_path / "array.yaml"
    path.write_text(yaml.safe_dump(cfg))
    yield path


def nfs_cp(src: str, dst: str) -> None:
    subprocess.run(["nfs-cp", src, dst], check=True, capture_output=True, timeout=120)


def nfs_url(ep: dict[str, Any], name: str) -> str:
    return (f"nfs://{ep['host']}{ep['export']}/{name}"
            f"?version=3&nfsport={ep['nfsPort']}&mountport={ep['mountPort']}")


def test_full_stack_write_read_restart(tmp_path: Path, array_config: Path) -> None:
    data_dir = tmp_path / "data"
    files = {"small.txt": b"hello through the blade\n", "big.bin": os.urandom(8 << 20), "empty": b""}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)

    up = Up(array_config, data_dir)
    try:
        [ep] = up.endpoints["nfs"]
        assert ep["fileSystem"] == "fs1" and ep["blade"] == "g1-0" and ep["export"] == "/fs1"
        for name in files:
            nfs_cp(str(tmp_path / name), nfs_url(ep, name))
        for name, content in files.items():
            nfs_cp(nfs_url(ep, name), str(tmp_path / f"back-{name}"))
            assert (tmp_path / f"back-{name}").read_bytes() == content
        listing = subprocess.run(["nfs-ls", nfs_url(ep, "").rstrip("/")], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
        assert all(name in listing for name in files)

        # every blade booted from the program LU and stores its status in its slot (claim 2)
        token = (data_dir / "secrets" / "blade-token").read_text().strip()
        for blade in up.endpoints["blades"]:
            status = BladeClient(blade["api"], token).status()
            assert status["software"]["version"] == blade["software"] == "0.1.0"
            assert status["heartbeatCounter"] >= 1 and status["activeArea"] == "primary"
        ctl = up.endpoints["controller"]
        ctl_token = (data_dir / "secrets" / "controller-token").read_text().strip()
        lus = {lu["name"]: lu for lu in ControlClient(ctl["api"], ctl_token).list_lus()}
        assert lus["fs-fs1"]["reservation"]["holder"] == "g1-0"
        # NBD is TLS-only by default: a plaintext client is refused, the admin certificate opens
        assert ctl["nbdTLS"] is True
        with pytest.raises(NBDError, match="TLS"):
            NBDBlockDevice.connect(f"nbd://{ctl['nbd']}/procinfo", tls_dir=None)
        with NBDBlockDevice.connect(f"nbd://{ctl['nbd']}/procinfo", tls_dir=ctl["tlsCertificates"]) as dev:
            store = PortionStore(dev, offset=0, size=1 << 20)
            s0, s1 = store.read_slot(0), store.read_slot(1)
        # the blades' certificate (group g1) opens the group's file system (the cross-group
        # refusal: tests/controller/test_ctl_tls.py)
        g1 = str(data_dir / "tls" / "group-g1")
        NBDBlockDevice.connect(f"nbd://{ctl['nbd']}/fs-fs1", tls_dir=g1).close()
        assert s0 is not None and s0.blade == "g1-0" and s0.file_systems == ["fs1"]
        assert s0.software_version == "0.1.0" and len(s0.write_verifier) == 16
        assert s1 is not None and s1.blade == "g1-1" and s1.file_systems == []
        pids = [b["blockProcessorPid"] for b in up.endpoints["blades"]] + [ctl["pid"], ep["pid"]]
    finally:
        assert up.stop() == 0
    for pid in pids:  # everything it started is gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    up = Up(array_config, data_dir)
    try:
        [ep] = up.endpoints["nfs"]
        for name, content in files.items():
            nfs_cp(nfs_url(ep, name), str(tmp_path / f"again-{name}"))
            assert hashlib.sha256((tmp_path / f"again-{name}").read_bytes()).digest() == hashlib.sha256(content).digest()
    finally:
        assert up.stop() == 0

