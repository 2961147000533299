"""Directory volumes: a directory with a quota inside a shared file system (the CSI driver's
"directory" layout, like Trident's nas-economy qtrees), made, resized and deleted through the
blade API of the blade that serves the file system (``PUT/DELETE
/v1/filesystems/{fs}/directories/{dir}``), on a ``nasblade up`` array.

A real NFS client (libnfs) mounts the directory itself (MOUNT of ``/fs1/<dir>``) and must be
stopped at the quota with NFS3ERR_DQUOT, write on once the quota is raised, and find the quota and its usage unchanged on
the survivor after the serving blade's file processor is SIGKILLed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import subprocess
import threading
import time
from typing import Any

import libnfs
import pytest
import rawnfs
from conftest import ArrayUp, base_config, expect
from nasblade import grants
from nasblade.bladeapi.client import BladeAPIError, BladeClient
from nasblade.nfs import types as t

pytestmark = pytest.mark.component
MIB = 1 << 20


def _url(arr: ArrayUp, path: str) -> str:
    s = arr.nfs
    return f"nfs://{s['host']}{path}?version=3&nfsport={s['nfsPort']}&mountport={s['mountPort']}"


def _owner(arr: ArrayUp) -> str:
    owner = arr.owner("fs1")
    assert owner is not None
    return owner[0]


def _dirs(arr: ArrayUp, blade: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in arr.api(blade, "GET", "/v1/filesystems/fs1/directories")["directories"]}


def _raw(arr: ArrayUp) -> rawnfs.Client:
    s = arr.nfs
    return rawnfs.Client(s["host"], nfs_port=s["nfsPort"], mount_port=s["mountPort"])


def _write(nfs: Any, path: str, data: bytes) -> None:
    f = nfs.open(path, "wb")
    try:
        f.write(bytearray(data))
        f.flush()  # COMMIT: the error of a write past the quota comes back by here at the latest
    finally:
        f.close()


def test_directory_volume_quota_enforced_resized_taken_over_and_deleted(make_array: Any) -> None:
    arr: ArrayUp = make_array()
    owner = _owner(arr)
    peer = next(b for b in sorted(arr.blades) if b != owner)

    made = arr.api(owner, "PUT", "/v1/filesystems/fs1/directories/pv-a", {"quotaBytes": MIB})
    assert made["quotaBytes"] == MIB and made["usedBytes"] == 0, made
    # idempotent: the same call again changes nothing
    assert arr.api(owner, "PUT", "/v1/filesystems/fs1/directories/pv-a", {"quotaBytes": MIB})["quotaBytes"] == MIB
    # the group's token (what the CSI driver derives from the array's) reaches these routes
    # and nothing else of the blade API; another group's token reaches nothing
    group = BladeClient(arr.blades[owner].api, (arr.data_dir / "secrets" / "group-g1-token").read_text().strip())
    assert "pv-a" in [d["name"] for d in group.directories("fs1")["directories"]]
    with pytest.raises(BladeAPIError) as err:
        group.status()
    assert err.value.status == 403
    with pytest.raises(BladeAPIError) as err:
        BladeClient(arr.blades[owner].api, grants.group_token("not-the-array-token", "g1")).directories("fs1")
    assert err.value.status == 401
    # only the blade that serves the file system can do it
    with pytest.raises(BladeAPIError) as err:
        arr.api(peer, "GET", "/v1/filesystems/fs1/directories")
    assert err.value.status == 404

    raw = _raw(arr)
    root = raw.mount("/fs1/pv-a")
    st = raw.fsstat(root)
    assert (st.tbytes, st.fbytes) == (MIB, MIB), st  # df shows the volume's size

    first = os.urandom(768 << 10)
    _write(libnfs.NFS(_url(arr, "/fs1/pv-a")), "/one.bin", first)
    assert raw.fsstat(root).fbytes == MIB - (768 << 10)
    fh = raw.create(root, "two.bin")
    raw.write(fh, 0, os.urandom(128 << 10), stable=2)
    with pytest.raises(rawnfs.NfsError) as over:
        raw.write(fh, 128 << 10, os.urandom(256 << 10), stable=2)  # FILE_SYNC past the quota
    assert over.value.status == t.Stat.DQUOT
    # libnfs's nfs-cp is refused too (its Python binding drops write errors, so not that)
    src = arr.data_dir / "three.bin"
    src.write_bytes(os.urandom(512 << 10))
    cp = subprocess.run(["nfs-cp", str(src), _url(arr, "/fs1/pv-a/three.bin")], capture_output=True, timeout=60)
    assert cp.returncode != 0, cp
    used = _dirs(arr, owner)["pv-a"]["usedBytes"]
    assert used <= MIB, used
    assert bytes(libnfs.NFS(_url(arr, "/fs1/pv-a")).open("/one.bin", "rb").read()) == first

    # raised: the same writer goes on
    arr.api(owner, "PUT", "/v1/filesystems/fs1/directories/pv-a", {"quotaBytes": 4 * MIB})
    second = os.urandom(MIB)
    _write(libnfs.NFS(_url(arr, "/fs1/pv-a")), "/four.bin", second)
    assert raw.fsstat(root).tbytes == 4 * MIB
    before = _dirs(arr, owner)["pv-a"]
    assert before["files"] >= 2 and before["usedBytes"] >= len(first) + len(second), before
    # the shared file system's space behind its volumes (the CSI driver's GetCapacity): what
    # FSSTAT of the whole file system says, and the quotas promised
    space = arr.api(owner, "GET", "/v1/filesystems/fs1/directories")["space"]
    whole = raw.fsstat(raw.mount("/fs1"))
    assert space == {"totalBytes": whole.tbytes, "freeBytes": whole.fbytes, "quotaBytes": 4 * MIB}, (space, whole)

    # the quota lives in the file system: the survivor that takes it over enforces the same
    arr.kill(owner, "fp")
    expect(arr, lambda: arr.served_by(peer, "fs1"), timeout=60, what="the survivor serves fs1")
    after = _dirs(arr, peer)["pv-a"]
    assert (after["quotaBytes"], after["usedBytes"], after["files"]) == \
        (before["quotaBytes"], before["usedBytes"], before["files"]), (before, after)
    assert bytes(libnfs.NFS(_url(arr, "/fs1/pv-a")).open("/four.bin", "rb").read()) == second

    # bad names are refused and change nothing
    for bad in ("..", "a%2Fb", "x%20y", "%C3%A9"):
        with pytest.raises(BladeAPIError) as err:
            arr.api(peer, "PUT", f"/v1/filesystems/fs1/directories/{bad}", {"quotaBytes": MIB})
        assert err.value.status in (400, 404), (bad, err.value)
    with pytest.raises(BladeAPIError) as err:
        arr.api(peer, "PUT", "/v1/filesystems/fs1/directories/pv-b", {"quotaBytes": -1})
    assert err.value.status == 400
    assert set(_dirs(arr, peer)) == {"pv-a"}

    # deleted with its data; deleting again is no error
    assert arr.api(peer, "DELETE", "/v1/filesystems/fs1/directories/pv-a")["removed"] is True
    assert arr.api(peer, "DELETE", "/v1/filesystems/fs1/directories/pv-a")["removed"] is False
    assert _dirs(arr, peer) == {}
    assert "pv-a" not in libnfs.NFS(_url(arr, "/fs1")).listdir("/")


def _tree(nfs: Any, top: str) -> dict[str, bytes]:
    """Every regular file under ``top`` (relative path -> content), read over NFS."""
    out: dict[str, bytes] = {}
    for name in nfs.listdir(top):
        if name in (".", ".."):
            continue
        path = f"{top.rstrip('/')}/{name}"
        if stat.S_ISDIR(nfs.stat(path)["mode"]):
            out.update({f"{name}/{k}": v for k, v in _tree(nfs, path).items()})
        else:
            out[name] = bytes(nfs.open(path, "rb").read())
    return out


def test_directory_volume_snapshot_restore_and_clone(make_array: Any) -> None:
    """A snapshot is the volume as it was when it was taken (later writes and deletions do not
    reach it), it lives in the file system (the survivor of a takeover has it), a volume made
    from it or cloned from a volume holds that data under its own quota, and squashed clients
    mounting the whole file system cannot enter the snapshot area."""
    arr: ArrayUp = make_array()
    owner = _owner(arr)
    peer = next(b for b in sorted(arr.blades) if b != owner)
    arr.api(owner, "PUT", "/v1/filesystems/fs1/directories/pv-a", {"quotaBytes": 8 * MIB})
    vol = libnfs.NFS(_url(arr, "/fs1/pv-a"))
    vol.mkdir("/sub")
    before = {"one.bin": os.urandom(300 << 10), "sub/two.bin": os.urandom(2 * MIB + 5)}
    for rel, data in before.items():
        _write(vol, "/" + rel, data)

    group = BladeClient(arr.blades[owner].api, (arr.data_dir / "secrets" / "group-g1-token").read_text().strip())
    made = group.snapshot_directory("fs1", "pv-a", "sn-1")  # the CSI driver's token reaches it
    assert made == {"name": "sn-1", "directory": "pv-a", "created": True}
    assert group.snapshot_directory("fs1", "pv-a", "sn-1")["created"] is False  # idempotent
    assert group.snapshots("fs1")["snapshots"] == ["sn-1"]

    # the volume changes after the snapshot
    _write(vol, "/one.bin", b"changed")
    vol.unlink("/sub/two.bin")
    _write(vol, "/three.bin", b"new")

    # the snapshot is in the file system: the survivor serves it after a takeover
    arr.kill(owner, "fp")
    expect(arr, lambda: arr.served_by(peer, "fs1"), timeout=60, what="the survivor serves fs1")
    restored = arr.api(peer, "PUT", "/v1/filesystems/fs1/directories/pv-r",
                       {"quotaBytes": 4 * MIB, "source": {"snapshot": "sn-1"}})
    assert restored["quotaBytes"] == 4 * MIB and restored["usedBytes"] >= sum(map(len, before.values())), restored
    assert _tree(libnfs.NFS(_url(arr, "/fs1/pv-r")), "/") == before
    clone = arr.api(peer, "PUT", "/v1/filesystems/fs1/directories/pv-c",
                    {"quotaBytes": 4 * MIB, "source": {"directory": "pv-a"}})
    assert clone["files"] == 4, clone  # its root, sub, one.bin, three.bin
    assert _tree(libnfs.NFS(_url(arr, "/fs1/pv-c")), "/") == {"one.bin": b"changed", "three.bin": b"new"}
    # each under its own quota: the restored volume is full at 4 MiB
    src = arr.data_dir / "big.bin"
    src.write_bytes(os.urandom(2 * MIB))
    cp = subprocess.run(["nfs-cp", str(src), _url(arr, "/fs1/pv-r/big.bin")], capture_output=True, timeout=60)
    assert cp.returncode != 0, cp
    assert set(_dirs(arr, peer)) == {"pv-a", "pv-r", "pv-c"}  # the snapshot area is no volume

    # a squashed client mounting the whole file system sees the area but cannot enter it
    assert ".snapshots" in libnfs.NFS(_url(arr, "/fs1")).listdir("/")
    raw = _raw(arr)
    area = raw.lookup(raw.mount("/fs1"), ".snapshots")
    with pytest.raises(rawnfs.NfsError) as denied:
        raw.lookup(area, "sn-1")
    assert denied.value.status == t.Stat.ACCES

    # refusals: an unknown source, a bad name, the area's own name; nothing made by them
    for body, status in (({"quotaBytes": MIB, "source": {"snapshot": "sn-none"}}, 409),
                         ({"quotaBytes": MIB, "source": {"volume": "pv-a"}}, 400)):
        with pytest.raises(BladeAPIError) as err:
            arr.api(peer, "PUT", "/v1/filesystems/fs1/directories/pv-x", body)
        assert err.value.status == status, (body, err.value)
    for path in ("/v1/filesystems/fs1/directories/.snapshots", "/v1/filesystems/fs1/snapshots/.snapshots"):
        with pytest.raises(BladeAPIError) as err:
            arr.api(peer, "PUT", path, {"quotaBytes": MIB, "directory": "pv-a"})
        assert err.value.status == 400, path
    with pytest.raises(BladeAPIError) as err:
        arr.api(peer, "PUT", "/v1/filesystems/fs1/snapshots/sn-2", {"directory": "pv-none"})
    assert err.value.status == 409
    assert set(_dirs(arr, peer)) == {"pv-a", "pv-r", "pv-c"}
    assert arr.api(peer, "GET", "/v1/filesystems/fs1/snapshots")["snapshots"] == ["sn-1"]

    # deleted; deleting again is no error; the restored volume keeps its data
    assert arr.api(peer, "DELETE", "/v1/filesystems/fs1/snapshots/sn-1")["removed"] is True
    assert arr.api(peer, "DELETE", "/v1/filesystems/fs1/snapshots/sn-1")["removed"] is False
    assert arr.api(peer, "GET", "/v1/filesystems/fs1/snapshots")["snapshots"] == []
    left = _tree(libnfs.NFS(_url(arr, "/fs1/pv-r")), "/")
    left.pop("big.bin", None)  # what the refused copy had written before the quota stopped it
    assert left == before


RECORD = 16 << 10


def _read(arr: ArrayUp, volume: str, path: str) -> bytes:
    """A whole file over libnfs, its context kept alive until the read is done (the binding
    aborts the process when the context goes first)."""
    nfs = libnfs.NFS(_url(arr, volume))
    f = nfs.open(path, "rb")
    try:
        return bytes(f.read())
    finally:
        f.close()


def test_a_snapshot_under_a_writer_is_one_instant_and_stalls_without_failing_over(make_array: Any) -> None:
    """A writer appends numbered, checksummed 16 KiB FILE_SYNC records while a snapshot of a
    volume with 160 MiB in it is made (a copy of seconds on this machine, longer than the
    group's 1 s failure timeout). The snapshot holds a prefix of the records, every one intact:
    the tree at one instant, not a mix. The writer's requests wait for the copy and are then
    answered (no error); the blade keeps its heartbeat meanwhile, so nothing is taken over."""
    cfg = base_config()
    cfg["array"]["devices"]["size"] = "512M"
    cfg["fileSystems"][0]["size"] = "800M"
    arr: ArrayUp = make_array(array=cfg["array"], fileSystems=cfg["fileSystems"])
    owner = arr.owner("fs1")
    assert owner is not None
    arr.api(owner[0], "PUT", "/v1/filesystems/fs1/directories/pv-a", {"quotaBytes": 300 * MIB})
    bulk = arr.data_dir / "bulk.bin"
    bulk.write_bytes(os.urandom(80 * MIB))
    for i in range(2):
        subprocess.run(["nfs-cp", str(bulk), _url(arr, f"/fs1/pv-a/bulk{i}.bin")], check=True, capture_output=True)

    raw = _raw(arr)
    fh = raw.create(raw.mount("/fs1/pv-a"), "log.bin")
    acked: list[int] = []
    stalls: list[float] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        seq = 0
        try:
            while not stop.is_set():
                payload = os.urandom(RECORD - 40)
                rec = struct.pack(">Q", seq) + hashlib.sha256(payload).digest() + payload
                t0 = time.monotonic()
                raw.write(fh, seq * RECORD, rec, stable=2)
                stalls.append(time.monotonic() - t0)
                acked.append(seq)
                seq += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    expect(arr, lambda: len(acked) >= 20, timeout=30, what="the writer under way")
    t0 = time.monotonic()
    arr.api(owner[0], "PUT", "/v1/filesystems/fs1/snapshots/sn-1", {"directory": "pv-a"})
    took = time.monotonic() - t0
    expect(arr, lambda: len(acked) >= 20 + 20, timeout=30, what="the writer going on after the snapshot")
    stop.set()
    thread.join(30)
    assert not errors, errors
    assert arr.owner("fs1") == owner, "the blade was taken over during the copy"

    restored = arr.api(owner[0], "PUT", "/v1/filesystems/fs1/directories/pv-r",
                       {"quotaBytes": 300 * MIB, "source": {"snapshot": "sn-1"}})
    assert restored["files"] == 4, restored  # root, bulk0, bulk1, log.bin
    data = _read(arr, "/fs1/pv-r", "/log.bin")
    assert len(data) % RECORD == 0, len(data)
    count = len(data) // RECORD
    for seq in range(count):
        rec = data[seq * RECORD:(seq + 1) * RECORD]
        assert struct.unpack(">Q", rec[:8])[0] == seq and hashlib.sha256(rec[40:]).digest() == rec[8:40], seq
    assert 20 <= count < len(acked), (count, len(acked))
    for i in range(2):
        assert _read(arr, "/fs1/pv-r", f"/bulk{i}.bin") == bulk.read_bytes()
    print(f"snapshot of {160 + count * RECORD / MIB:.0f} MiB under a writer: {took:.2f} s; the writer's longest "
          f"FILE_SYNC write {max(stalls):.2f} s; {count} of {len(acked)} records in the snapshot")
