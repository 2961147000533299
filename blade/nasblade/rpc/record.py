"""ONC RPC record marking over TCP (RFC 5531 §11), sans-I/O.

A record is sent as one or more fragments. Each fragment starts with a 4-byte big-endian
header: the high bit is set on the *last* fragment of the record, the low 31 bits are the
fragment's length in bytes. ``RecordReader`` accepts bytes as they arrive from the socket and
yields complete records (the concatenated fragments); ``frame`` builds the header(s) for an
outgoing record. Used by ``nasblade.fileproc.server`` (the asyncio shell) and by tests.

The reader is O(n) in the input, however it is cut into chunks and fragments (received
chunks wait in a ``deque``, each byte is copied at most twice: into its fragment, then into its
record), and bounds every record by ``max_record``: a peer that announces more is a protocol
error (``RecordError``) and the shell closes that connection.
"""

from __future__ import annotations

import collections
import struct

LAST_FRAGMENT = 0x80000000
_HDR = struct.Struct(">I")
MAX_FRAGMENT = 0x7FFFFFFF


class RecordError(ValueError):
    """The stream violates record marking (oversized record)."""


class RecordReader:
    """Reassembles RPC records from a TCP byte stream.

    Received chunks are kept as they are (no growing buffer): a fragment that lies inside one
    chunk is returned as a ``memoryview`` slice of it (no copy), a fragment spread over several
    chunks is joined once, and a multi-fragment record is joined once more.
    """

    def __init__(self, *, max_record: int = 4 << 20) -> None:
        self.max_record = max_record
        self._chunks: collections.deque[bytes] = collections.deque()
        self._off = 0  # consumed bytes of _chunks[0]
        self._have = 0  # unconsumed bytes in _chunks
        self._need: int | None = None  # length of the fragment being received
        self._last = False
        self._frags: list[bytes | memoryview] = []
        self._frag_total = 0

    def _take(self, n: int) -> bytes | memoryview:
        first = self._chunks[0]
        off = self._off
        if len(first) - off >= n:
            piece: bytes | memoryview = memoryview(first)[off : off + n]
            self._off = off + n
            if self._off == len(first):
                self._chunks.popleft()
                self._off = 0
        else:
            parts: list[memoryview] = []
            need = n
            while need:
                first = self._chunks[0]
                k = min(len(first) - self._off, need)
                parts.append(memoryview(first)[self._off : self._off + k])
                need -= k
                self._off += k
                if self._off == len(first):
                    self._chunks.popleft()
                    self._off = 0
            piece = b"".join(parts)
        self._have -= n
        return piece

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Add received bytes; return the records completed by them (possibly none)."""
        if data:
            self._chunks.append(bytes(data) if not isinstance(data, bytes) else data)
            self._have += len(data)
        records: list[bytes | memoryview] = []
        while True:
            if self._need is None:
                if self._have < 4:
                    break
                (hdr,) = _HDR.unpack(bytes(self._take(4)))
                length = hdr & MAX_FRAGMENT
                if self._frag_total + length > self.max_record:
                    raise RecordError(f"record of more than {self.max_record} bytes")
                self._need = length
                self._last = bool(hdr & LAST_FRAGMENT)
            if self._have < self._need:
                break
            frag = self._take(self._need) if self._need else b""
            self._need = None
            if self._last:
                if self._frags:
                    self._frags.append(frag)
                    records.append(b"".join(self._frags))
                    self._frags = []
                else:
                    records.append(frag)
                self._frag_total = 0
            else:
                self._frags.append(frag)
                self._frag_total += len(frag)
        return records

    def pending(self) -> int:
        """Bytes buffered but not yet part of a returned record."""
        return self._have + self._frag_total


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
