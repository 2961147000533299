"""``CrashDevice``: a ``BlockDevice`` in memory that simulates power cuts.

Writes land in ``current`` at once and are remembered as *unflushed* until ``flush`` (or a
FUA write). ``crash_image(rng)`` returns what a disk could hold after a power cut now: the
flushed image plus a random subset of the unflushed writes, each possibly torn at a 512-byte
boundary, applied in random order. A FUA write makes itself durable and nothing else (as NBD's
FUA does): older unflushed writes stay unflushed, except where the FUA write covers them.
``arm(n)`` makes the n-th next device call capture such an
image and raise ``Crash``, to cut power in the middle of an operation or a commit.
"""

from __future__ import annotations

import random

from nasblade.blockdev import Buffer, check_range


class Crash(Exception):
    pass


class CrashDevice:
    def __init__(self, size: int, image: bytes | None = None) -> None:
        self.current = bytearray(image) if image is not None else bytearray(size)
        self.durable = bytearray(self.current)
        self.unflushed: list[tuple[int, bytes]] = []
        self.countdown: int | None = None
        self.rng = random.Random(0)
        self.image: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.current)

    def arm(self, calls: int, rng: random.Random) -> None:
        self.countdown = calls
        self.rng = rng

    def _tick(self) -> None:
        if self.countdown is None:
            return
        self.countdown -= 1
        if self.countdown <= 0:
            self.countdown = None
            self.image = self.crash_image(self.rng)
            raise Crash()

    def crash_image(self, rng: random.Random) -> bytes:
        img = bytearray(self.durable)
        writes = [w for w in self.unflushed if rng.random() < 0.5]
        rng.shuffle(writes)
        for off, data in writes:
            if len(data) > 512 and rng.random() < 0.3:
                data = data[: rng.randrange(1, len(data) // 512 + 1) * 512]
            img[off : off + len(data)] = data
        return bytes(img)

    def pread(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        self._tick()
        return bytes(self.current[offset : offset + length])

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        check_range(self.size, offset, len(data))
        self._tick()
        b = bytes(data)
        self.current[offset : offset + len(b)] = b
        if not fua:
            self.unflushed.append((offset, b))
            return
        self.durable[offset : offset + len(b)] = b
        end = offset + len(b)
        kept: list[tuple[int, bytes]] = []
        for off, old in self.unflushed:  # an older write cannot land over this durable one
            if off < offset:
                kept.append((off, old[: max(0, min(len(old), offset - off))]))
            if off + len(old) > end:
                cut = max(0, end - off)
                kept.append((off + cut, old[cut:]))
        self.unflushed = [(off, old) for off, old in kept if old]

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None:
        self.pwrite(offset, bytes(length), fua=fua)

    def trim(self, offset: int, length: int) -> None:
        check_range(self.size, offset, length)

    def flush(self) -> None:
        self._tick()
        for off, data in self.unflushed:
            self.durable[off : off + len(data)] = data
        self.unflushed.clear()

    def close(self) -> None:
        return None
