"""Virtual devices: the copies of a mirror set (or one plain device) behind one address space.

``Array`` allocates LU extents on virtual devices (``VDev``) and hands every device-level
read, write, zero and fsync to them. A ``VDev`` keeps, per member device (``Member``), the
block checksums of the device's checksum area in memory (``redundancy`` describes the
format) and its write-intent bitmap, and does the I/O:

- **reads** come from one readable copy (rotating by stripe unit) and are verified block by
  block; a checksum mismatch or an I/O error is retried on the other copies under the region
  lock, the bad copy is rewritten with the good data (self-healing read) and both are
  counted. A block no copy holds correctly is ``EIO`` (counted as lost).
- **writes** go to every writable copy (healthy or being rebuilt) after the write-intent bit
  of their region is on the devices (its bitmap page written with ``RWF_DSYNC``, which flushes
  that page, not the data written before it); unaligned edges are read,
  verified and merged so every block's checksum covers the whole block.
- **sync** writes the changed checksum pages and fsyncs: an acknowledged FLUSH/FUA has data
  and checksums of every copy on the devices. ``clean_bitmap`` clears bits of regions with
  no write since the last sync (after another sync), ``resync`` reconciles the regions whose
  bits are set when the array opens (a crash mid-write).
- **failures**: a write error, or ``READ_ERROR_LIMIT`` read errors, fail the member (unless it
  is the last readable copy): it is no longer read or written, the array keeps serving
  from the other copies (``on_failure`` persists the state). ``rebuild_step`` copies a
  replacement device's data from the survivors; ``scrub`` verifies and repairs.

Version-1 arrays (no checksum area) have members without ``geometry``: plain reads and
writes, no verification. Region locks (hashed, re-entrant) order writes, repairs, rebuild and
scrub on the same region; plain verified reads take no lock unless they find a problem.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import sys
import threading
from array import array as Array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from nasblade.controller import redundancy as rd
from nasblade.controller.redundancy import BLOCK, CSUM_SIZE

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
_FALLOC_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV)
_ZEROES = bytes(1 << 20)

READ_ERROR_LIMIT = 16
"""Read errors after which a member is failed (a write error fails it at once)."""
_LOCKS = 64
HOLE_STEP = 256 << 20
"""At most this much of a span that is holes on every copy a rebuild reads is skipped by one
rebuild step: one punch, one lock, one hop to the I/O pool and one checkpoint (``maintenance``
checkpoints every 64 MiB rebuilt) instead of one per ``maintenance.STEP``. Its checks are one
``SEEK_DATA`` per device and one comparison of its checksums with zeroes; client writes to the
span wait for them."""
_PAGE_BLOCKS = BLOCK // CSUM_SIZE  # checksums per checksum page
_mode = threading.local()


class NotCached(Exception):
    """A read in ``nowait`` mode cannot be done without waiting: its data is not in the page
    cache, or it needs a repair (which takes a region lock). Not an ``OSError``: nothing here
    takes it for a device error. The caller does the read again in its I/O thread pool."""


@contextlib.contextmanager
def nowait() -> Iterator[None]:
    """Reads in this thread come only from the page cache (``RWF_NOWAIT``), or raise
    ``NotCached``: the controller's event loop reads cached data itself instead of handing
    every large read to a worker thread and back (two thread wake-ups per request)."""
    _mode.nowait = True
    try:
        yield
    finally:
        _mode.nowait = False


def _nowait_on() -> bool:
    return getattr(_mode, "nowait", False)


def fallocate_or_write(fd: int, mode: int, offset: int, length: int) -> None:
    res = _libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length))
    if res == 0:
        return
    err = ctypes.get_errno()
    if err not in _FALLOC_UNSUPPORTED:
        raise OSError(err, os.strerror(err))
    pos, end = offset, offset + length
    while pos < end:
        n = min(len(_ZEROES), end - pos)
        os.pwrite(fd, memoryview(_ZEROES)[:n], pos)
        pos += n


def device_holes(fd: int, start: int, end: int) -> list[tuple[int, int]]:
    """Holes of ``[start, end)`` of a device by ``SEEK_DATA`` / ``SEEK_HOLE``."""
    holes: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data from pos to the end of the file
                data = end
            else:  # cannot tell: everything is data
                return holes
        if data > pos:
            holes.append((pos, min(data, end)))
        if data >= end:
            break
        try:
            pos = os.lseek(fd, data, os.SEEK_HOLE)
        except OSError:
            break
    return holes


@dataclass
class Member:
    """One device of the array (a copy in a mirror set)."""

    index: int
    path: str
    fd: int
    size: int
    geometry: rd.Geometry | None = None
    can_punch: bool = False
    state: str = "ok"  # ok | rebuilding | failed
    rebuilt: int = 0  # while rebuilding: data below this offset is current
    #: the part of ``rebuilt`` whose checksums are on the device (what the superblock records)
    rebuilt_durable: int = 0
    reason: str = ""
    kept: str = ""  # why it should have failed but holds the last copy (logged once per reason)
    read_errors: int = 0
    write_errors: int = 0
    csum_errors: int = 0
    repaired: int = 0
    ino: tuple[int, int] = (0, 0)
    csum: Array | None = None  # type: ignore[type-arg]
    bitmap: bytearray = field(default_factory=bytearray)
    dirty_pages: set[int] = field(default_factory=set)
    faults: list[tuple[int, int, frozenset[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    dsync_flag: bool = True  # pwritev takes RWF_DSYNC here (cleared the first time it is refused)

    def readable(self, offset: int, length: int) -> bool:
        return self.fd >= 0 and (self.state == "ok" or (
            self.state == "rebuilding" and offset + length <= self.rebuilt))

    @property
    def writable(self) -> bool:
        return self.fd >= 0 and self.state in ("ok", "rebuilding")

    def _fault(self, offset: int, length: int, op: str) -> None:
        for start, end, ops in self.faults:
            if op in ops and offset < end and start < offset + length:
                raise OSError(errno.EIO, f"injected {op} fault on device {self.index}")

    def pread(self, view: memoryview, offset: int) -> None:
        self._fault(offset, len(view), "read")
        if _nowait_on():
            try:
                got = os.preadv(self.fd, [view], offset, os.RWF_NOWAIT)
            except BlockingIOError:
                raise NotCached from None
            except OSError as exc:
                if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system without it
                    raise NotCached from None
                raise
            if got != len(view):  # the rest is not cached (or past the end: the pool zero-fills)
                raise NotCached
            return
        got = os.preadv(self.fd, [view], offset)
        if got != len(view):
            view[got:] = bytes(len(view) - got)

    def read_verified(self, view: memoryview, offset: int) -> Array | None:  # type: ignore[type-arg]
        """Read ``view`` at ``offset`` and check it against the stored checksums: the checksums
        read, or ``None`` on an I/O error or a mismatch (the caller repairs from redundancy)."""
        assert self.csum is not None
        try:
            self.pread(view, offset)
        except OSError:
            return None
        first = offset // BLOCK
        sums = Array("Q", rd.checksums(view))
        return sums if self.csum[first : first + len(sums)] == sums else None

    def pwrite(self, data: memoryview, offset: int, *, dsync: bool = False) -> None:
        """Write ``data`` at ``offset``; with ``dsync`` the range is on the device when this
        returns (``RWF_DSYNC``: that range's pages and the device cache, not the whole file's
        dirty pages as ``fdatasync`` would; ``fdatasync`` where the flag is refused)."""
        self._fault(offset, len(data), "write")
        flags = os.RWF_DSYNC if dsync and self.dsync_flag else 0
        while data:
            try:
                n = os.pwritev(self.fd, [data], offset, flags)
            except OSError as exc:
                if not flags or exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                self.dsync_flag, flags = False, 0
                continue
            data = data[n:]
            offset += n
        if dsync and not flags:
            os.fdatasync(self.fd)

    def set_sums(self, first: int, sums: Sequence[int]) -> None:
        assert self.csum is not None
        self.csum[first : first + len(sums)] = sums if isinstance(sums, Array) else Array("Q", sums)
        with self.lock:
            self.dirty_pages.update(range(first // _PAGE_BLOCKS, (first + len(sums) - 1) // _PAGE_BLOCKS + 1))

    def zero_sums(self, first: int, count: int) -> None:
        self.set_sums(first, Array("Q", bytes(count * CSUM_SIZE)))

    def load(self) -> None:
        """Read the checksum area and the bitmap of a version-2 device."""
        g = self.geometry
        if g is None:
            return
        raw = bytearray(g.blocks * CSUM_SIZE)
        self.pread(memoryview(raw), g.csum_offset)
        self.csum = Array("Q")
        self.csum.frombytes(bytes(raw))
        if sys.byteorder != "little":
            self.csum.byteswap()
        self.bitmap = bytearray(g.regions)
        self.pread(memoryview(self.bitmap), g.bitmap_offset)

    def write_pages(self) -> None:
        """Write the changed checksum pages (no fsync)."""
        g = self.geometry
        if g is None or self.csum is None:
            return
        with self.lock:
            pages, self.dirty_pages = self.dirty_pages, set()
        try:
            raw = memoryview(self.csum).cast("B")
            for p in sorted(pages):
                start = p * BLOCK
                self.pwrite(raw[start : start + BLOCK], g.csum_offset + start)
        except BaseException:
            with self.lock:
                self.dirty_pages |= pages
            raise

    def write_bitmap(self, regions: Sequence[int], *, durable: bool = False) -> None:
        """Write the bitmap pages holding ``regions``' bits; with ``durable`` they are on the
        device when this returns (only those pages: the data written since is not flushed)."""
        g = self.geometry
        if g is None:
            return
        for page in sorted({r // BLOCK for r in regions}):
            start = page * BLOCK
            self.pwrite(memoryview(self.bitmap)[start : start + BLOCK], g.bitmap_offset + start, dsync=durable)

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "path": self.path, "size": self.size, "state": self.state,
                "reason": self.reason, "rebuilt": self.rebuilt if self.state == "rebuilding" else None,
                "readErrors": self.read_errors, "writeErrors": self.write_errors,
                "checksumErrors": self.csum_errors, "repaired": self.repaired}


@dataclass
class Stats:
    repaired_blocks: int = 0
    lost_blocks: int = 0
    resynced_regions: int = 0
    scrubbed_bytes: int = 0
    scrub_errors: int = 0
    #: parity units found disagreeing with verified data by scrub (parity sets only)
    parity_mismatches: int = 0
    #: stripes whose journalled units a crash resync put back (parity sets only)
    journal_replayed: int = 0


class VDev:
    """A mirror set (or a single device): ``size`` bytes of verified, redundant storage."""

    #: reads may run in ``nowait`` mode (``read`` raises ``NotCached`` instead of waiting)
    nowait_reads = True

    def __init__(self, index: int, members: list[Member], *, unit: int,
                 on_failure: Callable[[Member], None]) -> None:
        self.index = index
        self.members = members
        self.unit = unit
        self.on_failure = on_failure
        sizes = [m.geometry.vsize if m.geometry else m.size - m.size % unit for m in members]
        self.size = min(sizes)
        #: end of the device offsets a rebuild copies (the same as ``size`` for a mirror set)
        self.device_end = self.size
        self.checked = all(m.geometry is not None for m in members)
        self.stats = Stats()
        self._locks = [threading.RLock() for _ in range(_LOCKS)]
        self._bitmap_lock = threading.Lock()
        self._gen: dict[int, int] = {}
        self._inflight: dict[int, int] = {}

    # --- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, offset: int, length: int) -> Iterator[None]:
        ids = sorted({r % _LOCKS for r in rd.regions_of(offset, length)})
        with contextlib.ExitStack() as stack:
            for i in ids:
                stack.enter_context(self._locks[i])
            yield

    def readers(self, offset: int, length: int) -> list[Member]:
        """Readable members, rotated by stripe unit to spread reads over the copies."""
        ms = [m for m in self.members if m.readable(offset, length)]
        if len(ms) > 1:
            k = (offset // self.unit) % len(ms)
            ms = ms[k:] + ms[:k]
        return ms

    def servable(self) -> bool:
        """Enough devices to serve every block (a mirror set: one ok copy)."""
        return any(m.state == "ok" and m.fd >= 0 for m in self.members)

    @property
    def writers(self) -> list[Member]:
        return [m for m in self.members if m.writable]

    def _error(self, m: Member, op: str, exc: OSError) -> None:
        if op == "write":
            m.write_errors += 1
        else:
            m.read_errors += 1
        log.warning("device %d (%s): %s error: %s", m.index, m.path, op, exc)
        if op == "write" or m.read_errors >= READ_ERROR_LIMIT:
            self.fail(m, f"{op} errors: {exc}")

    def fail(self, m: Member, reason: str) -> None:
        """Stop using ``m`` unless it is the last readable copy."""
        if m.state == "failed":
            return
        others = [o for o in self.members if o is not m and o.state == "ok" and o.fd >= 0]
        if not others:
            if m.kept != reason:  # once, not at every look (a gone file is looked for every second)
                log.error("device %d (%s): %s, but it is the last copy: kept", m.index, m.path, reason)
                m.kept = reason
            return
        m.state, m.reason = "failed", reason
        log.error("device %d (%s) failed: %s", m.index, m.path, reason)
        self.on_failure(m)

    # --- bitmap -------------------------------------------------------------------------------

    def _mark(self, offset: int, length: int) -> list[int]:
        regions = list(rd.regions_of(offset, length))
        if not self.checked:
            return regions
        with self._bitmap_lock:
            for r in regions:
                self._gen[r] = self._gen.get(r, 0) + 1
                self._inflight[r] = self._inflight.get(r, 0) + 1
            new = [r for r in regions if not any(m.bitmap[r] for m in self.writers)]
            if new:
                for m in self.writers:
                    for r in new:
                        m.bitmap[r] = 1
                for m in self.writers:
                    try:
                        m.write_bitmap(new, durable=True)
                    except OSError as exc:
                        self._error(m, "write", exc)
        return regions

    def _unmark(self, regions: list[int]) -> None:
        if not self.checked:
            return
        with self._bitmap_lock:
            for r in regions:
                self._inflight[r] -= 1

    def dirty_regions(self) -> list[int]:
        return sorted({r for m in self.members if m.fd >= 0 and m.state != "failed"
                       for r, v in enumerate(m.bitmap) if v})

    def clean_bitmap(self) -> int:
        """Clear the bits of regions without writes since the last look (after a sync)."""
        if not self.checked:
            return 0
        with self._bitmap_lock:
            snap = {r: self._gen.get(r, 0) for r in self.dirty_regions()
                    if not self._inflight.get(r, 0)}
        if not snap:
            return 0
        self.sync()
        with self._bitmap_lock:
            done = [r for r, g in snap.items() if self._gen.get(r, 0) == g and not self._inflight.get(r, 0)]
            for m in self.writers:
                for r in done:
                    m.bitmap[r] = 0
                try:
                    m.write_bitmap(done)
                except OSError as exc:
                    self._error(m, "write", exc)
            for r in done:
                self._gen.pop(r, None)
                self._inflight.pop(r, None)
        return len(done)

    # --- I/O ------------------------------------------------------------------------------------

    def read(self, offset: int, view: memoryview) -> None:
        length = len(view)
        if not self.checked:
            ms = self.readers(offset, length)
            if not ms:
                raise OSError(errno.EIO, f"virtual device {self.index}: no readable copy")
            ms[0].pread(view, offset)
            return
        start, n = rd.align(offset, length)
        buf = view if (start, n) == (offset, length) else memoryview(bytearray(n))
        if not self._read_fast(start, buf):
            if _nowait_on():
                raise NotCached  # a repair takes the region lock: not on the event loop
            with self.locked(start, n):
                self._read_repair(start, buf)
        if buf is not view:
            view[:] = buf[offset - start : offset - start + length]

    def _read_fast(self, start: int, buf: memoryview) -> bool:
        return self._read_fast_sums(start, buf) is not None

    def _read_fast_sums(self, start: int, buf: memoryview) -> Array | None:  # type: ignore[type-arg]
        """One copy read and verified: its checksums, or ``None`` when anything was wrong."""
        ms = self.readers(start, len(buf))
        return ms[0].read_verified(buf, start) if ms else None

    def _read_repair(self, start: int, buf: memoryview, *, trust_unverified: bool = False,
                     exclude: Member | None = None) -> tuple[int, int]:
        """Fill ``buf`` with the good copy of each block, repairing bad copies; the caller holds
        the region lock. Returns (blocks repaired, blocks lost); raises ``EIO`` when lost."""
        n = len(buf)
        first = start // BLOCK
        nblocks = n // BLOCK
        ms = [m for m in self.readers(start, n) if m is not exclude]
        if not ms:
            raise OSError(errno.EIO, f"virtual device {self.index}: no readable copy")
        copies: list[tuple[Member, bytearray | None]] = []
        for m in ms:
            raw = bytearray(n)
            try:
                m.pread(memoryview(raw), start)
            except OSError as exc:
                self._error(m, "read", exc)
                copies.append((m, None))
                continue
            copies.append((m, raw))
        repaired = lost = 0
        fixes: dict[int, list[int]] = {}  # member position -> blocks to rewrite
        for b in range(nblocks):
            cands: list[tuple[bytes | None, int]] = []
            for m, data in copies:
                assert m.csum is not None
                cands.append((None if data is None else bytes(data[b * BLOCK : (b + 1) * BLOCK]),
                              m.csum[first + b]))
            k = rd.choose(cands, trust_unverified=trust_unverified)
            if k is None:
                lost += 1
                continue
            good = cands[k][0]
            assert good is not None
            buf[b * BLOCK : (b + 1) * BLOCK] = good
            want = rd.checksum(good)
            for i, (cdata, stored) in enumerate(cands):
                if cdata != good or stored != want:
                    if cdata is not None and rd.checksum(cdata) != stored and not trust_unverified:
                        copies[i][0].csum_errors += 1
                    fixes.setdefault(i, []).append(b)
        for i, blocks in fixes.items():
            m = copies[i][0]
            if not m.writable:
                continue
            for b in blocks:
                block = buf[b * BLOCK : (b + 1) * BLOCK]
                try:
                    m.pwrite(block, start + b * BLOCK)
                    m.set_sums(first + b, [rd.checksum(block)])
                    m.repaired += 1
                    repaired += 1
                except OSError as exc:
                    self._error(m, "write", exc)
                    break
        # blocks no readable copy had; a copy excluded or not yet rebuilt may still be fine
        if lost:
            self.stats.lost_blocks += lost
            raise OSError(errno.EIO, f"virtual device {self.index}: {lost} block(s) at "
                                     f"{start} match no copy's checksum")
        if repaired and not trust_unverified:
            self.stats.repaired_blocks += repaired
            log.warning("virtual device %d: repaired %d block(s) at %d", self.index, repaired, start)
        return repaired, lost

    def write(self, offset: int, data: memoryview) -> None:
        length = len(data)
        if not self.checked:
            for m in self.writers:
                m.pwrite(data, offset)
            return
        start, n = rd.align(offset, length)
        with self.locked(start, n):
            if (start, n) != (offset, length):
                buf = memoryview(bytearray(n))
                self._read_edges(start, n, offset, length, buf)
                buf[offset - start : offset - start + length] = data
                data = buf
            regions = self._mark(start, n)
            try:
                self._write_all(start, data)
            finally:
                self._unmark(regions)

    def _read_edges(self, start: int, n: int, offset: int, length: int, buf: memoryview) -> None:
        head = offset != start
        if head:
            self._read_locked(start, buf[:BLOCK])
        end = offset + length
        if end % BLOCK:
            tail = end - end % BLOCK
            if not (head and tail == start):
                self._read_locked(tail, buf[tail - start : tail - start + BLOCK])

    def _read_locked(self, start: int, buf: memoryview) -> None:
        if not self._read_fast(start, buf):
            self._read_repair(start, buf)

    def _write_all(self, start: int, data: memoryview, *, only: Member | None = None,
                   sums: Sequence[int] | None = None) -> None:
        if sums is None:
            sums = rd.checksums(data)
        first = start // BLOCK
        ok = 0
        targets = [only] if only is not None else self.writers
        for m in targets:
            try:
                m.pwrite(data, start)
            except OSError as exc:
                self._error(m, "write", exc)
                continue
            m.set_sums(first, sums)
            ok += 1
        if not ok:
            raise OSError(errno.EIO, f"virtual device {self.index}: the write reached no copy")

    def zero(self, offset: int, length: int, *, provision: bool) -> None:
        """Zero a range: holes punched (or space kept, ``provision``) on every copy."""
        if not self.checked:
            for m in self.writers:
                self._zero_member(m, offset, length, provision)
            return
        a0 = -(-offset // BLOCK) * BLOCK
        a1 = (offset + length) // BLOCK * BLOCK
        if a1 <= a0:
            self.write(offset, memoryview(bytes(length)))
            return
        if offset < a0:
            self.write(offset, memoryview(bytes(a0 - offset)))
        if offset + length > a1:
            self.write(a1, memoryview(bytes(offset + length - a1)))
        with self.locked(a0, a1 - a0):
            regions = self._mark(a0, a1 - a0)
            try:
                ok = 0
                for m in self.writers:
                    try:
                        self._zero_member(m, a0, a1 - a0, provision)
                    except OSError as exc:
                        self._error(m, "write", exc)
                        continue
                    m.zero_sums(a0 // BLOCK, (a1 - a0) // BLOCK)
                    ok += 1
                if not ok:
                    raise OSError(errno.EIO, f"virtual device {self.index}: the zero reached no copy")
            finally:
                self._unmark(regions)

    @staticmethod
    def _zero_member(m: Member, offset: int, length: int, provision: bool) -> None:
        m._fault(offset, length, "write")
        mode = (FALLOC_FL_ZERO_RANGE if provision else FALLOC_FL_PUNCH_HOLE) | FALLOC_FL_KEEP_SIZE
        fallocate_or_write(m.fd, mode, offset, length)

    def punch_new(self, offset: int, length: int) -> None:
        """A newly allocated extent reads as zeroes on every copy (no bitmap: nothing to
        reconcile, the LU table naming the extent is persisted after)."""
        for m in self.writers:
            try:
                self._zero_member(m, offset, length, False)
                if m.csum is not None:
                    m.zero_sums(offset // BLOCK, length // BLOCK)
            except OSError as exc:
                self._error(m, "write", exc)

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        ms = self.readers(start, end - start)
        return device_holes(ms[0].fd, start, end) if ms else []

    def can_punch(self) -> bool:
        return all(m.can_punch for m in self.writers)

    def sync(self) -> None:
        """Changed checksum pages written, every writable copy fsynced."""
        for m in self.writers:
            try:
                m.write_pages()
                os.fdatasync(m.fd)
            except OSError as exc:
                self._error(m, "write", exc)
        if not self.writers:
            raise OSError(errno.EIO, f"virtual device {self.index}: no writable copy")

    # --- reconciliation: crash resync, scrub, rebuild -----------------------------------------

    def _all_holes(self, start: int, n: int, members: Sequence[Member]) -> bool:
        for m in members:
            h = device_holes(m.fd, start, start + n)
            if h != [(start, start + n)]:
                return False
            assert m.csum is not None
            sums = memoryview(m.csum)[start // BLOCK : (start + n) // BLOCK]
            if sums.tobytes() != bytes(sums.nbytes):  # one comparison, not a Python loop
                return False
        return True

    def _holes_end(self, start: int, end: int, src: Sequence[Member], align: int) -> int:
        """Where the holes from ``start`` on every member of ``src`` end (``SEEK_DATA``), cut
        to a multiple of ``align`` from ``start``, ``start + HOLE_STEP`` and ``device_end``;
        ``start`` unless that is past ``end``. A hint taken without the lock: the caller checks
        the span with ``_all_holes`` under it."""
        far = min(start + HOLE_STEP, self.device_end)
        for o in src:
            try:
                far = min(far, os.lseek(o.fd, start, os.SEEK_DATA))
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data from start on
                    return start
        far = start + (far - start) // align * align
        return far if far > end else start

    def reconcile(self, start: int, n: int, *, trust_unverified: bool) -> tuple[int, int]:
        """Make every readable copy of ``[start, start + n)`` hold the good data with a matching
        checksum (lock held by the caller); returns (blocks repaired, blocks lost)."""
        buf = memoryview(bytearray(n))
        before = self.stats.lost_blocks
        try:
            return self._read_repair(start, buf, trust_unverified=trust_unverified)
        except OSError:
            return 0, self.stats.lost_blocks - before

    def resync(self) -> int:
        """After a restart: reconcile every region whose write-intent bit is set."""
        if not self.checked:
            return 0
        regions = self.dirty_regions()
        step = self.unit
        for r in regions:
            base = r * rd.REGION
            end = min(base + rd.REGION, self.size)
            pos = base
            with self.locked(base, rd.REGION):
                while pos < end:
                    k = min(step, end - pos)
                    self.reconcile(pos, k, trust_unverified=True)
                    pos += k
        return self._resynced(regions, "resynced")

    def _resynced(self, regions: list[int], done: str) -> int:
        """After ``resync`` made the copies (or the parity) of ``regions`` agree: count and log
        them, and clear their write-intent bits on every writable device, durably (the data
        first: ``sync``)."""
        if regions:
            self.stats.resynced_regions += len(regions)
            log.warning("virtual device %d: %s %d region(s) written when the controller stopped",
                        self.index, done, len(regions))
            self.sync()
            for m in self.writers:
                for r in regions:
                    m.bitmap[r] = 0
                m.write_bitmap(regions)
                os.fdatasync(m.fd)
        return len(regions)

    def scrub_step(self, start: int, n: int) -> tuple[int, int]:
        """Verify and repair ``[start, start + n)`` on every copy (skipped where every copy
        is a hole); returns (repaired, lost)."""
        if not self.checked:
            return 0, 0
        with self.locked(start, n):
            ms = [m for m in self.members if m.readable(start, n)]
            if not ms or self._all_holes(start, n, ms):
                return 0, 0
            lost_before = self.stats.lost_blocks
            buf = memoryview(bytearray(n))
            try:
                repaired, _ = self._read_repair(start, buf)
            except OSError:
                return 0, self.stats.lost_blocks - lost_before
            return repaired, 0

    def finish_rebuild(self, m: Member, persist: Callable[[], None]) -> None:
        """``m`` is rebuilt to the end: synced, ``ok``, and the superblock says so."""
        self.sync()
        m.state, m.reason = "ok", ""
        persist()

    def rebuild_step(self, m: Member, n: int) -> int:
        """Copy the next ``n`` bytes of ``m`` from the other copies; returns bytes done. A span
        that is holes on the copy read from is punched, and from there on up to ``HOLE_STEP``
        bytes while the holes last."""
        start = m.rebuilt
        n = min(n, self.size - start)
        if n <= 0:
            return 0
        src = [o for o in self.members if o is not m and o.readable(start, n)]
        far = self._holes_end(start, start + n, src[:1], BLOCK) if self.checked and src else start
        if far > start + n:  # peeked without the lock: checked again under it
            with self.locked(start, far - start):
                src = [o for o in self.members if o is not m and o.readable(start, far - start)]
                if src and self._all_holes(start, far - start, src[:1]):
                    self._zero_member(m, start, far - start, False)
                    if m.csum is not None:
                        m.zero_sums(start // BLOCK, (far - start) // BLOCK)
                    m.rebuilt = far
                    return far - start
        with self.locked(start, n):
            src = [o for o in self.members if o is not m and o.readable(start, n)]
            if not src:
                raise OSError(errno.EIO, f"virtual device {self.index}: no copy to rebuild from")
            if self.checked and self._all_holes(start, n, src[:1]):
                self._zero_member(m, start, n, False)
                if m.csum is not None:
                    m.zero_sums(start // BLOCK, n // BLOCK)
            else:
                buf = memoryview(bytearray(n))
                sums = None
                if self.checked:  # ``m`` is not readable here: the others are read
                    sums = self._read_fast_sums(start, buf)
                    if sums is None:
                        self._read_repair(start, buf)
                else:
                    src[0].pread(buf, start)
                self._write_all(start, buf, only=m, sums=sums)
            m.rebuilt = start + n
        return n
