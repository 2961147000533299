"""The stripe journal of a parity set: what closes the RAID 5 write hole while degraded.

With every device present, a crash in the middle of a stripe write is repaired by
recomputing the parity from the data (``ParityVDev.resync``): each data unit holds the value
being written or the one before, and both are allowed for an unacknowledged write. While a
device is failed or still being rebuilt, the data units it holds exist only as a function of
the parity and the other units; a stripe write torn between those units and the parity
leaves that function wrong, and the lost unit (which the write may not even have touched, so
it can hold acknowledged data) would be rebuilt wrong, with no checksum left to tell.

So while a parity set is degraded, every stripe write first records here, for each data
unit the write leaves defined only by the parity, its content after the write (the new data,
or the current content the write keeps), and only once that record is on the devices
(``fdatasync``) are the units and the parity written in place. A zeroing of whole stripes
records one small entry (those units become zeroes). After a crash, ``ParityVDev.resync``
replays, for every stripe of a dirty region, the last record of that stripe: the recorded
units are taken as they are recorded, the others as they are on the devices, and the parity
is recomputed from them. md closes the same hole with a journal device or its partial parity
log; here the journal sits in every device's tail (``redundancy.Geometry``).

On-device format, ``SIZE`` bytes at ``Geometry.journal_offset``::

    block 0        header: magic, epoch, checksum
    block 1 ..     entries, appended: a 4 KiB header block (magic, epoch, seq, kind, stripe,
                   stripe count, device offset, length, member mask, payload checksum,
                   header checksum), then for a ``DATA`` entry the recorded units (``length``
                   bytes each, in member order)

Only entries of the header's epoch are valid, read in order up to the first block that is
not one. ``reset`` starts a new epoch, which drops every entry at once: it is done when the
log is full, after a crash's replay, and when a rebuilt device is back (every entry then
speaks of a device that is whole again), each time after every device was synced, so an
entry is never dropped while the writes it covers may still be torn. Entries go to every
writable device of the set (a record survives as long as the set does), reads merge them by
sequence number. This module encodes, decodes, appends and resets; which units to record
and how to replay them is ``parity.ParityVDev``'s.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import xxhash

from nasblade.controller.redundancy import BLOCK
from nasblade.controller.vdev import Member

log = logging.getLogger(__name__)

SIZE = 4 << 20
"""Journal bytes per device of a parity set. One ``ParityVDev.write`` (at most an array
stripe unit, 1 MiB) records at most one entry per stripe with at most two 64 KiB units: a
little over 1 MiB, so the log holds a few writes before it is reset."""

HEADER_MAGIC = b"NBJRNLH1"
ENTRY_MAGIC = b"NBJRNLE1"
_HEADER = struct.Struct("<8sQ")
_ENTRY = struct.Struct("<8sQQIIQQQQQ")  # magic epoch seq kind count stripe d0 length mask payload-sum

DATA = 1
"""The units listed in ``mask`` of stripe ``stripe``, device range ``[d0, d0 + length)``,
hold the payload."""
ZERO = 2
"""The units listed in ``mask`` of ``count`` stripes from ``stripe`` are zeroes."""


class JournalFull(OSError):
    """An append larger than the whole journal (a caller's bug: writes are bounded)."""


@dataclass(frozen=True)
class Entry:
    seq: int
    kind: int
    stripe: int
    count: int
    d0: int
    length: int
    #: bit ``i``: member ``i`` of the set (its position in ``ParityVDev.members``)
    mask: int
    #: ``DATA``: one unit per set bit of ``mask``, in member order
    units: tuple[bytes, ...] = ()

    def positions(self) -> list[int]:
        return [i for i in range(self.mask.bit_length()) if self.mask >> i & 1]


def _sum(data: bytes | bytearray | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


def encode_header(epoch: int) -> bytes:
    head = _HEADER.pack(HEADER_MAGIC, epoch)
    return (head + struct.pack("<Q", _sum(head))).ljust(BLOCK, b"\0")


def decode_header(block: bytes | bytearray) -> int | None:
    """The epoch of a journal header block, or ``None`` if it is not one."""
    n = _HEADER.size
    if len(block) < n + 8 or bytes(block[:8]) != HEADER_MAGIC:
        return None
    (want,) = struct.unpack_from("<Q", block, n)
    if _sum(bytes(block[:n])) != want:
        return None
    return int(_HEADER.unpack_from(block)[1])


def encode_entry(epoch: int, seq: int, *, kind: int, stripe: int, count: int, d0: int, length: int, mask: int,
                 units: Sequence[bytes | bytearray | memoryview] = ()) -> list[bytes | bytearray | memoryview]:
    """The blocks of one entry: its header block, then the units (each ``length`` bytes, a
    multiple of ``BLOCK``)."""
    if any(len(u) != length for u in units) or length % BLOCK:
        raise ValueError("journal units must be whole blocks of the entry's length")
    payload = xxhash.xxh3_64()
    for u in units:
        payload.update(u)
    head = _ENTRY.pack(ENTRY_MAGIC, epoch, seq, kind, count, stripe, d0, length, mask, payload.intdigest())
    return [(head + struct.pack("<Q", _sum(head))).ljust(BLOCK, b"\0"), *units]


def entry_size(length: int, units: int) -> int:
    return BLOCK + units * length


def decode_entries(log_area: bytes | bytearray | memoryview, epoch: int) -> list[Entry]:
    """The valid entries of ``epoch`` at the start of ``log_area`` (the journal after its
    header block), up to the first block that is not one."""
    view = memoryview(log_area)
    out: list[Entry] = []
    pos, n = 0, _ENTRY.size
    while pos + BLOCK <= len(view):
        block = view[pos : pos + BLOCK]
        if bytes(block[:8]) != ENTRY_MAGIC:
            break
        (want,) = struct.unpack_from("<Q", block, n)
        if _sum(block[:n]) != want:
            break
        _, ep, seq, kind, count, stripe, d0, length, mask, psum = _ENTRY.unpack_from(block)
        if ep != epoch or kind not in (DATA, ZERO):
            break
        nunits = bin(mask).count("1") if kind == DATA else 0
        end = pos + entry_size(length, nunits)
        if end > len(view):
            break
        units = tuple(bytes(view[pos + BLOCK + i * length : pos + BLOCK + (i + 1) * length]) for i in range(nunits))
        h = xxhash.xxh3_64()
        for u in units:
            h.update(u)
        if h.intdigest() != psum:
            break
        out.append(Entry(seq, kind, stripe, count, d0, length, mask, units))
        pos = end
    return out


class StripeJournal:
    """The journal of one parity set over its members' tails. ``lock`` is held by the
    caller around an append *and* the in-place writes it covers, and around ``reset``: a
    reset then never drops an entry whose writes are still going on."""

    def __init__(self, members: Sequence[Member], *, on_error: Callable[[Member, OSError], None]) -> None:
        self.members = list(members)
        self.on_error = on_error
        self.lock = threading.RLock()
        self.epoch = 0
        self.seq = 0
        self.head = BLOCK  # the next entry's offset inside the journal
        g = self.members[0].geometry
        assert g is not None and g.journal_size
        self.size = g.journal_size

    def _targets(self) -> list[Member]:
        return [m for m in self.members if m.writable and m.geometry is not None and m.geometry.journal_size]

    def _readable(self) -> list[Member]:
        return [m for m in self.members if m.fd >= 0 and m.state != "failed" and m.geometry is not None
                and m.geometry.journal_size]

    def load(self) -> list[Entry]:
        """The valid entries on the devices (merged by sequence number); sets the epoch."""
        headers: list[tuple[Member, int]] = []
        for m in self._readable():
            assert m.geometry is not None
            block = bytearray(BLOCK)
            try:
                m.pread(memoryview(block), m.geometry.journal_offset)
            except OSError as exc:
                self.on_error(m, exc)
                continue
            ep = decode_header(block)
            if ep is not None:
                headers.append((m, ep))
        if not headers:
            return []
        self.epoch = max(ep for _, ep in headers)
        merged: dict[int, Entry] = {}
        for m, ep in headers:
            if ep != self.epoch:
                continue
            assert m.geometry is not None
            area = bytearray(self.size - BLOCK)
            try:
                m.pread(memoryview(area), m.geometry.journal_offset + BLOCK)
            except OSError as exc:
                self.on_error(m, exc)
                continue
            for e in decode_entries(area, self.epoch):
                merged.setdefault(e.seq, e)
        return [merged[s] for s in sorted(merged)]

    def append(self, entries: Iterable[tuple[int, int, int, int, int, int, Sequence[bytes | bytearray | memoryview]]],
               sync: Callable[[], None]) -> None:
        """Write ``(kind, stripe, count, d0, length, mask, units)`` entries to every writable
        device and ``fdatasync`` them; a full log is ``reset`` first (``sync`` makes every
        earlier write durable). Caller holds ``lock``."""
        items = list(entries)
        need = sum(entry_size(length, len(units)) for _, _, _, _, length, _, units in items)
        if need > self.size - BLOCK:
            raise JournalFull(errno.EFBIG, f"a journal append of {need} bytes does not fit in {self.size}")
        if self.head + need > self.size:
            self.reset(sync)
        blocks: list[bytes | bytearray | memoryview] = []
        for kind, stripe, count, d0, length, mask, units in items:
            self.seq += 1
            blocks += encode_entry(self.epoch, self.seq, kind=kind, stripe=stripe, count=count, d0=d0,
                                   length=length, mask=mask, units=units)
        targets = self._targets()
        for m in targets:
            assert m.geometry is not None
            pos = m.geometry.journal_offset + self.head
            try:
                for b in blocks:
                    m.pwrite(memoryview(b), pos)
                    pos += len(b)
                os.fdatasync(m.fd)
            except OSError as exc:
                self.on_error(m, exc)
        if not any(m.writable for m in targets):
            raise OSError(errno.EIO, "the stripe journal reached no device")
        self.head += need

    def reset(self, sync: Callable[[], None]) -> None:
        """Every write so far made durable (``sync``), then a new epoch: every entry is dropped."""
        sync()
        self.epoch += 1
        self.seq = 0
        self.head = BLOCK
        header = encode_header(self.epoch)
        for m in self._targets():
            assert m.geometry is not None
            try:
                m.pwrite(memoryview(header), m.geometry.journal_offset)
                os.fdatasync(m.fd)
            except OSError as exc:
                self.on_error(m, exc)
