"""A synchronous ``BlockDevice`` over an ``UpstreamPool`` running on an event loop.

The processor-information and program-LU code (``nasblade.procinfo``, ``nasblade.program``)
is written against the synchronous ``nasblade.blockdev.BlockDevice``. The block processor runs
that code in a worker thread (``asyncio.to_thread``) over this adapter, so it shares the
pool's reconnect and retry rules instead of opening a second kind of connection.
"""

from __future__ import annotations

import asyncio
import errno
import os

from nasblade.blockdev import Buffer, check_range
from nasblade.blockproc.upstream import UpstreamPool
from nasblade.nbd import proto

_MAX_IO = 16 << 20


class PoolDevice:
    """``BlockDevice`` whose I/O is carried by ``pool`` on ``loop`` (call from another thread)."""

    def __init__(self, pool: UpstreamPool, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.loop = loop

    @property
    def size(self) -> int:
        return self.pool.size

    def _do(self, cmd: int, offset: int, length: int, *, flags: int = 0, payload: bytes | None = None) -> bytes:
        fut = asyncio.run_coroutine_threadsafe(
            self.pool.request(cmd, offset, length, flags=flags, payload=payload), self.loop
        )
        reply = fut.result()
        if reply.error:
            raise OSError(reply.error, f"{proto.Cmd(cmd).name} {offset}+{length}: {os.strerror(reply.error)}")
        return bytes(reply.data)

    def pread(self, offset: int, length: int) -> bytes:
        check_range(self.size, offset, length)
        parts = []
        end = offset + length
        while offset < end:
            n = min(_MAX_IO, end - offset)
            parts.append(self._do(proto.Cmd.READ, offset, n))
            offset += n
        data = b"".join(parts)
        if len(data) != length:
            raise OSError(errno.EIO, "short read")
        return data

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        raw = bytes(data)
        check_range(self.size, offset, len(raw))
        for start in range(0, len(raw), _MAX_IO):
            chunk = raw[start : start + _MAX_IO]
            last = start + _MAX_IO >= len(raw)
            flags = proto.CMD_FLAG_FUA if fua and last else 0
            self._do(proto.Cmd.WRITE, offset + start, len(chunk), flags=flags, payload=chunk)
        if fua and len(raw) > _MAX_IO:
            self.flush()

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None:
        check_range(self.size, offset, length)
        end = offset + length
        while offset < end:
            n = min(_MAX_IO, end - offset)
            self._do(proto.Cmd.WRITE_ZEROES, offset, n, flags=proto.CMD_FLAG_FUA if fua else 0)
            offset += n

    def trim(self, offset: int, length: int) -> None:
        check_range(self.size, offset, length)
        self._do(proto.Cmd.TRIM, offset, length)

    def flush(self) -> None:
        self._do(proto.Cmd.FLUSH, 0, 0)

    def close(self) -> None:
        """The pool belongs to the block processor; closing the adapter leaves it open."""
