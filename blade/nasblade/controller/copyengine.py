"""The copy engine: block-by-block LU range copies with a rate limit, progress and cancel.

Jobs come from the control API (``api``), run as asyncio tasks next to the NBD server and
move data through ``engine.Engine`` 's cache in ``CHUNK``-sized pieces. Point-in-time
semantics by copy-on-write: the engine calls ``before_write`` ahead of every write, and a
write to a not-yet-copied chunk of a running job's source first copies that chunk (still
holding the old data) to the target. Because chunk copies and NBD writes both run on the
event loop thread without awaiting in between, a chunk is never seen half-written.

Jobs are persisted in the superblock's ``copyJobs`` table when they start and when they
end. A job that was running when the controller stopped is marked ``failed`` ("interrupted
by controller restart") on the next start, so a copy is never silently half-done.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from nasblade.controller.array import now
from nasblade.controller.engine import Engine, NotFound

log = logging.getLogger(__name__)

CHUNK = 1 << 20
KEEP_FINISHED = 100


class CopyError(ValueError):
    """A copy request that cannot be accepted (bad range, unknown LU)."""


@dataclass
class Job:
    id: str
    source: str
    source_offset: int
    target: str
    target_offset: int
    length: int
    rate_limit: int
    state: str = "running"
    bytes_done: int = 0
    #: of ``bytes_done``, the never-written chunks zeroed on the target instead of copied
    holes: int = 0
    error: str | None = None
    created: str = field(default_factory=now)
    started: str | None = None
    finished: str | None = None
    done: bytearray = field(default_factory=bytearray, repr=False)
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "sourceOffset": self.source_offset,
                "target": self.target, "targetOffset": self.target_offset,
                "length": self.length, "rateLimit": self.rate_limit, "state": self.state,
                "bytesDone": self.bytes_done, "bytesTotal": self.length, "bytesHoles": self.holes,
                "result": None if self.state == "running" else self.state,
                "error": self.error, "created": self.created, "started": self.started,
                "finished": self.finished}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Job:
        return cls(id=d["id"], source=d["source"], source_offset=d["sourceOffset"],
                   target=d["target"], target_offset=d["targetOffset"], length=d["length"],
                   rate_limit=d["rateLimit"], state=d["state"], bytes_done=d["bytesDone"],
                   holes=int(d.get("bytesHoles") or 0),
                   error=d.get("error"), created=d["created"], started=d.get("started"),
                   finished=d.get("finished"))


class CopyEngine:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.jobs: dict[str, Job] = {}
        engine.copy_hooks.append(self)

    # --- persistence -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Load the persisted jobs; fail the ones a stop interrupted."""
        changed = False
        for d in self.engine.array.state.copy_jobs:
            job = Job.from_json(d)
            if job.state == "running":
                job.state, job.error, job.finished = "failed", "interrupted by controller restart", now()
                changed = True
            self.jobs[job.id] = job
        if changed:
            self._persist()

    def _persist(self) -> None:
        finished = [j for j in self.jobs.values() if j.state != "running"]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[old.id]
        self.engine.array.state.copy_jobs = [j.to_json() for j in self.jobs.values()]
        self.engine.array.persist()

    # --- API ------------------------------------------------------------------------------------

    def create(self, *, source: str, source_offset: int, target: str, target_offset: int,
               length: int, rate_limit: int = 0) -> Job:
        lus = self.engine.array.state.lus
        for name in (source, target):
            if name not in lus:
                raise NotFound(f"LU {name}")
        if min(source_offset, target_offset) < 0 or length <= 0 or rate_limit < 0:
            raise CopyError("offsets must be >= 0, length > 0, rateLimit >= 0")
        if source_offset + length > lus[source].size:
            raise CopyError("source range is past the end of the source LU")
        if target_offset + length > lus[target].size:
            raise CopyError("target range is past the end of the target LU")
        if source == target and source_offset < target_offset + length and target_offset < source_offset + length:
            raise CopyError("source and target ranges overlap")
        if lus[target].read_only:
            raise CopyError("target LU is read-only")
        job = Job(uuid.uuid4().hex, source, source_offset, target, target_offset, length, rate_limit)
        job.done = bytearray(-(-length // CHUNK))
        job.started = now()
        self.jobs[job.id] = job
        self._persist()
        job.task = asyncio.get_running_loop().create_task(self._run(job))
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"copy job {job_id}")
        if job.state == "running":
            job.cancel_requested = True
        return job

    def busy(self, lu: str) -> bool:
        return any(j.state == "running" and lu in (j.source, j.target) for j in self.jobs.values())

    async def shutdown(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await job.task
        if any(j.state == "failed" and j.error == "controller stopped" for j in self.jobs.values()):
            self._persist()

    # --- copying ----------------------------------------------------------------------------------

    def _copy_chunk(self, job: Job, index: int) -> int:
        off = index * CHUNK
        n = min(CHUNK, job.length - off)
        src = self.engine.lu(job.source)
        dst = self.engine.lu(job.target)
        self.engine._check_fault(job.source, job.source_offset + off, n, "read")
        data = self.engine.cache.read(src, job.source_offset + off, n)
        self.engine._check_fault(job.target, job.target_offset + off, n, "write")
        self.engine.cache.write(dst, job.target_offset + off, memoryview(data), through=False)
        job.done[index] = 1
        job.bytes_done += n
        return n

    def would_copy(self, lu: str, offset: int, length: int) -> bool:
        """Whether a write of the range would copy not-yet-copied source chunks first."""
        for job in self.jobs.values():
            if job.state != "running" or job.source != lu:
                continue
            start = max(offset, job.source_offset) - job.source_offset
            end = min(offset + length, job.source_offset + job.length) - job.source_offset
            if start < end and not all(job.done[start // CHUNK : (end - 1) // CHUNK + 1]):
                return True
        return False

    def before_write(self, lu: str, offset: int, length: int) -> None:
        """Copy-on-write: save not-yet-copied source chunks before they are overwritten."""
        for job in self.jobs.values():
            if job.state != "running" or job.source != lu:
                continue
            start = max(offset, job.source_offset) - job.source_offset
            end = min(offset + length, job.source_offset + job.length) - job.source_offset
            if start >= end:
                continue
            for index in range(start // CHUNK, (end - 1) // CHUNK + 1):
                if not job.done[index]:
                    self._copy_chunk(job, index)

    async def _run(self, job: Job) -> None:
        """Copy every chunk not yet copied on write.

        Device I/O runs in the engine's thread pool, pipelined: the read of one chunk overlaps
        the write of the previous one. A chunk that was never written (``Engine.allocation``:
        holes on the devices, nothing dirty in the cache) is not read: the target's range is
        zeroed instead, which punches holes, so a sparse LU copies at the speed of its data. A chunk counts as copied only when its read comes back
        on the loop thread and the copy-on-write hook has not copied it meanwhile; from then
        on the old data is held in memory, so client writes to the chunk may proceed.
        """
        engine = self.engine
        t0 = time.monotonic()
        copied = 0
        pending: asyncio.Future[set[int]] | None = None
        try:
            for index in range(len(job.done)):
                if job.cancel_requested:
                    job.state = "cancelled"
                    break
                if job.done[index]:
                    continue
                if job.rate_limit:
                    delay = t0 + copied / job.rate_limit - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        if job.cancel_requested:
                            job.state = "cancelled"
                            break
                        if job.done[index]:  # copied on write while we slept
                            continue
                off = index * CHUNK
                n = min(CHUNK, job.length - off)
                src = engine.lu(job.source)
                if engine.allocation(src, job.source_offset + off, n) == [(n, False)]:
                    # never written (a hole on the devices, nothing dirty in the cache): it reads
                    # as zeroes, so the target's range is zeroed -- holes punched, no data moved --
                    # at once, on the loop thread like the copy-on-write hook
                    engine._check_fault(job.source, job.source_offset + off, n, "read")
                    engine._check_fault(job.target, job.target_offset + off, n, "write")
                    job.done[index] = 1
                    job.bytes_done += n
                    job.holes += n
                    await engine.zero(engine.lu(job.target), job.target_offset + off, n, fua=False)
                    continue
                data = await engine.read_large(src, job.source_offset + off, n)
                if job.done[index]:  # the hook copied it while our read was in flight
                    continue
                job.done[index] = 1
                job.bytes_done += n
                copied += n
                dst = engine.lu(job.target)
                engine._check_fault(job.target, job.target_offset + off, n, "write")
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(
                    engine.write_through(dst, job.target_offset + off, memoryview(data)))
            if pending is not None:
                await pending
                pending = None
            if job.state == "running":
                engine.cache.destage(lu=job.target)
                await engine.sync(None)
                job.state = "succeeded"
        except asyncio.CancelledError:
            job.state, job.error = "failed", "controller stopped"
            job.finished = now()
            raise
        except (OSError, NotFound) as exc:
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.warning("copy job %s failed: %s", job.id, exc)
        finally:
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
        job.finished = now()
        self._persist()
