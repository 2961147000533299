"""NFS file handles: opaque, stable across restarts and blades, and unforgeable.

Layout (46 bytes, well under NFS3_FHSIZE = 64)::

    0   u8   format version (1)
    1   u8   reserved (0)
    2   u32  export id (CRC-32 of the export path; selects the export the handle was minted in)
    6   u64  file-system id (from the superblock uuid)
    14  u64  inode number (never reused: SQLite AUTOINCREMENT)
    22  u64  inode generation (global counter at creation)
    30  16B  HMAC-SHA256 over bytes 0..29, keyed by the file system's secret, truncated

The secret is created by ``mkfs`` and kept in the metadata on the LU, so every blade that
mounts the LU validates the same handles, and nobody without the LU can mint one. ``decode``
returns ``None`` for anything malformed or with a bad MAC (the NFS layer answers BADHANDLE);
a well-formed handle for a deleted inode or a different generation is STALE.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct

_HEAD = struct.Struct(">BBIQQQ")
VERSION = 1
MAC_LEN = 16
SIZE = _HEAD.size + MAC_LEN


@dataclasses.dataclass(frozen=True)
class Handle:
    export_id: int
    fsid: int
    ino: int
    gen: int


def _mac(secret: bytes, head: bytes) -> bytes:
    return hmac.new(secret, head, hashlib.sha256).digest()[:MAC_LEN]


def encode(h: Handle, secret: bytes) -> bytes:
    head = _HEAD.pack(VERSION, 0, h.export_id, h.fsid, h.ino, h.gen)
    return head + _mac(secret, head)


def peek_fsid(raw: bytes) -> int | None:
    """The file-system id of a handle (unauthenticated), to find the secret to check it with."""
    if len(raw) != SIZE or raw[0] != VERSION:
        return None
    fsid: int = struct.unpack_from(">Q", raw, 6)[0]
    return fsid


def decode(raw: bytes, secret: bytes) -> Handle | None:
    if len(raw) != SIZE:
        return None
    head, mac = raw[: _HEAD.size], raw[_HEAD.size :]
    if not hmac.compare_digest(mac, _mac(secret, head)):
        return None
    version, _res, export_id, fsid, ino, gen = _HEAD.unpack(head)
    if version != VERSION:
        return None
    return Handle(export_id, fsid, ino, gen)
