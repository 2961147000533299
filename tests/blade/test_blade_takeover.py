"""The blade API's file-system takeover and release, without the cluster-group layer.

Two blades (block processor + ``blade-file-processor``) on a real controller; fs1 is served by
b0 on its own loopback address. Release on b0 and take over on b1 (same address, new epoch),
then SIGKILL b1's processes and take fs1 back on b0: libnfs clients see the same data, and the
group record names the owner and its epoch. (Automatic takeover on heartbeat loss is the
cluster-group layer's, tested in tests/cluster.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BLADE_TOKEN, BladeProc, Controller
from nasblade.bladeapi.client import BladeAPIError, BladeClient
from nasblade.nbd.client import NBDBlockDevice
from nasblade.procinfo.portion import PortionStore

pytestmark = pytest.mark.component


def url(spec: dict[str, Any], name: str) -> str:
    return f"nfs://{spec['address']}/fs1/{name}?version=3&nfsport={spec['nfsPort']}&mountport={spec['mountPort']}"


def nfs_cp(src: str, dst: str) -> None:
    subprocess.run(["nfs-cp", src, dst], check=True, capture_output=True, timeout=120)


def test_file_system_moves_between_blades(
    tmp_path: Path, controller: Controller, fs_spec: dict[str, Any],
    start_bp: Callable[..., BladeProc], start_fp: Callable[..., subprocess.Popen[bytes]],
) -> None:
    spec_args = ("--fs-spec", json.dumps(fs_spec))
    bp0 = start_bp(blade="b0", slot=0, own=("fs1",),
                   extra=(*spec_args, "--fp-unix", str(tmp_path / "b0" / "fp.sock")))
    bp1 = start_bp(blade="b1", slot=1, own=(),
                   extra=(*spec_args, "--fp-unix", str(tmp_path / "b1" / "fp.sock")))
    start_fp(bp0, "b0", fs_spec)
    fp1 = start_fp(bp1, "b1")
    api0 = BladeClient(bp0.api, BLADE_TOKEN, timeout=180)
    api1 = BladeClient(bp1.api, BLADE_TOKEN, timeout=180)

    content = os.urandom(3 << 20)
    (tmp_path / "f.bin").write_bytes(content)
    nfs_cp(str(tmp_path / "f.bin"), url(fs_spec, "f.bin"))

    assert api0.request("POST", "/v1/filesystems/fs1/release")["released"]
    moved = api1.request("POST", "/v1/filesystems/fs1/takeover")
    assert moved["epoch"] == 2 and moved["endpoints"]["nfs"] == f"{fs_spec['address']}:{fs_spec['nfsPort']}"
    assert api1.request("POST", "/v1/filesystems/fs1/takeover")["epoch"] == 2  # idempotent
    nfs_cp(url(fs_spec, "f.bin"), str(tmp_path / "back1"))
    assert (tmp_path / "back1").read_bytes() == content
    nfs_cp(str(tmp_path / "f.bin"), url(fs_spec, "g.bin"))  # written while b1 serves

    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/procinfo") as dev:
        owner = PortionStore(dev, offset=0, size=1 << 20).read_group().ownership["fs1"]
    assert (owner.blade, owner.epoch) == ("b1", 2)

    # b1 dies hard; b0 takes fs1 back with a newer epoch and recovers the file system
    for proc in (fp1, bp1.proc):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    back = api0.request("POST", "/v1/filesystems/fs1/takeover")
    assert back["epoch"] == 3
    for name in ("f.bin", "g.bin"):
        nfs_cp(url(fs_spec, name), str(tmp_path / f"again-{name}"))
        assert (tmp_path / f"again-{name}").read_bytes() == content
    with pytest.raises(BladeAPIError) as err:
        api0.request("POST", "/v1/filesystems/nope/takeover")
    assert err.value.status == 404


def test_file_processor_crash_fails_the_blade(
    tmp_path: Path, controller: Controller, fs_spec: dict[str, Any],
    start_bp: Callable[..., BladeProc], start_fp: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """The file processor of the owner is SIGKILLed and restarted (as its container would be):
    the block processor declares the blade failed -- readiness 503 naming the file system, no
    more heartbeats in its slot -- instead of serving on as if nothing happened; a peer takes
    the file system over with a new epoch and the data written before is there."""
    import time
    import urllib.error
    import urllib.request

    spec_args = ("--fs-spec", json.dumps(fs_spec))
    bp0 = start_bp(blade="b0", slot=0, own=(),
                   extra=(*spec_args, "--fp-unix", str(tmp_path / "b0" / "fp.sock")))
    bp1 = start_bp(blade="b1", slot=1, own=(),
                   extra=(*spec_args, "--fp-unix", str(tmp_path / "b1" / "fp.sock")))
    fp0 = start_fp(bp0, "b0")
    start_fp(bp1, "b1")
    api0 = BladeClient(bp0.api, BLADE_TOKEN, timeout=180)
    api1 = BladeClient(bp1.api, BLADE_TOKEN, timeout=180)
    assert api0.request("POST", "/v1/filesystems/fs1/takeover")["epoch"] == 1
    content = os.urandom(1 << 20)
    (tmp_path / "f.bin").write_bytes(content)
    nfs_cp(str(tmp_path / "f.bin"), url(fs_spec, "f.bin"))

    def health() -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(f"{bp0.api}/healthz", timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    assert health() == (200, {"ok": True})
    fp0.send_signal(signal.SIGKILL)
    fp0.wait()
    start_fp(bp0, "b0")  # the restarted file processor serves nothing
    deadline = time.monotonic() + 60
    while health()[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    code, body = health()
    assert code == 503 and "fs1" in body["failed"], body
    seq = api0.request("GET", "/v1/status")["slotSeq"]
    time.sleep(1.0)  # five heartbeat intervals: none of them may reach the slot
    assert api0.request("GET", "/v1/status")["slotSeq"] == seq
    moved = api1.request("POST", "/v1/filesystems/fs1/takeover")
    assert moved["epoch"] == 2
    nfs_cp(url(fs_spec, "f.bin"), str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == content


def _health(api: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{api}/healthz", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _await_health(api: str, code: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (got := _health(api))[0] != code and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got[0] == code, got
    return got[1]


def test_a_blade_is_ready_only_while_its_file_processor_is_there(
    tmp_path: Path, controller: Controller, fs_spec: dict[str, Any],
    start_bp: Callable[..., BladeProc], start_fp: Callable[..., subprocess.Popen[bytes]],
) -> None:
    """Readiness says whether the blade could take a file system over: not before its file
    processor has started (a restarted pod was Ready that early, and the operator's give-back
    to it failed), not while a standby's killed file processor restarts; a takeover works as
    soon as it is Ready again."""
    bp = start_bp(blade="b0", slot=0, own=(),
                  extra=("--fs-spec", json.dumps(fs_spec), "--fp-unix", str(tmp_path / "b0" / "fp.sock")))
    assert _health(bp.api) == (503, {"ok": False, "waiting": "no file processor is connected"})
    fp = start_fp(bp, "b0")
    _await_health(bp.api, 200)
    fp.send_signal(signal.SIGKILL)  # it served nothing: the blade is not failed, only not ready
    fp.wait()
    assert _await_health(bp.api, 503) == {"ok": False, "waiting": "no file processor is connected"}
    start_fp(bp, "b0")
    _await_health(bp.api, 200)
    api = BladeClient(bp.api, BLADE_TOKEN, timeout=180)
    assert api.request("POST", "/v1/filesystems/fs1/takeover")["epoch"] == 1
    content = os.urandom(1 << 20)
    (tmp_path / "f.bin").write_bytes(content)
    nfs_cp(str(tmp_path / "f.bin"), url(fs_spec, "f.bin"))
    nfs_cp(url(fs_spec, "f.bin"), str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == content

