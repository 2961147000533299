"""A small retrying NFSv3 client for the takeover tests (WRITE with FILE_SYNC / UNSTABLE +
COMMIT and the write verifiers, which libnfs does not expose).

Built on the project's XDR/RPC declarations (``nasblade.rpc``, ``nasblade.nfs.types``). Like a
kernel client with a hard mount, every call is retried on a new TCP connection to the same
address until it gets a reply or ``deadline`` seconds pass: that is how a client rides through
a takeover. File handles are kept across reconnects (they must stay valid on the new owner).
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

from nasblade.nfs import types as t
from nasblade.rpc import message, record, xdr

AUTH = message.OpaqueAuth(
    message.AuthFlavor.AUTH_SYS, message.AUTH_SYS_PARMS.encode(message.AuthSys(0, b"groups", 1000, 1000, []))
)


class NfsError(RuntimeError):
    def __init__(self, proc: str, status: int) -> None:
        super().__init__(f"{proc}: NFS status {status}")
        self.status = status


@dataclass
class Conn:
    sock: socket.socket
    reader: record.RecordReader


class Client:
    def __init__(self, host: str, *, nfs_port: int, mount_port: int, deadline: float = 30.0,
                 timeout: float = 5.0) -> None:
        self.host = host
        self.nfs_port = nfs_port
        self.mount_port = mount_port
        self.deadline = deadline
        self.timeout = timeout
        self.xid = int(time.monotonic() * 1000) & 0xFFFFFF
        self.conn: Conn | None = None
        self.reconnects = 0
        self.outages: list[float] = []

    def close(self) -> None:
        if self.conn is not None:
            self.conn.sock.close()
            self.conn = None

    def _connect(self, port: int) -> Conn:
        sock = socket.create_connection((self.host, port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(sock, record.RecordReader(max_record=8 << 20))

    def _once(self, conn: Conn, prog: int, proc: int, args: bytes) -> message.Reply:
        self.xid += 1
        rec = message.encode_call(xid=self.xid, prog=prog, vers=3, proc=proc, cred=AUTH, args=args)
        for buf in record.frame(rec):
            conn.sock.sendall(buf)
        while True:
            data = conn.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the connection")
            for r in conn.reader.feed(data):
                reply = message.decode_reply(bytes(r))
                if reply.xid == self.xid:
                    return reply

    def call(self, prog: int, proc: int, args: bytes, *, port: int | None = None) -> message.Reply:
        """One RPC, retried on new connections until ``deadline`` (a hard mount)."""
        start = time.monotonic()
        down: float | None = None
        while True:
            try:
                if port is not None:
                    conn = self._connect(port)
                    try:
                        return self._once(conn, prog, proc, args)
                    finally:
                        conn.sock.close()
                if self.conn is None:
                    self.conn = self._connect(self.nfs_port)
                reply = self._once(self.conn, prog, proc, args)
                if down is not None:
                    self.outages.append(time.monotonic() - down)
                return reply
            except (OSError, xdr.XdrError) as exc:
                self.close()
                if down is None:
                    down = time.monotonic()
                self.reconnects += 1
                if time.monotonic() - start > self.deadline:
                    raise TimeoutError(f"no reply from {self.host} within {self.deadline}s: {exc}") from exc
                time.sleep(0.02)

    def _nfs(self, proc: int, name: str, args_type: Any, args: Any, res_type: Any) -> Any:
        rep = self.call(t.NFS_PROGRAM, proc, args_type.encode(args))
        if rep.reply_stat != message.MSG_ACCEPTED or rep.stat != 0:
            raise NfsError(name, -1)
        status, value = res_type.unpack(rep.body)
        if status != 0:
            raise NfsError(name, status)
        return value

    # -- operations -----------------------------------------------------------------------------

    def mount(self, path: str) -> bytes:
        rep = self.call(t.MOUNT_PROGRAM, 1, t.DIRPATH.encode(path.encode()), port=self.mount_port)
        status, ok = t.MOUNT_RES.unpack(rep.body)
        if status != 0:
            raise NfsError("MNT", status)
        return bytes(ok.fhandle)

    def lookup(self, directory: bytes, name: str) -> bytes:
        ok = self._nfs(3, "LOOKUP", t.DIROPARGS, t.DirOpArgs(directory, name.encode()), t.LOOKUP_RES)
        return bytes(ok.object)

    def create(self, directory: bytes, name: str) -> bytes:
        args = t.CreateArgs(t.DirOpArgs(directory, name.encode()), (t.CreateMode.UNCHECKED, t.Sattr(mode=0o644)))
        ok = self._nfs(8, "CREATE", t.CREATE_ARGS, args, t.CREATE_RES)
        return bytes(ok.obj) if ok.obj else self.lookup(directory, name)

    def write(self, fh: bytes, offset: int, data: bytes, *, stable: int) -> tuple[int, bytes]:
        """Returns ``(committed, verifier)``."""
        ok = self._nfs(7, "WRITE", t.WRITE_ARGS, t.WriteArgs(fh, offset, len(data), stable, memoryview(data)),
                       t.WRITE_RES)
        return int(ok.committed), bytes(ok.verf)

    def commit(self, fh: bytes) -> bytes:
        ok = self._nfs(21, "COMMIT", t.COMMIT_ARGS, t.CommitArgs(fh, 0, 0), t.COMMIT_RES)
        return bytes(ok.verf)

    def read(self, fh: bytes, offset: int, count: int) -> bytes:
        ok = self._nfs(6, "READ", t.READ_ARGS, t.ReadArgs(fh, offset, count), t.READ_RES)
        return bytes(ok.data)

    def fsstat(self, fh: bytes) -> Any:
        """FSSTAT of the file system (or directory volume) ``fh`` lies in: ``tbytes``, ``fbytes`` …"""
        return self._nfs(18, "FSSTAT", t.FH, fh, t.FSSTAT_RES)

    def read_all(self, fh: bytes, size: int, *, chunk: int = 256 << 10) -> bytes:
        parts = []
        for off in range(0, size, chunk):
            parts.append(self.read(fh, off, min(chunk, size - off)))
        return b"".join(parts)
