"""``nasblade up`` as a chassis: crashed blade processes come back, silent blades are powered off.

Standalone mode, real processes, real signals, libnfs as the client (``syncwriter``: FILE_SYNC
writes through the file system's own address, every acknowledged record checked afterwards):

- a blade's file processor or block processor is SIGKILLed under the writer: the supervisor
  starts it again (restart count in ``DATA/run/chassis.json``), the peer serves the file
  system meanwhile, give-back brings it home once the blade is back, and no acknowledged
  record is lost;
- (power fencing) the owner is SIGSTOPped under the writer: the peer asks the chassis to power
  it off before it binds the address, so the writer carries on; the stopped processes are gone,
  the blade comes back as a standby, and the old epoch is refused by the controller.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ArrayUp, expect
from nasblade.nbd.client import NBDBlockDevice
from syncwriter import ChildWriter, verify

pytestmark = pytest.mark.component


def url_of(arr: ArrayUp) -> str:
    ep = arr.nfs
    return f"nfs://{ep['host']}{ep['export']}?version=3&nfsport={ep['nfsPort']}&mountport={ep['mountPort']}"


def other(blade: str) -> str:
    return "g1-1" if blade == "g1-0" else "g1-0"


_WRITERS: list[ChildWriter] = []


@pytest.fixture(autouse=True)
def _no_writer_left() -> Iterator[None]:
    """A test that fails with its writer running leaves no libnfs client behind: one spinning
    against an array that is gone would take a core for the rest of the run."""
    yield
    while _WRITERS:
        _WRITERS.pop().kill()


def start_writer(arr: ArrayUp, name: str) -> ChildWriter:
    w = ChildWriter(url_of(arr), f"/{name}")
    _WRITERS.append(w)
    w.start()
    expect(arr, lambda: w.acked >= 20 or w.finished.is_set(), timeout=60, what="the writer gets going")
    assert not w.finished.is_set(), w.errors
    return w


def finish(arr: ArrayUp, w: ChildWriter, name: str) -> None:
    """Stop the writer; every acknowledged record must be there."""
    w.stop()
    expect(arr, lambda: w.finished.is_set(), timeout=120, what="the writer stops")
    missing = verify(url_of(arr), f"/{name}", w.acked)
    assert missing == [], f"acknowledged records lost: {missing[:10]} of {w.acked}"


@pytest.mark.parametrize("part", ["fp", "bp"])
def test_killed_blade_process_is_restarted_and_gives_back(make_array: Any, part: str) -> None:
    arr: ArrayUp = make_array()
    home, epoch = expect(arr, arr.owner, what="fs1 has an owner")
    peer = other(home)
    w = start_writer(arr, f"restart-{part}")
    old = arr.kill(home, part)
    st = arr.restarted(home, part, old)
    assert st["restarts"] >= 1 and st["lastExit"] == -signal.SIGKILL, st
    # the peer took over while the blade was down, powering the silent blade off first (unless
    # the restart came before the peer saw the blade silent: then the blade re-took fs1 itself)
    events = arr.cluster(peer)["takeovers"]
    took = [r for r in events if r["event"] == "takeover"]
    if took:
        assert took[-1]["previous"]["blade"] == home, events
        assert [r["blade"] for r in events if r["event"] == "power-off"] == [home], events
    # give-back: the restarted blade owns its home file system again, with a newer epoch
    floor = took[-1]["epoch"] if took else epoch
    back = expect(arr, lambda: (o := arr.owner()) is not None and o[0] == home and o[1] > floor and o,
                  timeout=90, what="give-back to the restarted blade")
    assert back[1] > epoch
    expect(arr, lambda: arr.served_by(home), what="the home blade serves fs1 again")
    acked = w.acked
    expect(arr, lambda: w.acked >= acked + 20, timeout=60, what="the writer carries on after give-back")
    finish(arr, w, f"restart-{part}")
    chassis = arr.chassis()["blades"]
    assert chassis[home]["powerCycles"] == (1 if took else 0), chassis
    # the peer was never touched
    assert chassis[peer]["powerCycles"] == 0, chassis
    assert chassis[peer]["blockProcessor"]["restarts"] == chassis[peer]["fileProcessor"]["restarts"] == 0, chassis


def test_stopped_owner_is_powered_off_and_its_epoch_refused(make_array: Any) -> None:
    """SIGSTOP both processes of the owner under the writer: the peer has the chassis power it
    off, binds the address and serves; the writer carries on with nothing lost; the stopped
    processes are gone (killed, reaped), the blade comes back as a standby, and a write with
    the old owner's epoch is refused by the controller."""
    arr: ArrayUp = make_array()
    owner, epoch = expect(arr, arr.owner, what="fs1 has an owner")
    peer = other(owner)
    w = start_writer(arr, "stopped")
    stopped = [arr.kill(owner, part, signal.SIGSTOP) for part in ("fp", "bp")]
    new = expect(arr, lambda: (o := arr.owner()) is not None and o[0] == peer and o, what="the peer takes over")
    assert new[1] > epoch
    acked = w.acked
    expect(arr, lambda: w.acked >= acked + 20, timeout=60, what="the writer carries on on the peer")
    # the stopped blade was powered off: its processes do not exist any more
    power = [r for r in arr.cluster(peer)["takeovers"] if r["event"] == "power-off"]
    assert power and power[0]["blade"] == owner and sorted(power[0]["killed"]) == sorted(stopped), power
    for pid in stopped:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # ... and even if it were not, its epoch is refused: the controller fences it
    def stale_write() -> None:
        with NBDBlockDevice.connect(arr.nbd_url(f"fs-fs1;holder={owner};epoch={epoch}")) as dev:
            dev.pwrite(0, b"\0" * 4096, fua=True)

    with pytest.raises(OSError) as refused:
        stale_write()
    assert refused.value.errno in (errno.EPERM, errno.EACCES, errno.ESTALE), refused.value
    # the blade comes back (restarted by the chassis), then takes its home file system back
    for part, pid in zip(("fp", "bp"), stopped, strict=True):
        arr.restarted(owner, part, pid)
    expect(arr, lambda: (o := arr.owner()) is not None and o[0] == owner and o[1] > new[1], timeout=90,
           what="give-back after the power cycle")
    acked = w.acked
    expect(arr, lambda: w.acked >= acked + 20, timeout=60, what="the writer carries on after give-back")
    finish(arr, w, "stopped")
