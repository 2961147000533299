"""ONC RPC record marking over TCP (RFC 5531 §11), sans-I/O.

A record is sent as one or more fragments. Each fragment starts with a 4-byte big-endian
header: the high bit is set on the *last* fragment of the record, the low 31 bits are the
fragment's length in bytes. ``RecordReader`` accepts bytes as they arrive from the socket and
yields complete records (the concatenated fragments); ``frame`` builds the header(s) for an
outgoing record. Used by ``nasblade.fileproc.server`` (the asyncio shell) and by tests.

The reader is O(n) in the input and bounds every record by ``max_record``: a peer that
announces more is a protocol error (``RecordError``) and the shell closes that connection.
"""

from __future__ import annotations

import struct

LAST_FRAGMENT = 0x80000000
_HDR = struct.Struct(">I")
MAX_FRAGMENT = 0x7FFFFFFF


class RecordError(ValueError):
    """The stream violates record marking (oversized record)."""


class RecordReader:
    """Reassembles RPC records from a TCP byte stream."""

    def __init__(self, *, max_record: int = 4 << 20) -> None:
        self.max_record = max_record
        self._buf = bytearray()
        self._pos = 0
        self._frags: list[memoryview | bytes] = []
        self._frag_total = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Add received bytes; return the records completed by them (possibly none)."""
        self._buf += data
        records: list[bytes | memoryview] = []
        buf = self._buf
        pos = self._pos
        while len(buf) - pos >= 4:
            (hdr,) = _HDR.unpack_from(buf, pos)
            length = hdr & MAX_FRAGMENT
            if self._frag_total + length > self.max_record:
                raise RecordError(f"record of more than {self.max_record} bytes")
            if len(buf) - pos - 4 < length:
                break
            frag = bytes(buf[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if hdr & LAST_FRAGMENT:
                if self._frags:
                    self._frags.append(frag)
                    records.append(b"".join(self._frags))
                    self._frags = []
                else:
                    records.append(frag)
                self._frag_total = 0
            else:
                self._frags.append(frag)
                self._frag_total += length
        if pos:
            del buf[:pos]
            pos = 0
        self._pos = pos
        return records

    def pending(self) -> int:
        """Bytes buffered but not yet part of a returned record."""
        return len(self._buf) + self._frag_total


def frame(record: bytes | memoryview, *, max_fragment: int = MAX_FRAGMENT) -> list[bytes | memoryview]:
    """Return the buffers (headers and payload slices) that send ``record``."""
    view = memoryview(record)
    n = len(view)
    if n <= max_fragment:
        return [_HDR.pack(LAST_FRAGMENT | n), view]
    out: list[bytes | memoryview] = []
    for start in range(0, n, max_fragment):
        chunk = view[start : start + max_fragment]
        last = start + max_fragment >= n
        out.append(_HDR.pack((LAST_FRAGMENT if last else 0) | len(chunk)))
        out.append(chunk)
    return out
