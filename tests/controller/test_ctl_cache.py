"""Unit tests of the cache bookkeeping (``nasblade.controller.cache``) over a real array file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from nasblade.controller import cache as cache_mod
from nasblade.controller.array import Array
from nasblade.controller.cache import BYPASS, LINE, SECTOR, Cache


@pytest.fixture
def array(tmp_path: Path) -> Array:
    a = Array.open([(str(tmp_path / "d0"), 64 << 20), (str(tmp_path / "d1"), 64 << 20)])
    a.create_lu("lu", 16 << 20)
    return a


def test_masks() -> None:
    assert cache_mod.sector_mask(0, 1) == 1
    assert cache_mod.sector_mask(4095, 4097) == 0b11
    assert cache_mod.full_mask(1, 8192) == 0b10
    assert cache_mod.full_mask(1, 4095) == 0
    assert list(cache_mod.runs(0b1110011)) == [(0, 2), (4, 3)]


def test_small_writes_stay_dirty_until_destaged(array: Array) -> None:
    c = Cache(array, 1 << 20)
    lu = array.state.lus["lu"]
    c.write(lu, 8192, memoryview(b"a" * SECTOR), through=False)
    assert c.dirty_bytes == SECTOR
    assert c.directory("lu") == [{"offset": 8192, "length": SECTOR, "state": "dirty"}]
    raw = bytearray(SECTOR)
    array.read_into(lu, 8192, memoryview(raw))
    assert raw == bytes(SECTOR)  # not on the device yet
    assert c.read(lu, 8192, SECTOR) == b"a" * SECTOR and c.stats.hits == 1
    touched = c.destage()
    assert touched and c.dirty_bytes == 0 and not c.dirty
    array.read_into(lu, 8192, memoryview(raw))
    assert raw == b"a" * SECTOR
    assert c.directory("lu") == [{"offset": 8192, "length": SECTOR, "state": "clean"}]


def test_unaligned_write_fills_partial_sectors(array: Array) -> None:
    lu = array.state.lus["lu"]
    array.write_from(lu, 0, memoryview(b"x" * 3 * SECTOR))
    c = Cache(array, 1 << 20)
    c.write(lu, 100, memoryview(b"y" * 5000), through=False)
    expect = b"x" * 100 + b"y" * 5000 + b"x" * (3 * SECTOR - 5100)
    assert c.read(lu, 0, 3 * SECTOR) == expect
    c.destage()
    raw = bytearray(3 * SECTOR)
    array.read_into(lu, 0, memoryview(raw))
    assert raw == expect


def test_large_read_overlays_dirty_and_large_write_cleans(array: Array) -> None:
    lu = array.state.lus["lu"]
    c = Cache(array, 1 << 20)
    c.write(lu, 5 * SECTOR, memoryview(b"d" * SECTOR), through=False)
    big = c.read(lu, 0, BYPASS)  # large: from the device, dirty sectors overlaid
    assert big[5 * SECTOR : 6 * SECTOR] == b"d" * SECTOR
    data = os.urandom(BYPASS)
    c.write(lu, 0, memoryview(data), through=False)  # >= BYPASS: write-through
    assert c.dirty_bytes == 0
    assert c.read(lu, 4 * SECTOR, SECTOR * 2) == data[4 * SECTOR : 6 * SECTOR]


def test_eviction_destages_dirty_victims(array: Array) -> None:
    lu = array.state.lus["lu"]
    c = Cache(array, 4 * LINE)
    for i in range(10):
        c.write(lu, i * LINE, memoryview(bytes([i + 1]) * SECTOR), through=False)
    assert len(c.lines) <= 4
    for i in range(10):
        assert c.read(lu, i * LINE, SECTOR) == bytes([i + 1]) * SECTOR


def test_zero_and_drop(array: Array) -> None:
    lu = array.state.lus["lu"]
    c = Cache(array, 1 << 20)
    c.write(lu, 0, memoryview(b"z" * 2 * SECTOR), through=False)
    c.zero(lu, SECTOR, SECTOR)
    assert c.read(lu, 0, 2 * SECTOR) == b"z" * SECTOR + bytes(SECTOR)
    c.drop_lu("lu")
    assert c.dirty_bytes == 0 and not c.lines


def test_destage_coalesces_adjacent_lines_in_order(array: Array) -> None:
    lu = array.state.lus["lu"]
    c = Cache(array, 4 << 20)
    pattern = os.urandom(300 * SECTOR)
    for i in reversed(range(300)):  # written backwards, destaged in offset order
        c.write(lu, (1 << 20) + i * SECTOR, memoryview(pattern[i * SECTOR : (i + 1) * SECTOR]), through=False)
    c.write(lu, 10, memoryview(b"p"), through=False)  # an unaligned write elsewhere (read-filled)
    before = c.destage_generation
    c.destage()
    assert c.dirty_bytes == 0 and not c.dirty
    assert c.destage_generation - before <= 4  # 300 lines in a few writes, not 300
    raw = bytearray(300 * SECTOR)
    array.read_into(lu, 1 << 20, memoryview(raw))
    assert raw == pattern
    one = bytearray(1)
    array.read_into(lu, 10, memoryview(one))
    assert one == b"p"


def test_dirty_ranges_and_zero_leave_holes_that_destage_does_not_refill(array: Array) -> None:
    c = Cache(array, 1 << 20)
    lu = array.state.lus["lu"]
    c.write(lu, 8192, memoryview(b"a" * 3 * SECTOR), through=False)
    c.write(lu, 40000, memoryview(b"b" * 10), through=False)
    assert c.dirty_ranges("lu", 0, 1 << 20) == [(8192, 8192 + 3 * SECTOR), (36864, 40960)]
    assert c.dirty_ranges("lu", 9000, 4000) == [(9000, 13000)]  # clipped to the question
    assert array.holes(lu, 0, 1 << 20) == [(0, 1 << 20)]  # nothing on the devices yet
    c.zero(lu, 8192, 2 * SECTOR + 100)  # two sectors whole, the third only partly
    assert c.dirty_ranges("lu", 0, 1 << 20) == [(8192 + 2 * SECTOR, 8192 + 3 * SECTOR), (36864, 40960)]
    c.destage()
    assert array.holes(lu, 0, 1 << 20) == [(0, 8192 + 2 * SECTOR), (8192 + 3 * SECTOR, 36864),
                                           (40960, 1 << 20)]
    assert c.read(lu, 8192, 3 * SECTOR) == bytes(2 * SECTOR + 100) + b"a" * (SECTOR - 100)


def test_a_write_through_drops_covered_lines_and_updates_partly_covered_ones(array: Array) -> None:
    lu = array.state.lus["lu"]
    c = Cache(array, 4 << 20)
    for i in range(8):  # lines 0..7 cached, 2 and 6 dirty
        c.read(lu, i * LINE, SECTOR)
    c.write(lu, 2 * LINE, memoryview(b"a" * SECTOR), through=False)
    c.write(lu, 6 * LINE, memoryview(b"b" * SECTOR), through=False)
    data = os.urandom(4 * LINE)
    start = LINE + 100  # line 1 partly, 2..4 wholly, line 5 partly
    c.write(lu, start, memoryview(data[: 4 * LINE]), through=True)
    assert ("lu", 2) not in c.lines and ("lu", 3) not in c.lines and ("lu", 4) not in c.lines
    assert ("lu", 1) in c.lines and ("lu", 5) in c.lines  # partly covered: kept, up to date
    assert c.dirty_bytes == SECTOR and ("lu", 6) in c.dirty  # the dirty line it covered is gone
    assert len(c._spare) == 3
    assert c.read(lu, 0, 8 * LINE) == (bytes(start) + data + bytes(LINE - 100)
                                         + b"b" * SECTOR + bytes(LINE))
    assert not c._spare  # the dropped lines' buffers were reused for the lines read back


def test_a_read_during_an_off_loop_write_through_leaves_no_stale_line(array: Array) -> None:
    """The engine writes large ranges from a thread: a read on the loop thread meanwhile may
    fill a line from the half-written device. The end of the write-through drops such lines;
    a small write that landed meanwhile (dirty, a later write of the client's) is kept."""
    lu = array.state.lus["lu"]
    c = Cache(array, 4 << 20)
    old = os.urandom(4 * LINE)
    array.write_from(lu, 0, memoryview(old))
    new = os.urandom(4 * LINE)
    token = c.begin_write_through(lu, 0, memoryview(new))
    assert c.read(lu, 0, SECTOR) == old[:SECTOR]  # fills line 0 from the device: old data
    c.write(lu, 3 * LINE, memoryview(b"w" * SECTOR), through=False)  # arrives meanwhile
    array.write_from(lu, 0, memoryview(new))  # the device write "in the thread"
    c.end_write_through(lu, 0, len(new), token)
    assert ("lu", 0) not in c.lines and ("lu", 3) in c.dirty
    assert c.read(lu, 0, 4 * LINE) == new[: 3 * LINE] + b"w" * SECTOR
    # nothing filled meanwhile: the end costs nothing and drops nothing
    c.read(lu, 2 * LINE, SECTOR)
    token = c.begin_write_through(lu, 0, memoryview(new[:LINE]))
    c.end_write_through(lu, 0, LINE, token)
    assert ("lu", 2) in c.lines


def test_large_reads_of_cached_data_run_on_the_loop_and_see_dirty_data(array: Array) -> None:
    """``Engine.read_large``: data not in the page cache is read in the I/O pool; once cached,
    on the loop thread (``pageCacheReads``); both overlay what the write-back cache holds."""
    import asyncio

    from nasblade.controller.engine import Engine

    lu = array.state.lus["lu"]
    data = os.urandom(2 * BYPASS)
    array.write_from(lu, 0, memoryview(data))
    array.sync()
    for m in array.devices:
        os.posix_fadvise(m.fd, 0, 0, os.POSIX_FADV_DONTNEED)
    engine = Engine(array, cache_size=1 << 20)

    async def reads() -> None:
        assert await engine.read_large(lu, 0, len(data)) == data
        assert engine.inline_reads == 0  # from the devices, in the pool
        await engine.write(lu, SECTOR, memoryview(b"d" * SECTOR), fua=False)  # dirty in the cache
        got = await engine.read_large(lu, 0, len(data))
        assert engine.inline_reads == 1
        assert got == data[:SECTOR] + b"d" * SECTOR + data[2 * SECTOR :]

    try:
        asyncio.run(reads())
    finally:
        engine.io_pool.shutdown()


def test_a_flush_waits_for_a_write_through_that_superseded_acknowledged_data(
        array: Array, monkeypatch: pytest.MonkeyPatch) -> None:
    """An acknowledged small write sits dirty in the cache; a large write over it is in flight
    (its device write held in the pool); a FLUSH then must not return until the range holds one
    of the two on the devices -- the write-through dropped the dirty line, so without waiting
    the FLUSH would return with the range holding neither."""
    import asyncio
    import threading

    from nasblade.controller.engine import Engine

    lu = array.state.lus["lu"]
    engine = Engine(array, cache_size=1 << 20)
    gate = threading.Event()
    real = array.write_from

    def held(lu_: object, offset: int, data: memoryview) -> set[int]:
        if len(data) >= BYPASS:
            assert gate.wait(10)
        return real(lu_, offset, data)  # type: ignore[arg-type]

    monkeypatch.setattr(array, "write_from", held)
    w0 = b"a" * SECTOR
    w1 = os.urandom(BYPASS)

    def on_device() -> bytes:
        raw = bytearray(SECTOR)
        array.read_into(lu, 0, memoryview(raw))
        return bytes(raw)

    async def run() -> None:
        await engine.write(lu, 0, memoryview(w0), fua=False)  # acknowledged, only in the cache
        big = asyncio.ensure_future(engine.write_large(lu, 0, memoryview(w1), fua=False))
        await asyncio.sleep(0.05)  # the device write of ``big`` is held in the pool
        flush = asyncio.ensure_future(engine.flush())
        await asyncio.sleep(0.2)
        assert not flush.done()  # waits for the write-through
        gate.set()
        await asyncio.gather(big, flush)
        assert on_device() in (w0, w1[:SECTOR])

    try:
        asyncio.run(run())
    finally:
        gate.set()
        engine.io_pool.shutdown()
