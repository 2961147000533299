"""Large I/O buffers, used again once nobody holds them.

Every large NBD WRITE payload gets its own buffer (``nbd.proto.ServerConnection``: the socket
receives into it, the device write reads from it) and so does every large read the controller
serves (``controller.engine``). A new ``bytearray`` of a megabyte costs its zeroing and a page
fault per 4 KiB page on first touch -- a tenth of the controller's CPU for sequential 1 MiB
writes on the test machine -- so a connection keeps the buffers it handed out (``Spares``) and
hands one out again when nothing refers to it any more.

"Nothing refers to it" is CPython's reference count: every view of a buffer (a request's
payload, its slices, a device write or read running in a thread, a transport still sending
it) holds a reference to the ``bytearray``, so a count of three -- the deque, the loop
variable and ``sys.getrefcount``'s argument -- means only ``Spares`` has it. A buffer handed out
again is overwritten in full by its new user before anyone reads it (a payload received in
full, a device read of its whole length).
"""

from __future__ import annotations

import collections
import sys

_ONLY_OURS = 3  # the deque's reference, the loop variable, getrefcount's argument


class Spares:
    """Buffers handed out by ``get``, kept (up to ``limit`` bytes in all) to be handed out again.

    Not thread-safe: one event loop calls ``get``; the buffers themselves may be used from
    any thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: collections.deque[bytearray] = collections.deque()
        self._bytes = 0
        self.reused = 0
        self.allocated = 0

    def get(self, length: int) -> bytearray:
        """A buffer of ``length`` bytes (its content is not defined)."""
        for b in self._kept:
            if len(b) == length and sys.getrefcount(b) <= _ONLY_OURS:
                self.reused += 1
                return b
        b = bytearray(length)
        self.allocated += 1
        if length <= self.limit:
            self._kept.append(b)
            self._bytes += length
            while self._bytes > self.limit:
                self._bytes -= len(self._kept.popleft())
        return b

    @property
    def kept(self) -> int:
        return len(self._kept)
