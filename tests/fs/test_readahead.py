"""``ReadAhead``: prefetched chunks are served once, never after a write, and chunks nobody
asked for do not stop later prefetches (several readers interleaved keep their hits)."""

from __future__ import annotations

import threading

from nasblade.fs.readahead import ReadAhead


class Dev:
    """A device in memory that counts reads."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(i % 251 for i in range(size))
        self.reads = 0
        self.lock = threading.Lock()

    def pread(self, offset: int, length: int) -> bytes:
        with self.lock:
            self.reads += 1
            return bytes(self.data[offset : offset + length])

    def close(self) -> None:
        return None


CHUNK = 4096


def read_stream(ra: ReadAhead, dev: Dev, start: int, n: int) -> int:
    """A sequential reader of ``n`` chunks from ``start`` that prefetches the next two; returns hits."""
    hits = 0
    for i in range(n):
        off = start + i * CHUNK
        got = ra.take(off, CHUNK)
        if got is not None:
            hits += 1
        else:
            got = dev.pread(off, CHUNK)
        assert got == bytes(dev.data[off : off + CHUNK])
        ra.schedule([(off + CHUNK, CHUNK), (off + 2 * CHUNK, CHUNK)])
    return hits


def test_a_finished_reader_does_not_stop_the_next_ones_prefetches() -> None:
    dev = Dev(1 << 20)
    ra = ReadAhead(dev, depth=2)  # type: ignore[arg-type]
    read_stream(ra, dev, 0, 10)  # leaves two chunks past its end prefetched, never taken
    hits = read_stream(ra, dev, 512 << 10, 10)
    assert hits == 9  # every chunk after the first
    ra.close()


def test_interleaved_readers_each_keep_their_prefetches() -> None:
    dev = Dev(1 << 20)
    ra = ReadAhead(dev, depth=8)  # type: ignore[arg-type]
    starts = [0, 256 << 10, 512 << 10, 768 << 10]
    hits = 0
    for i in range(10):
        for s in starts:
            off = s + i * CHUNK
            got = ra.take(off, CHUNK)
            hits += got is not None
            if got is None:
                got = dev.pread(off, CHUNK)
            assert got == bytes(dev.data[off : off + CHUNK])
            ra.schedule([(off + CHUNK, CHUNK), (off + 2 * CHUNK, CHUNK)])
    assert hits == 4 * 9
    ra.close()


def test_a_write_makes_prefetched_chunks_unusable() -> None:
    dev = Dev(1 << 20)
    ra = ReadAhead(dev)  # type: ignore[arg-type]
    ra.schedule([(0, CHUNK)])
    ra.invalidate()
    dev.data[0:CHUNK] = bytes(CHUNK)
    assert ra.take(0, CHUNK) is None
    ra.close()
