"""The block processor's NBD server side: the file processor's view of its LUs.

The file processor connects to a Unix socket (``nbd+unix:///LU?socket=PATH``) and speaks NBD;
every request is carried to the controller by the ``UpstreamPool`` of that LU
(``nasblade.blockproc.upstream``). The handshake and request parsing are the sans-I/O
``nasblade.nbd.proto.ServerConnection``; this module is the thin asyncio shell around it.
Requests run concurrently and replies go back as they complete (NBD allows any order); the
shell hands each request to ``UpstreamPool.submit``, so a request
costs a future and a callback, not a task. Past 64 MiB of data in flight it stops reading from
the file processor until half of it is answered. It receives as a buffered protocol: large
WRITE payloads are read from the socket into their own buffers.
Transmission flags are the controller's, so FLUSH/FUA/TRIM/WRITE_ZEROES mean exactly what
they mean at the controller: a FLUSH is acknowledged only after the controller's FLUSH was.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import cast

from nasblade.blockproc.upstream import BusyClock, Reply, UpstreamPool
from nasblade.nbd import proto

log = logging.getLogger(__name__)


class Exports(proto.ExportLookup):
    """The LUs this blade may reach, by name (the name the file processor asks for)."""

    def __init__(self) -> None:
        self.pools: dict[str, UpstreamPool] = {}

    def lookup(self, name: str) -> proto.ExportInfo | None:
        pool = self.pools.get(name)
        if pool is None or not pool.size:
            return None
        return proto.ExportInfo(name=name, size=pool.size, flags=pool.flags | proto.TF_HAS_FLAGS)

    def names(self) -> list[proto.ExportInfo]:
        return [info for name in sorted(self.pools) if (info := self.lookup(name)) is not None]


_PAUSE_BYTES = 64 << 20  # stop reading from the file processor past this much data in flight
_RESUME_BYTES = 32 << 20


class _Downstream(asyncio.BufferedProtocol):
    """One file-processor connection: sans-I/O ``ServerConnection`` in, pool futures out.

    A buffered protocol: the socket is read straight into the buffer the core names
    (``ServerConnection.recv_buffer``), so a large WRITE's payload lands in its own buffer and
    goes upstream from there without a copy."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.conn = proto.ServerConnection(exports=server.exports)
        self.pool: UpstreamPool | None = None
        self.transport: asyncio.Transport | None = None
        self.in_flight_bytes = 0
        self.in_flight = 0
        self.reading_paused = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.server.connections += 1
        transport.write(self.conn.initial_bytes())

    def connection_lost(self, exc: Exception | None) -> None:
        # requests already handed to the pool still complete at the controller
        self.server.connections -= 1
        self.transport = None

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.conn.recv_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.recv_done(nbytes)
        self._events()

    def _events(self) -> None:
        conn, transport = self.conn, self.transport
        assert transport is not None
        while (ev := conn.next_event()) is not None:
            out = conn.data_to_send()
            if out:
                transport.write(out)
            if isinstance(ev, proto.Request):
                self._carry(ev)
            elif isinstance(ev, proto.Negotiated):
                self.pool = self.server.exports.pools[ev.export.name]
            elif isinstance(ev, proto.BadRequest):
                transport.write(proto.simple_reply(ev.cookie, ev.error))
            elif isinstance(ev, proto.Closed):
                # NBD: requests sent before DISC are still answered, then the socket closes
                log.debug("file-processor connection closed: %s", ev.reason)
                self.closing = True
                transport.pause_reading()
                if not self.in_flight:
                    transport.close()
                return
        out = conn.data_to_send()
        if out:
            transport.write(out)

    def _carry(self, req: proto.Request) -> None:
        pool = self.pool
        assert pool is not None
        if req.cmd == proto.Cmd.READ and req.offset + req.length > pool.size:
            self._reply(req, Reply(proto.EINVAL))
            return
        size = req.length if req.cmd in (proto.Cmd.READ, proto.Cmd.WRITE) else 0
        self.server.busy.start()
        self.in_flight += 1
        self.in_flight_bytes += size
        if self.in_flight_bytes > _PAUSE_BYTES and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        fut = pool.submit(req.cmd, req.offset, req.length, flags=req.flags, payload=req.payload)
        fut.add_done_callback(functools.partial(self._done, req, size))

    def _done(self, req: proto.Request, size: int, fut: asyncio.Future[Reply]) -> None:
        self.server.busy.stop()
        self.in_flight -= 1
        self.in_flight_bytes -= size
        if self.reading_paused and not self.closing and self.in_flight_bytes < _RESUME_BYTES and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        if fut.cancelled():
            reply = Reply(proto.ESHUTDOWN)
        elif (exc := fut.exception()) is not None:
            log.error("request %s failed: %s", req.cmd, exc)
            reply = Reply(proto.EIO)
        else:
            reply = fut.result()
        self._reply(req, reply)
        if self.closing and not self.in_flight and self.transport is not None:
            self.transport.close()

    def _reply(self, req: proto.Request, reply: Reply) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if req.cmd == proto.Cmd.READ and reply.error == 0:
            transport.writelines((proto.simple_reply(req.cookie, 0), reply.data))
        else:
            transport.write(proto.simple_reply(req.cookie, reply.error))


class ProxyServer:
    """Serves ``Exports`` over NBD on a Unix socket."""

    def __init__(self, exports: Exports) -> None:
        self.exports = exports
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.busy = BusyClock()
        """Time with at least one file-processor request outstanding here."""

    async def start_unix(self, path: str) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_unix_server(lambda: _Downstream(self), path)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
