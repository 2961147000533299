"""The lifeline between a blade's file processor and its block processor.

Heartbeats say a file processor is alive; they cannot say at once that it died. The lifeline
does: the file processor (``nasblade.fileproc.agent``) keeps one connection open to its block
processor on a Unix socket next to the local API (``socket_path``), and says who it is in one
line. When the file processor's process ends for any reason -- SIGKILL, a crash, its container
killed -- the kernel closes that connection, and the block processor (``Lifeline``, inside
``nasblade.blockproc.core.BlockProcessor``) learns it within microseconds, without waiting for a
heartbeat to go missing. A file processor that stops cleanly sends ``bye`` first.

Wire (one direction, newline-terminated JSON lines, file processor → block processor)::

    {"hello": "file-processor", "pid": 1234}
    {"bye": true}                              (optional, a clean stop)

then end of file. The block processor never writes; the file processor sees end of file when
its block processor is gone and connects again (``hold``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

MAX_LINE = 4096


def socket_path(local_unix: str) -> str:
    """The lifeline socket of the block processor whose local API listens on ``local_unix``."""
    p = Path(local_unix)
    return str(p.with_name(f"{p.stem}.lifeline.sock"))


class Lifeline:
    """The block processor's end: calls ``on_lost(pid)`` when a file processor's connection
    ends without ``bye`` (its process is gone)."""

    def __init__(self, on_lost: Callable[[int | None], Awaitable[None]]) -> None:
        self.on_lost = on_lost
        self.pid: int | None = None
        """The pid of the file processor that said hello last (``None`` before the first)."""
        self.connected = 0
        self.lost = 0
        self._open = 0
        self._server: asyncio.AbstractServer | None = None

    @property
    def alive(self) -> bool:
        """A file processor holds its lifeline now (it said hello and has not gone)."""
        return self._open > 0

    async def start(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        self._server = await asyncio.start_unix_server(self._serve, path, limit=MAX_LINE)
        os.chmod(path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pid: int | None = None
        clean = False
        try:
            hello = json.loads(await reader.readline() or b"{}")
            if isinstance(hello, dict) and isinstance(hello.get("pid"), int):
                pid = hello["pid"]
                self.pid = pid
                self.connected += 1
                self._open += 1
            while line := await reader.readline():
                msg = json.loads(line)
                if isinstance(msg, dict) and msg.get("bye"):
                    clean = True
        except (ValueError, OSError, asyncio.LimitOverrunError) as exc:
            log.warning("lifeline: %s", exc)
        finally:
            if pid is not None:
                self._open -= 1
            writer.close()
        if pid is not None and not clean and pid == self.pid:
            self.lost += 1
            await self.on_lost(pid)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()


async def hold(path: str, *, retry: float, stop: asyncio.Event) -> None:
    """The file processor's end: keep a lifeline to the block processor until ``stop`` is set
    (then say ``bye``); connect again whenever the block processor went away."""
    hello = json.dumps({"hello": "file-processor", "pid": os.getpid()}).encode() + b"\n"
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_unix_connection(path)
        except OSError:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry)
            continue
        try:
            writer.write(hello)
            await writer.drain()
            eof = asyncio.ensure_future(reader.read())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait([eof, stopped], return_when=asyncio.FIRST_COMPLETED)
            eof.cancel()
            stopped.cancel()
            if stop.is_set():
                writer.write(b'{"bye": true}\n')
                with contextlib.suppress(OSError):
                    await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
