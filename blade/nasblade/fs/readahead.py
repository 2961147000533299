"""Sequential read-ahead for ``nasblade.fs.fs.FileSystem`` on a second device connection.

When a READ is served from one extent, ``FileSystem.read`` asks this module to fetch the
next chunks of that extent in a background thread, over its own ``BlockDevice`` connection
(the NBD client is one request at a time per connection), so the round trip to the
controller overlaps with sending the reply and the client's next request.

Several readers: up to ``depth`` prefetches are kept, the oldest dropped first when a new one
is wanted, so chunks nobody asked for (a reader that stopped, a file read to its end) never
hold a slot, and interleaved sequential readers each keep theirs.

Consistency: every write to the data region bumps ``version`` (on the event-loop thread,
before the write is issued); a prefetched chunk is used only if the version did not change
between the time it was requested and the time it is consumed, so a prefetch can never
return data older than a write the server has already performed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging

from nasblade.blockdev import BlockDevice

log = logging.getLogger(__name__)


class ReadAhead:
    def __init__(self, dev: BlockDevice, *, depth: int = 8) -> None:
        self.dev = dev
        self.depth = depth
        self.version = 0
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="readahead")
        self._pending: collections.OrderedDict[tuple[int, int], tuple[int, concurrent.futures.Future[bytes]]] = (
            collections.OrderedDict())
        self.hits = 0

    def invalidate(self) -> None:
        """A write is about to change the data region: forget every prefetched chunk."""
        self.version += 1
        if self._pending:
            self._pending.clear()

    def take(self, offset: int, length: int) -> bytes | None:
        """The prefetched bytes at ``offset`` (waiting for them if in flight), else ``None``."""
        entry = self._pending.pop((offset, length), None)
        if entry is None or entry[0] != self.version:
            return None
        try:
            data = entry[1].result()
        except OSError as exc:
            log.debug("read-ahead at %d failed: %s", offset, exc)
            return None
        if entry[0] != self.version:
            return None
        self.hits += 1
        return data

    def schedule(self, chunks: list[tuple[int, int]]) -> None:
        """Prefetch these ``(offset, length)`` ranges (at most ``depth`` kept: the oldest go)."""
        for key in chunks:
            if key in self._pending:
                continue
            while len(self._pending) >= self.depth:
                _key, (_v, old) = self._pending.popitem(last=False)
                old.cancel()  # not started yet: never sent; running: its bytes are dropped
            self._pending[key] = (self.version, self.pool.submit(self.dev.pread, *key))

    def close(self) -> None:
        self._pending.clear()
        self.pool.shutdown(wait=True)
        self.dev.close()
