"""The file processor's side of cluster groups: self-fencing when its block processor is gone.

``nasblade.bladeapi.agent`` (the blade's file processor) calls ``SelfFence.ok()`` after every
heartbeat its block processor stored and ``SelfFence.unreachable()`` when the block processor
could not be reached at all (connection refused, socket gone — not when it answered with an
error, e.g. while the processor-information area is switching). After ``fence_after`` seconds
without reaching it, the file processor stops serving every file system: without its block
processor it cannot reach its LUs anyway, and letting go of the file systems' addresses lets the
surviving blade of the group bind them (``nasblade.cluster.member``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

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
            with contextlib.suppress(Exception):  # the device is gone with the block processor
                await self.fp.remove_filesystem(name)
            self.fp.endpoints.pop(name, None)
            self.fenced += 1
