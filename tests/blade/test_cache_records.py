"""Claim 3: cache information is visible in the control API while writes are held dirty and
gone after destage.

A real controller and a real block processor; a third-party client (python3-libnbd, run by
the system ``/usr/bin/python3``) writes through the block processor's Unix-socket NBD export
without FLUSH or FUA. The controller's background destager is held (``POST /v1/cache/hold``,
admin token) so the cached ranges stay dirty for as long as the test looks at them; then the
hold is released and the destager cleans the ranges, after which the controller drops the
block processor's dirty records.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import BladeProc, Controller

pytestmark = pytest.mark.component

#: (offset, length) of the unflushed writes; each below the controller's write-through size
WRITES = [(0, 65536), (1 << 20, 4096), (3 << 20, 8192)]

LIBNBD_WRITER = """
import sys
import nbd

h = nbd.NBD()
h.connect_uri(sys.argv[1])
for spec in sys.argv[2:]:
    off, n = map(int, spec.split(":"))
    h.pwrite(b"c" * n, off)  # no FUA
h.shutdown()  # NBD_CMD_DISC: libnbd sends no FLUSH
"""


def covered(ranges: list[tuple[int, int]], offset: int, length: int) -> bool:
    """Whether the union of ``ranges`` covers ``[offset, offset + length)``."""
    pos = offset
    for off, n in sorted(ranges):
        if off <= pos < off + n:
            pos = off + n
    return pos >= offset + length


def dirty_ranges(directory: dict[str, Any]) -> list[tuple[int, int]]:
    return [(r["offset"], r["length"]) for r in directory["ranges"] if r["state"] == "dirty"]


def record_ranges(directory: dict[str, Any], client: str) -> list[tuple[int, int]]:
    return [(o, n) for r in directory["records"] if r["client"] == client and r["state"] == "dirty"
            for o, n in r["ranges"]]


def wait_for(probe: Callable[[], bool], *, timeout: float = 10.0) -> bool:
    """Poll ``probe`` every 50 ms for at most ``timeout`` seconds (the controller destages and
    the block processor posts records every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_cache_records_visible_while_held_and_gone_after_destage(
    controller: Controller, start_bp: Callable[..., BladeProc]
) -> None:
    bp = start_bp(blade="b0")
    api = controller.client  # the blade fixtures use one token as user and admin token
    assert api.hold_destage(True)["hold"] is True
    subprocess.run(["/usr/bin/python3", "-c", LIBNBD_WRITER, bp.url("fs1"),
                    *(f"{o}:{n}" for o, n in WRITES)], check=True, timeout=60)

    def records_posted() -> bool:
        d = api.cache_directory("fs1")
        return all(covered(record_ranges(d, "b0"), o, n) for o, n in WRITES)

    assert wait_for(records_posted), api.cache_directory("fs1")
    time.sleep(0.6)  # three destager intervals: still dirty because the destager is held
    held = api.cache_directory("fs1")
    assert held["lu"] == "fs1"
    for off, n in WRITES:
        assert covered(dirty_ranges(held), off, n), held
        assert covered(record_ranges(held, "b0"), off, n), held
    assert all(r["lu"] == "fs1" and r["id"] and r["created"] for r in held["records"])
    assert api.cache()["dirtyBytes"] >= sum(n for _, n in WRITES)

    assert api.hold_destage(False)["hold"] is False

    def destaged() -> bool:
        d = api.cache_directory("fs1")
        return not dirty_ranges(d) and not record_ranges(d, "b0")

    assert wait_for(destaged), api.cache_directory("fs1")
    assert api.cache()["dirtyBytes"] == 0
    # the data went to the devices, not away: read it back from the controller directly
    out = subprocess.run(["nbdcopy", f"nbd://{controller.nbd}/fs1", "-"], check=True,
                         capture_output=True, timeout=60).stdout
    for off, n in WRITES:
        assert out[off:off + n] == b"c" * n
