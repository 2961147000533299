"""The controller's NBD front end: a thin asyncio shell around ``proto.ServerConnection``.

One ``NBDConnection`` per client socket (TCP or Unix). Received bytes go into the sans-I/O
core; events come out and are dispatched from ``_HANDLERS`` (command → coroutine) to the
``nasblade.controller.engine.Engine``, which applies fencing, faults, copy-on-write and the
cache. Requests of one connection are executed in order; replies of a batch of pipelined
requests are coalesced into one ``transport.write``. Backpressure both ways: reading pauses
while a lot of unparsed input is buffered, request processing waits while the transport's
write buffer is full.

A group's request outside its window of a shared LU (``access.AccessPolicy.windows``: its
portion of ``procinfo`` and ``backup``) gets ``EPERM``, and the connection serves on.

A connection whose LU is deleted is closed; a connection whose reservation epoch was
superseded stays open and gets ``EPERM`` for every write (reads keep working).

Extensions answered here (negotiated by the core, see ``proto.Extensions``): structured
replies (errors as ``ERROR`` chunks; large reads as ``OFFSET_DATA`` / ``OFFSET_HOLE`` chunks
following ``Engine.allocation``, so holes are neither read nor sent), ``BLOCK_STATUS`` for
``base:allocation`` (a hole reads as zeroes: ``HOLE|ZERO``; anything else ``0``),
``NBD_CMD_CACHE`` (``Engine.prefetch``) and ``FAST_ZERO`` (``Engine.zero(fast=True)``).

TLS (``ServerTLS``, on the TCP listener): the core runs in FORCEDTLS mode; on its
``StartTLS`` event the ACK is sent and ``loop.start_tls`` runs the server handshake, which
requires a client certificate signed by the array's CA (``nasblade.tls``). The
certificate's identity and the access file decide which LUs the client may open or list
(``nasblade.nbd.access``). Without ``ServerTLS`` (and on the Unix socket, which only local
processes reach) every client opens every LU.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from nasblade import tls
from nasblade.controller import layout
from nasblade.controller.engine import LARGE, Engine
from nasblade.nbd import access, proto

log = logging.getLogger(__name__)

_PAUSE_INPUT = 80 * 1024 * 1024
_WRITE_HIGH = 16 * 1024 * 1024
_TASK_BYTES = 64 * 1024 * 1024
_OPS = {int(c): c.name.lower() for c in proto.Cmd}
"""The ``op`` label of the latency histogram (``nasblade.controller.metrics``)."""
_EXTENSIONS = proto.Extensions(structured_replies=True, base_allocation=True, cache=True, fast_zero=True)
_HOLE_STATE = proto.STATE_HOLE | proto.STATE_ZERO

#: a reply: the buffers to send, in order
Reply = list[bytes | bytearray]


@dataclass(frozen=True)
class ServerTLS:
    """TLS required on a listener: the server context and the access file."""

    context: ssl.SSLContext
    access: access.AccessFile


class Catalog(proto.ExportLookup):
    """The engine's LU table as the handshake sees it, through one client's access rights."""

    def __init__(self, engine: Engine, tls_config: ServerTLS | None = None) -> None:
        self.engine = engine
        self.tls = tls_config
        #: the client certificate's identity, once TLS is up
        self.identity: tls.Identity | None = None

    def permits(self, name: str) -> bool:
        if self.tls is None:
            return True
        lu = name.split(";", 1)[0]
        return self.tls.access.policy().permits(self.identity, lu)

    def read_only_for_client(self, lu: str) -> bool:
        """``lu`` is read-only for this client (``access.AccessPolicy.read_only``)."""
        return self.tls is not None and self.tls.access.policy().read_only_for(self.identity, lu)

    def window_for_client(self, lu: str) -> access.Ranges | None:
        """The byte ranges of ``lu`` this client may reach (``access.AccessPolicy.windows``:
        a group's portion of ``procinfo`` and ``backup``); ``None`` for all of it."""
        return None if self.tls is None else self.tls.access.policy().window(self.identity, lu)

    def _info(self, name: str, lu: layout.LURecord) -> proto.ExportInfo:
        flags = (proto.TF_HAS_FLAGS | proto.TF_SEND_FLUSH | proto.TF_SEND_FUA | proto.TF_SEND_TRIM
                 | proto.TF_SEND_WRITE_ZEROES | proto.TF_CAN_MULTI_CONN | proto.TF_SEND_CACHE
                 | proto.TF_SEND_FAST_ZERO)
        if lu.read_only or self.read_only_for_client(lu.name):
            flags |= proto.TF_READ_ONLY
        return proto.ExportInfo(name, lu.size, flags, f"nasblade LU {lu.name}")

    def lookup(self, name: str) -> proto.ExportInfo | None:
        try:
            parsed = proto.parse_export_name(name)
        except ValueError:
            return None
        lu = self.engine.array.state.lus.get(parsed.lu)
        return None if lu is None else self._info(name, lu)

    def names(self) -> list[proto.ExportInfo]:
        return [self._info(n, lu) for n, lu in self.engine.array.state.lus.items()]


class NBDConnection(asyncio.BufferedProtocol):
    def __init__(self, engine: Engine, tls_config: ServerTLS | None = None) -> None:
        self.engine = engine
        self.tls = tls_config
        self.catalog = Catalog(engine, tls_config)
        self.core = proto.ServerConnection(self.catalog, extensions=_EXTENSIONS,
                                           tls=tls_config is not None)
        self.lu = ""
        #: the LU is read-only for this client (its access rule; an LU's own flag is the engine's)
        self.read_only = False
        #: the byte ranges of the LU this client may reach (its access rule), None for all
        self.window: access.Ranges | None = None
        self.holder: str | None = None
        self.epoch: int | None = None
        self.transport: asyncio.Transport | None = None
        self._wake = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._eof = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None
        self._out: list[bytes | bytearray] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_bytes = 0
        self._started = 0.0  # when the request being handled arrived (perf_counter)
        self._spawned = 0  # requests handed to tasks so far
        self._task_done = asyncio.Event()

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock is not None:
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        self.transport.write(self.core.initial_bytes())
        self._task = asyncio.get_running_loop().create_task(self._run())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.core.recv_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.core.recv_done(nbytes)
        self._received()

    def data_received(self, data: bytes) -> None:
        self.core.receive_data(data)
        self._received()

    def _received(self) -> None:
        if self.core.buffered > _PAUSE_INPUT and self.transport and not self._paused:
            self.transport.pause_reading()
            self._paused = True
        self._wake.set()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake.set()
        self._writable.set()
        self.engine.connections.discard(self)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- engine.Fenceable ----------------------------------------------------------------------

    def fence(self) -> None:
        """Called when the LU is deleted: drop the connection."""
        if self.transport is not None and self.engine.array.state.lus.get(self.lu) is None:
            self.transport.close()

    # --- the request loop ----------------------------------------------------------------------

    def _send(self, data: bytes | bytearray) -> None:
        self._out.append(data)

    def _flush_out(self) -> None:
        if self._out and self.transport is not None and not self.transport.is_closing():
            if len(self._out) == 1:
                self.transport.write(self._out[0])
            else:
                self.transport.writelines(self._out)  # uvloop: one writev, no join copy
        self._out.clear()

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:
            log.exception("NBD connection failed")
        finally:
            if self._tasks:  # let large requests in flight finish and answer
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._flush_out()
            self.engine.connections.discard(self)
            if self.transport is not None:
                self.transport.close()

    async def _loop(self) -> None:
        while True:
            event = self.core.next_event()
            hs = self.core.data_to_send()
            if hs:
                self._send(hs)
            if event is None:
                self._flush_out()
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                if self._eof:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(event, proto.Closed):
                log.debug("closing NBD connection: %s", event.reason)
                return
            if isinstance(event, proto.StartTLS):
                if not await self._start_tls():
                    return
                continue
            if isinstance(event, proto.Negotiated):
                parsed = proto.parse_export_name(event.export.name)
                self.lu, self.holder, self.epoch = parsed.lu, parsed.holder, parsed.epoch
                self.read_only = self.catalog.read_only_for_client(parsed.lu)
                self.window = self.catalog.window_for_client(parsed.lu)
                self.engine.connections.add(self)
                continue
            if isinstance(event, proto.BadRequest):
                self._send(self.core.error_reply(event.cookie, event.error, event.reason))
                continue
            if not self._writable.is_set():
                self._flush_out()
                await self._writable.wait()
            await self._request(event)

    async def _start_tls(self) -> bool:
        """The TLS server handshake after the STARTTLS ACK; False when it failed."""
        assert self.tls is not None and self.transport is not None
        self._flush_out()  # the ACK, in the clear
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(self.transport, self, self.tls.context, server_side=True)
        except (TimeoutError, OSError) as exc:  # ssl.SSLError and ConnectionError are OSErrors
            log.info("NBD TLS handshake refused: %s", exc)
            return False
        if transport is None:
            return False
        self.transport = transport
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH)
        self.catalog.identity = tls.peer_identity(transport.get_extra_info("ssl_object"))
        log.debug("NBD TLS up for %s", self.catalog.identity)
        self.core.tls_started()
        return True

    async def _request(self, req: proto.Request) -> None:
        lu = self.engine.array.state.lus.get(self.lu)
        if lu is None:
            self._send(self.core.error_reply(req.cookie, proto.ESHUTDOWN, "the LU was deleted"))
            return
        handler = _HANDLERS.get(req.cmd)
        if handler is None:
            self._send(self.core.error_reply(req.cookie, proto.EINVAL, "command not served"))
            return
        if self.window is not None and req.cmd != proto.Cmd.FLUSH \
                and not access.inside(self.window, req.offset, req.length):
            self._send(self.core.error_reply(req.cookie, proto.EPERM,
                                             f"outside this client's part of {lu.name}"))
            return
        self.engine.load.inflight += 1
        started = self._started = time.perf_counter()
        spawned = self._spawned
        try:
            await handler(self, lu, req)
        except OSError as exc:
            self._error(req, exc)
        finally:
            self.engine.load.inflight -= 1
            if self._spawned == spawned:  # answered here (a spawned one is timed when its task ends)
                self.engine.load.latency.add((lu.name, _OPS.get(req.cmd, "other")), time.perf_counter() - started)

    def _error(self, req: proto.Request, exc: OSError) -> None:
        self._send(self.core.error_reply(req.cookie, _nbd_errno(exc.errno), exc.strerror or ""))

    # Large reads and writes run as tasks so their device I/O (in the engine's thread pool)
    # overlaps with parsing and answering the next requests; NBD allows replies in any order.
    # A connection has at most _TASK_BYTES of such requests in flight.

    async def _spawn(self, req: proto.Request, work: Awaitable[Reply]) -> None:
        while self._task_bytes > _TASK_BYTES:
            self._flush_out()
            self._task_done.clear()
            await self._task_done.wait()
        self._task_bytes += req.length
        self._spawned += 1
        self.engine.load.inflight += 1
        task = asyncio.get_running_loop().create_task(self._offloaded(req, work, self._started))
        self._tasks.add(task)

    async def _offloaded(self, req: proto.Request, work: Awaitable[Reply], started: float) -> None:
        try:
            for buf in await work:
                self._send(buf)
        except OSError as exc:
            self._error(req, exc)
        finally:
            self.engine.load.inflight -= 1
            self.engine.load.latency.add((self.lu, _OPS.get(req.cmd, "other")), time.perf_counter() - started)
            self._task_bytes -= req.length
            self._tasks.discard(asyncio.current_task())
            self._task_done.set()
            self._flush_out()

    async def _read(self, lu: layout.LURecord, req: proto.Request) -> None:
        if req.length >= LARGE:
            await self._spawn(req, self._read_large(lu, req))
            return
        data = self.engine.read(lu, req.offset, req.length)
        hdr = self.core.read_reply_header(req.cookie, req.offset, len(data))
        if len(data) <= 65536:
            self._send(hdr + data)
        else:
            self._send(hdr)
            self._send(data)

    async def _read_large(self, lu: layout.LURecord, req: proto.Request) -> Reply:
        """One data chunk (or simple reply), or with structured replies and holes in the
        range, ``OFFSET_DATA`` / ``OFFSET_HOLE`` chunks in offset order (last one DONE)."""
        if not self.core.structured or req.flags & proto.CMD_FLAG_DF:
            data = await self.engine.read_large(lu, req.offset, req.length)
            return [self.core.read_reply_header(req.cookie, req.offset, len(data)), data]
        pieces = await self.engine.read_extents(lu, req.offset, req.length)
        out: Reply = []
        for i, (offset, length, piece) in enumerate(pieces):
            done = i == len(pieces) - 1
            if piece is None:
                out.append(proto.hole_chunk(req.cookie, offset, length, done=done))
            else:
                out.append(proto.data_chunk_header(req.cookie, offset, length, done=done))
                out.append(piece)
        return out

    async def _write(self, lu: layout.LURecord, req: proto.Request) -> None:
        self._writable_check(lu)
        assert req.payload is not None
        if req.length >= LARGE:
            await self._spawn(req, self._write_large(lu, req))
            return
        if req.fua:
            self._flush_out()
        await self.engine.write(lu, req.offset, req.payload, fua=req.fua)
        self._send(proto.simple_reply(req.cookie))

    async def _write_large(self, lu: layout.LURecord, req: proto.Request) -> Reply:
        assert req.payload is not None
        await self.engine.write_large(lu, req.offset, req.payload, fua=req.fua)
        return [proto.simple_reply(req.cookie)]

    def _writable_check(self, lu: layout.LURecord) -> None:
        if self.read_only:
            raise OSError(errno.EPERM, f"{lu.name} is read-only for this client")
        err = self.engine.may_write(self, lu)
        if err:
            raise OSError(err, "write refused (read-only LU or fenced reservation)")

    async def _flush(self, lu: layout.LURecord, req: proto.Request) -> None:
        self._flush_out()
        await self.engine.flush()
        self._send(proto.simple_reply(req.cookie))

    async def _trim(self, lu: layout.LURecord, req: proto.Request) -> None:
        self._writable_check(lu)
        self.engine.check_trim(lu, req.offset, req.length)
        self._send(proto.simple_reply(req.cookie))

    async def _zeroes(self, lu: layout.LURecord, req: proto.Request) -> None:
        self._writable_check(lu)
        if req.fua:
            self._flush_out()
        await self.engine.zero(lu, req.offset, req.length, fua=req.fua, fast=req.fast_zero,
                               no_hole=req.no_hole)
        self._send(proto.simple_reply(req.cookie))

    async def _cache(self, lu: layout.LURecord, req: proto.Request) -> None:
        await self.engine.prefetch(lu, req.offset, req.length)
        self._send(proto.simple_reply(req.cookie))

    async def _block_status(self, lu: layout.LURecord, req: proto.Request) -> None:
        runs = self.engine.allocation(lu, req.offset, req.length)
        limit = 1 if req.flags & proto.CMD_FLAG_REQ_ONE else proto.MAX_EXTENTS
        extents = [(n, 0 if allocated else _HOLE_STATE) for n, allocated in runs[:limit]]
        contexts = self.core.contexts
        for i, ctx in enumerate(contexts):
            self._send(proto.block_status_chunk(req.cookie, ctx, extents, done=i == len(contexts) - 1))


def _nbd_errno(err: int | None) -> int:
    if err in (errno.EPERM, errno.EIO, errno.ENOMEM, errno.EINVAL, errno.ENOSPC,
               errno.EOVERFLOW, errno.ENOTSUP, errno.ESHUTDOWN):
        return int(err)
    if err == errno.EROFS or err == errno.EACCES:
        return proto.EPERM
    return proto.EIO


Handler = Callable[[NBDConnection, layout.LURecord, proto.Request], Awaitable[None]]

_HANDLERS: dict[int, Handler] = {
    proto.Cmd.READ: NBDConnection._read,
    proto.Cmd.WRITE: NBDConnection._write,
    proto.Cmd.FLUSH: NBDConnection._flush,
    proto.Cmd.TRIM: NBDConnection._trim,
    proto.Cmd.WRITE_ZEROES: NBDConnection._zeroes,
    proto.Cmd.CACHE: NBDConnection._cache,
    proto.Cmd.BLOCK_STATUS: NBDConnection._block_status,
}


async def serve_tcp(engine: Engine, host: str, port: int,
                    tls_config: ServerTLS | None = None) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: NBDConnection(engine, tls_config), host, port,
                                    reuse_address=True)


async def serve_unix(engine: Engine, path: str) -> asyncio.Server:
    """NBD on a Unix socket, plaintext and with every LU: its access rule is the file system's --
    the socket is made ``0600`` (only the controller's own user may connect), with the umask set
    before ``bind`` so it is never reachable by others, not even for an instant."""
    loop = asyncio.get_running_loop()
    old = os.umask(0o177)
    try:
        server = await loop.create_unix_server(lambda: NBDConnection(engine), path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    return server
