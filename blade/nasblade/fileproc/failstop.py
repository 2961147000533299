"""The file processor's side of cluster groups: self-fencing when its block processor is gone.

``nasblade.fileproc.agent`` (the blade's file processor) calls ``SelfFence.ok()`` after every
heartbeat its block processor stored and ``SelfFence.unreachable()`` when the block processor
could not be reached at all (connection refused, socket gone — not when it answered with an
error, e.g. while the processor-information area is switching). After ``fence_after`` seconds
without reaching it, the file processor stops serving every file system: without its block
processor it cannot reach its LUs anyway, and letting go of the file systems' addresses lets the
surviving blade of the group bind them (``nasblade.cluster.member``).

``FailStopDevice`` wraps the file processor's devices: when a device is lost (the block
processor died) or fenced (the controller answers EPERM because another blade took the LU over
with a higher epoch), the NFS request in progress gets no reply and its connection is aborted
(``DeviceLost``), so clients retry instead of seeing an I/O error, and reach the new owner.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from nasblade import devices
from nasblade.blockdev import BlockDevice, Buffer

T = TypeVar("T")

log = logging.getLogger(__name__)


class SelfFence:
    def __init__(self, fp: Any, *, fence_after: float) -> None:
        self.fp = fp  # nasblade.fileproc.server.FileProcessor
        self.fence_after = fence_after
        self.since: float | None = None
        self.fenced = 0

    def ok(self) -> None:
        self.since = None

    async def unreachable(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if now - self.since < self.fence_after or not self.fp.endpoints:
            return
        log.error("block processor unreachable for %.1fs (%s): stopping service of %s",
                  now - self.since, exc, ", ".join(sorted(self.fp.endpoints)))
        for name in list(self.fp.endpoints):
            with contextlib.suppress(Exception, DeviceLost):  # the device went with the block processor
                await self.fp.remove_filesystem(name)
            self.fp.endpoints.pop(name, None)
            self.fenced += 1


class DeviceLost(BaseException):
    """The file system's device is gone (block processor dead) or fenced (EPERM).

    Deliberately a ``BaseException``: the RPC dispatcher turns ordinary exceptions into a
    ``SYSTEM_ERR`` reply, which an NFS client reports to the application as EIO. A server that
    has lost its device must not answer at all; this exception escapes the dispatcher, asyncio
    aborts the connection, and the client retries — reaching the blade that took over.
    """


_LOST_ERRNOS = {errno.EPERM, errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED, errno.ENOENT, errno.EBADF,
                errno.ENOTCONN, errno.ESHUTDOWN}


def _lost(exc: OSError) -> bool:
    return isinstance(exc, ConnectionError) or exc.errno in _LOST_ERRNOS


class FailStopDevice:
    """A ``BlockDevice`` wrapper that turns a lost or fenced device into ``DeviceLost``."""

    def __init__(self, dev: BlockDevice) -> None:
        self.dev = dev

    @property
    def size(self) -> int:
        return self.dev.size

    def _do(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except OSError as exc:
            if _lost(exc):
                raise DeviceLost(str(exc)) from exc
            raise

    def pread(self, offset: int, length: int) -> bytes:
        return self._do(lambda: self.dev.pread(offset, length))

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        self._do(lambda: self.dev.pwrite(offset, data, fua=fua))

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None:
        self._do(lambda: self.dev.write_zeroes(offset, length, fua=fua))

    def trim(self, offset: int, length: int) -> None:
        self._do(lambda: self.dev.trim(offset, length))

    def flush(self) -> None:
        self._do(self.dev.flush)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.dev.close()


def fail_stop_open(url: str) -> BlockDevice:
    """``open_device`` for the blade's file processor (``FileProcessor(open_device=...)``)."""
    return FailStopDevice(devices.open_device(url))
