"""An apsw VFS that stores SQLite's database and write-ahead log in regions of a BlockDevice.

``nasblade.fs.fs`` opens its metadata database as ``<vfsname>:db`` through this VFS. The
database file lives in the metadata region, ``db-wal`` in the WAL region (see
``nasblade.fs.layout``); each region starts with a header that records the file's logical
size. The connection runs in ``locking_mode=EXCLUSIVE`` + ``journal_mode=WAL``, so SQLite
keeps its WAL index in heap memory and never asks for shared memory, and there is exactly one
writer (the file processor that owns the LU; fencing at the controller keeps it that way).

Write gathering: SQLite writes a WAL frame as two calls (the 24-byte frame header, then the
page) and a transaction as a run of frames; each call on its own would be one round trip to
the controller. ``RegionFile`` keeps a run of contiguous writes in memory and sends it as one
device write when the run breaks (a write elsewhere), grows past ``GATHER_MAX``, is read, or
the file is synced, truncated or closed. Nothing SQLite treats as durable depends on a
gathered write: it counts a write durable only after ``xSync``, which sends the run first.

Durability: ``xSync`` sends the gathered run, writes the region header if the logical size
is not covered by the recorded one, then issues one device ``flush`` (NBD FLUSH). When the run
is the only write to the file since its last sync (a commit's frames, no header change), it is
sent as one FUA write instead, which makes exactly it durable in one round trip. The WAL's
header records its size rounded up to ``WAL_SIZE_STEP``, so a growing WAL rewrites its header
once per step and not at every commit: after a crash SQLite finds the committed frames and,
past them, bytes that are not valid frames of this WAL (zeroes, a torn frame, frames of an
earlier WAL generation with other salts), which its recovery stops at, as it does for a WAL
file that was not truncated. The database file's size is recorded exactly. WAL frames are checksummed and salted by SQLite, so a frame
that was written but not flushed before a crash is ignored by recovery; a commit is durable
once the ``xSync`` after its commit frame returns. Any other file SQLite asks for (temporary
files) is kept in memory.
"""

from __future__ import annotations

import itertools
from typing import Any

import apsw

from nasblade.blockdev import BlockDevice
from nasblade.fs import layout

_SQLITE_IOCAP_SAFE_APPEND = 0x200
_SQLITE_IOCAP_POWERSAFE_OVERWRITE = 0x1000
_counter = itertools.count(1)
# A gathered run is sent once it reaches this size (a large transaction still streams).
GATHER_MAX = 1 << 20
WAL_SIZE_STEP = 1 << 20


class _SingleProcessFile:
    """What both file kinds answer alike: one process opens the database, so locks are no-ops;
    no file controls; 4 KiB sectors."""

    def xLock(self, level: int) -> None:
        return None

    def xUnlock(self, level: int) -> None:
        return None

    def xCheckReservedLock(self) -> bool:
        return False

    def xFileControl(self, op: int, ptr: int) -> bool:
        return False

    def xSectorSize(self) -> int:
        return 4096


class RegionFile(_SingleProcessFile):
    """One SQLite file stored in a region of the device."""

    def __init__(self, dev: BlockDevice, *, offset: int, length: int, size_step: int = 0) -> None:
        self.dev = dev
        self.hdr_off = offset
        self.base = offset + layout.REGION_HDR
        self.capacity = length - layout.REGION_HDR
        self.size_step = size_step
        self.size = layout.read_region_size(dev, offset)
        # The size the region header holds (with a size step, an upper bound of ``size``).
        self.recorded_size = self.size
        self.syncs = 0
        # Bytes written since the last sync: for the WAL, the frames of the open transaction.
        self.unsynced_bytes = 0
        # The gathered run: bytes for file offsets [_run_off, _run_off + len(_run)).
        self._run_off = 0
        self._run = bytearray()
        # A write of this file reached the device since its last sync (a FUA run is not enough).
        self._sent_unsynced = False

    def _write_header(self, size: int | None = None) -> None:
        size = self.size if size is None else size
        self.dev.pwrite(self.hdr_off, layout.region_header(size))
        self.recorded_size = size
        self._sent_unsynced = True

    def _send_run(self, *, fua: bool = False) -> None:
        """Send the gathered run to the device (one write)."""
        if self._run:
            run, self._run = self._run, bytearray()
            self.dev.pwrite(self.base + self._run_off, run, fua=fua)
            self._sent_unsynced = self._sent_unsynced or not fua

    def xRead(self, amount: int, offset: int) -> bytes:
        if offset >= self.size:
            return b""
        n = min(amount, self.size - offset)
        if self._run and offset < self._run_off + len(self._run) and offset + n > self._run_off:
            self._send_run()
        return self.dev.pread(self.base + offset, n)

    def xWrite(self, data: Any, offset: int) -> None:
        n = len(data)
        if offset + n > self.capacity:
            raise apsw.FullError(f"metadata region full ({offset + n} > {self.capacity})")
        run_end = self._run_off + len(self._run)
        if self._run and self._run_off <= offset <= run_end:
            # Extends or overwrites the run: keep gathering.
            self._run[offset - self._run_off : offset - self._run_off + n] = data
        else:
            self._send_run()
            self._run_off = offset
            self._run[:] = data
        if len(self._run) >= GATHER_MAX:
            self._send_run()
        self.unsynced_bytes += n
        if offset + n > self.size:
            self.size = offset + n

    def xTruncate(self, newsize: int) -> None:
        if self._run and self._run_off + len(self._run) > newsize:
            # Never send bytes past the new end (they would be stale after a later regrowth).
            del self._run[max(0, newsize - self._run_off) :]
            if not self._run:
                self._run_off = 0
        if newsize != self.size:
            self.size = newsize
            self._write_header()

    def xSync(self, flags: int) -> None:
        header: int | None = None
        if self.size_step and self.size > self.recorded_size:
            step = self.size_step
            header = min(self.capacity, (self.size + step - 1) // step * step)
        elif not self.size_step and self.size != self.recorded_size:
            header = self.size
        if header is None and not self._sent_unsynced and self._run:
            self._send_run(fua=True)
        else:
            self._send_run()
            if header is not None:
                self._write_header(header)
            self.dev.flush()
        self._sent_unsynced = False
        self.syncs += 1
        self.unsynced_bytes = 0

    def xFileSize(self) -> int:
        return self.size

    def xDeviceCharacteristics(self) -> int:
        return _SQLITE_IOCAP_POWERSAFE_OVERWRITE

    def xClose(self) -> None:
        # Writes SQLite never synced are not durable to it; a clean close syncs first (the
        # checkpoint), so only an abandoned connection (after a device failure) drops any.
        self._run = bytearray()

    def delete(self, *, sync: bool) -> None:
        self._run = bytearray()
        self.size = 0
        self._write_header()
        if sync:
            self.dev.flush()


class MemoryFile(_SingleProcessFile):
    """A temporary file kept in memory (SQLite temp files, statement journals)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def xRead(self, amount: int, offset: int) -> bytes:
        return bytes(self.data[offset : offset + amount])

    def xWrite(self, data: Any, offset: int) -> None:
        end = offset + len(data)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = data

    def xTruncate(self, newsize: int) -> None:
        del self.data[newsize:]

    def xSync(self, flags: int) -> None:
        return None

    def xFileSize(self) -> int:
        return len(self.data)

    def xDeviceCharacteristics(self) -> int:
        return 0

    def xClose(self) -> None:
        return None


class RegionVFS(apsw.VFS):
    """The VFS for one mounted file system; ``db_uri`` is the name to open."""

    def __init__(self, dev: BlockDevice, sb: layout.Superblock) -> None:
        self.name = f"nasblade-{next(_counter)}"
        super().__init__(self.name, base="")
        self.db = RegionFile(dev, offset=sb.meta_off, length=sb.meta_len)
        self.wal = RegionFile(dev, offset=sb.wal_off, length=sb.wal_len, size_step=WAL_SIZE_STEP)

    @property
    def db_uri(self) -> str:
        return "/db"

    def _file(self, name: str) -> RegionFile | None:
        if name.endswith("-wal"):
            return self.wal
        if name.endswith("/db") or name == "db":
            return self.db
        return None

    def xOpen(self, name: Any, flags: list[int]) -> Any:
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        if path is None:
            return MemoryFile()
        f = self._file(str(path))
        return f if f is not None else MemoryFile()

    def xAccess(self, pathname: str, flags: int) -> bool:
        f = self._file(pathname)
        return f is not None and f.size > 0

    def xDelete(self, filename: str, syncdir: bool) -> None:
        f = self._file(filename)
        if f is not None:
            f.delete(sync=syncdir)

    def xFullPathname(self, name: str) -> str:
        return name if name.startswith("/") else "/" + name

    def xRandomness(self, numbytes: int) -> bytes:
        import os

        return os.urandom(numbytes)

    def xSleep(self, microseconds: int) -> int:
        return microseconds

    def xCurrentTime(self) -> float:
        import time

        return 2440587.5 + time.time() / 86400.0

    def xCurrentTimeInt64(self) -> int:
        import time

        return int((2440587.5 + time.time() / 86400.0) * 86400000)

    def xGetLastError(self) -> tuple[int, str]:
        return 0, ""

    def xDlOpen(self, filename: str) -> int:
        return 0
