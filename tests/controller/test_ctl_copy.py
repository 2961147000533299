"""Copy engine: point-in-time copies under concurrent writes, progress, cancel, restart."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time

import pytest
from ctlharness import Controller
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component

MiB = 1 << 20


def test_copy_is_point_in_time_while_source_is_written(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("src", 40 * MiB)
    cl.create_lu("dst", 48 * MiB)
    image = os.urandom(32 * MiB)
    with NBDBlockDevice.connect(controller.url("src")) as dev:
        dev.pwrite(4 * MiB, image)  # source range: src[4M, 36M)
    stop = threading.Event()
    writes = 0

    def writer() -> None:
        nonlocal writes
        rnd = random.Random(1)
        with NBDBlockDevice.connect(controller.url("src")) as w:
            while not stop.is_set():
                off = rnd.randrange(0, 40 * MiB - 65536, 512)
                w.pwrite(off, os.urandom(rnd.choice((512, 4096, 65536, 300000 if off < 30 * MiB else 4096))))
                writes += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        while writes < 20:
            time.sleep(0.01)
        # the reference image is the source as it is right before the job starts
        stop.set()
        t.join()
        with NBDBlockDevice.connect(controller.url("src")) as dev:
            image = dev.pread(4 * MiB, 32 * MiB)
        stop.clear()
        job = cl.create_copy_job("src", "dst", 32 * MiB, source_offset=4 * MiB, target_offset=8 * MiB,
                                 rate_limit=16 * MiB)
        t = threading.Thread(target=writer)  # writes from now on must not reach the copy
        t.start()
        seen = []
        while True:
            cur = cl.get_copy_job(job["id"])
            seen.append(cur["bytesDone"])
            if cur["state"] != "running":
                break
            time.sleep(0.1)
    finally:
        stop.set()
        t.join()
    assert cur["state"] == "succeeded", cur
    assert cur["result"] == "succeeded" and cur["bytesDone"] == cur["bytesTotal"] == 32 * MiB
    assert cur["finished"] and cur["started"]
    # Progress only grows. (How many distinct values a poller sees depends on the writer: its
    # writes copy chunks on write at once, so a fast writer can finish the job between polls;
    # progress reporting itself is tested with no writer in test_rate_limited_copy_reports_progress.)
    assert seen == sorted(seen), seen
    assert writes > 40
    with NBDBlockDevice.connect(controller.url("dst")) as dev:
        copied = dev.pread(8 * MiB, 32 * MiB)
        assert dev.pread(0, 8 * MiB) == bytes(8 * MiB)
    assert hashlib.sha256(copied).hexdigest() == hashlib.sha256(image).hexdigest()


def _fill(controller: Controller, lu: str, size: int) -> None:
    """Data in every chunk of ``lu``: a copy reads and writes each (never-written chunks are
    zeroed on the target instead, test_never_written_chunks_are_zeroed_not_copied)."""
    with NBDBlockDevice.connect(controller.url(lu)) as dev:
        dev.pwrite(0, os.urandom(size))
        dev.flush()


def test_rate_limited_copy_reports_progress(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("p-src", 8 * MiB)
    cl.create_lu("p-dst", 8 * MiB)
    _fill(controller, "p-src", 8 * MiB)
    job = cl.create_copy_job("p-src", "p-dst", 8 * MiB, rate_limit=4 * MiB)  # about 2 s
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cur = cl.get_copy_job(job["id"])
        seen.append(cur["bytesDone"])
        if cur["state"] != "running":
            break
        time.sleep(0.05)
    assert cur["state"] == "succeeded" and cur["bytesDone"] == cur["bytesTotal"] == 8 * MiB, cur
    assert seen == sorted(seen), seen
    assert len(set(seen)) > 2, f"progress was reported: {seen}"


def test_cancel_and_validation(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("a", 16 * MiB)
    cl.create_lu("b", 16 * MiB)
    _fill(controller, "a", 16 * MiB)
    job = cl.create_copy_job("a", "b", 16 * MiB, rate_limit=MiB)
    done = cl.cancel_copy_job(job["id"])
    assert done["id"] == job["id"]
    final = cl.wait_copy_job(job["id"], timeout=10)
    assert final["state"] == "cancelled" and final["result"] == "cancelled"
    assert final["bytesDone"] < 16 * MiB
    from nasblade.controller.apiclient import ControlAPIError

    for kwargs in ({"length": 17 * MiB}, {"length": MiB, "target_offset": 16 * MiB}, {"length": 0}):
        with pytest.raises(ControlAPIError) as exc:
            cl.create_copy_job("a", "b", **kwargs)  # type: ignore[arg-type]
        assert exc.value.status == 400
    with pytest.raises(ControlAPIError) as exc:
        cl.create_copy_job("a", "nope", MiB)
    assert exc.value.status == 404
    assert [j["id"] for j in cl.list_copy_jobs()] == [job["id"]]


def test_running_job_is_failed_cleanly_by_a_restart(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("a", 16 * MiB)
    cl.create_lu("b", 16 * MiB)
    _fill(controller, "a", 16 * MiB)
    job = cl.create_copy_job("a", "b", 16 * MiB, rate_limit=MiB)
    time.sleep(0.3)
    controller.kill()
    controller.restart()
    after = controller.client.get_copy_job(job["id"])
    assert after["state"] == "failed" and after["result"] == "failed"
    assert after["error"] == "interrupted by controller restart"


def test_copy_fails_on_injected_fault(controller: Controller) -> None:
    cl = controller.client
    cl.create_lu("a", 4 * MiB)
    cl.create_lu("b", 4 * MiB)
    controller.admin.add_fault("a", 2 * MiB, 4096, ops=["read"])
    job = cl.wait_copy_job(cl.create_copy_job("a", "b", 4 * MiB)["id"], timeout=20)
    assert job["state"] == "failed" and "injected" in job["error"]
    controller.admin.clear_faults()
    job = cl.wait_copy_job(cl.create_copy_job("a", "b", 4 * MiB)["id"], timeout=20)
    assert job["state"] == "succeeded"


def test_never_written_chunks_are_zeroed_not_copied(controller: Controller) -> None:
    """A sparse source: its holes become holes of the target (zeroed, not read and written),
    its data is copied, and what the target held in those ranges before is gone."""
    cl = controller.client
    cl.create_lu("sparse", 32 * MiB)
    cl.create_lu("copy", 32 * MiB)
    first, last = os.urandom(MiB + 4096), os.urandom(4096)
    with NBDBlockDevice.connect(controller.url("sparse")) as dev:
        dev.pwrite(3 * MiB, first)  # chunks 3 and 4 hold data
        dev.pwrite(30 * MiB, last)  # chunk 30
        dev.flush()
    with NBDBlockDevice.connect(controller.url("copy")) as dev:
        dev.pwrite(10 * MiB, os.urandom(MiB))  # old data where the source has a hole
        dev.flush()
    job = cl.create_copy_job("sparse", "copy", 32 * MiB)
    while (cur := cl.get_copy_job(job["id"]))["state"] == "running":
        time.sleep(0.05)
    assert cur["state"] == "succeeded", cur
    assert cur["bytesDone"] == 32 * MiB and cur["bytesHoles"] == 29 * MiB, cur
    with NBDBlockDevice.connect(controller.url("copy")) as dev:
        image = dev.pread(0, 32 * MiB)
    want = bytearray(32 * MiB)
    want[3 * MiB:3 * MiB + len(first)] = first
    want[30 * MiB:30 * MiB + len(last)] = last
    assert hashlib.sha256(image).hexdigest() == hashlib.sha256(want).hexdigest()
