"""The array: device files, the persisted superblock/LU table, and raw LU I/O.

``Array`` owns the device file descriptors (``vdev.Member``) and an ``layout.ArrayState``.
It formats blank devices with a protection level (``redundancy``), finds the newest valid
superblock on restart (opening degraded when redundancy covers a missing device, resyncing
regions a crash left mid-write), and maps LU reads/writes onto the virtual devices
(``vdev.VDev``: mirror sets, checksums, repair) through the device pieces
(``layout.map_range``). ``replace`` / ``rebuild_step`` / ``scrub_step`` / ``check_devices``
are the maintenance entry points ``maintenance`` drives. It knows nothing
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
import datetime as dt
import logging
import os
import stat
import threading
import uuid
from collections.abc import Sequence
from typing import Any

from nasblade.controller import journal, layout, luname
from nasblade.controller import redundancy as rd
from nasblade.controller.parity import ParityVDev
from nasblade.controller.vdev import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    Member,
    VDev,
    _libc,
    device_holes,
    fallocate_or_write,
)

log = logging.getLogger(__name__)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


#: the physical devices are ``vdev.Member`` s (kept under the old name for callers)
Device = Member


class Array:
    """Devices + persisted state. Construct with ``Array.open``."""

    def __init__(self, devices: list[Member], state: layout.ArrayState) -> None:
        self.devices = devices
        self.state = state
        self.protection = rd.Protection.from_json(state.protection) if state.version >= 2 else rd.Protection()
        self._persist_lock = threading.RLock()
        sets = self.protection.sets(len(devices)) if state.version >= 2 else [(i,) for i in range(len(devices))]
        self.vdevs: list[VDev] = []
        for i, s in enumerate(sets):
            members = [devices[d] for d in s]
            if self.protection.level == "parity":
                self.vdevs.append(ParityVDev(i, members, unit=state.unit, parity=self.protection.parity,
                                             meta=layout.META_SIZE, on_failure=self._failed))
            else:
                self.vdevs.append(VDev(i, members, unit=state.unit, on_failure=self._failed))
        #: sizes the LU allocation works with (virtual devices: after the tail, one per set)
        self.vsizes = [v.size for v in self.vdevs]

    # --- opening and persisting -----------------------------------------------------------

    @classmethod
    def open(cls, specs: Sequence[tuple[str, int | None]],
             protection: rd.Protection | str | None = None) -> Array:
        """Open (creating sparse files where a size is given) and load or format the array.

        ``protection`` is used when formatting; an existing array keeps its own and refuses a
        different one. With redundancy, a device that is missing is failed (the array opens
        degraded) and a blank device in the place of one is rebuilt.
        """
        if not specs:
            raise layout.LayoutError("at least one device is needed")
        wanted = None if protection is None else rd.parse(protection)
        opened: list[Member] = []
        for i, (path, size) in enumerate(specs):
            flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if size else 0)
            try:
                fd = os.open(path, flags, 0o600)
            except FileNotFoundError:
                opened.append(Member(i, path, -1, 0, state="failed", reason="device missing"))
                continue
            cur = os.lseek(fd, 0, os.SEEK_END)
            if size and cur < size and os.path.isfile(path):
                os.ftruncate(fd, size)
                cur = size
            if cur < layout.META_SIZE + layout.STRIPE_UNIT:
                raise layout.LayoutError(f"device {path} is too small ({cur} bytes)")
            st = os.fstat(fd)
            opened.append(Member(i, path, fd, cur, can_punch=_probe_punch(fd, cur),
                                 ino=(st.st_dev, st.st_ino)))
        found: list[tuple[int, dict[str, object], Member]] = []
        for dev in opened:
            if dev.fd < 0:
                continue
            for slot in (0, 1):
                raw = os.pread(dev.fd, layout.SLOT_SIZE, layout.slot_offset(slot))
                rec = layout.decode_record(raw)
                if rec is not None:
                    found.append((rec[0], rec[1], dev))
        if not found:
            return cls._format(opened, wanted or rd.Protection())
        seq, payload, _ = max(found, key=lambda t: t[0])
        state = layout.ArrayState.from_payload(seq, payload)
        recorded = rd.Protection.from_json(state.protection)
        if wanted is not None and wanted != recorded:
            raise layout.LayoutError(f"array {state.uuid} was formatted with protection "
                                     f"{recorded.name}; the configuration asks for {wanted.name}")
        # Put devices in their recorded order: each carries its own index in its records.
        by_index: dict[int, Member] = {}
        for _s, p, dev in found:
            if p.get("uuid") != state.uuid:
                raise layout.LayoutError(f"device {dev.path} belongs to another array")
            by_index.setdefault(int(p["device"]), dev)  # type: ignore[call-overload]
        # A device without a valid superblock takes an index left over, if the sizes agree:
        # with protection none it is taken as it is (its superblock slots were damaged), with
        # redundancy it is a replacement and is rebuilt.
        unknown = [d for d in opened if d.fd >= 0 and d not in by_index.values()]
        missing = [i for i in range(len(state.device_sizes)) if i not in by_index]
        redundant = state.version >= 2 and recorded.survives > 0
        blank: set[int] = set()
        for dev in list(unknown):
            pick = next((i for i in missing if state.device_sizes[i] == dev.size), None)
            if pick is None or (not redundant and len(unknown) != 1):
                continue
            i = pick
            log.warning("device %s has no valid superblock; taking it as device %d%s", dev.path, i,
                        " (to be rebuilt)" if redundant else "")
            by_index[i] = dev
            missing.remove(i)
            unknown.remove(dev)
            blank.add(i)
        if len(opened) != len(state.device_sizes) or unknown or (missing and not redundant):
            raise layout.LayoutError(
                f"array {state.uuid} has {len(state.device_sizes)} devices; "
                f"got {len(opened)} with indexes {sorted(by_index)}")
        devices: list[Member] = []
        for i in range(len(state.device_sizes)):
            found_dev = by_index.get(i)
            dev = found_dev if found_dev is not None else Member(i, specs[i][0] if i < len(specs) else f"device {i}", -1, 0)
            dev.index = i
            if dev.fd >= 0 and dev.size != state.device_sizes[i]:
                raise layout.LayoutError(f"device {dev.path} changed size")
            dev.size = state.device_sizes[i]
            drec: dict[str, Any] = state.device_states[i] if i < len(state.device_states) else {}
            if dev.fd < 0:
                dev.state, dev.reason = "failed", "device missing"
                if drec.get("state") != "failed":
                    log.error("device %d (%s) is missing: the array runs degraded", i, dev.path)
            elif i in blank and redundant:
                dev.state, dev.rebuilt, dev.reason = "rebuilding", layout.META_SIZE, "replaced"
                dev.rebuilt_durable = dev.rebuilt
            else:
                dev.state = str(drec.get("state", "ok"))
                dev.rebuilt = dev.rebuilt_durable = max(int(drec.get("rebuilt", 0) or 0),
                                                        layout.META_SIZE)
                dev.reason = str(drec.get("reason", ""))
            if state.version >= 2:
                dev.geometry = rd.Geometry.for_size(dev.size, unit=state.unit, meta=layout.META_SIZE,
                                                    journal=state.journal)
            devices.append(dev)
        for dev in devices:
            if dev.fd >= 0 and dev.state != "failed":
                if dev.state == "rebuilding" and dev.reason == "replaced" and dev.index in blank:
                    _reset_tail(dev)
                else:
                    dev.load()
            elif dev.geometry is not None:
                dev.csum = None
        array = cls(devices, state)
        for v in array.vdevs:
            if not v.servable():
                raise layout.LayoutError(
                    f"array {state.uuid}: too many devices of virtual device {v.index} "
                    f"(devices {[m.index for m in v.members]}) are failed or missing")
        array.persist()  # refresh every device's records (repairs a damaged slot)
        for v in array.vdevs:
            v.resync()
        log.info("opened array %s at superblock sequence %d (protection %s)", state.uuid, seq,
                 array.protection.name)
        return array

    @classmethod
    def _format(cls, opened: list[Member], protection: rd.Protection) -> Array:
        gone = [d.path for d in opened if d.fd < 0]
        if gone:
            raise layout.LayoutError(f"cannot format: device(s) {', '.join(gone)} missing")
        try:
            protection.check(len(opened))
        except rd.ProtectionError as exc:
            raise layout.LayoutError(str(exc)) from exc
        state = layout.ArrayState(uuid=str(uuid.uuid4()), device_sizes=[d.size for d in opened],
                                  protection=protection.to_json(),
                                  device_states=[{"state": "ok"} for _ in opened],
                                  journal=journal.SIZE if protection.level == "parity" else 0,
                                  version=layout.JOURNAL_VERSION if protection.level == "parity" else layout.FORMAT_VERSION)
        for dev in opened:
            try:
                dev.geometry = rd.Geometry.for_size(dev.size, unit=state.unit, meta=layout.META_SIZE,
                                                    journal=state.journal)
            except rd.ProtectionError as exc:
                raise layout.LayoutError(f"device {dev.path}: {exc}") from exc
            _reset_tail(dev)
        array = cls(opened, state)
        array.persist()
        for v in array.vdevs:
            v.resync()  # nothing to resync; a parity set's journal gets its first header
        log.info("formatted a new array %s on %d device(s), protection %s", state.uuid,
                 len(opened), protection.name)
        return array

    def _failed(self, m: Member) -> None:
        self.persist()

    def persist(self) -> None:
        """Write the next superblock sequence to every device in use and fsync them.

        A device that cannot take it is failed (and the record written again without it)."""
        with self._persist_lock:
            while True:
                self.state.device_states = [
                    {"state": d.state, "rebuilt": d.rebuilt_durable if d.state == "rebuilding" else 0,
                     "reason": d.reason} for d in self.devices]
                self.state.seq += 1
                seq = self.state.seq
                targets = [d for d in self.devices if d.fd >= 0 and d.state != "failed"]
                broken: list[tuple[Member, OSError]] = []
                for dev in targets:
                    rec = layout.encode_record(seq, self.state.payload(dev.index))
                    try:
                        os.pwrite(dev.fd, rec, layout.slot_offset(seq))
                        os.fdatasync(dev.fd)
                    except OSError as err:
                        broken.append((dev, err))
                healthy = [d for d in targets if d not in [b for b, _ in broken]]
                if not broken or not healthy or self.state.version < 2:
                    if broken:
                        raise broken[0][1]
                    return
                for dev, why in broken:
                    dev.state, dev.reason = "failed", f"superblock write: {why}"
                    log.error("device %d (%s) failed: %s", dev.index, dev.path, dev.reason)

    def close(self) -> None:
        """Sync and clear the write-intent bits (a clean stop needs no resync), close."""
        try:
            self.clean_bitmaps()
        except OSError as exc:
            log.warning("closing: %s", exc)
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
        segs = layout.allocate(self.vsizes, self._all_segments(), size)
        lu = layout.LURecord(name=name, size=size, segments=segs, created=now(), read_only=read_only)
        self.state.lus[name] = lu
        self._zero_new(segs)
        self.persist()
        return lu

    def _zero_new(self, segs: list[layout.Segment]) -> None:
        """New extents read as zeroes (they may hold a deleted LU's data)."""
        for seg in segs:
            for dev, off in seg.members:
                self.vdevs[dev].punch_new(off, seg.member_length)

    def grow_lu(self, name: str, size: int) -> layout.LURecord:
        lu = self.state.lus[name]
        if size < lu.size:
            raise ValueError("LUs can only grow")
        if size > lu.allocated:
            segs = layout.allocate(self.vsizes, self._all_segments(), size - lu.allocated)
            self._zero_new(segs)
            lu.segments.extend(segs)
        lu.size = size
        self.persist()
        return lu

    def delete_lu(self, name: str) -> None:
        del self.state.lus[name]
        self.persist()

    def free_bytes(self) -> list[int]:
        """Free bytes per virtual device (what LUs can still get: after protection)."""
        runs = layout.free_runs(self.vsizes, self._all_segments())
        return [sum(e - s for s, e in r) for r in runs]

    def usable_bytes(self) -> list[int]:
        """Data bytes per virtual device (after the superblock area and the tail)."""
        return [size - layout.META_SIZE for size in self.vsizes]

    # --- raw I/O ----------------------------------------------------------------------------

    def read_into(self, lu: layout.LURecord, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from the LU at ``offset`` (verified device pieces, no cache)."""
        pos = 0
        for p in layout.map_range(lu.segments, offset, len(buf)):
            self.vdevs[p.device].read(p.device_offset, buf[pos : pos + p.length])
            pos += p.length

    def write_from(self, lu: layout.LURecord, offset: int, data: memoryview) -> set[int]:
        """Write ``data`` to the LU at ``offset``; return the virtual devices touched."""
        pos = 0
        touched = set()
        for p in layout.map_range(lu.segments, offset, len(data)):
            self.vdevs[p.device].write(p.device_offset, data[pos : pos + p.length])
            touched.add(p.device)
            pos += p.length
        return touched

    def zero(self, lu: layout.LURecord, offset: int, length: int, *, provision: bool = False) -> set[int]:
        """Zero a range: punch holes, or with ``provision`` (NBD ``NO_HOLE``) keep the space
        allocated (``fallocate(ZERO_RANGE)``, else zeroes written)."""
        touched = set()
        for p in layout.map_range(lu.segments, offset, length):
            self.vdevs[p.device].zero(p.device_offset, p.length, provision=provision)
            touched.add(p.device)
        return touched

    def can_punch(self, lu: layout.LURecord, offset: int, length: int) -> bool:
        """Whether zeroing the range punches holes on every device it touches (no data I/O)."""
        devs = {p.device for p in layout.map_range(lu.segments, offset, length)}
        return all(self.vdevs[d].can_punch() for d in devs)

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
            for start, end in self.vdevs[dev].holes(dev_off, dev_off + n):
                s, e = lu_off + start - dev_off, lu_off + end - dev_off
                if out and out[-1][1] == s:
                    out[-1] = (out[-1][0], e)
                else:
                    out.append((s, e))
        return out

    def sync(self, devices: set[int] | None = None) -> None:
        """Checksums written and every copy fsynced, for the virtual devices given (or all)."""
        for v in self.vdevs:
            if devices is None or v.index in devices:
                v.sync()

    # --- maintenance: failures, replacement, rebuild, scrub ------------------------------------

    def check_devices(self) -> list[Member]:
        """Fail devices whose file is gone or was replaced under the controller; returns them."""
        gone = []
        for v in self.vdevs:
            for m in v.members:
                if m.fd < 0 or m.state == "failed":
                    continue
                try:
                    st = os.stat(m.path)
                    same = (st.st_dev, st.st_ino) == m.ino
                except OSError:
                    same = False
                if not same:
                    before = m.state
                    v.fail(m, "device file is gone")
                    if m.state != before:
                        gone.append(m)
        return gone

    def fail_device(self, index: int, reason: str) -> None:
        m = self.devices[index]
        self.vdevs[self._vdev_of(index)].fail(m, reason)

    def _vdev_of(self, index: int) -> int:
        return next(v.index for v in self.vdevs if any(m.index == index for m in v.members))

    def replace(self, index: int, path: str | None = None) -> Member:
        """Put a new device (a new file at ``path``, default the old path) in the place of a
        failed one; it is rebuilt from the other copies by ``rebuild_step``."""
        if self.protection.survives < 1:
            raise ValueError("protection none has no copy to rebuild a device from")
        m = self.devices[index]
        if m.state != "failed":
            raise ValueError(f"device {index} is {m.state}; only a failed device can be replaced")
        path = path or m.path
        size = self.state.device_sizes[index]
        if m.fd >= 0:
            os.close(m.fd)
            m.fd = -1
        if os.path.isfile(path) or not os.path.exists(path):
            with open(path, "wb"):
                pass  # a new, empty file (the old one's data is stale)
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT, 0o600)
        if os.path.isfile(path):
            os.ftruncate(fd, size)
        cur = os.lseek(fd, 0, os.SEEK_END)
        if cur != size:
            os.close(fd)
            raise ValueError(f"{path} has {cur} bytes; device {index} needs {size}")
        st = os.fstat(fd)
        m.path, m.fd, m.ino = path, fd, (st.st_dev, st.st_ino)
        m.can_punch = _probe_punch(fd, size)
        m.read_errors = m.write_errors = m.csum_errors = m.repaired = 0
        m.faults = []
        _reset_tail(m)
        m.state, m.rebuilt, m.reason = "rebuilding", layout.META_SIZE, "replaced"
        m.rebuilt_durable = m.rebuilt
        self.persist()
        log.warning("device %d replaced by %s: rebuilding", index, path)
        return m

    def rebuilding(self) -> list[tuple[VDev, Member]]:
        return [(v, m) for v in self.vdevs for m in v.members if m.state == "rebuilding" and m.fd >= 0]

    def rebuild_step(self, nbytes: int) -> int:
        """Rebuild the next ``nbytes`` of the first device being rebuilt; returns bytes done
        (0: nothing to rebuild). A finished device is synced and marked ok."""
        work = self.rebuilding()
        if not work:
            return 0
        v, m = work[0]
        done = v.rebuild_step(m, nbytes)
        if m.rebuilt >= v.device_end and m.state == "rebuilding":
            v.finish_rebuild(m, self.persist)
            log.warning("device %d (%s) rebuilt", m.index, m.path)
        return done

    def checkpoint(self) -> None:
        """Record rebuild progress: the rebuilt part's checksums synced, then the superblock."""
        work = self.rebuilding()
        for v, m in work:
            v.sync()
            m.rebuilt_durable = m.rebuilt
        if work:
            self.persist()

    def scrub_ranges(self, step: int = layout.STRIPE_UNIT) -> list[tuple[int, int, int]]:
        """``(virtual device, offset, length)`` pieces of a whole scrub pass, in order."""
        return [(v.index, pos, min(step, v.size - pos))
                for v in self.vdevs for pos in range(layout.META_SIZE, v.size, step)]

    def scrub_step(self, vdev: int, offset: int, nbytes: int) -> tuple[int, int]:
        """Verify and repair one piece (see ``scrub_ranges``); returns (repaired, lost)."""
        if offset < layout.META_SIZE:  # the superblock slots have their own checksums
            nbytes -= layout.META_SIZE - offset
            offset = layout.META_SIZE
        if nbytes <= 0:
            return 0, 0
        return self.vdevs[vdev].scrub_step(offset, nbytes)

    def scrub(self) -> tuple[int, int]:
        """A whole pass at once (tests, fsck); returns (repaired, lost)."""
        total = [0, 0]
        for v, off, n in self.scrub_ranges():
            r, lost = self.scrub_step(v, off, n)
            total[0] += r
            total[1] += lost
        return total[0], total[1]

    def parity_mismatches(self) -> int:
        """Parity units scrub found disagreeing with their data (and rewrote), since start."""
        return sum(v.stats.parity_mismatches for v in self.vdevs)

    def clean_bitmaps(self) -> int:
        return sum(v.clean_bitmap() for v in self.vdevs)

    def status(self) -> dict[str, object]:
        """Protection, per-device states and the error/repair counters."""
        rebuild = [{"device": m.index, "done": m.rebuilt, "total": v.device_end}
                   for v, m in self.rebuilding()]
        degraded = any(m.state != "ok" for m in self.devices)
        return {"protection": self.protection.name, "copies": self.protection.copies,
                "checksums": all(v.checked for v in self.vdevs),
                "state": "degraded" if degraded else "ok",
                "survives": self.protection.survives,
                "devices": [m.to_json() for m in self.devices],
                "virtualDevices": [{"index": v.index, "devices": [m.index for m in v.members],
                                    "size": v.size, "repairedBlocks": v.stats.repaired_blocks,
                                    "lostBlocks": v.stats.lost_blocks,
                                    "resyncedRegions": v.stats.resynced_regions,
                                    "journalReplayed": v.stats.journal_replayed}
                                   for v in self.vdevs],
                "repairedBlocks": sum(v.stats.repaired_blocks for v in self.vdevs),
                "lostBlocks": sum(v.stats.lost_blocks for v in self.vdevs),
                "parityMismatches": sum(v.stats.parity_mismatches for v in self.vdevs),
                "checksumErrors": sum(m.csum_errors for m in self.devices),
                "rebuild": rebuild}


def _reset_tail(dev: Member) -> None:
    """A device's checksum area and bitmap start empty (all blocks read as zero)."""
    g = dev.geometry
    if g is None:
        return
    fallocate_or_write(dev.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, g.csum_offset,
                       dev.size - dev.size % layout.STRIPE_UNIT - g.csum_offset)
    from array import array as _arr

    dev.csum = _arr("Q", bytes(g.blocks * 8))
    dev.bitmap = bytearray(g.regions)
    dev.dirty_pages = set()


def _probe_punch(fd: int, size: int) -> bool:
    """Whether hole punching works on this device: a regular file whose file system accepts
    ``PUNCH_HOLE`` (probed past the end of the file, which changes nothing)."""
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return False  # on a block device it may write zeroes: not known to be fast
    res = _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                          ctypes.c_long(size), ctypes.c_long(4096))
    return bool(res == 0)


_device_holes = device_holes
