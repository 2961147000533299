"""An apsw VFS that stores SQLite's database and write-ahead log in regions of a BlockDevice.

``nasblade.fs.fs`` opens its metadata database as ``<vfsname>:db`` through this VFS. The
database file lives in the metadata region, ``db-wal`` in the WAL region (see
``nasblade.fs.layout``); each region starts with a header that records the file's logical
size. The connection runs in ``locking_mode=EXCLUSIVE`` + ``journal_mode=WAL``, so SQLite
keeps its WAL index in heap memory and never asks for shared memory, and there is exactly one
writer (the file processor that owns the LU; fencing at the controller keeps it that way).

Durability: ``xSync`` writes the region header if the logical size changed, then issues one
device ``flush`` (NBD FLUSH). WAL frames are checksummed and salted by SQLite, so a frame
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

    def __init__(self, dev: BlockDevice, *, offset: int, length: int) -> None:
        self.dev = dev
        self.hdr_off = offset
        self.base = offset + layout.REGION_HDR
        self.capacity = length - layout.REGION_HDR
        self.size = layout.read_region_size(dev, offset)
        self.durable_size = self.size
        self.syncs = 0
        # Bytes written since the last sync: for the WAL, the frames of the open transaction.
        self.unsynced_bytes = 0

    def _write_header(self) -> None:
        self.dev.pwrite(self.hdr_off, layout.region_header(self.size))
        self.durable_size = self.size

    def xRead(self, amount: int, offset: int) -> bytes:
        if offset >= self.size:
            return b""
        n = min(amount, self.size - offset)
        return self.dev.pread(self.base + offset, n)

    def xWrite(self, data: Any, offset: int) -> None:
        n = len(data)
        if offset + n > self.capacity:
            raise apsw.FullError(f"metadata region full ({offset + n} > {self.capacity})")
        self.dev.pwrite(self.base + offset, data)
        self.unsynced_bytes += n
        if offset + n > self.size:
            self.size = offset + n

    def xTruncate(self, newsize: int) -> None:
        if newsize != self.size:
            self.size = newsize
            self._write_header()

    def xSync(self, flags: int) -> None:
        if self.size != self.durable_size:
            self._write_header()
        self.dev.flush()
        self.syncs += 1
        self.unsynced_bytes = 0

    def xFileSize(self) -> int:
        return self.size

    def xDeviceCharacteristics(self) -> int:
        return _SQLITE_IOCAP_POWERSAFE_OVERWRITE

    def xClose(self) -> None:
        return None

    def delete(self, *, sync: bool) -> None:
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
        self.wal = RegionFile(dev, offset=sb.wal_off, length=sb.wal_len)

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
