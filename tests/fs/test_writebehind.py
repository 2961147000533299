"""``nasblade.fs.writebehind``: runs of small contiguous writes reach the device as one write,
in submission order, and a failed write is raised by the next ``drain``.

A gated in-memory device holds the worker inside its first write, so everything submitted
meanwhile is queued and the merge is deterministic.
"""

from __future__ import annotations

import os
import threading

import pytest
from nasblade.blockdev import Buffer
from nasblade.fs.writebehind import WriteBehind


class GatedDevice:
    """Records every write; the first write waits for ``gate``."""

    def __init__(self, size: int = 8 << 20, *, fail_at: int | None = None) -> None:
        self.data = bytearray(size)
        self.writes: list[tuple[int, int, bool]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.fail_at = fail_at

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        if not self.writes:
            self.entered.set()
            assert self.gate.wait(10)
        self.writes.append((offset, len(data), fua))
        if self.fail_at is not None and offset <= self.fail_at < offset + len(data):
            raise OSError(5, "injected I/O error")
        self.data[offset:offset + len(data)] = data

    def close(self) -> None:
        pass


def test_contiguous_small_writes_become_one_device_write() -> None:
    dev = GatedDevice()
    wb = WriteBehind(dev)  # type: ignore[arg-type]
    first = os.urandom(4096)
    wb.submit(0, first)
    assert dev.entered.wait(10)
    chunks = [os.urandom(4096) for _ in range(300)]  # 1.17 MiB: more than one 1 MiB run
    for i, c in enumerate(chunks):
        wb.submit(4096 * (i + 1), c, fua=(i == 10))
    assert not wb.idle
    dev.gate.set()
    wb.drain()
    assert wb.idle
    assert bytes(dev.data[:4096 * 301]) == first + b"".join(chunks)
    # the gated first write, then the 300 queued ones in runs of at most 1 MiB
    assert [(o, n) for o, n, _ in dev.writes] == [(0, 4096), (4096, 256 * 4096), (257 * 4096, 44 * 4096)]
    assert [f for _, _, f in dev.writes] == [False, True, False]  # the run holding the FUA write has FUA
    assert wb.device_writes == 3
    wb.close()


def test_order_is_kept_and_a_break_starts_a_new_run() -> None:
    dev = GatedDevice()
    wb = WriteBehind(dev)  # type: ignore[arg-type]
    wb.submit(1 << 20, b"a" * 10)
    assert dev.entered.wait(10)
    wb.submit(0, b"A" * 100)
    wb.submit(100, b"B" * 100)
    wb.submit(50, b"C" * 100)    # overlaps both: must land after them
    wb.submit(150, b"D" * 10)    # continues the C write
    dev.gate.set()
    wb.drain()
    assert bytes(dev.data[:200]) == b"A" * 50 + b"C" * 100 + b"D" * 10 + b"B" * 40
    assert [(o, n) for o, n, _ in dev.writes] == [(1 << 20, 10), (0, 200), (50, 110)]
    wb.close()


def test_a_failed_write_is_raised_by_the_next_drain_only_once() -> None:
    dev = GatedDevice(fail_at=8192)
    dev.gate.set()
    wb = WriteBehind(dev)  # type: ignore[arg-type]
    wb.submit(8192, b"x" * 4096)
    # the failure is remembered even after the write finished: never idle until drained
    threading.Event().wait(0.2)
    assert not wb.idle
    with pytest.raises(OSError, match="injected"):
        wb.drain()
    assert wb.idle
    wb.submit(0, b"y" * 10)
    wb.drain()
    assert bytes(dev.data[:10]) == b"y" * 10
    wb.close()


def test_submit_waits_when_max_bytes_are_in_flight() -> None:
    dev = GatedDevice()
    wb = WriteBehind(dev, max_bytes=16 << 10)  # type: ignore[arg-type]
    wb.submit(0, bytes(4096))
    assert dev.entered.wait(10)
    for i in range(1, 4):
        wb.submit(4096 * i, bytes(4096))  # 16 KiB pending: the limit
    blocked = threading.Thread(target=wb.submit, args=(4096 * 4, bytes(4096)))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # waits for room
    dev.gate.set()
    blocked.join(10)
    assert not blocked.is_alive()
    wb.drain()
    wb.close()
