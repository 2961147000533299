"""The block processor's NBD server side: the file processor's view of its LUs.

The file processor connects to a Unix socket (``nbd+unix:///LU?socket=PATH``) and speaks NBD;
every request is carried to the controller by the ``UpstreamPool`` of that LU
(``nasblade.blockproc.upstream``). The handshake and request parsing are the sans-I/O
``nasblade.nbd.proto.ServerConnection``; this module is the thin asyncio shell around it.
Requests run concurrently and replies go back as they complete (NBD allows any order).
Transmission flags are the controller's, so FLUSH/FUA/TRIM/WRITE_ZEROES mean exactly what
they mean at the controller: a FLUSH is acknowledged only after the controller's FLUSH was.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nasblade.blockproc.upstream import Reply, UpstreamPool
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


class ProxyServer:
    """Serves ``Exports`` over NBD on a Unix socket."""

    def __init__(self, exports: Exports) -> None:
        self.exports = exports
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0

    async def start_unix(self, path: str) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path, limit=1 << 26)

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = proto.ServerConnection(exports=self.exports)
        tasks: set[asyncio.Task[None]] = set()
        pool: UpstreamPool | None = None
        writer.write(conn.initial_bytes())
        try:
            while True:
                data = await reader.read(1 << 20)
                if not data:
                    break
                conn.receive_data(data)
                closed = False
                while (ev := conn.next_event()) is not None:
                    out = conn.data_to_send()
                    if out:
                        writer.write(out)
                    if isinstance(ev, proto.Negotiated):
                        pool = self.exports.pools[ev.export.name]
                    elif isinstance(ev, proto.BadRequest):
                        writer.write(proto.simple_reply(ev.cookie, ev.error))
                    elif isinstance(ev, proto.Request):
                        assert pool is not None
                        task = asyncio.create_task(self._carry(pool, ev, writer))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                    elif isinstance(ev, proto.Closed):
                        closed = True
                        break
                out = conn.data_to_send()
                if out:
                    writer.write(out)
                await writer.drain()
                if closed:
                    break
        except (ConnectionError, OSError) as exc:
            log.debug("file-processor connection ended: %s", exc)
        finally:
            if tasks:
                # finish what was asked before the client hung up (writes must reach the controller)
                await asyncio.gather(*tasks, return_exceptions=True)
            self.connections -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _carry(self, pool: UpstreamPool, req: proto.Request, writer: asyncio.StreamWriter) -> None:
        length = req.length
        if req.cmd == proto.Cmd.READ and req.offset + length > pool.size:
            reply = Reply(proto.EINVAL)
        else:
            reply = await pool.request(req.cmd, req.offset, length, flags=req.flags, payload=req.payload)
        if writer.is_closing():
            return
        if req.cmd == proto.Cmd.READ and reply.error == 0:
            writer.writelines((proto.simple_reply(req.cookie, 0), reply.data))
        else:
            writer.write(proto.simple_reply(req.cookie, reply.error))
