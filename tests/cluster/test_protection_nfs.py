"""Issue 19 acceptance: a device lost under a checksummed NFS writer, per protection level.

Standalone mode (``make_array`` of ``conftest.py``: a real ``nasblade up``, controller and two
blades as local processes), libnfs as the client (``syncwriter.SyncWriter``: the file opened
with ``O_SYNC``, so every record is a FILE_SYNC WRITE and counts as acknowledged only when the
call returns its full length). Each record's 4 KiB are a function of its index (its number,
repeated), so a record that reads back as anything else -- lost, torn, stale, misplaced -- is
caught byte for byte, which is what a checksum per record would catch and more. The writer
runs in a child process (``Writer``), so a writer stuck in libnfs fails the test instead of
freezing it.

For each case the array is made with that protection level, the writer gets going, then one
device (two for mirror-3 and parity-2, one after the other) is taken away under it: its file deleted (the controller notices
the path gone, ``DATA/devices/dev<i>``) or I/O errors injected over the whole device through
the controller's admin fault API (``POST /v1/faults/devices``). Then:

- the writer saw no error and never waited more than ``MAX_GAP`` seconds for an
  acknowledgement; the file system stayed with its owner (no takeover, same epoch);
- ``GET /v1/array`` reports the array degraded, exactly the removed devices failed and no block
  lost;
- every acknowledged record reads back intact through NFS, and again straight off the
  controller: the file system's LU read over NBD in 1 MiB requests (large reads go to the
  devices, not the cache, so this reads the degraded array itself) holds every acknowledged
  record in some 4 KiB block of its data region;
- ``nasblade fsck`` finds the file system clean.

The figures (records acknowledged, longest wait for an acknowledgement) are printed (``-s``).
"""

from __future__ import annotations

import functools
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import NASBLADE, ArrayUp, expect
from nasblade.nbd.client import NBDBlockDevice
from syncwriter import RECORD, ChildWriter, record, verify

pytestmark = pytest.mark.component

#: the longest the writer may wait for one acknowledgement ("service never interrupted")
MAX_GAP = 10.0
#: records the writer acknowledges before the first device goes, and after each loss (for at
#: least ``SECONDS_AFTER`` seconds too)
BEFORE = 100
AFTER = 150
SECONDS_AFTER = 5.0
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Case:
    level: str
    devices: int
    #: (device index, "delete" | "faults") in the order they are taken away
    removals: tuple[tuple[int, str], ...]

    @property
    def id(self) -> str:
        return f"{self.level}-" + "+".join(f"{how}{dev}" for dev, how in self.removals)


CASES = [
    Case("mirror-2", 2, ((1, "delete"),)),
    Case("mirror-2", 2, ((0, "faults"),)),
    Case("mirror-3", 3, ((0, "delete"), (2, "faults"))),
    Case("parity-1", 3, ((2, "faults"),)),
    Case("parity-1", 3, ((0, "delete"),)),
    Case("parity-2", 4, ((1, "delete"), (3, "delete"))),
    Case("parity-2", 4, ((0, "faults"), (2, "delete"))),
]


class Writer(ChildWriter):
    """``syncwriter.ChildWriter``, started at once; ``stop`` waits for the child's report."""

    def __init__(self, url: str, path: str) -> None:
        super().__init__(url, path)
        self.start()

    def stop(self, timeout: float = 90.0) -> None:  # type: ignore[override]
        self.halt.set()
        if self._recv.poll(timeout):
            self._errors = self._recv.recv()
        else:
            self._errors = [f"the writer did not report within {timeout}s (stuck in a call)"]
        self.kill()


def url_of(arr: ArrayUp) -> str:
    ep = arr.nfs
    return f"nfs://{ep['host']}{ep['export']}?version=3&nfsport={ep['nfsPort']}&mountport={ep['mountPort']}"


def device_of(arr: ArrayUp, index: int) -> dict[str, Any]:
    dev: dict[str, Any] = arr.admin.array()["devices"][index]
    return dev


def take_away(arr: ArrayUp, index: int, how: str) -> None:
    """Remove device ``index``: delete its file, or make every read and write of it fail."""
    dev = device_of(arr, index)
    if how == "delete":
        path = Path(dev["path"])
        assert path.parent == arr.data_dir / "devices", dev
        path.unlink()
    else:
        fault = arr.admin.request("POST", "/v1/faults/devices",
                                  {"device": index, "offset": 0, "length": int(dev["size"]),
                                   "ops": ["read", "write"]})
        assert fault["device"] == index, fault


def failed(arr: ArrayUp, index: int) -> dict[str, Any] | None:
    dev = device_of(arr, index)
    return dev if dev["state"] == "failed" else None


def acked_more(arr: ArrayUp, w: Writer, n: int, what: str, *, seconds: float = 0.0) -> None:
    """Wait until the writer has acknowledged ``n`` more records and ``seconds`` have passed."""
    base, until = w.acked, time.monotonic() + seconds
    expect(arr, lambda: (w.acked >= base + n and time.monotonic() >= until) or not w.running(),
           timeout=120 + seconds, what=what)
    assert w.running(), "the writer process ended"


def records_on_lu(arr: ArrayUp, count: int) -> set[int]:
    """Indexes ``< count`` of the records found intact in 4 KiB blocks of the ``fs-fs1`` LU,
    read over NBD in 1 MiB requests (which the controller serves from the devices)."""
    found: set[int] = set()
    with NBDBlockDevice.connect(arr.nbd_url("fs-fs1")) as dev:
        for off in range(0, dev.size, READ_CHUNK):
            chunk = dev.pread(off, min(READ_CHUNK, dev.size - off))
            for b in range(0, len(chunk) - RECORD + 1, RECORD):
                head = chunk[b : b + 13]
                if head[12:13] != b"\n" or not head[:12].isdigit():
                    continue
                seq = int(head[:12])
                if seq < count and chunk[b : b + RECORD] == record(seq):
                    found.add(seq)
    return found


def fsck(arr: ArrayUp, owner: str) -> subprocess.CompletedProcess[str]:
    """Release fs1, fence everyone off with a checker reservation, run ``nasblade fsck``."""
    arr.api(owner, "POST", "/v1/cluster/filesystems/fs1/release")
    res = arr.control.reserve("fs-fs1", "fsck")
    url = arr.nbd_url(f"fs-fs1;holder=fsck;epoch={res['epoch']}")
    return subprocess.run([*NASBLADE, "fsck", url], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_device_lost_under_nfs_writer(make_array: Any, case: Case) -> None:
    arr: ArrayUp = make_array(array={"devices": {"count": case.devices, "size": "256M"}, "cacheSize": "32M",
                                     "faultInjection": True, "protection": case.level})
    before = arr.admin.array()
    assert before["protection"] == case.level and before["state"] == "ok", before
    home = expect(arr, arr.owner, what="fs1 has an owner")
    assert home is not None
    owner, epoch = home

    name = f"/protect-{case.id}"
    w = Writer(url_of(arr), name)
    started = time.monotonic()
    try:
        acked_more(arr, w, BEFORE, "the writer gets going")
        for index, how in case.removals:
            take_away(arr, index, how)
            t0 = time.monotonic()
            dev = expect(arr, functools.partial(failed, arr, index), timeout=30,
                         what=f"device {index} failed after {how}")
            assert dev is not None
            print(f"\n{case.id}: device {index} ({how}) failed after {time.monotonic() - t0:.1f}s "
                  f"at record {w.acked}: reason {dev['reason']!r}")
            acked_more(arr, w, AFTER, f"the writer carries on without device {index}", seconds=SECONDS_AFTER)
        w.stop()
    finally:
        w.kill()
    elapsed = time.monotonic() - started
    print(f"{case.id}: {w.acked} records acknowledged ({w.acked * RECORD >> 10} KiB) in {elapsed:.1f}s, "
          f"longest gap {w.max_gap:.2f}s, failed calls {w.failed}")

    # service never interrupted: no error, no long wait, no takeover
    assert w.errors == [] and w.failed == 0, w.errors
    assert w.max_gap < MAX_GAP, f"the writer waited {w.max_gap:.1f}s for an acknowledgement"
    assert arr.owner() == (owner, epoch), "fs1 changed hands while the device was lost"

    # the controller reports the loss: degraded, exactly the removed devices failed, nothing lost
    state = arr.admin.array()
    gone = {index for index, _ in case.removals}
    assert state["state"] == "degraded", state
    assert {d["index"] for d in state["devices"] if d["state"] == "failed"} == gone, state["devices"]
    assert all(d["state"] == "ok" for d in state["devices"] if d["index"] not in gone), state["devices"]
    assert state["lostBlocks"] == 0, state

    # every acknowledged record intact, through NFS and straight off the degraded array
    missing = verify(url_of(arr), name, w.acked)
    assert missing == [], f"acknowledged records lost or wrong through NFS: {missing[:10]} of {w.acked}"
    on_lu = records_on_lu(arr, w.acked)
    absent = sorted(set(range(w.acked)) - on_lu)
    assert absent == [], f"acknowledged records not intact on the LU: {absent[:10]} ({len(absent)} of {w.acked})"

    out = fsck(arr, owner)
    assert out.returncode == 0, out.stdout + out.stderr
    after = arr.admin.array()
    assert after["lostBlocks"] == 0 and after["state"] == "degraded", after
