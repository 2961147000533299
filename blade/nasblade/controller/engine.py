"""The control store and the I/O gate: what the NBD front end and the control API share.

``Engine`` holds the ``array.Array`` (LU table and reservations, persisted), the
``cache.Cache``, and the in-memory parts of the control store: the blade registry, cache
records registered by block processors, fault injections, load figures and open NBD
connections. Every LU I/O from ``nasblade.controller.nbdserver`` and from the copy engine goes
through ``Engine.read`` / ``write`` / ``zero`` / ``flush``, which apply, in order:
export checks (read-only, reservation epoch = fencing), range checks, injected faults,
copy-on-write for running copy jobs, then the cache. Errors are ``OSError`` carrying the
errno the NBD reply uses. ``allocation`` answers what is allocated (device holes from
``Array.holes`` minus what the cache holds dirty), ``prefetch`` fills the cache ahead of use.

Device fsyncs run in a worker thread; everything else runs on the event loop thread.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nasblade import latency
from nasblade.buffers import Spares
from nasblade.controller import layout, vdev
from nasblade.controller.array import Array, now
from nasblade.controller.cache import BYPASS, Cache

#: bytes of large-read buffers kept for reuse: 16 reads of 1 MiB in flight, and as many more
READ_SPARE_BYTES = 32 * 1024 * 1024


class Fenceable(Protocol):
    """An open NBD connection as the engine sees it."""

    lu: str
    holder: str | None
    epoch: int | None

    def fence(self) -> None: ...


@dataclass(frozen=True)
class Fault:
    id: str
    lu: str
    offset: int
    length: int
    ops: frozenset[str]
    #: a fault on a device (offsets on the device) instead of an LU
    device: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.device is not None:
            return {"id": self.id, "device": self.device, "offset": self.offset,
                    "length": self.length, "ops": sorted(self.ops)}
        return {"id": self.id, "lu": self.lu, "offset": self.offset, "length": self.length,
                "ops": sorted(self.ops)}


@dataclass
class CacheRecord:
    id: str
    client: str
    lu: str
    ranges: list[tuple[int, int]]
    state: str
    created: str = field(default_factory=now)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "client": self.client, "lu": self.lu,
                "ranges": [list(r) for r in self.ranges], "state": self.state,
                "created": self.created}


class Load:
    """Per-second buckets of completed I/O, averaged over ``window`` seconds."""

    def __init__(self, window: int = 5) -> None:
        self.window = window
        self.buckets: collections.deque[list[float]] = collections.deque(maxlen=window + 1)
        self._second = -1
        self.inflight = 0
        #: LU name -> cumulative [reads, writes, read bytes, written bytes] since the start
        #: (``nasblade.controller.metrics`` exports them as counters)
        self.totals: dict[str, list[int]] = {}
        #: (LU name, NBD command) -> how long requests took from arrival to reply
        #: (``nasblade.controller.nbdserver`` times them)
        self.latency = latency.Latencies()

    def _bucket(self) -> list[float]:
        sec = int(time.monotonic())
        if sec != self._second:
            gap = min(sec - self._second, self.window + 1) if self._second >= 0 else 1
            for _ in range(gap):
                # reads, writes, read bytes, written bytes, queue-depth sum, samples
                self.buckets.append([0, 0, 0, 0, 0, 0])
            self._second = sec
        return self.buckets[-1]

    def add(self, *, lu: str, read: int = 0, written: int = 0) -> None:
        b = self._bucket()
        t = self.totals.get(lu)
        if t is None:
            t = self.totals[lu] = [0, 0, 0, 0]
        if read:
            b[0] += 1
            b[2] += read
            t[0] += 1
            t[2] += read
        if written:
            b[1] += 1
            b[3] += written
            t[1] += 1
            t[3] += written
        b[4] += self.inflight
        b[5] += 1

    def figures(self) -> dict[str, Any]:
        self._bucket()
        full = list(self.buckets)[:-1][-self.window :] or [[0, 0, 0, 0, 0, 0]]
        n = float(len(full))
        sums = [sum(b[i] for b in full) for i in range(6)]
        return {"windowSeconds": n, "iops": (sums[0] + sums[1]) / n, "readIops": sums[0] / n,
                "writeIops": sums[1] / n,
                "mbps": {"read": sums[2] / n / 1e6, "write": sums[3] / n / 1e6},
                "queueDepth": sums[4] / sums[5] if sums[5] else 0.0}


LARGE = BYPASS


class CopyHook(Protocol):
    def before_write(self, lu: str, offset: int, length: int) -> None: ...

    def would_copy(self, lu: str, offset: int, length: int) -> bool:
        """Whether ``before_write`` of this range would copy data first."""
        ...


#: ``NBD_CMD_CACHE`` prefetches at most this share of the cache per request
PREFETCH_SHARE = 4


class Engine:
    def __init__(self, array: Array, *, cache_size: int) -> None:
        self.array = array
        self.cache = Cache(array, cache_size)
        self.clients: dict[str, dict[str, Any]] = {}
        self.records: dict[str, CacheRecord] = {}
        self.faults: dict[str, Fault] = {}
        self.load = Load()
        self.connections: set[Fenceable] = set()
        self.copy_hooks: list[CopyHook] = []
        self.on_lu_deleted: list[Callable[[str], None]] = []
        self._ids = itertools.count(1)
        #: while True the background destager writes nothing back (``POST /v1/cache/hold``);
        #: FLUSH, FUA, eviction and shutdown still destage, so durability is unchanged
        self.destage_held = False
        #: large reads/writes and fsyncs run here so device I/O overlaps protocol work
        self.io_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="devio")
        #: buffers of large reads, used again once their replies are sent (``nasblade.buffers``)
        self.read_buffers = Spares(READ_SPARE_BYTES)
        #: large reads served from the page cache on the loop thread (``_read_cached``)
        self.inline_reads = 0
        #: device writes of write-throughs in flight (``write_through``; ``flush`` waits for them)
        self._through: set[asyncio.Future[set[int]]] = set()

    # --- LU table ----------------------------------------------------------------------------

    def lu(self, name: str) -> layout.LURecord:
        lu = self.array.state.lus.get(name)
        if lu is None:
            raise NotFound(f"LU {name}")
        return lu

    def lu_json(self, lu: layout.LURecord) -> dict[str, Any]:
        reservation = {"holder": lu.holder, "epoch": lu.epoch} if lu.holder is not None else None
        return {"name": lu.name, "size": lu.size, "readOnly": lu.read_only, "created": lu.created,
                "allocated": lu.allocated,
                "devices": sorted({d for s in lu.segments for d, _ in s.members}),
                "copies": sorted({m.index for s in lu.segments for d, _ in s.members
                                  for m in self.array.vdevs[d].members}),
                "extents": [{"device": d, "offset": off, "length": s.member_length, "segment": i}
                            for i, s in enumerate(lu.segments) for d, off in s.members],
                "reservation": reservation, "lastEpoch": lu.last_epoch,
                "connections": sum(1 for c in self.connections if c.lu == lu.name)}

    def delete_lu(self, name: str) -> None:
        self.lu(name)
        for hook in self.on_lu_deleted:
            hook(name)
        for conn in [c for c in self.connections if c.lu == name]:
            conn.fence()
        self.cache.drop_lu(name)
        for rid in [r.id for r in self.records.values() if r.lu == name]:
            del self.records[rid]
        self.faults = {k: f for k, f in self.faults.items() if f.lu != name}
        self.array.delete_lu(name)

    def reserve(self, name: str, holder: str, epoch: int | None) -> layout.LURecord:
        """Give ``holder`` the reservation with ``epoch``; older holders are fenced at once."""
        lu = self.lu(name)
        if epoch is not None and lu.holder == holder and lu.epoch == epoch:
            return lu
        new_epoch = lu.last_epoch + 1 if epoch is None else epoch
        if new_epoch <= lu.last_epoch:
            raise StaleEpoch(lu.last_epoch)
        lu.holder, lu.epoch, lu.last_epoch = holder, new_epoch, new_epoch
        self.array.persist()
        self._fence_stale(lu)
        return lu

    def release(self, name: str) -> None:
        lu = self.lu(name)
        lu.holder, lu.epoch = None, None
        self.array.persist()
        self._fence_stale(lu)

    def _fence_stale(self, lu: layout.LURecord) -> None:
        for conn in list(self.connections):
            if conn.lu == lu.name and conn.epoch is not None and conn.epoch != lu.epoch:
                conn.fence()

    # --- the I/O gate ----------------------------------------------------------------------

    def may_write(self, conn: Fenceable, lu: layout.LURecord) -> int:
        """0, or the NBD errno refusing a write from ``conn`` (read-only, fenced)."""
        if lu.read_only:
            return errno.EPERM
        if conn.epoch is None:
            return errno.EPERM if lu.holder is not None else 0
        if conn.epoch != lu.epoch or conn.holder != lu.holder:
            return errno.EPERM
        return 0

    def _check_fault(self, lu: str, offset: int, length: int, op: str) -> None:
        if not self.faults:
            return
        for f in self.faults.values():
            if f.device is None and f.lu == lu and op in f.ops and offset < f.offset + f.length and f.offset < offset + length:
                raise OSError(errno.EIO, f"injected {op} fault on {lu}")

    def read(self, lu: layout.LURecord, offset: int, length: int) -> bytearray:
        if offset < 0 or length < 0 or offset + length > lu.size:
            raise OSError(errno.EINVAL, "read past the end")
        self._check_fault(lu.name, offset, length, "read")
        data = self.cache.read(lu, offset, length)
        self.load.add(lu=lu.name, read=length)
        return data

    async def read_large(self, lu: layout.LURecord, offset: int, length: int) -> bytearray:
        """A read of at least ``cache.BYPASS`` bytes with the device I/O off the loop.

        Checks and the dirty overlay run on the loop thread. If the cache wrote data back
        while the device read was in flight, the read is repeated on the loop thread, so
        data acknowledged before the request is never missed.
        """
        if offset < 0 or length < 0 or offset + length > lu.size:
            raise OSError(errno.EINVAL, "read past the end")
        self._check_fault(lu.name, offset, length, "read")
        out = await self._read_devices(lu, offset, length)
        self.cache.stats.misses += 1
        self.load.add(lu=lu.name, read=length)
        return out

    async def _read_devices(self, lu: layout.LURecord, offset: int, length: int) -> bytearray:
        out = bytearray(length) if length < BYPASS else self.read_buffers.get(length)
        view = memoryview(out)
        if length < BYPASS:  # not worth a trip to the thread pool
            self.array.read_into(lu, offset, view)
        elif self._read_cached(lu, offset, view):
            self.inline_reads += 1
        else:
            generation = self.cache.destage_generation
            await asyncio.get_running_loop().run_in_executor(self.io_pool, self.array.read_into, lu, offset, view)
            if self.cache.destage_generation != generation:
                self.array.read_into(lu, offset, view)
        self.cache.overlay_dirty(lu, offset, view)
        return out

    def _read_cached(self, lu: layout.LURecord, offset: int, view: memoryview) -> bool:
        """Read on the loop thread if every byte is in the page cache and needs no repair
        (``vdev.nowait``); ``False`` when the read has to go to the I/O pool. Nothing else
        runs meanwhile, so no destage can slip between device read and dirty overlay."""
        if not all(v.nowait_reads for v in self.array.vdevs):
            return False
        try:
            with vdev.nowait():
                self.array.read_into(lu, offset, view)
        except vdev.NotCached:
            return False
        return True

    async def read_extents(self, lu: layout.LURecord, offset: int,
                           length: int) -> list[tuple[int, int, bytearray | None]]:
        """A large read as ``(offset, length, data)`` pieces in order, ``data`` ``None`` for a
        hole (reads as zeroes, not read from the devices); see ``allocation``."""
        if offset < 0 or length < 0 or offset + length > lu.size:
            raise OSError(errno.EINVAL, "read past the end")
        self._check_fault(lu.name, offset, length, "read")
        out: list[tuple[int, int, bytearray | None]] = []
        pos = offset
        for n, allocated in self.allocation(lu, offset, length):
            out.append((pos, n, await self._read_devices(lu, pos, n) if allocated else None))
            pos += n
        self.cache.stats.misses += 1
        self.load.add(lu=lu.name, read=length)
        return out

    async def write_large(self, lu: layout.LURecord, offset: int, data: memoryview, *, fua: bool) -> None:
        """A write-through of at least ``cache.BYPASS`` bytes with the device I/O off the loop."""
        self._before_write(lu, offset, len(data))
        touched = await self.write_through(lu, offset, data)
        self.load.add(lu=lu.name, written=len(data))
        if fua:
            await self.sync(touched)

    async def write_through(self, lu: layout.LURecord, offset: int, data: memoryview) -> set[int]:
        """Write ``data`` to the devices off the loop, keeping the cache coherent with it (no
        checks: the caller made them). Returns the devices written."""
        token = self.cache.begin_write_through(lu, offset, data)
        io = asyncio.get_running_loop().run_in_executor(self.io_pool, self.array.write_from, lu, offset, data)
        self._through.add(io)
        try:
            return await io
        finally:
            self._through.discard(io)
            self.cache.end_write_through(lu, offset, len(data), token)

    def _before_write(self, lu: layout.LURecord, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > lu.size:
            raise OSError(errno.ENOSPC, "write past the end")
        self._check_fault(lu.name, offset, length, "write")
        for hook in self.copy_hooks:
            hook.before_write(lu.name, offset, length)

    async def write(self, lu: layout.LURecord, offset: int, data: memoryview, *, fua: bool) -> None:
        self._before_write(lu, offset, len(data))
        touched = self.cache.write(lu, offset, data, through=fua)
        self.load.add(lu=lu.name, written=len(data))
        if fua:
            await self.sync(touched)

    async def zero(self, lu: layout.LURecord, offset: int, length: int, *, fua: bool,
                   fast: bool = False, no_hole: bool = False) -> None:
        """Zero a range: holes punched on the devices, or with ``no_hole`` the space kept
        allocated. With ``fast`` a zero that may cost as much as writing zeroes is refused with
        ``ENOTSUP`` before anything changes (always with ``no_hole``: provisioning may have to
        write the zeroes)."""
        if fast:
            if offset < 0 or length < 0 or offset + length > lu.size:
                raise OSError(errno.ENOSPC, "write past the end")
            if no_hole or not self.zero_is_fast(lu, offset, length):
                raise OSError(errno.ENOTSUP, "zeroing this range is not faster than writing zeroes")
        self._before_write(lu, offset, length)
        touched = self.cache.zero(lu, offset, length, provision=no_hole)
        self.load.add(lu=lu.name, written=length)
        if fua:
            await self.sync(touched)

    def zero_is_fast(self, lu: layout.LURecord, offset: int, length: int) -> bool:
        """Zeroing is fast when every device of the range punches holes and no copy job has to
        save the range's old data first (that copy costs as much as a write)."""
        if length == 0:
            return True
        if any(hook.would_copy(lu.name, offset, length) for hook in self.copy_hooks):
            return False
        return self.array.can_punch(lu, offset, length)

    def allocation(self, lu: layout.LURecord, offset: int, length: int) -> list[tuple[int, bool]]:
        """``(length, allocated)`` runs covering ``[offset, offset + length)`` in order.

        Unallocated = a hole on the devices (never written since the extent was allocated, or
        zeroed since) that the cache holds no dirty data for; it reads as zeroes.
        """
        if offset < 0 or length <= 0 or offset + length > lu.size:
            raise OSError(errno.EINVAL, "block status past the end")
        holes = _minus(self.array.holes(lu, offset, length),
                       self.cache.dirty_ranges(lu.name, offset, length))
        out: list[tuple[int, bool]] = []
        pos = offset
        for start, end in holes:
            if start > pos:
                out.append((start - pos, True))
            out.append((end - start, False))
            pos = end
        if pos < offset + length:
            out.append((offset + length - pos, True))
        return out

    async def prefetch(self, lu: layout.LURecord, offset: int, length: int) -> None:
        """``NBD_CMD_CACHE``: read the range into the cache, at most a quarter of the cache per
        request (the rest of a larger range is left alone), 256 KiB at a time so other requests
        run in between. Reads nothing the cache already holds; injected faults are skipped,
        a read error ends the prefetch quietly (it is only a hint)."""
        if offset < 0 or length < 0 or offset + length > lu.size:
            raise OSError(errno.EINVAL, "cache request past the end")
        end = offset + min(length, self.cache.capacity // PREFETCH_SHARE)
        pos = offset
        step = BYPASS
        while pos < end and self.array.state.lus.get(lu.name) is lu:
            n = min(step, end - pos)
            try:
                self.cache.prefetch(lu, pos, n)
            except OSError:
                return
            pos += n
            await asyncio.sleep(0)

    def check_trim(self, lu: layout.LURecord, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > lu.size:
            raise OSError(errno.EINVAL, "trim past the end")

    async def flush(self) -> None:
        """Destage the whole cache and fsync every device (NBD FLUSH, CAN_MULTI_CONN).

        Write-throughs in flight are waited for first: one may have superseded dirty cache
        data of an acknowledged write (``Cache.begin_write_through`` drops it), and until its
        own device write is done that acknowledged data is nowhere but in it. Without the wait
        a FLUSH could return with the range holding neither write on the devices."""
        if self._through:
            await asyncio.gather(*list(self._through), return_exceptions=True)
        self.cache.destage()
        self.clear_destaged_records()
        await self.sync(None)

    async def sync(self, devices: set[int] | None) -> None:
        if devices is not None and not devices:
            return
        await asyncio.get_running_loop().run_in_executor(self.io_pool, self.array.sync, devices)

    # --- cache records (claim 3) ---------------------------------------------------------------

    def add_record(self, client: str, lu: str, ranges: list[tuple[int, int]], state: str) -> CacheRecord:
        rec = CacheRecord(uuid.uuid4().hex[:16], client, lu, ranges, state)
        self.records[rec.id] = rec
        return rec

    def clear_destaged_records(self) -> None:
        """Remove dirty records none of whose ranges is dirty in the cache any more."""
        for rec in list(self.records.values()):
            if rec.state == "dirty" and not any(
                self.cache.is_dirty(rec.lu, off, ln) for off, ln in rec.ranges if ln > 0
            ):
                del self.records[rec.id]

    def hold_destage(self, hold: bool) -> None:
        """Pause (``True``) or resume (``False``) the background destager.

        Only the background task is paused: an NBD FLUSH still destages and fsyncs everything,
        FUA writes still go through, a full cache still destages its eviction victims, and
        shutdown still destages. Releasing lets the next destager pass (≤ ``interval``) run.
        """
        self.destage_held = hold

    async def destager(self, *, interval: float = 0.2, batch: int = 256) -> None:
        """Background destaging: write dirty lines back in batches, keep the loop responsive.

        A pass is skipped while ``destage_held``; a batch already started finishes.
        """
        while True:
            await asyncio.sleep(interval)
            while self.cache.dirty and not self.destage_held:
                self.cache.destage(max_lines=batch)
                await asyncio.sleep(0)
            self.clear_destaged_records()

    # --- faults -------------------------------------------------------------------------------

    def add_fault(self, lu: str, offset: int, length: int, ops: frozenset[str]) -> Fault:
        f = Fault(uuid.uuid4().hex[:16], lu, offset, length, ops)
        self.faults[f.id] = f
        return f

    def add_device_fault(self, device: int, offset: int, length: int, ops: frozenset[str]) -> Fault:
        """I/O errors from one device of the array (below checksums and redundancy)."""
        if not 0 <= device < len(self.array.devices):
            raise NotFound(f"device {device}")
        f = Fault(uuid.uuid4().hex[:16], "", offset, length, ops, device)
        self.faults[f.id] = f
        self._apply_device_faults()
        return f

    def delete_fault(self, fid: str) -> None:
        if fid not in self.faults:
            raise NotFound(f"fault {fid}")
        del self.faults[fid]
        self._apply_device_faults()

    def clear_faults(self) -> None:
        self.faults.clear()
        self._apply_device_faults()

    def _apply_device_faults(self) -> None:
        for dev in self.array.devices:
            dev.faults = [(f.offset, f.offset + f.length, f.ops) for f in self.faults.values()
                          if f.device == dev.index]


def _minus(ranges: list[tuple[int, int]], cut: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted disjoint ``ranges`` without the parts covered by sorted disjoint ``cut``."""
    out: list[tuple[int, int]] = []
    j = 0
    for start, end in ranges:
        while j < len(cut) and cut[j][1] <= start:
            j += 1
        pos, k = start, j
        while k < len(cut) and cut[k][0] < end:
            if cut[k][0] > pos:
                out.append((pos, cut[k][0]))
            pos = max(pos, cut[k][1])
            k += 1
        if pos < end:
            out.append((pos, end))
    return out


class NotFound(Exception):
    """A named object (LU, copy job, client, fault) does not exist: the control API's 404.

    Raised on purpose, by a lookup that checked; a ``KeyError`` from anywhere else is a bug
    and answers 500 (``api.error_middleware``)."""


class StaleEpoch(Exception):
    def __init__(self, last_epoch: int) -> None:
        super().__init__(f"epoch must be greater than {last_epoch}")
        self.last_epoch = last_epoch
