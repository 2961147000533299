"""The block-device interface the file system and the processor-information code are written to.

A ``BlockDevice`` is a fixed-size array of bytes with positional, synchronous I/O and an
explicit durability barrier. Two implementations exist:

- ``FileBlockDevice`` (here): a local file or block device, used by unit tests and tools.
- ``nasblade.nbd.client.NBDBlockDevice``: an LU reached over NBD (TCP to the controller, or a
  Unix socket to the blade's block processor).

``nasblade.devices.open_device(url)`` picks one from a URL (it lives there, not here, so that
this interface imports no implementation).

Durability contract (the same as NBD's): after ``pwrite(..., fua=True)`` returns, or after
``flush()`` returns, the data written before it is on stable storage. Errors are ``OSError``
with the errno of the failure (``EIO``, ``EPERM`` for a fenced writer, ``ENOSPC`` past the end).
"""

from __future__ import annotations

import errno
import os
from typing import Protocol, runtime_checkable

Buffer = bytes | bytearray | memoryview


@runtime_checkable
class BlockDevice(Protocol):
    @property
    def size(self) -> int:
        """Size in bytes; fixed for the life of the object."""
        ...

    def pread(self, offset: int, length: int) -> bytes:
        """Read exactly ``length`` bytes at ``offset``."""
        ...

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        """Write all of ``data`` at ``offset``; with ``fua`` it is stable on return."""
        ...

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None: ...

    def trim(self, offset: int, length: int) -> None:
        """Hint that the range is unused; later reads return zeroes or the old data."""
        ...

    def flush(self) -> None:
        """Make every completed write stable."""
        ...

    def close(self) -> None: ...


def check_range(size: int, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise OSError(errno.EINVAL, f"negative offset or length ({offset}, {length})")
    if offset + length > size:
        raise OSError(errno.ENOSPC, f"range {offset}+{length} is past the end ({size})")


class FileBlockDevice:
    """A ``BlockDevice`` over a local file (created sparse at ``size`` if missing)."""

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None) -> None:
        flags = os.O_RDWR | os.O_CLOEXEC
        if size is not None:
            flags |= os.O_CREAT
        self._fd = os.open(path, flags, 0o600)
        if size is not None and os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        self._size = os.lseek(self._fd, 0, os.SEEK_END)

    @property
    def size(self) -> int:
        return self._size

    def pread(self, offset: int, length: int) -> bytes:
        check_range(self._size, offset, length)
        data = os.pread(self._fd, length, offset)
        if len(data) != length:
            raise OSError(errno.EIO, f"short read at {offset}: {len(data)} of {length}")
        return data

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        view = memoryview(data).cast("B")
        check_range(self._size, offset, len(view))
        while view:
            n = os.pwrite(self._fd, view, offset)
            view = view[n:]
            offset += n
        if fua:
            os.fdatasync(self._fd)

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None:
        check_range(self._size, offset, length)
        chunk = bytes(min(length, 1 << 20))
        end = offset + length
        while offset < end:
            n = min(len(chunk), end - offset)
            self.pwrite(offset, memoryview(chunk)[:n])
            offset += n
        if fua:
            os.fdatasync(self._fd)

    def trim(self, offset: int, length: int) -> None:
        check_range(self._size, offset, length)

    def flush(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
