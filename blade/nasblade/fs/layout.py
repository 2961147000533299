"""On-LU layout of a nasblade file system: superblock, metadata, WAL and data regions.

::

    0        4 KiB superblock (magic, version, uuid, region offsets, checksum)
    4 KiB    metadata region   (4 KiB region header + the SQLite database file)
    ...      WAL region        (4 KiB region header + the SQLite write-ahead log)
    ...      data region       (4 KiB blocks addressed from 0; file extents live here)

The superblock is written once by ``mkfs`` (with FUA) and only read afterwards. Each region
header records the logical size of the file it holds, so ``nasblade.fs.vfs`` can present the
region to SQLite as a file. Everything here is pure computation plus ``BlockDevice`` calls.
"""

from __future__ import annotations

import dataclasses
import struct
import uuid
import zlib

from nasblade.blockdev import BlockDevice

MAGIC = b"NASBLDFS"
VERSION = 1
BLOCK = 4096
SB_SIZE = 4096
_SB = struct.Struct(">8sI16sIQQQQQQ")  # magic, version, uuid, block, meta off/len, wal off/len, data off, data blocks
MIN_SIZE = 48 << 20


class LayoutError(Exception):
    """The device does not hold a valid nasblade file system (or is too small for one)."""


@dataclasses.dataclass(frozen=True)
class Superblock:
    uuid: bytes
    block: int
    meta_off: int
    meta_len: int
    wal_off: int
    wal_len: int
    data_off: int
    data_blocks: int

    def pack(self) -> bytes:
        body = _SB.pack(
            MAGIC,
            VERSION,
            self.uuid,
            self.block,
            self.meta_off,
            self.meta_len,
            self.wal_off,
            self.wal_len,
            self.data_off,
            self.data_blocks,
        )
        return (body + struct.pack(">I", zlib.crc32(body))).ljust(SB_SIZE, b"\0")

    @classmethod
    def unpack(cls, raw: bytes) -> Superblock:
        body = raw[: _SB.size]
        (crc,) = struct.unpack_from(">I", raw, _SB.size)
        magic, version, fsuuid, block, mo, ml, wo, wl, do, db = _SB.unpack(body)
        if magic != MAGIC:
            raise LayoutError("no nasblade file system on this device (bad magic)")
        if zlib.crc32(body) != crc:
            raise LayoutError("superblock checksum mismatch")
        if version != VERSION:
            raise LayoutError(f"unsupported file-system version {version}")
        return cls(fsuuid, block, mo, ml, wo, wl, do, db)

    @property
    def fsid(self) -> int:
        """The 64-bit file-system id reported in attributes and carried in file handles."""
        value: int = struct.unpack(">Q", self.uuid[:8])[0]
        return value


def _align(n: int) -> int:
    return (n + (1 << 20) - 1) & ~((1 << 20) - 1)


def plan(size: int, *, fs_uuid: bytes | None = None) -> Superblock:
    """Choose region sizes for a device of ``size`` bytes."""
    if size < MIN_SIZE:
        raise LayoutError(f"device of {size} bytes is too small (minimum {MIN_SIZE})")
    meta_len = _align(min(max(16 << 20, size // 10), 8 << 30))
    wal_len = _align(min(max(16 << 20, size // 16), 1 << 30))
    meta_off = SB_SIZE
    wal_off = meta_off + meta_len
    data_off = _align(wal_off + wal_len)
    data_blocks = (size - data_off) // BLOCK
    return Superblock(fs_uuid or uuid.uuid4().bytes, BLOCK, meta_off, meta_len, wal_off, wal_len, data_off, data_blocks)


def read_superblock(dev: BlockDevice) -> Superblock:
    if dev.size < SB_SIZE:
        raise LayoutError("device too small for a superblock")
    return Superblock.unpack(dev.pread(0, SB_SIZE))


REGION_HDR = 4096
_REGION = struct.Struct(">8sQI")
REGION_MAGIC = b"NBREGION"


def read_region_size(dev: BlockDevice, offset: int) -> int:
    raw = dev.pread(offset, _REGION.size)
    magic, size, crc = _REGION.unpack(raw)
    if magic != REGION_MAGIC or zlib.crc32(raw[:16]) != crc:
        raise LayoutError(f"bad region header at {offset}")
    return int(size)


def region_header(size: int) -> bytes:
    head = REGION_MAGIC + struct.pack(">Q", size)
    return head + struct.pack(">I", zlib.crc32(head))
