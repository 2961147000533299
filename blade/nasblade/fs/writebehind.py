"""Write-behind for file data: data writes go to a second device connection in a background
thread, so the reply to a WRITE does not wait for the controller's acknowledgement.

``nasblade.fs.fs.FileSystem`` sends every data-region write through ``submit`` (one worker,
so writes reach the device in the order they were issued) and calls ``drain`` before anything
that must observe them: every data read, and the data barrier of a group commit (drain, then
the device flush; NBD FLUSH and fdatasync cover writes completed on any connection). A
failed background write is raised by the next ``drain``, so a commit never acknowledges data
that did not reach the device. At most ``max_bytes`` are in flight.
"""

from __future__ import annotations

import collections
import concurrent.futures

from nasblade.blockdev import BlockDevice, Buffer


class WriteBehind:
    def __init__(self, dev: BlockDevice, *, max_bytes: int = 8 << 20) -> None:
        self.dev = dev
        self.max_bytes = max_bytes
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="writebehind")
        self._inflight: collections.deque[tuple[int, concurrent.futures.Future[None]]] = collections.deque()
        self._bytes = 0
        self._error: BaseException | None = None

    def _reap(self, *, wait_for: int) -> None:
        """Collect finished writes; wait until at most ``wait_for`` bytes remain in flight."""
        while self._inflight and (self._bytes > wait_for or self._inflight[0][1].done()):
            n, fut = self._inflight.popleft()
            self._bytes -= n
            exc = fut.exception()
            if exc is not None and self._error is None:
                self._error = exc

    def submit(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        self._reap(wait_for=max(0, self.max_bytes - len(data)))
        self._inflight.append((len(data), self.pool.submit(self.dev.pwrite, offset, data, fua=fua)))
        self._bytes += len(data)

    def drain(self) -> None:
        """Wait for every submitted write; raise the first error of any of them."""
        self._reap(wait_for=0)
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    @property
    def idle(self) -> bool:
        return not self._inflight

    def close(self) -> None:
        try:
            self._reap(wait_for=0)
        finally:
            self.pool.shutdown(wait=True)
            self.dev.close()
