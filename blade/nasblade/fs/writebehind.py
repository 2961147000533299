"""Write-behind for file data: data writes go to a second device connection in a background
thread, so the reply to a WRITE does not wait for the controller's acknowledgement.

``nasblade.fs.fs.FileSystem`` sends every data-region write through ``submit`` and calls
``drain`` before anything that must observe them: every data read, and the data barrier of a
group commit (drain, then the device flush; NBD FLUSH and fdatasync cover writes completed on
any connection). A failed background write is raised by the next ``drain``, so a commit never
acknowledges data that did not reach the device. At most ``max_bytes`` are submitted and not
yet written; ``submit`` waits past that.

One worker writes in submission order. While it waits for the device, new writes queue up;
it then takes the queued writes that continue one another on the device (each starting where
the previous one ended, up to ``max_merge`` bytes) and sends them as one write. A client
writing 4 KiB at a time (``wsize=4096``, or small application writes) thus costs one device
round trip per run, not one per write. Merging never reorders: a run is a prefix of the queue
and is written before anything queued after it. A run with any FUA write in it goes with FUA
(stronger than each part asked for, never weaker).
"""

from __future__ import annotations

import collections
import threading

from nasblade.blockdev import BlockDevice, Buffer


class WriteBehind:
    def __init__(self, dev: BlockDevice, *, max_bytes: int = 8 << 20, max_merge: int = 1 << 20) -> None:
        self.dev = dev
        self.max_bytes = max_bytes
        self.max_merge = max_merge
        self._cv = threading.Condition()
        self._queue: collections.deque[tuple[int, Buffer, bool]] = collections.deque()
        self._pending = 0  # bytes submitted and not yet written (queued or in the worker's hands)
        self._error: BaseException | None = None
        self._closing = False
        self.device_writes = 0  # writes sent to the device (runs), for tests and figures
        self._worker = threading.Thread(target=self._run, name="writebehind", daemon=True)
        self._worker.start()

    def submit(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        n = len(data)
        with self._cv:
            while self._pending and self._pending + n > self.max_bytes:
                self._cv.wait()
            self._queue.append((offset, data, fua))
            self._pending += n
            self._cv.notify_all()

    def _take(self) -> tuple[int, list[Buffer], bool, int] | None:
        """The next run (offset, parts, fua, bytes) off the queue; None once closing and empty.
        Called with the lock held."""
        while not self._queue:
            if self._closing:
                return None
            self._cv.wait()
        offset, data, fua = self._queue.popleft()
        parts, n = [data], len(data)
        while self._queue:
            nxt, ndata, nfua = self._queue[0]
            if nxt != offset + n or n + len(ndata) > self.max_merge:
                break
            self._queue.popleft()
            parts.append(ndata)
            n += len(ndata)
            fua = fua or nfua
        return offset, parts, fua, n

    def _run(self) -> None:
        while True:
            with self._cv:
                run = self._take()
            if run is None:
                return
            offset, parts, fua, n = run
            error: BaseException | None = None
            try:
                self.dev.pwrite(offset, parts[0] if len(parts) == 1 else b"".join(parts), fua=fua)
            except BaseException as exc:  # handed to the next drain()
                error = exc
            with self._cv:
                self.device_writes += 1
                self._pending -= n
                if error is not None and self._error is None:
                    self._error = error
                self._cv.notify_all()

    def drain(self) -> None:
        """Wait for every submitted write; raise the first error of any of them."""
        with self._cv:
            while self._pending:
                self._cv.wait()
            if self._error is not None:
                exc, self._error = self._error, None
                raise exc

    @property
    def idle(self) -> bool:
        """Nothing in flight and no error waiting for ``drain`` to raise it."""
        with self._cv:
            return not self._pending and self._error is None

    def close(self) -> None:
        try:
            self.drain()
        finally:
            with self._cv:
                self._closing = True
                self._cv.notify_all()
            self._worker.join()
            self.dev.close()
