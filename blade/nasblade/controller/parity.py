"""A parity set: all devices of a ``parity-1`` / ``parity-2`` array behind one address space.

``Array`` builds one ``ParityVDev`` instead of mirror sets when the protection level
(``redundancy``) is ``parity``; it reuses ``vdev.Member`` (per-device checksums, write-intent
bitmap, fault injection) and the ``vdev.VDev`` interface (read, write, zero, sync, resync,
scrub_step, rebuild_step) that ``Array`` and ``maintenance`` drive. The parity arithmetic is
PyPI ``zfec`` (systematic Reed-Solomon over GF(2^8)): ``k`` data units and ``p`` parity units
per stripe, any ``k`` of the ``k + p`` units give the others back.

Stripe format (``n`` devices, ``p`` parity units, ``k = n - p``, ``UNIT`` = 64 KiB)::

    device offset  META_SIZE + s * UNIT .. + UNIT     unit of stripe s on every device
    share i of stripe s (i < k: data, i >= k: parity) lives on device (s + i) % n
    virtual offset META_SIZE + s * k * UNIT + i * UNIT + w  =  data share i, byte w

so the parity rotates by one device per stripe and a stripe's units sit at the same device
offset on every device: the device-offset write-intent regions, locks and checksums of
``vdev`` cover whole stripes. Reads of a data unit are verified against its checksum; a
mismatch or an I/O error rebuilds the row from the other units (self-healing read). Writes are
reconstruct-writes: the other data units of the touched rows are read (verified, rebuilt if
needed), the parity computed from the new data and every unit of the row written after the
write-intent bit of its region is on the devices. After a crash, ``resync`` recomputes the
parity of every stripe of a dirty region from its data (the data is authoritative, its
checksums are brought up to date): no stripe is left whose parity disagrees with its data.
While a device is failed or being rebuilt, the data units it holds are defined by the parity
alone; every stripe write then records them in the stripe journal (``journal``) before
writing in place, and ``resync`` replays the journal first (the write hole of a degraded
RAID 5, closed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import logging
import threading
from array import array as Array
from collections.abc import Callable, Iterator

import zfec

from nasblade.controller import journal as jn
from nasblade.controller import redundancy as rd
from nasblade.controller.redundancy import BLOCK
from nasblade.controller.vdev import Member, VDev

log = logging.getLogger(__name__)

UNIT = 64 << 10
"""The stripe unit: small enough that a 1 MiB client write covers whole stripes (no reads
for parity) on up to 16 devices and sequential reads spread over the devices; large enough
that a stripe is a few cheap zfec calls. It divides ``redundancy.REGION`` and the array's
allocation unit, so a stripe never straddles a bitmap region."""


BATCH = 1 << 20
"""Device bytes of the rebuilt device one pass of the rebuild reads, decodes and writes (16
rows; ``_rebuild_rows``). Not more: its buffers (one per device) stay in the CPU cache, as
``maintenance.STEP`` explains."""

_ZERO_UNIT = bytes(UNIT)
_helper_pool: concurrent.futures.ThreadPoolExecutor | None = None
_helper_lock = threading.Lock()


def _helper() -> concurrent.futures.ThreadPoolExecutor:
    """One thread, shared by every parity set, that decodes half of each rebuild pass while
    the caller's thread does the other half: the decode is the rebuild's largest cost and
    ``zfec`` releases the GIL, so a second core halves it."""
    global _helper_pool
    with _helper_lock:
        if _helper_pool is None:
            _helper_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="parity-rebuild")
        return _helper_pool


def _runs(blocks: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive runs ``[b0, b1)`` of sorted block numbers."""
    i = 0
    while i < len(blocks):
        j = i
        while j + 1 < len(blocks) and blocks[j + 1] == blocks[j] + 1:
            j += 1
        yield blocks[i], blocks[j] + 1
        i = j + 1


class ParityVDev(VDev):
    """``n`` devices, ``parity`` of each stripe's units holding Reed-Solomon parity."""

    nowait_reads = False  # reads take stripe locks and may decode: always in the I/O pool

    def __init__(self, index: int, members: list[Member], *, unit: int, parity: int, meta: int,
                 on_failure: Callable[[Member], None]) -> None:
        super().__init__(index, members, unit=unit, on_failure=on_failure)
        self.n = len(members)
        self.p = parity
        self.k = self.n - parity
        self.meta = meta
        ends = [m.geometry.vsize if m.geometry else m.size - m.size % unit for m in members]
        self.stripes = (min(ends) - meta) // UNIT
        self.device_end = meta + self.stripes * UNIT
        usable = self.k * self.stripes * UNIT
        self.size = meta + usable - usable % unit
        self._enc = zfec.Encoder(self.k, self.n)
        self._dec = zfec.Decoder(self.k, self.n)
        #: the rebuild's two threads' codecs (``_rebuild_rows``), its buffers and their lock
        self._codecs = [(self._enc, self._dec), (zfec.Encoder(self.k, self.n), zfec.Decoder(self.k, self.n))]
        self._batch_bufs: list[bytearray] = []
        self._batch_lock = threading.Lock()
        #: the stripe journal, on arrays formatted with one (``layout.ArrayState.journal``)
        self.journal = jn.StripeJournal(members, on_error=lambda m, exc: self._error(m, "write", exc)) \
            if all(m.geometry is not None and m.geometry.journal_size for m in members) and self.n <= 64 else None

    # --- the stripe map -------------------------------------------------------------------------

    def member(self, stripe: int, share: int) -> Member:
        return self.members[(stripe + share) % self.n]

    def pieces(self, offset: int, length: int) -> Iterator[tuple[int, int, int, int]]:
        """``(stripe, share, device offset, length)`` of a virtual range, in order."""
        end = offset + length
        while offset < end:
            rel = offset - self.meta
            stripe, rest = divmod(rel, self.k * UNIT)
            share, within = divmod(rest, UNIT)
            n = min(UNIT - within, end - offset)
            yield stripe, share, self.meta + stripe * UNIT + within, n
            offset += n

    def _dev_range(self, offset: int, length: int) -> tuple[int, int]:
        """Device offsets of every stripe a virtual range touches."""
        s0 = (offset - self.meta) // (self.k * UNIT)
        s1 = (offset + length - 1 - self.meta) // (self.k * UNIT)
        return self.meta + s0 * UNIT, (s1 - s0 + 1) * UNIT

    @contextlib.contextmanager
    def locked(self, offset: int, length: int) -> Iterator[None]:
        """Locks by the device regions of the stripes a virtual range touches."""
        with super().locked(*self._dev_range(offset, length)):
            yield

    def fail(self, m: Member, reason: str) -> None:
        """Stop using ``m`` unless that leaves fewer than ``k`` whole units per stripe."""
        if m.state == "failed":
            return
        gone = sum(1 for o in self.members if o is not m and (o.state != "ok" or o.fd < 0))
        if gone >= self.p:
            log.error("device %d (%s): %s, but the parity set cannot lose it: kept", m.index, m.path, reason)
            return
        m.state, m.reason = "failed", reason
        log.error("device %d (%s) failed: %s", m.index, m.path, reason)
        self.on_failure(m)

    def servable(self) -> bool:
        return sum(1 for m in self.members if m.state == "ok" and m.fd >= 0) >= self.k

    # --- one row: the units of a stripe over [d0, d0 + length) ------------------------------

    def _row(self, stripe: int, d0: int, length: int, *, resync: bool = False,
             check_parity: bool = False) -> list[bytearray]:
        """Every share of the row, verified and rebuilt where a unit is unreadable or fails its
        checksum; bad units on readable devices are rewritten (counted as repaired). With
        ``check_parity`` (scrub) parity that disagrees with verified data is counted and
        rewritten; with ``resync`` (a region written at a crash) data is taken as it is, its
        checksums and the parity recomputed from it. The caller holds the rows' lock; raises
        ``EIO`` when a block has more bad units than parity (counted as lost)."""
        n, k = self.n, self.k
        first, nb = d0 // BLOCK, length // BLOCK
        ms = [self.member(stripe, i) for i in range(n)]
        chunks: list[bytearray | None] = [None] * n
        present: set[int] = set()  # shares on a device that should hold them (repair targets)
        for i, m in enumerate(ms):
            if not m.readable(d0, length):
                continue
            present.add(i)
            raw = bytearray(length)
            try:
                m.pread(memoryview(raw), d0)
            except OSError as exc:
                self._error(m, "read", exc)
                continue
            chunks[i] = raw
        erased = {i for i in range(n) if chunks[i] is None}
        bad: dict[int, set[int]] = {}  # block -> shares failing their checksum
        if not resync:
            for i, got in enumerate(chunks):
                if got is None:
                    continue
                m = ms[i]
                assert m.csum is not None
                sums = Array("Q", rd.checksums(got))
                if m.csum[first : first + nb] != sums:
                    for b in range(nb):
                        if sums[b] != m.csum[first + b]:
                            bad.setdefault(b, set()).add(i)
                            m.csum_errors += 1
        groups: dict[frozenset[int], list[int]] = {}
        for b in range(nb):
            shares = erased | bad.get(b, set())
            if shares:
                groups.setdefault(frozenset(shares), []).append(b)
        fixes: dict[int, list[int]] = {}
        lost = 0
        for wrong, blocks in groups.items():
            if len(wrong) > self.p:
                lost += len(blocks)
                continue
            good = tuple(i for i in range(n) if i not in wrong)[:k]
            for b0, b1 in _runs(blocks):
                lo, hi = b0 * BLOCK, b1 * BLOCK
                ins = tuple(bytes(chunks[i][lo:hi]) for i in good)  # type: ignore[index]
                data = self._dec.decode(ins, good)
                par = self._enc.encode(tuple(data), tuple(range(k, n))) if max(wrong) >= k else []
                for i in wrong:
                    if chunks[i] is None:
                        chunks[i] = bytearray(length)
                    chunks[i][lo:hi] = data[i] if i < k else par[i - k]  # type: ignore[index]
                    fixes.setdefault(i, []).extend(range(b0, b1))
        if lost and not resync:
            self.stats.lost_blocks += lost
            raise OSError(errno.EIO, f"virtual device {self.index}: {lost} block(s) at device "
                                     f"offset {d0} have more bad units than parity")
        if (resync or check_parity) and not lost:
            parity = self._enc.encode(tuple(bytes(c) for c in chunks[:k]), tuple(range(k, n)))  # type: ignore[arg-type]
            for j, want in enumerate(parity):
                have = chunks[k + j]
                assert have is not None
                if have == want:
                    continue
                for b in range(nb):
                    lo, hi = b * BLOCK, (b + 1) * BLOCK
                    if have[lo:hi] != want[lo:hi]:
                        fixes.setdefault(k + j, []).append(b)
                        if check_parity:
                            self.stats.parity_mismatches += 1
                chunks[k + j] = bytearray(want)
        repaired = 0
        for i, blocks in fixes.items():
            m = ms[i]
            if i not in present or not m.writable:
                continue
            fixed = chunks[i]
            assert fixed is not None
            try:
                for b0, b1 in _runs(sorted(set(blocks))):
                    part = memoryview(fixed)[b0 * BLOCK : b1 * BLOCK]
                    m.pwrite(part, d0 + b0 * BLOCK)
                    m.set_sums(first + b0, rd.checksums(part))
                    if not resync:
                        m.repaired += b1 - b0
                        repaired += b1 - b0
            except OSError as exc:
                self._error(m, "write", exc)
        if resync:
            for i in present:
                if chunks[i] is not None and ms[i].writable:
                    ms[i].set_sums(first, rd.checksums(chunks[i]))  # type: ignore[arg-type]
        elif repaired:
            self.stats.repaired_blocks += repaired
            log.warning("virtual device %d: repaired %d block(s) of stripe %d", self.index, repaired, stripe)
        return chunks  # type: ignore[return-value]

    # --- I/O ------------------------------------------------------------------------------------

    def read(self, offset: int, view: memoryview) -> None:
        length = len(view)
        start, n = rd.align(offset, length)
        buf = view if (start, n) == (offset, length) else memoryview(bytearray(n))
        pos = 0
        for stripe, share, d0, k in self.pieces(start, n):
            piece = buf[pos : pos + k]
            if not self._read_unit(self.member(stripe, share), d0, piece):
                with super().locked(d0, k):
                    piece[:] = self._row(stripe, d0, k)[share]
            pos += k
        if buf is not view:
            view[:] = buf[offset - start : offset - start + length]

    @staticmethod
    def _read_unit(m: Member, d0: int, piece: memoryview) -> bool:
        return m.readable(d0, len(piece)) and m.read_verified(piece, d0) is not None

    def write(self, offset: int, data: memoryview) -> None:
        length = len(data)
        start, n = rd.align(offset, length)
        with self.locked(start, n):
            if (start, n) != (offset, length):
                buf = memoryview(bytearray(n))
                self.read(start, buf[:BLOCK])
                if n > BLOCK:
                    self.read(start + n - BLOCK, buf[n - BLOCK :])
                buf[offset - start : offset - start + length] = data
                data = buf
            regions = self._mark(*self._dev_range(start, n))
            try:
                self._write_stripes(start, data)
            finally:
                self._unmark(regions)

    def _write_stripes(self, start: int, data: memoryview) -> None:
        pos = 0
        by_stripe: dict[int, list[tuple[int, int, memoryview]]] = {}
        for stripe, share, d0, k in self.pieces(start, len(data)):
            by_stripe.setdefault(stripe, []).append((share, d0, data[pos : pos + k]))
            pos += k
        rows: list[tuple[int, int, list[bytearray | memoryview], list[tuple[int, memoryview]]]] = []
        for stripe, parts in by_stripe.items():
            lo = min(d0 for _, d0, _ in parts)
            hi = max(d0 + len(v) for _, d0, v in parts)
            whole = len(parts) == self.k and all(d0 == lo and len(v) == hi - lo for _, d0, v in parts)
            if whole:
                chunks: list[bytearray | memoryview] = [v for _, _, v in sorted(parts, key=lambda t: t[0])]
            else:
                row = self._row(stripe, lo, hi - lo)
                for share, d0, v in parts:
                    row[share][d0 - lo : d0 - lo + len(v)] = v
                chunks = list(row[: self.k])
            parity = self._enc.encode(tuple(bytes(c) for c in chunks), tuple(range(self.k, self.n)))
            units: list[tuple[int, memoryview]] = [(s, memoryview(chunks[s])) for s, _, _ in parts]
            units += [(self.k + j, memoryview(p)) for j, p in enumerate(parity)]
            rows.append((stripe, lo, chunks, units))
        with self._journaled() as missing:
            if missing:
                self._record(jn.DATA, missing, rows)
            for stripe, lo, _, units in rows:
                self._put(stripe, lo, units)

    @contextlib.contextmanager
    def _journaled(self) -> Iterator[int]:
        """Around the in-place writes of stripes: the journal's lock, and the mask of members
        whose units exist only as parity (not ``ok``: failed, missing or rebuilding) -- 0 when
        the set is whole or has no journal (nothing to record)."""
        if self.journal is None or not self._missing():
            yield 0  # a member that fails during this write is the one case left (md's too)
            return
        with self.journal.lock:  # ``finish_rebuild`` makes a member ok under it
            yield self._missing()

    def _missing(self) -> int:
        return sum(1 << i for i, m in enumerate(self.members) if m.state != "ok" or m.fd < 0)

    def _record(self, kind: int, missing: int,
                rows: list[tuple[int, int, list[bytearray | memoryview], list[tuple[int, memoryview]]]]) -> None:
        """Journal, per stripe, the content of its data units on the ``missing`` members."""
        assert self.journal is not None
        entries = []
        for stripe, lo, chunks, _ in rows:
            mask, units = 0, []
            for pos in range(self.n):
                share = (pos - stripe) % self.n
                if missing >> pos & 1 and share < self.k:
                    mask |= 1 << pos
                    units.append(chunks[share])
            if mask:
                entries.append((kind, stripe, 1, lo, len(chunks[0]), mask, units))
        if entries:
            self.journal.append(entries, self.sync)

    def _put(self, stripe: int, d0: int, units: list[tuple[int, memoryview]]) -> None:
        """Write units of one row to their devices; ``EIO`` when more shares of the row than
        the parity covers are now unwritten."""
        first = d0 // BLOCK
        for share, unit in units:
            m = self.member(stripe, share)
            if not m.writable:
                continue
            try:
                m.pwrite(unit, d0)
            except OSError as exc:
                self._error(m, "write", exc)
                continue
            m.set_sums(first, rd.checksums(unit))
        if sum(1 for m in self.members if not m.writable) > self.p:
            raise OSError(errno.EIO, f"virtual device {self.index}: the write reached too few devices")

    def zero(self, offset: int, length: int, *, provision: bool) -> None:
        """Zeroes: whole stripes punched (zero data has zero parity), edges written."""
        rel0 = offset - self.meta
        width = self.k * UNIT
        s0 = -(-rel0 // width)
        s1 = (rel0 + length) // width
        if s1 <= s0:
            self._write_zeroes(offset, length)
            return
        a0, a1 = self.meta + s0 * width, self.meta + s1 * width
        if offset < a0:
            self._write_zeroes(offset, a0 - offset)
        if offset + length > a1:
            self._write_zeroes(a1, offset + length - a1)
        d0, dn = self.meta + s0 * UNIT, (s1 - s0) * UNIT
        with super().locked(d0, dn), self._journaled() as missing:
            regions = self._mark(d0, dn)
            try:
                if missing:
                    assert self.journal is not None
                    self.journal.append([(jn.ZERO, s0, s1 - s0, d0, UNIT, missing, [])], self.sync)
                for m in self.writers:
                    try:
                        self._zero_member(m, d0, dn, provision)
                    except OSError as exc:
                        self._error(m, "write", exc)
                        continue
                    m.zero_sums(d0 // BLOCK, dn // BLOCK)
                if sum(1 for m in self.members if not m.writable) > self.p:
                    raise OSError(errno.EIO, f"virtual device {self.index}: the zero reached too few devices")
            finally:
                self._unmark(regions)

    def _write_zeroes(self, offset: int, length: int) -> None:
        step = 1 << 20
        for pos in range(offset, offset + length, step):
            self.write(pos, memoryview(bytes(min(step, offset + length - pos))))

    def punch_new(self, offset: int, length: int) -> None:
        self.zero(offset, length, provision=False)

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        """Not tracked through the stripe map: every byte counts as data."""
        return []

    # --- reconciliation: crash resync, scrub, rebuild -----------------------------------------

    def _rows_in(self, d0: int, d1: int) -> Iterator[tuple[int, int]]:
        """``(stripe, device offset)`` of the whole stripes in device range ``[d0, d1)``."""
        lo = max(d0, self.meta)
        for s in range((lo - self.meta) // UNIT, (min(d1, self.device_end) - self.meta) // UNIT):
            yield s, self.meta + s * UNIT

    def resync(self) -> int:
        """After a restart: replay the stripe journal, then recompute the parity of every
        stripe of a dirty region; the journal starts a new epoch."""
        regions = self.dirty_regions()
        replayed = self._replay(set(regions)) if self.journal is not None else 0
        for r in regions:
            with super().locked(r * rd.REGION, rd.REGION):
                for s, d0 in self._rows_in(r * rd.REGION, (r + 1) * rd.REGION):
                    self._row(s, d0, UNIT, resync=True)
        if replayed:
            self.stats.journal_replayed += replayed
            log.warning("virtual device %d: replayed the journal of %d stripe(s) written while degraded",
                        self.index, replayed)
        done = self._resynced(regions, "recomputed the parity of")
        if self.journal is not None and any(m.writable for m in self.members):
            with self.journal.lock:
                self.journal.reset(self.sync)
        return done

    def _replay(self, dirty: set[int]) -> int:
        """For every stripe of a ``dirty`` region with journal entries, its last entry: the
        recorded units of members that are still not ``ok`` taken from the journal, the other
        units as they are on the devices, the parity recomputed and written. Returns the
        stripes replayed."""
        assert self.journal is not None
        last: dict[int, jn.Entry] = {}
        for e in self.journal.load():
            for s in range(e.stripe, e.stripe + e.count):
                last[s] = e
        missing = {i for i, m in enumerate(self.members) if m.state != "ok" or m.fd < 0}
        done = 0
        for s, e in sorted(last.items()):
            d0 = self.meta + s * UNIT if e.kind == jn.ZERO else e.d0
            length = UNIT if e.kind == jn.ZERO else e.length
            if s >= self.stripes or not set(rd.regions_of(d0, length)) & dirty:
                continue
            override: dict[int, bytes] = {}
            for n, pos in enumerate(e.positions()):
                share = (pos - s) % self.n
                if pos in missing and share < self.k:
                    override[share] = e.units[n] if e.kind == jn.DATA else bytes(length)
            if not override:
                continue
            with super().locked(d0, length):
                chunks = self._row(s, d0, length, resync=True)
                for share, unit in override.items():
                    chunks[share][:] = unit
                parity = self._enc.encode(tuple(bytes(c) for c in chunks[: self.k]), tuple(range(self.k, self.n)))
                for j, p in enumerate(parity):
                    chunks[self.k + j][:] = p
                self._put(s, d0, [(i, memoryview(chunks[i])) for i in (*override, *range(self.k, self.n))])
            done += 1
        return done

    def finish_rebuild(self, m: Member, persist: Callable[[], None]) -> None:
        """A rebuilt device is back: with no write in between, it becomes ``ok`` and the journal
        (whose entries all speak of units that are now on it) starts a new epoch."""
        if self.journal is None:
            super().finish_rebuild(m, persist)
            return
        with self.journal.lock:
            super().finish_rebuild(m, persist)
            self.journal.reset(self.sync)

    def _rebuild_rows(self, m: Member, start: int, end: int) -> bool:
        """Rebuild ``m``'s units of the rows in device range ``[start, end)`` (at most
        ``BATCH`` bytes) in one pass, the rows split in two halves done at once
        (``_rebuild_part``), one in the helper thread and one in this one (``zfec``, the reads
        and the writes let go of the GIL). ``False`` when that cannot be done plainly --
        another device not readable there, a read error, a checksum that does not match --
        and the caller goes row by row, repairing what it finds (a half done already is
        written again: ``m`` is not read above its ``rebuilt`` mark)."""
        rows = list(self._rows_in(start, end))
        if not rows:
            return False
        d0, d1 = rows[0][1], rows[-1][1] + UNIT
        assert d1 - d0 <= BATCH
        if any(o is not m and (not o.readable(d0, d1 - d0) or o.csum is None) for o in self.members):
            return False
        with self._batch_lock:
            if not self._batch_bufs:
                self._batch_bufs = [bytearray(BATCH) for _ in range(self.n + 1)]
            views = [memoryview(b)[: d1 - d0] for b in self._batch_bufs]
            half, other = len(rows) // 2, None
            if half:
                try:
                    other = _helper().submit(self._rebuild_part, m, rows[:half], d0, views, self._codecs[1])
                except RuntimeError:  # the interpreter is shutting down: this thread does it all
                    half = 0
            try:
                done = self._rebuild_part(m, rows[half:], d0, views, self._codecs[0])
            finally:
                if other is not None:  # the buffers are not left to the helper
                    concurrent.futures.wait([other])
            return done and (other is None or other.result())

    def _rebuild_part(self, m: Member, rows: list[tuple[int, int]], d0: int, views: list[memoryview],
                      codec: tuple[zfec.Encoder, zfec.Decoder]) -> bool:
        """For ``_rebuild_rows``: ``rows`` (consecutive) read from every device but ``m`` into
        ``views[device]`` (offsets from ``d0``) and checked against the stored checksums in one
        comparison, ``m``'s unit of each decoded (a data unit) or encoded (a parity unit) into
        ``views[n]``, written in one write per run of rows that are not all zeroes (those are
        punched: holes stay holes) and its checksums set. ``False`` (nothing written) on a read
        error or a checksum mismatch."""
        enc, dec = codec
        lo, hi = rows[0][1] - d0, rows[-1][1] + UNIT - d0
        first = (d0 + lo) // BLOCK
        for j, o in enumerate(self.members):
            if o is m:
                continue
            part = views[j][lo:hi]
            try:
                o.pread(part, d0 + lo)
            except OSError:
                return False
            assert o.csum is not None
            if o.csum[first : first + (hi - lo) // BLOCK] != Array("Q", rd.checksums(part)):
                return False
        out = views[self.n]
        share_of = self.members.index(m)
        zeros: list[int] = []
        for s, row in rows:
            rel = row - d0
            missing = (share_of - s) % self.n
            good = tuple(i for i in range(self.n) if i != missing)[: self.k]
            ins = tuple(views[(s + i) % self.n][rel : rel + UNIT] for i in good)
            unit = dec.decode(ins, good)[missing] if missing < self.k else enc.encode(ins, (missing,))[0]
            out[rel : rel + UNIT] = unit  # zeroes too: the buffer holds the last pass's rows
            if unit == _ZERO_UNIT:
                zeros.append(row)
        pos = d0 + lo
        for row in [*zeros, d0 + hi]:  # the runs between rows of zeroes are written
            if row > pos:
                m.pwrite(out[pos - d0 : row - d0], pos)
            if row < d0 + hi:
                self._zero_member(m, row, UNIT, False)
            pos = row + UNIT
        m.set_sums(first, Array("Q", rd.checksums(out[lo:hi])))  # a row of zeroes sums to 0, as a hole
        return True

    def scrub_step(self, start: int, n: int) -> tuple[int, int]:
        """Verify checksums and parity of the stripes that begin in virtual ``[start,
        start + n)``, repairing both; returns (repaired, lost)."""
        width = self.k * UNIT
        s0 = -(-(start - self.meta) // width)
        s1 = min(-(-(start + n - self.meta) // width), self.stripes)
        repaired = lost = 0
        for s in range(s0, s1):
            d0 = self.meta + s * UNIT
            with super().locked(d0, UNIT):
                ms = [m for m in self.members if m.readable(d0, UNIT)]
                if not ms or self._all_holes(d0, UNIT, ms):
                    continue
                before = (self.stats.repaired_blocks, self.stats.parity_mismatches, self.stats.lost_blocks)
                try:
                    self._row(s, d0, UNIT, check_parity=True)
                except OSError:
                    lost += self.stats.lost_blocks - before[2]
                    continue
                repaired += (self.stats.repaired_blocks - before[0]) + (self.stats.parity_mismatches - before[1])
        return repaired, lost

    def rebuild_step(self, m: Member, n: int) -> int:
        """Rebuild the next ``n`` device bytes of ``m`` from the other units of each stripe,
        ``BATCH`` bytes at a time (``_rebuild_rows``, or row by row where that cannot be done
        plainly); a span that is holes on every other device is punched, and from there on
        up to ``vdev.HOLE_STEP`` bytes while the holes last."""
        start = m.rebuilt
        end = min(start + n, self.device_end)
        if end <= start:
            return 0
        src = [o for o in self.members if o is not m and o.readable(start, end - start)]
        far = self._holes_end(start, end, src, UNIT) if start >= self.meta and len(src) >= self.k else start
        if far > end:  # peeked without the lock: checked again under it
            with super().locked(start, far - start):
                if self._punch_holes(m, start, far):
                    return far - start
        with super().locked(start, end - start):
            if self._punch_holes(m, start, end):
                return end - start
            for pos in range(start, end, BATCH):
                if not self._rebuild_rows(m, pos, min(pos + BATCH, end)):
                    self._rebuild_row_by_row(m, pos, min(pos + BATCH, end))
            m.rebuilt = end
        return end - start

    def _punch_holes(self, m: Member, start: int, end: int) -> bool:
        """A span that is holes on every other device (and whose checksums say so) stays one
        on ``m`` -- a device is mostly holes until filled: one punch instead of a check and a
        punch per row. The caller holds the span's lock; ``False`` when it is not holes."""
        src = [o for o in self.members if o is not m and o.readable(start, end - start)]
        if start < self.meta or len(src) < self.k or not self._all_holes(start, end - start, src):
            return False
        self._zero_member(m, start, end - start, False)
        m.zero_sums(start // BLOCK, (end - start) // BLOCK)
        m.rebuilt = end
        return True

    def _rebuild_row_by_row(self, m: Member, start: int, end: int) -> None:
        """``m``'s units of the rows in ``[start, end)`` one row at a time through ``_row``,
        which verifies every unit read and repairs what fails (lock held by the caller)."""
        share_of = self.members.index(m)
        for s, d0 in self._rows_in(start, end):
            share = (share_of - s) % self.n
            src = [o for o in self.members if o is not m and o.readable(d0, UNIT)]
            if len(src) < self.k:
                raise OSError(errno.EIO, f"virtual device {self.index}: too few devices to rebuild from")
            if self._all_holes(d0, UNIT, src):
                self._zero_member(m, d0, UNIT, False)
                m.zero_sums(d0 // BLOCK, UNIT // BLOCK)
            else:
                unit = self._row(s, d0, UNIT)[share]
                m.pwrite(memoryview(unit), d0)
                m.set_sums(d0 // BLOCK, rd.checksums(unit))
