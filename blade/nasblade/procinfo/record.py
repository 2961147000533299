"""Checksummed, sequence-numbered records in two alternating copies (sans-I/O core).

This is the on-disk framing shared by the processor-information portions
(``nasblade.procinfo.portion``) and the program LU catalog (``nasblade.program.catalog``).
It knows nothing about devices: ``encode`` turns a payload into the bytes of one copy,
``decode`` checks one copy's bytes and returns the record or ``None``, and ``choose`` picks
the winner of a pair and the copy the next write must go to.

Frame of one copy (little-endian), padded with zeroes to the copy's size::

    offset size  field
    0      4     magic  b"NBRC"
    4      2     frame version (1)
    6      2     kind (what the payload is: header, slot, group, catalog)
    8      8     sequence number (1, 2, ...; 0 never appears on disk)
    16     4     payload length
    20     4     reserved, zero
    24     32    sha256 over bytes 0..23 followed by the payload
    56     n     payload (canonical JSON, UTF-8)

Torn-write rule: a record has two copies, A and B, each starting on a 4 KiB boundary, so a
torn write damages one copy only. A writer always overwrites the copy that does *not* hold the
highest valid sequence number and gives it that number plus one; a reader takes the valid copy
with the highest sequence number. A crash in the middle of a write therefore leaves the previous
good record intact in the other copy.
"""

from __future__ import annotations

import enum
import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

MAGIC = b"NBRC"
FRAME_VERSION = 1
ALIGN = 4096
_HEAD = struct.Struct("<4sHHQII")
HEADER_SIZE = _HEAD.size + 32  # 56


class Kind(enum.IntEnum):
    """What a record's payload is; a copy of the wrong kind is treated as invalid."""

    PORTION_HEADER = 1
    BLADE_SLOT = 2
    GROUP = 3
    CATALOG = 4


@dataclass(frozen=True)
class Record:
    """One decoded, checksum-verified copy."""

    kind: Kind
    seq: int
    payload: dict[str, Any]


class RecordTooLarge(ValueError):
    """The payload does not fit in the copy's size."""


def encode(*, kind: Kind, seq: int, payload: dict[str, Any], size: int) -> bytes:
    """Return the ``size`` bytes of one copy holding ``payload`` with sequence ``seq``."""
    if seq <= 0:
        raise ValueError(f"sequence numbers start at 1, got {seq}")
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    if HEADER_SIZE + len(body) > size:
        raise RecordTooLarge(
            f"{kind.name.lower()} record of {len(body)} bytes does not fit in {size - HEADER_SIZE}"
        )
    head = _HEAD.pack(MAGIC, FRAME_VERSION, int(kind), seq, len(body), 0)
    digest = hashlib.sha256(head + body).digest()
    out = bytearray(size)
    out[: _HEAD.size] = head
    out[_HEAD.size : HEADER_SIZE] = digest
    out[HEADER_SIZE : HEADER_SIZE + len(body)] = body
    return bytes(out)


def decode(data: bytes, *, kind: Kind) -> Record | None:
    """Return the record in ``data`` if it is a complete, valid copy of ``kind``, else ``None``.

    Invalid means: wrong magic, unknown frame version, another kind, a length past the end of
    the copy, a checksum mismatch (torn or corrupted write) or a payload that is not a JSON
    object. Never raises on bad input.
    """
    if len(data) < HEADER_SIZE:
        return None
    magic, version, raw_kind, seq, length, _reserved = _HEAD.unpack_from(data, 0)
    if magic != MAGIC or version != FRAME_VERSION or raw_kind != int(kind) or seq == 0:
        return None
    if HEADER_SIZE + length > len(data):
        return None
    body = bytes(data[HEADER_SIZE : HEADER_SIZE + length])
    if hashlib.sha256(bytes(data[: _HEAD.size]) + body).digest() != data[_HEAD.size : HEADER_SIZE]:
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    return Record(kind=kind, seq=seq, payload=payload)


@dataclass(frozen=True)
class Choice:
    """The outcome of reading both copies of a record."""

    current: Record | None
    """The valid copy with the highest sequence number, or ``None`` if neither is valid."""
    current_copy: int | None
    """0 for copy A, 1 for copy B, ``None`` when nothing is valid."""
    valid: tuple[bool, bool]

    @property
    def next_copy(self) -> int:
        """The copy the next write goes to: never the one holding the current record."""
        return 0 if self.current_copy is None else 1 - self.current_copy

    @property
    def next_seq(self) -> int:
        return 1 if self.current is None else self.current.seq + 1


def choose(copy_a: bytes, copy_b: bytes, *, kind: Kind) -> Choice:
    """Decode both copies and pick the winner (highest valid sequence)."""
    a = decode(copy_a, kind=kind)
    b = decode(copy_b, kind=kind)
    valid = (a is not None, b is not None)
    if a is not None and (b is None or a.seq >= b.seq):
        return Choice(current=a, current_copy=0, valid=valid)
    if b is not None:
        return Choice(current=b, current_copy=1, valid=valid)
    return Choice(current=None, current_copy=None, valid=valid)


def align_up(n: int, to: int = ALIGN) -> int:
    return (n + to - 1) // to * to
