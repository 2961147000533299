"""Calls from the file processor to its NFS clients: NLM ``GRANTED`` and NSM ``SM_NOTIFY``.

The lock manager (``nasblade.nfs.nlm``) and the status monitor (``nasblade.nfs.nsm``) are
sans-I/O; when a queued lock was granted, or after a start or takeover, the file processor
(``nasblade.fileproc.server``) must call the client back. ``call`` does one ONC RPC call over
TCP to a client: it asks the client's portmapper (port 111 unless told otherwise) where the
program listens, connects there and returns the reply's result body. Any failure (refused,
timed out, denied, not SUCCESS) raises ``CallbackError``; the callers decide what a failed
callback means (a GRANTED nobody took is released; a NOTIFY is retried for a while).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import struct

from nasblade.nfs import types as t
from nasblade.rpc import message, record, xdr

_HDR = struct.Struct(">I")
_xids = itertools.count(int.from_bytes(os.urandom(3), "big") << 8)


class CallbackError(Exception):
    """A callback did not get a successful reply."""


async def _rpc(host: str, port: int, prog: int, vers: int, proc: int, args: bytes, timeout: float) -> xdr.Decoder:
    xid = next(_xids) & 0xFFFFFFFF
    data = message.encode_call(xid=xid, prog=prog, vers=vers, proc=proc, args=args)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        raise CallbackError(f"connect {host}:{port}: {exc}") from exc
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
    try:
        reply = message.decode_reply(bytes(body))
    except xdr.XdrError as exc:
        raise CallbackError(f"undecodable reply from {host}:{port}: {exc}") from exc
    if reply.xid != xid or reply.reply_stat != message.MSG_ACCEPTED or reply.stat != message.AcceptStat.SUCCESS:
        raise CallbackError(f"call {prog}/{vers}/{proc} at {host}:{port} refused: {reply}")
    return reply.body


async def getport(host: str, prog: int, vers: int, *, portmap_port: int = 111, timeout: float = 5.0) -> int:
    """The TCP port the client's portmapper gives for ``prog``/``vers`` (``CallbackError`` if none)."""
    args = t.MAPPING.encode(t.Mapping(prog, vers, t.IPPROTO_TCP, 0))
    dec = await _rpc(host, portmap_port, t.PMAP_PROGRAM, t.PMAP_V2, 3, args, timeout)
    try:
        port = xdr.UInt.unpack(dec)
    except xdr.XdrError as exc:
        raise CallbackError(f"bad GETPORT reply from {host}: {exc}") from exc
    if port == 0:
        raise CallbackError(f"{host} has no program {prog} v{vers} over TCP")
    return port


async def call(host: str, prog: int, vers: int, proc: int, args: bytes, *, portmap_port: int = 111,
               timeout: float = 5.0) -> xdr.Decoder:
    """One call to ``prog``/``vers`` on ``host``, found through its portmapper."""
    port = await getport(host, prog, vers, portmap_port=portmap_port, timeout=timeout)
    return await _rpc(host, port, prog, vers, proc, args, timeout)
