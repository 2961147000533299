"""The block processor between a real controller and real NBD clients (nbdcopy, libnbd).

Covers: data through the proxy, reconnect with replay after a controller SIGKILL, fencing by
a newer reservation epoch, claim 2 (slot writes on request), the blade API (token, status),
the controller load handed to the file processor, and claim 3's cache records.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import BLADE_TOKEN, BladeProc, Controller
from nasblade.bladeapi.client import BladeAPIError, BladeClient, LocalClient
from nasblade.nbd import proto
from nasblade.nbd.client import NBDBlockDevice
from nasblade.procinfo.portion import PortionStore

pytestmark = pytest.mark.component


def md5_of(url: str) -> str:
    out = subprocess.run(["nbdcopy", url, "-"], check=True, capture_output=True, timeout=120).stdout
    return hashlib.md5(out).hexdigest()


def test_nbdcopy_through_the_block_processor(
    tmp_path: Path, controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    bp = start_bp()
    src = tmp_path / "src"
    src.write_bytes(os.urandom(8 << 20) * 8)  # 64 MiB
    subprocess.run(["nbdcopy", "--flush", str(src), bp.url("fs1")], check=True, timeout=120)
    want = hashlib.md5(src.read_bytes()).hexdigest()
    assert md5_of(bp.url("fs1")) == want
    # the bytes are at the controller, not only in the block processor
    assert md5_of(f"nbd://{controller.nbd}/fs1") == want
    info = subprocess.run(["nbdinfo", "--json", bp.url("fs1")], check=True, capture_output=True, text=True)
    assert '"export-size": 67108864' in info.stdout


def test_unflushed_writes_survive_a_controller_sigkill(
    controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    """Writes acknowledged without FLUSH are replayed after the controller comes back."""
    bp = start_bp()
    dev = NBDBlockDevice.connect(bp.url("fs1"))
    blocks = {i * (1 << 20): os.urandom(1 << 20) for i in range(16)}
    for off, data in blocks.items():
        dev.pwrite(off, data)  # no FUA, no flush: held in the controller's cache
    newer = os.urandom(4096)
    dev.pwrite(0, newer, fua=True)  # durable, and newer than the journaled write at 0
    controller.kill()
    controller.start()
    dev.flush()  # retried across the reconnect, after the replay
    blocks[0] = newer + blocks[0][4096:]
    for off, data in blocks.items():
        assert dev.pread(off, len(data)) == data
    dev.close()
    direct = NBDBlockDevice.connect(f"nbd://{controller.nbd}/fs1")
    assert direct.pread(0, 1 << 20) == blocks[0]
    direct.close()
    status = BladeClient(bp.api, BLADE_TOKEN).status()
    assert status["upstream"]["fs1"]["reconnects"] >= 1
    assert status["upstream"]["fs1"]["replayedWrites"] >= 16


def test_a_newer_epoch_fences_the_blade(controller: Controller, start_bp: Callable[..., BladeProc]) -> None:
    bp = start_bp()
    dev = NBDBlockDevice.connect(bp.url("fs1"))
    dev.pwrite(0, b"a" * 4096, fua=True)
    assert BladeClient(bp.api, BLADE_TOKEN).status()["reservations"]["fs1"]["epoch"] == 1
    controller.client.reserve("fs1", "other-blade")
    with pytest.raises(OSError) as err:
        dev.pwrite(0, b"b" * 4096, fua=True)
    assert err.value.errno == 1  # EPERM
    assert dev.pread(0, 4096) == b"a" * 4096  # reads keep working
    dev.close()


def test_file_processor_status_lands_in_its_slot(
    controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    bp0 = start_bp(blade="b0", slot=0)
    bp1 = start_bp(blade="b1", slot=1, own=())
    written = LocalClient(bp0.local).store_status(
        {"heartbeat": {"time": 1.0, "counter": 7}, "fileSystems": ["fs1"], "writeVerifier": "abcd", "clients": 2}
    )
    assert written["slot"] == 0 and written["seq"] >= 1
    LocalClient(bp1.local).store_status({"heartbeat": {"time": 2.0, "counter": 1}})
    # read the processor-info LU directly at the controller with the library
    dev = NBDBlockDevice.connect(f"nbd://{controller.nbd}/procinfo")
    store = PortionStore(dev, offset=0, size=1 << 20)
    assert store.header().group == "g1"
    s0, s1 = store.read_slot(0), store.read_slot(1)
    dev.close()
    assert s0 is not None and s0.blade == "b0" and s0.heartbeat_counter == 7
    assert s0.file_systems == ["fs1"] and s0.write_verifier == "abcd" and s0.clients == 2
    assert s1 is not None and s1.blade == "b1"
    assert LocalClient(bp0.local).stored_status()["heartbeat"]["counter"] == 7
    status = BladeClient(bp0.api, BLADE_TOKEN).status()
    assert status["fileSystems"] == ["fs1"] and status["clients"] == 2
    assert status["activeArea"] == "primary" and status["heartbeatAge"] is not None
    slots = BladeClient(bp0.api, BLADE_TOKEN).slots()["slots"]
    assert [s["blade"] for s in slots[:2]] == ["b0", "b1"]
    with pytest.raises(BladeAPIError) as err:
        LocalClient(bp0.local).store_status({"heartbeat": "not a mapping"})
    assert err.value.status == 400


def test_blade_api_requires_the_token(start_bp: Callable[..., BladeProc]) -> None:
    bp = start_bp()
    with pytest.raises(BladeAPIError) as err:
        BladeClient(bp.api, "wrong").status()
    assert err.value.status == 401
    with pytest.raises(BladeAPIError) as err:
        BladeClient(bp.api, BLADE_TOKEN).request("POST", "/v1/filesystems/fs1/takeover")
    assert err.value.status == 404  # not a file system this blade knows


def test_backup_copies_the_portion_into_its_backup_area(
    controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    """Claims 4/8: the blade asks, the controller's copy engine copies the portion."""
    bp = start_bp()
    LocalClient(bp.local).store_status({"heartbeat": {"time": 5.0, "counter": 42}, "fileSystems": ["fs1"]})
    api = BladeClient(bp.api, BLADE_TOKEN)
    result = api.request("POST", "/v1/backups", {"portions": [0], "trigger": "onDemand"})
    assert result["result"] == "Succeeded" and result["jobs"][0]["state"] == "succeeded"
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/backup") as dev:
        backup = PortionStore(dev, offset=0, size=1 << 20)
        assert backup.header().group == "g1"
        slot = backup.read_slot(0)
    assert slot is not None and slot.heartbeat_counter == 42
    with NBDBlockDevice.connect(f"nbd://{controller.nbd}/procinfo") as dev:
        history = PortionStore(dev, offset=0, size=1 << 20).read_group().backups
    assert history[-1]["result"] == "Succeeded" and history[-1]["portions"] == [0]
    with pytest.raises(BladeAPIError) as err:
        api.request("POST", "/v1/backups", {"portions": [5]})
    assert err.value.status == 400 and "portions" in err.value.message


def test_load_is_handed_to_the_file_processor(start_bp: Callable[..., BladeProc]) -> None:
    bp = start_bp()
    load = LocalClient(bp.local).load()
    for _ in range(100):  # the first poll happens at start; bounded wait for it
        if load["load"]:
            break
        load = LocalClient(bp.local).load()
    assert "iops" in load["load"] and load["error"] is None


def test_cache_records_are_posted_for_cached_writes(
    controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    """Claim 3: the block processor registers what it placed in the controller cache.

    The controller destages within ~0.2 s and then drops the record, so this test checks the
    block processor's side: acknowledged non-FUA writes produce coalesced records, posted by
    its background task (every 0.2 s; the loop below bounds the wait at 10 s).
    """
    bp = start_bp(extra=("--connections", "1"))
    dev = NBDBlockDevice.connect(bp.url("fs1"))
    for i in range(8):
        dev.pwrite(i * 4096, b"x" * 4096)
    dev.flush()
    dev.close()
    api = BladeClient(bp.api, BLADE_TOKEN)
    deadline = time.monotonic() + 10
    while api.status()["cacheRecords"]["posted"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    records = api.status()["cacheRecords"]
    assert records["posted"] >= 1 and records["rangesPosted"] >= 1
    # a FLUSH destages everything; the controller then drops records whose ranges are clean
    with NBDBlockDevice.connect(bp.url("fs1")) as again:
        again.flush()
    assert controller.client.cache_directory("fs1")["records"] == []


def _raw_connect(path: str, export: str) -> socket.socket:
    """Fixed-newstyle handshake by hand (so the test can then send malformed requests)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    assert len(_recv(s, 18)) == 18
    s.sendall(proto.client_flags() + proto.build_go(export))
    while True:
        _opt, rtype, length = proto.parse_option_reply_header(_recv(s, proto.OPTION_REPLY_HEADER_SIZE))
        _recv(s, length)
        if rtype == proto.REP_ACK:
            return s
        assert not rtype & 0x80000000, rtype


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            return buf
        buf += chunk
    return buf


def test_bad_nbd_input_gets_error_replies_and_the_proxy_keeps_serving(
    start_bp: Callable[..., BladeProc]
) -> None:
    bp = start_bp()
    s = _raw_connect(bp.nbd_socket, "fs1")
    # unknown command, bad flags, read past the end, oversized write: error replies, in sync
    s.sendall(proto.build_request(77, 1, 0, 0))
    s.sendall(proto.build_request(proto.Cmd.FLUSH, 2, 0, 0, flags=proto.CMD_FLAG_FUA))
    s.sendall(proto.build_request(proto.Cmd.READ, 3, 64 << 20, 4096))
    s.sendall(proto.build_request(proto.Cmd.WRITE, 4, 0, proto.MAX_PAYLOAD + 1) + bytes(proto.MAX_PAYLOAD + 1))
    s.sendall(proto.build_request(proto.Cmd.WRITE, 5, 64 << 20, 4096) + bytes(4096))
    replies = {}
    for _ in range(5):
        error, cookie = proto.parse_simple_reply(_recv(s, proto.REPLY_SIZE))
        replies[cookie] = error
    assert replies == {1: proto.EINVAL, 2: proto.EINVAL, 3: proto.EINVAL, 4: proto.EINVAL, 5: proto.ENOSPC}
    # the same connection still works
    s.sendall(proto.build_request(proto.Cmd.WRITE, 6, 0, 5) + b"hello")
    assert proto.parse_simple_reply(_recv(s, proto.REPLY_SIZE)) == (0, 6)
    s.sendall(proto.build_request(proto.Cmd.READ, 7, 0, 5))
    assert proto.parse_simple_reply(_recv(s, proto.REPLY_SIZE)) == (0, 7) and _recv(s, 5) == b"hello"
    # garbage where a request magic should be closes that connection only
    s.sendall(b"\xde\xad\xbe\xef" * 7)
    assert _recv(s, 1) == b""
    s.close()
    # requests sent just before DISC are still answered, then the socket closes
    s = _raw_connect(bp.nbd_socket, "fs1")
    s.sendall(proto.build_request(proto.Cmd.WRITE, 9, 4096, 3) + b"abc" + proto.build_request(proto.Cmd.DISC, 10))
    assert proto.parse_simple_reply(_recv(s, proto.REPLY_SIZE)) == (0, 9)
    assert _recv(s, 1) == b""
    s.close()
    # an unknown export is refused in the handshake; others keep working
    with pytest.raises(OSError):
        NBDBlockDevice.connect(bp.url("no-such-lu"))
    with NBDBlockDevice.connect(bp.url("fs1")) as dev:
        assert dev.pread(0, 5) == b"hello"


def test_read_ahead_serves_sequential_reads_and_never_stale_data(
    start_bp: Callable[..., BladeProc]
) -> None:
    bp = start_bp()
    dev = NBDBlockDevice.connect(bp.url("fs1"))
    blocks = [os.urandom(1 << 20) for _ in range(16)]
    for i, b in enumerate(blocks):
        dev.pwrite(i << 20, b)
    for i, b in enumerate(blocks):
        assert dev.pread(i << 20, 1 << 20) == b
    upstream = BladeClient(bp.api, BLADE_TOKEN).status()["upstream"]["fs1"]
    assert upstream["readahead"]["hits"] >= 10
    # read block 0..2 sequentially (prefetching 3 and 4), then overwrite 3: the next read of 3
    # must return the new bytes, not the prefetched ones
    for i in range(3):
        dev.pread(i << 20, 1 << 20)
    new = os.urandom(1 << 20)
    dev.pwrite(3 << 20, new)
    assert dev.pread(3 << 20, 1 << 20) == new
    assert dev.pread(4 << 20, 1 << 20) == blocks[4]
    dev.close()


def test_read_ahead_follows_interleaved_readers(start_bp: Callable[..., BladeProc]) -> None:
    """Two sequential readers of one LU, their READs interleaved (as several NFS clients'
    reads reach a file processor): each is recognised and prefetched for, and prefetches left
    by a reader that stopped do not stop later ones."""
    bp = start_bp()
    dev = NBDBlockDevice.connect(bp.url("fs1"))
    blocks = [os.urandom(1 << 20) for _ in range(32)]
    for i, b in enumerate(blocks):
        dev.pwrite(i << 20, b)
    client = BladeClient(bp.api, BLADE_TOKEN)

    def hits() -> int:
        return int(client.status()["upstream"]["fs1"]["readahead"]["hits"])

    before = hits()
    for i in range(8):
        assert dev.pread(i << 20, 1 << 20) == blocks[i]
        assert dev.pread((16 + i) << 20, 1 << 20) == blocks[16 + i]
    assert hits() - before >= 12  # all but the first two READs of each reader
    before = hits()
    for i in range(24, 32):  # a third reader, after the first two stopped with prefetches left
        assert dev.pread(i << 20, 1 << 20) == blocks[i]
    assert hits() - before >= 6
    dev.close()


def test_unflushed_writes_fenced_during_a_controller_outage_fail_the_next_flush(
    controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    """If another blade takes the LU while the controller restarts, the replay is refused:
    the file processor learns it at its next FLUSH (EPERM) instead of a silent loss."""
    bp = start_bp()
    dev = NBDBlockDevice.connect(bp.url("fs1"))
    dev.pwrite(0, b"u" * 4096)  # acknowledged, not flushed
    controller.kill()
    controller.start()
    controller.client.reserve("fs1", "other-blade")
    with pytest.raises(OSError) as err:
        dev.flush()
    assert err.value.errno == 1  # EPERM, owed from the refused replay
    dev.close()
