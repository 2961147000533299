"""Component tests: the real controller driven by third-party NBD clients.

nbdinfo (list, describe), nbdcopy (random-file round trip), qemu-img / qemu-io (pattern
writes and verified reads), python3-libnbd through the system ``/usr/bin/python3``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from ctlharness import Controller

pytestmark = pytest.mark.component


def run(*cmd: str, timeout: float = 120) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{cmd}: {res.stderr}"
    return res.stdout


def test_nbdinfo_lists_and_describes(controller: Controller) -> None:
    controller.client.create_lu("alpha", 32 << 20)
    controller.client.create_lu("beta", 16 << 20, read_only=True)
    listing = json.loads(run("nbdinfo", "--json", "--list", f"nbd://{controller.nbd}"))
    names = sorted(e["export-name"] for e in listing["exports"])
    assert names == ["alpha", "beta"]
    info = json.loads(run("nbdinfo", "--json", controller.url("beta")))
    (export,) = info["exports"]
    assert export["export-size"] == 16 << 20
    assert export["is_read_only"] is True
    assert export["can_flush"] and export["can_fua"] and export["can_multi_conn"]
    assert export["block_size_preferred"] == 4096
    res = subprocess.run(["nbdinfo", controller.url("missing")], capture_output=True, text=True, check=False)
    assert res.returncode != 0


def test_nbdcopy_round_trip(controller: Controller, tmp_path: Path) -> None:
    controller.client.create_lu("copy", 48 << 20)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(48 << 20))
    run("nbdcopy", str(src), controller.url("copy"))
    back = tmp_path / "back"
    run("nbdcopy", controller.url("copy"), str(back))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_qemu_io_and_qemu_img(controller: Controller, tmp_path: Path) -> None:
    controller.client.create_lu("q", 64 << 20)
    url = controller.url("q")
    out = run("qemu-io", "-f", "raw", "-c", "write -P 0xab 0 3M", "-c", "write -P 0xcd 1000 5000",
              "-c", "write -z 8M 1M", "-c", "flush", url)
    assert "wrote" in out
    out = run("qemu-io", "-f", "raw", "-c", "read -P 0xab 0 1000", "-c", "read -P 0xcd 1000 5000",
              "-c", "read -P 0xab 6000 1M", "-c", "read -P 0 8M 1M", url)
    assert "Pattern verification failed" not in out
    info = json.loads(run("qemu-img", "info", "--output=json", "-f", "raw", url))
    assert info["virtual-size"] == 64 << 20
    img = tmp_path / "img.raw"
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(img))
    data = img.read_bytes()
    assert data[:1000] == b"\xab" * 1000 and data[1000:6000] == b"\xcd" * 5000
    out = run("qemu-img", "bench", "-f", "raw", "-c", "2000", "-d", "8", "-s", "4k", "-w", url)
    assert "Run completed" in out


LIBNBD_SCRIPT = r"""
import errno, json, sys
import nbd
url, ro_url = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(url)
out = {"size": h.get_size(), "fua": h.can_fua(), "flush": h.can_flush(), "trim": h.can_trim(),
       "zero": h.can_zero(), "multi": h.can_multi_conn(), "ro": h.is_read_only()}
buf = bytes(range(256)) * 16
h.pwrite(buf, 4096)
h.pwrite(buf, 8192, nbd.CMD_FLAG_FUA)
h.flush()
out["read_ok"] = h.pread(4096, 4096) == buf and h.pread(4096, 8192) == buf
h.zero(4096, 4096)
out["zero_ok"] = h.pread(4096, 4096) == bytes(4096)
h.trim(65536, 65536)
try:
    h.pread(1, h.get_size())
    out["past_end"] = "no error"
except nbd.Error as e:
    out["past_end"] = e.errno
h.shutdown()
r = nbd.NBD()
r.connect_uri(ro_url)
try:
    r.pwrite(b"x" * 512, 0)
    out["ro_write"] = "no error"
except nbd.Error as e:
    out["ro_write"] = e.errno
out["ro_flag"] = r.is_read_only()
print(json.dumps(out))
"""


def test_python3_libnbd(controller: Controller) -> None:
    controller.client.create_lu("lib", 8 << 20)
    controller.client.create_lu("ro", 8 << 20, read_only=True)
    out = json.loads(run("/usr/bin/python3", "-c", LIBNBD_SCRIPT, controller.url("lib"), controller.url("ro")))
    assert out["size"] == 8 << 20
    assert out["fua"] and out["flush"] and out["trim"] and out["zero"] and out["multi"] and not out["ro"]
    assert out["read_ok"] and out["zero_ok"]
    assert out["past_end"] == "EINVAL"
    assert out["ro_flag"] is True
    assert out["ro_write"] == "EPERM"


def test_libnbd_writes_to_read_only_lu_are_eperm_on_the_wire(controller: Controller) -> None:
    """libnbd refuses client-side; force the request with strict mode off."""
    controller.client.create_lu("ro2", 8 << 20, read_only=True)
    script = r"""
import sys, nbd
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
try:
    h.pwrite(b"x" * 512, 0)
    print("no error")
except nbd.Error as e:
    print(e.errno)
"""
    assert run("/usr/bin/python3", "-c", script, controller.url("ro2")).strip() == "EPERM"


def test_multiple_devices_carry_large_io(controller_factory: Callable[..., Controller]) -> None:
    c = controller_factory(devices=3, size="128M")
    lu = c.client.create_lu("wide", 96 << 20)
    assert lu["devices"] == [0, 1, 2]
    run("qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 6M", "-c", "flush", c.url("wide"))
    out = run("qemu-io", "-f", "raw", "-c", "read -P 0x5a 0 6M", c.url("wide"))
    assert "Pattern verification failed" not in out
