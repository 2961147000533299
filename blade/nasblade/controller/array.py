"""The array: device files, the persisted superblock/LU table, and raw LU I/O.

``Array`` owns the device file descriptors and an ``layout.ArrayState``. It formats blank
devices, finds the newest valid superblock on restart, and maps LU reads/writes onto
``os.preadv`` / ``os.pwritev`` of the device pieces (``layout.map_range``). It knows nothing
of caching, fencing or NBD: ``cache.Cache`` sits on top of the raw I/O and
``engine.Engine`` on top of both.

Allocation is what the device files record, nothing else: new extents and zeroed ranges
are punched out (``fallocate(PUNCH_HOLE)``), so ``holes`` finds never-written and zeroed
ranges of an LU with ``SEEK_HOLE`` / ``SEEK_DATA`` on the devices through the LU's extents.
That survives restarts because the file system keeps it; on a device that cannot tell
(a block device, a file system without ``SEEK_DATA``) every byte counts as data.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime as dt
import errno
import logging
import os
import stat
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from nasblade.controller import layout, luname

log = logging.getLogger(__name__)

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_FALLOC_FL_ZERO_RANGE = 0x10
_FALLOC_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Device:
    index: int
    path: str
    fd: int
    size: int
    #: ``fallocate(PUNCH_HOLE)`` works here, so zeroing a range costs no data writes
    can_punch: bool = False


class Array:
    """Devices + persisted state. Construct with ``Array.open``."""

    def __init__(self, devices: list[Device], state: layout.ArrayState) -> None:
        self.devices = devices
        self.state = state
        self._zeroes = bytes(layout.MiB)

    # --- opening and persisting -----------------------------------------------------------

    @classmethod
    def open(cls, specs: Sequence[tuple[str, int | None]]) -> Array:
        """Open (creating sparse files where a size is given) and load or format the array."""
        if not specs:
            raise layout.LayoutError("at least one device is needed")
        opened: list[Device] = []
        for i, (path, size) in enumerate(specs):
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if size else 0)
            fd = os.open(path, flags, 0o600)
            cur = os.lseek(fd, 0, os.SEEK_END)
            if size and cur < size and os.path.isfile(path):
                os.ftruncate(fd, size)
                cur = size
            if cur < layout.META_SIZE + layout.STRIPE_UNIT:
                raise layout.LayoutError(f"device {path} is too small ({cur} bytes)")
            opened.append(Device(i, path, fd, cur, can_punch=_probe_punch(fd, cur)))
        found: list[tuple[int, dict[str, object], Device]] = []
        for dev in opened:
            for slot in (0, 1):
                raw = os.pread(dev.fd, layout.SLOT_SIZE, layout.slot_offset(slot))
                rec = layout.decode_record(raw)
                if rec is not None:
                    found.append((rec[0], rec[1], dev))
        if not found:
            state = layout.ArrayState(uuid=str(uuid.uuid4()), device_sizes=[d.size for d in opened])
            array = cls(opened, state)
            array.persist()
            log.info("formatted a new array %s on %d device(s)", state.uuid, len(opened))
            return array
        seq, payload, _ = max(found, key=lambda t: t[0])
        state = layout.ArrayState.from_payload(seq, payload)
        # Put devices in their recorded order: each carries its own index in its records.
        by_index: dict[int, Device] = {}
        for _s, p, dev in found:
            if p.get("uuid") != state.uuid:
                raise layout.LayoutError(f"device {dev.path} belongs to another array")
            by_index.setdefault(int(p["device"]), dev)  # type: ignore[call-overload]
        # A device whose superblock slots are both unreadable gets the one index left over,
        # if the sizes agree; its records are rewritten below.
        unknown = [d for d in opened if d not in by_index.values()]
        missing = [i for i in range(len(state.device_sizes)) if i not in by_index]
        if len(unknown) == len(missing) == 1 and unknown[0].size == state.device_sizes[missing[0]]:
            log.warning("device %s has no valid superblock; taking it as device %d",
                        unknown[0].path, missing[0])
            by_index[missing[0]] = unknown[0]
        if len(opened) != len(state.device_sizes) or sorted(by_index) != list(range(len(opened))):
            raise layout.LayoutError(
                f"array {state.uuid} has {len(state.device_sizes)} devices; "
                f"got {len(opened)} with indexes {sorted(by_index)}")
        devices = [by_index[i] for i in range(len(opened))]
        for i, dev in enumerate(devices):
            dev.index = i
            if dev.size != state.device_sizes[i]:
                raise layout.LayoutError(f"device {dev.path} changed size")
        array = cls(devices, state)
        array.persist()  # refresh every device's records (repairs a damaged slot)
        log.info("opened array %s at superblock sequence %d", state.uuid, seq)
        return array

    def persist(self) -> None:
        """Write the next superblock sequence to every device and fsync them."""
        self.state.seq += 1
        seq = self.state.seq
        for dev in self.devices:
            rec = layout.encode_record(seq, self.state.payload(dev.index))
            os.pwrite(dev.fd, rec, layout.slot_offset(seq))
        for dev in self.devices:
            os.fdatasync(dev.fd)

    def close(self) -> None:
        for dev in self.devices:
            if dev.fd >= 0:
                os.close(dev.fd)
                dev.fd = -1

    # --- LU table -----------------------------------------------------------------------------

    def _all_segments(self) -> list[layout.Segment]:
        return [s for lu in self.state.lus.values() for s in lu.segments]

    def create_lu(self, name: str, size: int, *, read_only: bool = False) -> layout.LURecord:
        luname.check(name)
        if name in self.state.lus:
            raise FileExistsError(name)
        if size <= 0:
            raise ValueError("size must be positive")
        segs = layout.allocate(self.state.device_sizes, self._all_segments(), size)
        lu = layout.LURecord(name=name, size=size, segments=segs, created=now(), read_only=read_only)
        self.state.lus[name] = lu
        self._zero_new(lu, segs)
        self.persist()
        return lu

    def _zero_new(self, lu: layout.LURecord, segs: list[layout.Segment]) -> None:
        """New extents read as zeroes (they may hold a deleted LU's data)."""
        for seg in segs:
            for dev, off in seg.members:
                self._punch(self.devices[dev].fd, off, seg.member_length)

    def grow_lu(self, name: str, size: int) -> layout.LURecord:
        lu = self.state.lus[name]
        if size < lu.size:
            raise ValueError("LUs can only grow")
        if size > lu.allocated:
            segs = layout.allocate(self.state.device_sizes, self._all_segments(), size - lu.allocated)
            self._zero_new(lu, segs)
            lu.segments.extend(segs)
        lu.size = size
        self.persist()
        return lu

    def delete_lu(self, name: str) -> None:
        del self.state.lus[name]
        self.persist()

    def free_bytes(self) -> list[int]:
        runs = layout.free_runs(self.state.device_sizes, self._all_segments())
        return [sum(e - s for s, e in r) for r in runs]

    # --- raw I/O ----------------------------------------------------------------------------

    def read_into(self, lu: layout.LURecord, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from the LU at ``offset`` (device pieces, no cache)."""
        pos = 0
        for p in layout.map_range(lu.segments, offset, len(buf)):
            view = buf[pos : pos + p.length]
            got = os.preadv(self.devices[p.device].fd, [view], p.device_offset)
            if got != p.length:
                view[got:] = bytes(p.length - got)
            pos += p.length

    def write_from(self, lu: layout.LURecord, offset: int, data: memoryview) -> set[int]:
        """Write ``data`` to the LU at ``offset``; return the device indexes touched."""
        pos = 0
        touched = set()
        for p in layout.map_range(lu.segments, offset, len(data)):
            view = data[pos : pos + p.length]
            fd = self.devices[p.device].fd
            off = p.device_offset
            while view:
                n = os.pwritev(fd, [view], off)
                view = view[n:]
                off += n
            touched.add(p.device)
            pos += p.length
        return touched

    def zero(self, lu: layout.LURecord, offset: int, length: int, *, provision: bool = False) -> set[int]:
        """Zero a range: punch holes, or with ``provision`` (NBD ``NO_HOLE``) keep the space
        allocated (``fallocate(ZERO_RANGE)``, else zeroes written)."""
        touched = set()
        for p in layout.map_range(lu.segments, offset, length):
            fd = self.devices[p.device].fd
            if provision:
                self._zero_range(fd, p.device_offset, p.length)
            else:
                self._punch(fd, p.device_offset, p.length)
            touched.add(p.device)
        return touched

    def _punch(self, fd: int, offset: int, length: int) -> None:
        self._fallocate_or_write(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)

    def _zero_range(self, fd: int, offset: int, length: int) -> None:
        self._fallocate_or_write(fd, _FALLOC_FL_ZERO_RANGE | _FALLOC_FL_KEEP_SIZE, offset, length)

    def _fallocate_or_write(self, fd: int, mode: int, offset: int, length: int) -> None:
        res = _libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length))
        if res == 0:
            return
        err = ctypes.get_errno()
        if err not in _FALLOC_UNSUPPORTED:
            raise OSError(err, os.strerror(err))
        pos, end = offset, offset + length
        while pos < end:
            n = min(len(self._zeroes), end - pos)
            os.pwrite(fd, memoryview(self._zeroes)[:n], pos)
            pos += n

    def can_punch(self, lu: layout.LURecord, offset: int, length: int) -> bool:
        """Whether zeroing the range punches holes on every device it touches (no data I/O)."""
        devs = {p.device for p in layout.map_range(lu.segments, offset, length)}
        return all(self.devices[d].can_punch for d in devs)

    def holes(self, lu: layout.LURecord, offset: int, length: int) -> list[tuple[int, int]]:
        """Sorted ``(start, end)`` LU ranges inside the range that the devices hold as holes.

        Pieces that are contiguous on one device are looked up together, two ``lseek`` calls
        per data run.
        """
        merged: list[list[int]] = []  # [device, device offset, length, lu offset]
        for p in layout.map_range(lu.segments, offset, length):
            last = merged[-1] if merged else None
            if (last is not None and last[0] == p.device and last[1] + last[2] == p.device_offset
                    and last[3] + last[2] == p.lu_offset):
                last[2] += p.length
            else:
                merged.append([p.device, p.device_offset, p.length, p.lu_offset])
        out: list[tuple[int, int]] = []
        for dev, dev_off, n, lu_off in merged:
            for start, end in _device_holes(self.devices[dev].fd, dev_off, dev_off + n):
                s, e = lu_off + start - dev_off, lu_off + end - dev_off
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
        return out

    def sync(self, devices: set[int] | None = None) -> None:
        for dev in self.devices:
            if devices is None or dev.index in devices:
                os.fdatasync(dev.fd)


def _probe_punch(fd: int, size: int) -> bool:
    """Whether hole punching works on this device: a regular file whose file system accepts
    ``PUNCH_HOLE`` (probed past the end of the file, which changes nothing)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return False  # on a block device it may write zeroes: not known to be fast
    res = _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE,
                          ctypes.c_long(size), ctypes.c_long(4096))
    return bool(res == 0)


def _device_holes(fd: int, start: int, end: int) -> list[tuple[int, int]]:
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
