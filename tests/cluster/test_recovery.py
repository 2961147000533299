"""No forgotten file system: every failure of the blade serving a file system is recovered.

Each test reproduces a defect users hit (issue "takeover after any crash"):

- the file system served since start-up: the first SIGKILL of its file processor left it
  unserved for good (the block processor watched only file systems it had been handed by a
  takeover; the restarted file processor served nothing and the blade still looked healthy);
- the peer stopped taking over after the first processor-information backup: the backup area's
  point-in-time copies of the slots made a silent owner look alive again at every look;
- a long run of kill cycles: the peer must still take over in the last one.

The clock is the client's: an NFS FILE_SYNC WRITE on the file system's own address, retried on
a new connection, must succeed again well inside the failure timeout (the blade gives itself up
at once; nobody waits for a heartbeat to go missing).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

import pytest
from conftest import ArrayUp, base_config, dump_logs, expect, wait_for
from nasblade.nfs import types as t
from rawnfs import Client

pytestmark = pytest.mark.component


def other(blade: str) -> str:
    return "g1-1" if blade == "g1-0" else "g1-0"


def group(**overrides: Any) -> list[dict[str, Any]]:
    return [{**base_config()["clusterGroups"][0], **overrides}]


def served_again_after(arr: ArrayUp, c: Client, fh: bytes, *, kill: Any, limit: float) -> tuple[float, str]:
    """Run ``kill()``, then FILE_SYNC-write until the export answers; (seconds, new owner)."""
    owner, epoch = wait_for(arr.owner)
    data = os.urandom(4096)
    t0 = time.monotonic()
    kill(owner)
    c.deadline = limit
    try:
        committed, _verf = c.write(fh, 0, data, stable=t.StableHow.FILE_SYNC)
    except (OSError, RuntimeError) as exc:
        pytest.fail(f"the export did not answer within {limit}s of the kill: {exc}\n"
                    f"{arr.cluster(other(owner))}\n{dump_logs(arr)}")
    seconds = time.monotonic() - t0
    assert committed == t.StableHow.FILE_SYNC
    new = wait_for(lambda: (o := arr.owner()) is not None and o[1] > epoch and o, timeout=10)
    assert c.read(fh, 0, 4096) == data
    return seconds, str(new[0])


def test_first_kill_of_the_startup_owners_file_processor(make_array: Any) -> None:
    """fs1 is served by g1-0 since the array started (never moved). Its file processor is
    SIGKILLed; with a 10 s failure timeout the peer must still take over in about a second:
    the killed process ends the lifeline, the block processor gives the blade up at once."""
    arr: ArrayUp = make_array(clusterGroups=group(failureTimeout="10s"))
    owner, _ = wait_for(arr.owner)
    assert owner == "g1-0" and not arr.cluster("g1-0")["takeovers"]  # served from start-up, never moved
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"])
    fh = c.create(c.mount(arr.nfs["export"]), "startup")
    seconds, new_owner = served_again_after(arr, c, fh, kill=lambda b: arr.kill(b, "fp"), limit=8.0)
    assert new_owner == "g1-1", f"the peer must take over, not the restarted owner ({seconds:.2f}s)"
    assert seconds < 8.0
    # the record is appended when the block processor's takeover call returns, which can be
    # a moment after the new file processor answered the client
    wait_for(lambda: any(r["event"] == "takeover" and r["blade"] == "g1-1" for r in arr.cluster("g1-1")["takeovers"]),
             timeout=10)
    c.close()


def test_peer_takes_a_hung_owner_over_after_a_backup(make_array: Any) -> None:
    """A backup copies the portion, slots included, into the backup area; then the owner hangs
    (SIGSTOP of both processes). The peer must declare it dead and take over: the older slot
    copies in the backup area are not heartbeats."""
    arr: ArrayUp = make_array(clusterGroups=group(failureTimeout="1s"))
    owner, epoch = wait_for(arr.owner)
    time.sleep(0.5)  # heartbeats with counters well past zero in both slots
    done = arr.api(owner, "POST", "/v1/cluster/backups", {})
    assert any(r["result"] == "succeeded" for r in done["backups"]), done
    time.sleep(0.5)  # the live counters move on past the copies'
    for part in ("fp", "bp"):
        arr.kill(owner, part, signal.SIGSTOP)
    try:
        new = expect(arr, lambda: (o := arr.owner()) is not None and o[0] == other(owner) and o[1] > epoch and o,
                     timeout=8, what="the peer takes the hung owner's file system over")
    finally:
        for part in ("fp", "bp"):  # the chassis powered it off; SIGCONT in case it did not
            with contextlib.suppress(OSError, KeyError, ValueError):
                arr.kill(owner, part, signal.SIGCONT)
    assert new[0] == other(owner)


def test_peer_still_takes_over_after_many_cycles(make_array: Any) -> None:
    """Twelve cycles of: backup, SIGKILL the owner's file processor, the peer takes over, the
    restarted blade gets its file system back. Every cycle must be a takeover by the peer
    (the campaign that found the defect saw the peer stop taking over for good)."""
    arr: ArrayUp = make_array(clusterGroups=group(failureTimeout="2s"))
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"])
    fh = c.create(c.mount(arr.nfs["export"]), "cycles")
    times = []
    for i in range(12):
        owner, _ = wait_for(arr.owner)
        arr.api(owner, "POST", "/v1/cluster/backups", {})
        killed = arr.blades[owner].pids["fp"] = int(arr.part_status(owner, "fp")["pid"])
        seconds, new_owner = served_again_after(arr, c, fh, kill=lambda b: arr.kill(b, "fp"), limit=6.0)
        assert new_owner == other(owner), f"cycle {i}: {owner} took it back itself after {seconds:.2f}s"
        times.append(seconds)
        arr.restarted(owner, "fp", killed)
        expect(arr, lambda o=owner: (w := arr.owner()) is not None and w[0] == o and arr.served_by(o),
               timeout=90, what=f"cycle {i}: give-back")
        wait_for(lambda: all(m["alive"] for m in arr.cluster("g1-0")["members"]), timeout=30)
    c.close()
    print(f"takeover seconds per cycle: {[round(s, 2) for s in times]}")


def test_released_for_a_blade_that_dies_is_taken_back(make_array: Any) -> None:
    """A graceful move releases the file system for the taker before the taker reserves it; if
    the taker dies in between, the releaser must take it back (it used to stay released and
    unserved: nobody takes a released file system by itself)."""
    arr: ArrayUp = make_array(clusterGroups=group(failureTimeout="1s", powerFencing=False))
    owner, epoch = wait_for(arr.owner)
    taker = other(owner)
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"])
    fh = c.create(c.mount(arr.nfs["export"]), "handover")
    for part in ("fp", "bp"):  # the taker hangs right after asking for the release
        arr.kill(taker, part, signal.SIGSTOP)
    try:
        # released (its answer); whether it is still unserved a moment later races with the
        # failure timeout: the epoch below shows it was taken back with a new reservation
        released = arr.api(owner, "POST", "/v1/cluster/filesystems/fs1/release", {"for": taker})
        assert released["event"] == "release" and released["fileSystem"] == "fs1", released
        c.deadline = 10.0
        committed, _verf = c.write(fh, 0, b"back" * 1024, stable=t.StableHow.FILE_SYNC)
        assert committed == t.StableHow.FILE_SYNC
        # the member records the new epoch a moment after its file processor serves again (the
        # write above can land in between): the view is polled, not read once
        def taken_back() -> dict[str, Any] | None:
            view: dict[str, Any] = arr.cluster(owner)
            return view if view["serving"].get("fs1", 0) > epoch and not view["released"] else None
        wait_for(taken_back, timeout=10)
    finally:
        for part in ("fp", "bp"):
            with contextlib.suppress(OSError, KeyError, ValueError):
                arr.kill(taker, part, signal.SIGCONT)
    c.close()


def test_a_move_through_the_block_processor_api_is_not_undone_by_the_releaser(make_array: Any) -> None:
    """The operator moves a file system with two calls on the blades' management APIs: release
    on the owner, then takeover on the target. Between them the group record still names the
    owner, and its reservation is gone; the owner's member must not take the file system back
    by itself as its recorded owner. It did (CI, e2e step 4f): its takeover came a moment after
    the target's, with a newer epoch, and fenced the blade the Service pointed at (EIO to the
    clients). Nor may it take it back once the target has it. A release nobody follows up is
    served again after two failure timeouts (an operator that died half-way)."""
    arr: ArrayUp = make_array(clusterGroups=group(failureTimeout="2s", powerFencing=False))
    owner, epoch = wait_for(arr.owner)
    taker = other(owner)
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"])
    fh = c.create(c.mount(arr.nfs["export"]), "moved")
    arr.api(owner, "POST", "/v1/filesystems/fs1/release", {})
    # 20 ticks of the owner's member (100 ms heartbeats): each used to take it back at once
    time.sleep(2.0)
    assert arr.owner() is None, f"{owner} took the file system back after releasing it\n{arr.cluster(owner)}"
    assert "fs1" in arr.cluster(owner)["released"], arr.cluster(owner)
    arr.api(taker, "POST", "/v1/filesystems/fs1/takeover", {})
    moved = wait_for(arr.owner)
    assert moved[0] == taker and moved[1] > epoch, moved
    time.sleep(3.0)  # past the releaser's two failure timeouts: the taker's record stops it
    assert arr.owner() == moved, f"the releaser fenced the taker: {arr.owner()} after {moved}\n{dump_logs(arr)}"
    c.deadline = 10.0
    committed, _verf = c.write(fh, 0, b"moved!!!" * 512, stable=t.StableHow.FILE_SYNC)
    assert committed == t.StableHow.FILE_SYNC and arr.served_by(taker)
    # given back the same way; then released by the home blade and never followed up: it is
    # served again after two failure timeouts (an operator that died half-way)
    arr.api(taker, "POST", "/v1/filesystems/fs1/release", {})
    arr.api(owner, "POST", "/v1/filesystems/fs1/takeover", {})
    home = wait_for(lambda: (o := arr.owner()) is not None and o[0] == owner and o)
    arr.api(owner, "POST", "/v1/filesystems/fs1/release", {})
    time.sleep(2.0)
    assert arr.owner() is None, f"{owner} took the file system back at once\n{arr.cluster(owner)}"
    back = expect(arr, lambda: (o := arr.owner()) is not None and o[1] > home[1] and o,
                  timeout=20, what="a release on request that nobody followed up is served again")
    assert back[0] == owner, back
    c.deadline = 10.0
    assert c.read(fh, 0, 4096) == b"moved!!!" * 512
    c.close()


def test_restarted_block_processor_remounts_what_its_file_processor_still_serves(make_array: Any) -> None:
    """The owner's block processor is SIGKILLed and restarted (by the chassis here, by the
    kubelet in a pod) well before the failure timeout, while its file processor lives on and
    still serves the file system through the dead block processor's device. The restarted block
    processor takes the file system again (it is the recorded owner); it must have it mounted
    afresh through itself, not accept "already served" (every request on the old device fails:
    the export hung until the file processor gave up on its own)."""
    arr: ArrayUp = make_array(clusterGroups=group(failureTimeout="20s"))
    owner, _epoch = wait_for(arr.owner)
    c = Client(arr.nfs["host"], nfs_port=arr.nfs["nfsPort"], mount_port=arr.nfs["mountPort"])
    fh = c.create(c.mount(arr.nfs["export"]), "bp-restart")
    seconds, new_owner = served_again_after(arr, c, fh, kill=lambda b: arr.kill(b, "bp"), limit=8.0)
    assert new_owner == owner, "the peer cannot have taken over: the failure timeout is 20 s"
    print(f"served again by the restarted block processor after {seconds:.2f}s")
    c.close()
