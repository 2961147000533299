"""Calls from the file processor to its NFS clients: NLM ``GRANTED``, ``GRANTED_MSG`` and the
``*_RES`` results, and NSM ``SM_NOTIFY``.

The lock manager (``nasblade.nfs.nlm``) and the status monitor (``nasblade.nfs.nsm``) are
sans-I/O; when a queued lock was granted, after a lock manager's asynchronous ``*_MSG`` call,
or after a start or takeover, the file processor (``nasblade.fileproc.server``) must call the
client back. Two kinds of calls:

- ``call``: one ONC RPC call over TCP that waits for the reply and returns its result body
  (GRANTED, SM_NOTIFY).
- ``send``: a one-way call over TCP or UDP (the transport a ``*_MSG`` call came over): the
  ``*_RES`` results and ``GRANTED_MSG``. The message is sent once and no reply is awaited (the
  client sends none, or a void one that nobody reads): over UDP one datagram, over TCP one
  record on a connection closed right after it (X/Open XNFS: the asynchronous procedures are
  "one-way" calls whose replies are ignored).

Either first asks the client's portmapper (port 111 unless told otherwise), over the same
transport, where the program listens (``getport``). Over UDP one datagram carries one call or
reply (RFC 5531 §11: record marking is for stream transports only), and a GETPORT is sent again
every ``UDP_RETRY`` seconds until its reply or the timeout. Any failure (refused, timed out,
denied, not SUCCESS, no port) raises ``CallbackError``; the callers decide what a failed
callback means (a GRANTED nobody took is released; a NOTIFY is retried for a while).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct

from nasblade.nfs import types as t
from nasblade.rpc import message, record, xdr

_HDR = struct.Struct(">I")
_xids = itertools.count(int.from_bytes(os.urandom(3), "big") << 8)
UDP_RETRY = 1.0
"""Seconds between retransmissions of a call over UDP that waits for its reply."""
PROTOCOLS = {"tcp": t.IPPROTO_TCP, "udp": t.IPPROTO_UDP}


class CallbackError(Exception):
    """A callback did not get a successful reply."""


def _next_xid() -> int:
    return next(_xids) & 0xFFFFFFFF


def _result(body: bytes, xid: int, what: str) -> xdr.Decoder:
    try:
        reply = message.decode_reply(body)
    except xdr.XdrError as exc:
        raise CallbackError(f"undecodable reply from {what}: {exc}") from exc
    if reply.xid != xid or reply.reply_stat != message.MSG_ACCEPTED or reply.stat != message.AcceptStat.SUCCESS:
        raise CallbackError(f"call {what} refused: {reply}")
    return reply.body


async def _connect(host: str, port: int, timeout: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        return await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise CallbackError(f"connect {host}:{port}: {exc}") from exc


async def _rpc(host: str, port: int, prog: int, vers: int, proc: int, args: bytes, timeout: float) -> xdr.Decoder:
    xid = _next_xid()
    data = message.encode_call(xid=xid, prog=prog, vers=vers, proc=proc, args=args)
    reader, writer = await _connect(host, port, timeout)
    try:
        writer.write(_HDR.pack(record.LAST_FRAGMENT | len(data)) + data)
        body = bytearray()
        while True:
            head = await asyncio.wait_for(reader.readexactly(4), timeout)
            (mark,) = _HDR.unpack(head)
            body += await asyncio.wait_for(reader.readexactly(mark & ~record.LAST_FRAGMENT), timeout)
            if mark & record.LAST_FRAGMENT:
                break
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        raise CallbackError(f"call {prog}/{vers}/{proc} at {host}:{port}: {exc}") from exc
    finally:
        writer.close()
    return _result(bytes(body), xid, f"{prog}/{vers}/{proc} at {host}:{port}")


class _Datagrams(asyncio.DatagramProtocol):
    """A UDP socket that waits for the reply with one XID (others are ignored). It is not
    connected: a portmapper bound to a wildcard address may answer from another of its host's
    addresses than the one called, and libtirpc's clients accept that too (the XID decides)."""

    def __init__(self, xid: int) -> None:
        self.xid = _HDR.pack(xid)
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if data[:4] == self.xid and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _rpc_udp(host: str, port: int, prog: int, vers: int, proc: int, args: bytes,
                   timeout: float) -> xdr.Decoder:
    xid = _next_xid()
    data = message.encode_call(xid=xid, prog=prog, vers=vers, proc=proc, args=args)
    loop = asyncio.get_running_loop()
    what = f"{prog}/{vers}/{proc} at {host}:{port} over UDP"
    try:
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Datagrams(xid), local_addr=("::" if ":" in host else "0.0.0.0", 0))
    except OSError as exc:
        raise CallbackError(f"{what}: {exc}") from exc
    try:
        deadline = loop.time() + timeout
        while True:
            transport.sendto(data, (host, port))
            wait = min(UDP_RETRY, deadline - loop.time())
            try:
                body = await asyncio.wait_for(asyncio.shield(proto.reply), wait)
                break
            except TimeoutError:
                if loop.time() >= deadline:
                    raise CallbackError(f"{what}: no reply in {timeout} s") from None
            except OSError as exc:
                raise CallbackError(f"{what}: {exc}") from exc
    finally:
        transport.close()
    return _result(body, xid, what)


async def getport(host: str, prog: int, vers: int, *, transport: str = "tcp", portmap_port: int = 111,
                  timeout: float = 5.0) -> int:
    """The port the client's portmapper gives for ``prog``/``vers`` over ``transport``, asked
    over that transport (``CallbackError`` if none)."""
    args = t.MAPPING.encode(t.Mapping(prog, vers, PROTOCOLS[transport], 0))
    rpc = _rpc_udp if transport == "udp" else _rpc
    dec = await rpc(host, portmap_port, t.PMAP_PROGRAM, t.PMAP_V2, 3, args, timeout)
    try:
        port = xdr.UInt.unpack(dec)
    except xdr.XdrError as exc:
        raise CallbackError(f"bad GETPORT reply from {host}: {exc}") from exc
    if port == 0:
        raise CallbackError(f"{host} has no program {prog} v{vers} over {transport.upper()}")
    return port


async def call(host: str, prog: int, vers: int, proc: int, args: bytes, *, portmap_port: int = 111,
               timeout: float = 5.0) -> xdr.Decoder:
    """One call to ``prog``/``vers`` on ``host`` over TCP, found through its portmapper."""
    port = await getport(host, prog, vers, portmap_port=portmap_port, timeout=timeout)
    return await _rpc(host, port, prog, vers, proc, args, timeout)


async def send(host: str, prog: int, vers: int, proc: int, args: bytes, *, transport: str,
               portmap_port: int = 111, timeout: float = 5.0) -> None:
    """A one-way call to ``prog``/``vers`` on ``host`` over ``transport`` (``"tcp"``/``"udp"``),
    found through its portmapper; returns once the call is sent (see the module docstring)."""
    port = await getport(host, prog, vers, transport=transport, portmap_port=portmap_port, timeout=timeout)
    data = message.encode_call(xid=_next_xid(), prog=prog, vers=vers, proc=proc, args=args)
    what = f"{prog}/{vers}/{proc} to {host}:{port} over {transport.upper()}"
    loop = asyncio.get_running_loop()
    if transport == "udp":
        try:
            dgram, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=(host, port))
        except OSError as exc:
            raise CallbackError(f"{what}: {exc}") from exc
        dgram.sendto(data)
        dgram.close()
        return
    _, writer = await _connect(host, port, timeout)
    try:
        writer.write(_HDR.pack(record.LAST_FRAGMENT | len(data)) + data)
        await asyncio.wait_for(writer.drain(), timeout)
    except (OSError, TimeoutError) as exc:
        raise CallbackError(f"{what}: {exc}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)
