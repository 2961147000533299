"""``AsyncControlClient``: the typed asyncio face of the controller's control API for the blade's
daemons (the block processor, ``nasblade.blockproc.core``, and the cluster member,
``nasblade.cluster``).

Each method is one call of ``nasblade.controller.apiclient.ControlClient`` run in a worker
thread (``asyncio.to_thread``), so the event loop that carries the blade's NBD traffic never
waits on the controller; what the daemons decide on comes back typed (``Reservation``,
``CopyJob``). ``controller_cas`` gives a ``PortionStore`` the controller's compare-and-write.
Errors are the client's: ``ControlAPIError`` for a refusal, ``OSError`` when the controller
cannot be reached.
"""

from __future__ import annotations

import asyncio
import base64
import errno
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from nasblade.controller.apiclient import ControlAPIError, ControlClient
from nasblade.procinfo.portion import CompareAndWrite


@dataclass(frozen=True)
class Reservation:
    """Who holds an LU's reservation at the controller (``holder`` ``None``: nobody)."""

    holder: str | None
    epoch: int | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Reservation:
        holder, epoch = d.get("holder"), d.get("epoch")
        return cls(holder=None if holder is None else str(holder), epoch=None if epoch is None else int(epoch))


@dataclass(frozen=True)
class CopyJob:
    """A copy-engine job as the controller reports it (``state``: running, succeeded, failed, …)."""

    id: str
    state: str
    bytes_done: int
    error: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CopyJob:
        err = d.get("error")
        return cls(id=str(d["id"]), state=str(d["state"]), bytes_done=int(d.get("bytesDone") or 0),
                   error=None if err is None else str(err))


class AsyncControlClient:
    """``AsyncControlClient(ControlClient(url, token))``; ``sync`` is the wrapped client."""

    def __init__(self, sync: ControlClient) -> None:
        self.sync = sync

    async def register_client(self, name: str, *, group: str, role: str, attrs: dict[str, Any] | None = None) -> None:
        await asyncio.to_thread(self.sync.register_client, name, group=group, role=role, attrs=attrs)

    async def get_client(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.get_client, name)

    async def get_lu(self, name: str) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.get_lu, name)

    async def reserve(self, lu: str, holder: str) -> Reservation:
        return Reservation.from_json(await asyncio.to_thread(self.sync.reserve, lu, holder))

    async def get_reservation(self, lu: str) -> Reservation:
        return Reservation.from_json(await asyncio.to_thread(self.sync.get_reservation, lu))

    async def release(self, lu: str) -> None:
        await asyncio.to_thread(self.sync.release, lu)

    async def add_cache_records(self, client: str, lu: str, ranges: Iterable[Sequence[int]]) -> None:
        await asyncio.to_thread(self.sync.add_cache_records, client, lu, ranges, state="dirty")

    async def load(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.load)

    async def copy(self, source: str, target: str, length: int, *, source_offset: int = 0, target_offset: int = 0,
                   rate_limit: int = 0) -> CopyJob:
        """Start a copy-engine job (``create_copy_job``); ``wait_copy`` follows it."""
        return CopyJob.from_json(await asyncio.to_thread(
            self.sync.create_copy_job, source, target, length, source_offset=source_offset,
            target_offset=target_offset, rate_limit=rate_limit))

    async def wait_copy(self, job_id: str, *, timeout: float) -> CopyJob:
        """The job once it left ``running``; ``TimeoutError`` after ``timeout`` seconds."""
        return CopyJob.from_json(await asyncio.to_thread(self.sync.wait_copy_job, job_id, timeout=timeout))

    def cas(self, lu: str) -> CompareAndWrite:
        return controller_cas(self.sync, lu)


def controller_cas(control: ControlClient, lu: str) -> CompareAndWrite:
    """The ``cas`` of a ``PortionStore`` on ``lu``: the controller's compare-and-write
    (``ControlClient.compare_and_write``). A conflict returns the range as it is now; any other
    refusal is an ``OSError`` (EIO), which the cluster member treats as a failing area."""

    def cas(compare_offset: int, compare_length: int, expect: str, write_offset: int, data: bytes) -> bytes | None:
        try:
            control.compare_and_write(lu, compare_offset=compare_offset, compare_length=compare_length,
                                      expect_sha256=expect, write_offset=write_offset, data=data)
        except ControlAPIError as exc:
            current = exc.body.get("current")
            if exc.status == 409 and isinstance(current, str):
                return base64.b64decode(current)
            raise OSError(errno.EIO, f"compare-and-write on {lu}: {exc}") from exc
        return None

    return cas
