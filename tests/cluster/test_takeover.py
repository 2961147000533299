"""Takeover under load, split brain, give-back and check-takeover, in standalone mode.

A client writes continuously through the file system's own address (FILE_SYNC writes, and
UNSTABLE writes followed by COMMIT, resending when the verifier changed, as RFC 1813 asks);
the owning blade's file processor or block processor is killed with SIGKILL at a random
moment; the surviving blade must take the file system over (fencing the old owner with a new
reservation epoch), and the client must carry on on the same address with the same file
handle, with every acknowledged stable or committed byte there and a new write verifier.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import libnfs
import pytest
from conftest import NASBLADE, ArrayUp, as_json, base_config, dump_logs, expect, wait_for
from nasblade.nfs import types as t
from nasblade.rpc import message, record
from rawnfs import AUTH, Client

pytestmark = pytest.mark.component

CHUNK = 16 << 10


class Writer(threading.Thread):
    """Writes CHUNK-sized random blocks at increasing offsets, alternating FILE_SYNC and
    UNSTABLE (+COMMIT every 4); ``durable`` holds what the server acknowledged as stable."""

    def __init__(self, client: Client, fh: bytes) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.fh = fh
        self.stop_evt = threading.Event()
        self.durable: dict[int, bytes] = {}
        self.uncommitted: dict[int, tuple[bytes, bytes]] = {}
        self.verifiers: list[bytes] = []
        self.ops = 0
        self.error: BaseException | None = None

    def _verf(self, v: bytes) -> None:
        if not self.verifiers or self.verifiers[-1] != v:
            self.verifiers.append(v)

    def commit_all(self) -> None:
        while self.uncommitted:
            v = self.client.commit(self.fh)
            self._verf(v)
            stale = {o: d for o, (d, wv) in self.uncommitted.items() if wv != v}
            if not stale:
                self.durable.update({o: d for o, (d, _) in self.uncommitted.items()})
                self.uncommitted.clear()
                return
            for o, d in stale.items():  # the server restarted (new verifier): send them again
                _c, nv = self.client.write(self.fh, o, d, stable=t.StableHow.UNSTABLE)
                self.uncommitted[o] = (d, nv)

    def run(self) -> None:
        off, i = 0, 0
        try:
            while not self.stop_evt.is_set():
                data = os.urandom(CHUNK)
                if i % 2 == 0:
                    committed, v = self.client.write(self.fh, off, data, stable=t.StableHow.FILE_SYNC)
                    assert committed == t.StableHow.FILE_SYNC
                    self.durable[off] = data
                else:
                    _c, v = self.client.write(self.fh, off, data, stable=t.StableHow.UNSTABLE)
                    self.uncommitted[off] = (data, v)
                    if len(self.uncommitted) >= 4:
                        self.commit_all()
                self._verf(v)
                self.ops += 1
                off += CHUNK
                i += 1
            self.commit_all()
        except BaseException as exc:  # reported by the test
            self.error = exc


def nfs_client(arr: ArrayUp, *, deadline: float = 30.0) -> Client:
    ep = arr.nfs
    return Client(ep["host"], nfs_port=ep["nfsPort"], mount_port=ep["mountPort"], deadline=deadline)


def other(blade: str) -> str:
    return "g1-1" if blade == "g1-0" else "g1-0"


def all_alive(arr: ArrayUp, blade: str) -> bool:
    return all(m["alive"] for m in arr.cluster(blade)["members"])


def takeover_once(arr: ArrayUp, c: Client, root: bytes, *, part: str, i: int, pause: float) -> None:
    """One round: write under load, SIGKILL the owner's ``part``, check; ``nasblade up``
    restarts it and gives the file system back."""
    owner, epoch = wait_for(arr.owner)
    survivor = other(owner)
    fh = c.create(root, f"load-{part}-{i}")
    w = Writer(c, fh)
    w.start()
    time.sleep(pause)
    ops_at_kill = w.ops
    killed = arr.kill(owner, part)
    try:
        try:
            # the survivor takes over; or, when nasblade up restarted the process before the
            # survivor saw the owner silent, the owner takes its file system again itself
            new_owner = wait_for(lambda: (o := arr.owner()) is not None and o[1] > epoch and o, timeout=30)
        except TimeoutError as exc:
            pytest.fail(f"round {i}: no takeover: {exc}\n{as_json(arr.cluster(survivor))}\n{dump_logs(arr)}")
        wait_for(lambda: w.ops > ops_at_kill + 20 or w.error, timeout=30)
    finally:
        w.stop_evt.set()
        w.join(60)
    assert w.error is None, f"{w.error!r}\n{dump_logs(arr)}"
    # same address, same file handle: everything acknowledged as stable is there
    content = c.read_all(fh, max(w.durable) + CHUNK)
    for off, data in w.durable.items():
        assert content[off : off + CHUNK] == data, f"round {i}: acknowledged data at {off} lost"
    assert len(w.verifiers) >= 2, "the write verifier must change with the new owner"
    st = arr.cluster(new_owner[0])
    assert any(r["event"] == "takeover" and r["epoch"] == new_owner[1] for r in st["takeovers"])
    arr.restarted(owner, part, killed)
    expect(arr, lambda: (o := arr.owner()) is not None and o[0] == owner and o[1] >= new_owner[1],
           timeout=90, what=f"round {i}: give-back after the restart")
    wait_for(lambda: all_alive(arr, survivor), timeout=20)


@pytest.mark.parametrize("part", ["fp", "bp"])
def test_takeover_under_load_kill_9(make_array: Any, part: str) -> None:
    """Three rounds with random kill points; the file system moves back and forth."""
    arr: ArrayUp = make_array()
    rng = random.Random()
    c = nfs_client(arr)
    root = c.mount(arr.nfs["export"])
    for i in range(3):
        takeover_once(arr, c, root, part=part, i=i, pause=rng.uniform(0.2, 0.8))
    assert c.reconnects > 0
    c.close()


def test_takeover_with_libnfs_client(make_array: Any, tmp_path: Path) -> None:
    """libnfs (a client written by others) writes and fsyncs a file, the owner's file
    processor dies, the survivor takes over, the restarted blade takes the file system back,
    and libnfs reads the file back through the same URL."""
    arr: ArrayUp = make_array()
    ep = arr.nfs
    url = f"nfs://{ep['host']}{ep['export']}?version=3&nfsport={ep['nfsPort']}&mountport={ep['mountPort']}"
    content = os.urandom(2 << 20)
    nfs = libnfs.NFS(url)
    f = nfs.open("/libnfs.bin", "wb")
    f.write(bytearray(content))
    f.flush()  # COMMIT
    f.close()
    owner, _epoch = wait_for(arr.owner)
    killed = arr.kill(owner, "fp")
    moved = wait_for(lambda: (o := arr.owner()) is not None and o[0] == other(owner) and o, timeout=20)
    # nasblade up restarts the file processor and gives fs1 back: read once it is home again
    # (libnfs's synchronous calls have no timeout, so no call is made while the address moves)
    arr.restarted(owner, "fp", killed)
    expect(arr, lambda: (o := arr.owner()) is not None and o[0] == owner and o[1] > moved[1] and arr.served_by(owner),
           timeout=90, what="give-back to the restarted blade")
    assert libnfs.NFS(url).stat("/libnfs.bin")["size"] == len(content)
    # the command-line client of libnfs reads the same data on the same address
    out = subprocess.run(["nfs-cat", url.replace("?", "/libnfs.bin?")], capture_output=True, check=True, timeout=60)
    assert out.stdout == content


def _send_write(sock: socket.socket, fh: bytes, offset: int, data: bytes) -> None:
    args = t.WRITE_ARGS.encode(t.WriteArgs(fh, offset, len(data), t.StableHow.FILE_SYNC, memoryview(data)))
    rec = message.encode_call(xid=0xBEEF, prog=t.NFS_PROGRAM, vers=3, proc=7, cred=AUTH, args=args)
    for buf in record.frame(rec):
        sock.sendall(buf)


def test_split_brain_zombie_is_fenced_then_giveback(make_array: Any, tmp_path: Path) -> None:
    """SIGSTOP the owner (alive but silent); the peer takes over with a higher epoch; SIGCONT
    the zombie with a FILE_SYNC write queued on its socket: the write is refused (no reply,
    nothing on disk), the zombie drops the file system, the file system checks clean; then
    the old owner takes its file system back on request (give-back), with no data lost.

    Power fencing is off for this group: the epoch is what keeps the zombie's writes out (the
    chassis would kill it instead, ``test_chassis.py``)."""
    arr: ArrayUp = make_array(clusterGroups=[{**base_config()["clusterGroups"][0], "powerFencing": False}])
    c = nfs_client(arr)
    root = c.mount(arr.nfs["export"])
    fh = c.create(root, "split")
    good = os.urandom(64 << 10)
    c.write(fh, 0, good, stable=t.StableHow.FILE_SYNC)
    owner, epoch = wait_for(arr.owner)
    peer = other(owner)

    # check-takeover dry run on both blades while everything is healthy
    cli = subprocess.run([*NASBLADE, "cluster", "--api", arr.blades[peer].api, "--token-file",
                          str(arr.data_dir / "secrets" / "blade-token"), "check-takeover"],
                         capture_output=True, text=True, timeout=60, check=True)
    report = json.loads(cli.stdout)["fileSystems"][0]
    assert report["possible"] and report["mode"] == "graceful" and report["owner"] == owner
    mine = arr.api(owner, "GET", "/v1/cluster/check-takeover")["fileSystems"][0]
    assert not mine["possible"] and any("already owns" in r for r in mine["reasons"])

    zombie = socket.create_connection((arr.nfs["host"], arr.nfs["nfsPort"]), timeout=30)
    for part in ("fp", "bp"):
        arr.kill(owner, part, signal.SIGSTOP)
    try:
        _send_write(zombie, fh, 0, b"Z" * len(good))  # queued on the stopped owner's socket
        new = expect(arr, lambda: (o := arr.owner()) is not None and o[0] == peer and o, what="peer takes over")
        assert new[1] > epoch
    finally:
        for part in ("bp", "fp"):
            arr.kill(owner, part, signal.SIGCONT)
    # the zombie processes the queued write: the controller refuses it, so no reply comes back
    zombie.settimeout(15)
    try:
        reply = zombie.recv(1 << 16)
    except (ConnectionError, TimeoutError):
        reply = b""
    zombie.close()
    assert reply == b"", "the fenced owner acknowledged a write"
    # the zombie let go of the address; the new owner serves it; the good data is intact
    expect(arr, lambda: arr.served_by(peer), what="the new owner serves the address")
    assert c.read(fh, 0, len(good)) == good
    fenced = arr.cluster(owner)
    assert "fs1" not in fenced["serving"]
    assert any(r["event"] == "fenced" for r in fenced["takeovers"]), fenced["takeovers"]

    # give-back: the old owner asks for its home file system; the peer releases it first
    wait_for(lambda: all_alive(arr, owner), timeout=20)
    expect(arr, lambda: arr.cluster(owner)["ownership"]["fs1"]["blade"] == peer and not arr.cluster(owner)["tickError"],
           what="the resumed blade sees the new owner")
    back = arr.api(owner, "POST", "/v1/cluster/giveback")["takeovers"]
    assert [r["fileSystem"] for r in back] == ["fs1"] and back[0]["ownerReleased"]
    assert arr.owner() == (owner, back[0]["epoch"]) and back[0]["epoch"] > new[1]
    more = os.urandom(32 << 10)
    c.write(fh, len(good), more, stable=t.StableHow.FILE_SYNC)
    assert c.read_all(fh, len(good) + len(more)) == good + more

    # the file system is consistent: release it, fence everyone off and run the checker
    arr.api(owner, "POST", "/v1/cluster/filesystems/fs1/release")
    res = arr.control.reserve("fs-fs1", "fsck")
    url = arr.nbd_url(f"fs-fs1;holder=fsck;epoch={res['epoch']}")
    fsck = subprocess.run([*NASBLADE, "fsck", url], capture_output=True, text=True,
                          timeout=120, check=False)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    c.close()
