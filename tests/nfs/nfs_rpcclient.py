"""A minimal raw ONC RPC client for tests: sends exact records (any XID, any bytes).

Built on the sans-I/O pieces under test (``nasblade.rpc``) only for framing and header
encoding; replies are decoded with ``message.decode_reply``. Used by the wire-level, DRC and
access-control tests, where libnfs cannot be made to send malformed or replayed calls.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from nasblade.nfs import types as t
from nasblade.rpc import message, record, xdr


def auth_sys(uid: int = 0, gid: int = 0, gids: list[int] | None = None) -> message.OpaqueAuth:
    body = message.AUTH_SYS_PARMS.encode(message.AuthSys(0, b"test", uid, gid, gids or []))
    return message.OpaqueAuth(message.AuthFlavor.AUTH_SYS, body)


def call_dispatcher(d: Any, xid: int, proc: int, args_type: xdr.Type[Any], args: Any,
             res: xdr.Type[Any]) -> tuple[int, Any, bool]:
    """One NFSv3 call handed straight to a dispatcher (no sockets): ``(status, body,
    needs_commit)`` of its reply, which must be an accepted one."""
    rec = message.encode_call(xid=xid, prog=t.NFS_PROGRAM, vers=3, proc=proc, cred=auth_sys(), args=args_type.encode(args))
    out = d.handle(rec, "127.0.0.1")
    assert out is not None
    rep = message.decode_reply(b"".join(bytes(b) for b in out.buffers))
    assert rep.stat == message.AcceptStat.SUCCESS
    stat, body = res.unpack(rep.body)
    rep.body.done()
    return stat, body, out.needs_commit


class RawClient:
    def __init__(self, host: str, port: int, *, source: str | None = None, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = record.RecordReader(max_record=64 << 20)
        self.pending: list[bytes | memoryview] = []
        self.xid = 1000

    def close(self) -> None:
        self.sock.close()

    def send_record(self, rec: bytes, *, fragments: int = 1) -> None:
        size = max(1, (len(rec) + fragments - 1) // fragments)
        for buf in record.frame(rec, max_fragment=size):
            self.sock.sendall(buf)

    def recv_record(self) -> bytes:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending.extend(self.reader.feed(data))
        return bytes(self.pending.pop(0))

    def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes = b"",
        *,
        xid: int | None = None,
        cred: message.OpaqueAuth | None = None,
    ) -> message.Reply:
        if xid is None:
            self.xid += 1
            xid = self.xid
        rec = message.encode_call(xid=xid, prog=prog, vers=vers, proc=proc, cred=cred or auth_sys(), args=args)
        self.send_record(rec)
        return message.decode_reply(self.recv_record())

    def nfs(self, proc: int, args_type: xdr.Type[object], args: object, res_type: xdr.Type[object], **kw: object) -> object:
        rep = self.call(t.NFS_PROGRAM, t.NFS_V3, proc, args_type.encode(args), **kw)  # type: ignore[arg-type]
        assert rep.reply_stat == message.MSG_ACCEPTED and rep.stat == 0, rep
        value = res_type.unpack(rep.body)
        rep.body.done()
        return value

    def mnt(self, path: bytes) -> tuple[int, object]:
        rep = self.call(t.MOUNT_PROGRAM, t.MOUNT_V3, 1, t.DIRPATH.encode(path))
        assert rep.stat == 0
        return t.MOUNT_RES.unpack(rep.body)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


class UdpClient:
    """Raw ONC RPC over UDP: one datagram per call, no record marking (RFC 5531 §11 leaves the
    transport's framing to the transport). ``call`` sends once and waits for the reply with the
    call's XID (replies to earlier datagrams are skipped); ``send`` sends any bytes."""

    def __init__(self, host: str, port: int, *, source: str | None = None, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((source or "0.0.0.0", 0))
        self.sock.settimeout(timeout)
        self.addr = (host, port)
        self.xid = 7000

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.addr)

    def recv(self, xid: int | None = None) -> bytes:
        while True:
            data, _ = self.sock.recvfrom(1 << 16)
            if xid is None or data[:4] == u32(xid):
                return data

    def call(self, prog: int, vers: int, proc: int, args: bytes = b"", *, xid: int | None = None,
             cred: message.OpaqueAuth | None = None) -> message.Reply:
        if xid is None:
            self.xid += 1
            xid = self.xid
        self.send(message.encode_call(xid=xid, prog=prog, vers=vers, proc=proc, cred=cred or auth_sys(), args=args))
        return message.decode_reply(self.recv(xid))
