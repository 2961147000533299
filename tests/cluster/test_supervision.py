"""``nasblade up`` supervises everything it starts, and nothing it starts outlives it.

- SIGKILL of ``nasblade up`` itself: the controller and every blade process die with it (they
  used to run on as orphans, each in its own session, holding the devices and addresses).
- SIGKILL of the controller under a writer: ``nasblade up`` restarts it on the same addresses,
  the blades reconnect and replay what was in flight, the file system stays where it was, and
  every acknowledged byte is there (the controller used to stay down until the array was
  started again).
- A controller away for longer than the group's ``controllerWait``: the owner's I/O fails, its
  file processor gives the file system up, its blade fails, and the file system is taken over
  (new epoch) and served on the same address once the controller is back -- by the peer, or by
  the failed blade restarted as a standby if it is back first; nothing acknowledged is lost (the
  file system used to stay unserved: its file processor stopped answering but still listed it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import ArrayUp, dump_logs, expect, wait_for
from nasblade.nfs import types as t
from rawnfs import Client

pytestmark = pytest.mark.component


def running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def test_kill_9_of_nasblade_up_leaves_no_orphan(make_array: Any) -> None:
    arr: ArrayUp = make_array()
    pids = [int(arr.endpoints["controller"]["pid"])]  # as the ready line announced them
    for blade in arr.endpoints["blades"]:
        pids += [int(blade["blockProcessorPid"]), int(blade["fileProcessorPid"])]
    assert len(pids) == 5 and all(running(p) for p in pids)
    arr.proc.send_signal(signal.SIGKILL)
    arr.proc.wait(10)
    try:
        wait_for(lambda: not any(running(p) for p in pids), timeout=10)
    except TimeoutError:
        left = [p for p in pids if running(p)]
        for p in left:
            os.kill(p, signal.SIGKILL)
        pytest.fail(f"processes outlived nasblade up: {left}")


class SyncWriter:
    """A FILE_SYNC writer thread on one file: 16 KiB records at increasing offsets; ``acked``
    holds each record whose reply said FILE_SYNC, ``errors`` what ended the thread."""

    def __init__(self, c: Client, fh: bytes) -> None:
        self.c, self.fh = c, fh
        self.acked: dict[int, bytes] = {}
        self.errors: list[BaseException] = []
        self.stop_evt = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        off = 0
        try:
            while not self.stop_evt.is_set():
                data = os.urandom(16 << 10)
                committed, _ = self.c.write(self.fh, off, data, stable=t.StableHow.FILE_SYNC)
                assert committed == t.StableHow.FILE_SYNC
                self.acked[off] = data
                off += len(data)
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)

    def stop(self, arr: ArrayUp) -> None:
        self.stop_evt.set()
        self.thread.join(60)
        assert not self.errors, f"{self.errors[0]!r}\n{dump_logs(arr)}"

    def lost(self) -> list[int]:
        """Offsets of acknowledged records that do not read back as written."""
        content = self.c.read_all(self.fh, max(self.acked) + (16 << 10))
        return [off for off, data in self.acked.items() if content[off : off + len(data)] != data]


def test_killed_controller_is_restarted_and_nothing_acknowledged_is_lost(make_array: Any) -> None:
    arr: ArrayUp = make_array()
    owner, epoch = wait_for(arr.owner)
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"], deadline=60)
    w = SyncWriter(c, c.create(c.mount(arr.nfs["export"]), "through-controller-restart"))
    wait_for(lambda: len(w.acked) > 20, timeout=30)
    old_pid = int(arr.endpoints["controller"]["pid"])
    os.kill(old_pid, signal.SIGKILL)
    at_kill = len(w.acked)
    st = expect(arr, lambda: (s := arr.chassis()["controller"])["state"] == "running" and s["pid"] != old_pid and s,
                timeout=60, what="the controller restarted by nasblade up")
    assert st["restarts"] == 1 and st["lastExit"] == -signal.SIGKILL
    expect(arr, lambda: len(w.acked) > at_kill + 20 or w.errors, timeout=60, what="writes continue after the restart")
    w.stop(arr)
    # no takeover: the same owner with the same epoch, and the data it acknowledged is there
    assert arr.owner() == (owner, epoch)
    # the blades registered again in the restarted controller's (soft-state) client registry,
    # with the management API a peer needs for a graceful release (give-back)
    expect(arr, lambda: {c["name"]: (c.get("attrs") or {}).get("api") for c in arr.control.list_clients()}
           == {b: arr.blades[b].api for b in arr.blades}, timeout=15, what="blades registered again")
    lost = w.lost()
    assert not lost, f"acknowledged writes lost at {lost[:5]}"
    c.close()


def test_controller_away_longer_than_controller_wait_is_a_takeover(make_array: Any) -> None:
    arr: ArrayUp = make_array(clusterGroups=[{
        "name": "g1", "blades": 2, "heartbeatInterval": "100ms", "failureTimeout": "1s", "controllerWait": "3s",
        "backup": {"interval": "1h", "loadThreshold": 0.8, "maxAge": "2h"}}])
    owner, epoch = wait_for(arr.owner)
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"], deadline=120)
    w = SyncWriter(c, c.create(c.mount(arr.nfs["export"]), "through-controller-outage"))
    wait_for(lambda: len(w.acked) > 20, timeout=30)
    # the controller stays away: its supervisor (nasblade up) is stopped while it is killed
    os.kill(arr.proc.pid, signal.SIGSTOP)
    try:
        os.kill(int(arr.chassis()["controller"]["pid"]), signal.SIGKILL)
        time.sleep(8.0)  # beyond controllerWait (3 s): the owner's commit fails
    finally:
        os.kill(arr.proc.pid, signal.SIGCONT)
    at = len(w.acked)
    expect(arr, lambda: len(w.acked) > at + 20 or w.errors, timeout=90, what="writes continue after the outage")
    w.stop(arr)
    # taken over with a new epoch (fenced): by the peer, or by the owner's own blade restarted as
    # a standby when it came back first (a loaded machine) -- either way served again
    new_owner, new_epoch = wait_for(arr.owner)
    assert new_epoch > epoch, (owner, epoch, new_owner, new_epoch)
    lost = w.lost()
    assert not lost, f"acknowledged writes lost at {lost[:5]}"
    c.close()
