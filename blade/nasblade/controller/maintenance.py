"""Background upkeep of the array's redundancy: device watch, bitmap cleaning, rebuild, scrub.

``Maintenance.run`` is one task on the controller's loop; the device work runs in the
engine's I/O thread pool one step (a stripe unit or a few) at a time, so client I/O keeps
going between steps:

- every ``WATCH`` seconds: devices whose file is gone are failed (``Array.check_devices``),
  and write-intent bits of regions without recent writes are cleared (``clean_bitmaps``);
- a device being rebuilt (after ``Array.replace`` or a blank device found at start) is
  copied at up to ``rebuild_rate`` bytes/s, at most ``busy_rate`` while clients do I/O
  (the engine's load window), checkpointed every ``CHECKPOINT`` bytes so a restart resumes
  near where it stopped;
- a scrub pass runs every ``scrub_interval`` seconds (0: only on demand, ``request_scrub``)
  at up to ``scrub_rate`` bytes/s (``busy_rate`` under load), repairing what it finds; its
  progress and result are ``scrub_status`` (the last result is kept in the superblock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nasblade.controller.array import Array, now
from nasblade.controller.engine import Engine

log = logging.getLogger(__name__)

MiB = 1 << 20
WATCH = 1.0
STEP = MiB
"""Bytes one rebuild or scrub step handles (one stripe unit). Not more: on the 2-core test VM a
mirror rebuild in 4 MiB steps ran at 224-260 MB/s and in 1 MiB steps at 678 MB/s (2 MiB: 264,
512 KiB: 581). Buffers past the CPU cache make each copy through them go to memory twice,
and a 4 MiB ``pwrite`` from a buffer made once ran at 400 MiB/s against 4.8 GiB/s for 1 MiB
(docs/performance.md, bench/raid)."""
CHECKPOINT = 64 * MiB


class Maintenance:
    def __init__(self, engine: Engine, *, rebuild_rate: int = 256 * MiB, scrub_rate: int = 64 * MiB,
                 busy_rate: int = 16 * MiB, scrub_interval: float = 7 * 86400.0) -> None:
        self.engine = engine
        self.rebuild_rate = rebuild_rate
        self.scrub_rate = scrub_rate
        self.busy_rate = busy_rate
        self.scrub_interval = scrub_interval
        self._scrub_wanted = asyncio.Event()
        self._rebuild_wanted = asyncio.Event()
        self.scrub_running = False
        self.scrub_progress = (0, 0)  # (bytes done, bytes in the pass)
        self.scrub_found = (0, 0)  # (repaired, lost) in the running pass
        self._stopping = False

    @property
    def array(self) -> Array:
        return self.engine.array

    # --- status and requests -------------------------------------------------------------

    def request_scrub(self) -> None:
        self._scrub_wanted.set()

    def request_rebuild(self) -> None:
        """A device was replaced: start rebuilding now, not at the next look."""
        self._rebuild_wanted.set()

    def scrub_status(self) -> dict[str, Any]:
        done, total = self.scrub_progress
        return {"running": self.scrub_running, "done": done, "total": total,
                "repaired": self.scrub_found[0], "lost": self.scrub_found[1],
                "interval": self.scrub_interval, "rate": self.scrub_rate,
                "last": self.array.state.scrub or None}

    # --- tasks ------------------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._rebuild()),
                 asyncio.create_task(self._scrub())]
        try:
            await asyncio.gather(*tasks)
        finally:
            self._stopping = True
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._io(self.array.checkpoint)

    async def _io(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.engine.io_pool, fn, *args)

    def _busy(self) -> bool:
        return self.engine.load.inflight > 0 or self.engine.load.figures()["iops"] > 0

    async def _pace(self, started: float, nbytes: int, rate: int) -> None:
        """Sleep so that ``nbytes`` since ``started`` stay under the rate (lower when busy)."""
        if self._busy():
            rate = min(rate, self.busy_rate)
        wait = nbytes / rate - (time.monotonic() - started)
        await asyncio.sleep(max(wait, 0.0))

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH)
            try:
                for m in await self._io(self.array.check_devices):
                    log.error("device %d (%s): file gone, failed", m.index, m.path)
                await self._io(self.array.clean_bitmaps)
            except OSError as exc:
                log.error("device check: %s", exc)

    async def _rebuild(self) -> None:
        while True:
            if not self.array.rebuilding():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._rebuild_wanted.wait(), WATCH / 2)
                self._rebuild_wanted.clear()
                continue
            since_checkpoint = 0
            while self.array.rebuilding():
                started = time.monotonic()
                try:
                    n = await self._io(self.array.rebuild_step, STEP)
                except OSError as exc:
                    log.error("rebuild: %s", exc)
                    await asyncio.sleep(WATCH)
                    continue
                since_checkpoint += n
                if since_checkpoint >= CHECKPOINT:
                    await self._io(self.array.checkpoint)
                    since_checkpoint = 0
                await self._pace(started, n, self.rebuild_rate)

    async def _scrub(self) -> None:
        while True:
            timeout = self.scrub_interval if self.scrub_interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scrub_wanted.wait(), timeout)
            self._scrub_wanted.clear()
            await self.scrub_pass()

    async def scrub_pass(self) -> tuple[int, int]:
        """One whole pass, paced; returns (repaired, lost)."""
        pieces = self.array.scrub_ranges(STEP)
        total = sum(n for _, _, n in pieces)
        self.scrub_running, self.scrub_progress, self.scrub_found = True, (0, total), (0, 0)
        started_at = now()
        done = repaired = lost = 0
        mismatches = self.array.parity_mismatches()
        try:
            for v, off, n in pieces:
                started = time.monotonic()
                r, lo = await self._io(self.array.scrub_step, v, off, n)
                repaired, lost, done = repaired + r, lost + lo, done + n
                self.scrub_progress, self.scrub_found = (done, total), (repaired, lost)
                await self._pace(started, n, self.scrub_rate)
        finally:
            self.scrub_running = False
        self.array.state.scrub = {"started": started_at, "finished": now(), "bytes": done,
                                  "repaired": repaired, "lost": lost,
                                  "parityMismatches": self.array.parity_mismatches() - mismatches}
        await self._io(self.array.persist)
        log.info("scrub: %d bytes checked, %d block(s) repaired, %d lost", done, repaired, lost)
        return repaired, lost
