"""A synchronous NBD client implementing ``nasblade.blockdev.BlockDevice``.

Used by the file system, the processor-information code and tools to reach an LU on the
controller (``nbd://HOST:PORT/LU``) or through a block processor
(``nbd+unix:///LU?socket=PATH``). Built on the sans-I/O helpers of ``proto``: fixed
newstyle handshake with ``NBD_OPT_GO``, simple replies. Thread-safe: one request at a
time per connection under a lock (open several devices for parallelism; the controller
advertises ``CAN_MULTI_CONN``). TCP_NODELAY is set on TCP sockets.

A reservation identity (``holder``, ``epoch``) travels in the export name
(``LU;holder=NAME;epoch=N``, see docs/control-api.md); writes of a fenced holder fail with
``OSError(EPERM)``.

TLS (``nasblade.tls``): ``nbds://HOST:PORT/LU?tls-certificates=DIR`` (the NBD URI form
libnbd and nbdinfo take) always uses TLS with the client certificate in DIR (default: the
directory named by ``NASBLADE_NBD_TLS_DIR``); ``nbd://HOST:PORT/LU`` uses it when ``tls_dir``
is given or ``NASBLADE_NBD_TLS_DIR`` is set. The client sends ``NBD_OPT_STARTTLS`` right after
the greeting, checks the server's certificate against the CA and the host name, and negotiates
the export over TLS. A refused export (``NBD_REP_ERR_POLICY``) raises ``NBDError(EACCES)``.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import ssl
import struct
import threading
from urllib.parse import parse_qs, unquote, urlparse

from nasblade import tls
from nasblade.blockdev import Buffer
from nasblade.nbd import proto


class NBDError(OSError):
    """An NBD-level failure (handshake refused, unknown export)."""


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise NBDError(errno.ECONNRESET, "NBD server closed the connection")
        got += k
    return buf


class NBDBlockDevice:
    """An LU over NBD. Create with ``connect``."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket, *, export: str, size: int,
                 flags: int) -> None:
        self._sock = sock
        self.export = export
        self._size = size
        self.flags = flags
        self.max_request = proto.MAX_PAYLOAD
        self._lock = threading.Lock()
        self._cookies = itertools.count(1)
        self._closed = False

    @classmethod
    def connect(cls, url: str, *, holder: str | None = None, epoch: int | None = None,
                timeout: float | None = 60.0, tls_dir: str | None = None) -> NBDBlockDevice:
        parsed = urlparse(url)
        lu = unquote(parsed.path.lstrip("/"))
        if not lu:
            raise ValueError(f"no export name in {url!r}")
        name = proto.ExportName(lu, holder, epoch).encode()
        context: ssl.SSLContext | None = None
        host = parsed.hostname or "127.0.0.1"
        if parsed.scheme in ("nbd", "nbds"):
            directory = (parse_qs(parsed.query).get("tls-certificates", [None])[0] or tls_dir
                         or tls.env_dir())
            if parsed.scheme == "nbds" and directory is None:
                raise ValueError(f"{url!r}: nbds needs ?tls-certificates=DIR or ${tls.ENV_DIR}")
            if directory is not None:
                context = tls.client_context(directory)
            sock: socket.socket | ssl.SSLSocket = socket.create_connection(
                (host, parsed.port or 10809), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        elif parsed.scheme == "nbd+unix":
            path = parse_qs(parsed.query).get("socket", [""])[0]
            if not path:
                raise ValueError(f"nbd+unix URL needs ?socket=PATH: {url!r}")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        else:
            raise ValueError(f"not an NBD URL: {url!r}")
        try:
            proto.parse_server_greeting(bytes(_recv_exact(sock, 18)))
            sock.sendall(proto.client_flags())
            if context is not None:
                sock = cls._starttls(sock, context, host)
            size, flags = cls._handshake(sock, name)
        except BaseException:
            sock.close()
            raise
        return cls(sock, export=name, size=size, flags=flags)

    @staticmethod
    def _starttls(sock: socket.socket, context: ssl.SSLContext, host: str) -> ssl.SSLSocket:
        sock.sendall(proto.build_starttls())
        _opt, rtype, length = proto.parse_option_reply_header(
            bytes(_recv_exact(sock, proto.OPTION_REPLY_HEADER_SIZE)))
        data = bytes(_recv_exact(sock, length)) if length else b""
        if rtype != proto.REP_ACK:
            raise NBDError(errno.EPROTO, f"NBD_OPT_STARTTLS refused: {data.decode(errors='replace')}")
        return context.wrap_socket(sock, server_hostname=host)

    @staticmethod
    def _handshake(sock: socket.socket, name: str) -> tuple[int, int]:
        sock.sendall(proto.build_go(name))
        size = flags = -1
        while True:
            _opt, rtype, length = proto.parse_option_reply_header(
                bytes(_recv_exact(sock, proto.OPTION_REPLY_HEADER_SIZE)))
            data = bytes(_recv_exact(sock, length)) if length else b""
            if rtype == proto.REP_ACK:
                break
            if rtype & 0x80000000:
                code = {proto.REP_ERR_UNKNOWN: errno.ENOENT,
                        proto.REP_ERR_POLICY: errno.EACCES}.get(rtype, errno.EPROTO)
                raise NBDError(code, f"NBD_OPT_GO for {name!r} refused: {data.decode(errors='replace')}")
            if rtype == proto.REP_INFO and len(data) >= 2:
                (kind,) = struct.unpack_from(">H", data)
                if kind == proto.INFO_EXPORT:
                    size, flags = proto.parse_info_export(data)
        if size < 0:
            raise NBDError(errno.EPROTO, "server sent no NBD_INFO_EXPORT")
        return size, flags

    # --- BlockDevice --------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return self._size

    @property
    def read_only(self) -> bool:
        return bool(self.flags & proto.TF_READ_ONLY)

    def _request(self, cmd: int, offset: int, length: int, *, flags: int = 0,
                 payload: memoryview | None = None, into: memoryview | None = None) -> None:
        with self._lock:
            if self._closed:
                raise NBDError(errno.EBADF, "device is closed")
            cookie = next(self._cookies)
            hdr = proto.build_request(cmd, cookie, offset, length, flags=flags)
            if payload is not None and len(payload) <= 65536:
                self._sock.sendall(hdr + payload)
            else:
                self._sock.sendall(hdr)
                if payload is not None:
                    self._sock.sendall(payload)
            err, got = proto.parse_simple_reply(_recv_exact(self._sock, proto.REPLY_SIZE))
            if got != cookie:
                self._closed = True
                raise NBDError(errno.EPROTO, f"reply for cookie {got}, expected {cookie}")
            if err:
                raise OSError(err, f"NBD {proto.Cmd(cmd).name} at {offset}+{length}: {os.strerror(err)}")
            if into is not None:
                n = 0
                while n < len(into):
                    k = self._sock.recv_into(into[n:], len(into) - n)
                    if k == 0:
                        self._closed = True
                        raise NBDError(errno.ECONNRESET, "NBD server closed the connection")
                    n += k

    def _check(self, offset: int, length: int, *, write: bool) -> None:
        if offset < 0 or length < 0:
            raise OSError(errno.EINVAL, "negative offset or length")
        if offset + length > self._size:
            raise OSError(errno.ENOSPC if write else errno.EINVAL, f"range {offset}+{length} past the end")

    def pread(self, offset: int, length: int) -> bytes:
        self._check(offset, length, write=False)
        buf = bytearray(length)
        view = memoryview(buf)
        pos = 0
        while pos < length:
            n = min(self.max_request, length - pos)
            self._request(proto.Cmd.READ, offset + pos, n, into=view[pos : pos + n])
            pos += n
        return bytes(buf)

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        view = memoryview(data).cast("B")
        self._check(offset, len(view), write=True)
        pos = 0
        while pos < len(view):
            n = min(self.max_request, len(view) - pos)
            last = pos + n == len(view)
            self._request(proto.Cmd.WRITE, offset + pos, n, payload=view[pos : pos + n],
                          flags=proto.CMD_FLAG_FUA if fua and last else 0)
            pos += n
        if fua and len(view) > self.max_request:
            self.flush()

    def write_zeroes(self, offset: int, length: int, *, fua: bool = False) -> None:
        self._check(offset, length, write=True)
        pos = 0
        step = 1 << 30
        while pos < length:
            n = min(step, length - pos)
            self._request(proto.Cmd.WRITE_ZEROES, offset + pos, n, flags=proto.CMD_FLAG_FUA if fua else 0)
            pos += n

    def trim(self, offset: int, length: int) -> None:
        self._check(offset, length, write=True)
        pos = 0
        while pos < length:
            n = min(1 << 30, length - pos)
            self._request(proto.Cmd.TRIM, offset + pos, n)
            pos += n

    def flush(self) -> None:
        self._request(proto.Cmd.FLUSH, 0, 0)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.sendall(proto.build_request(proto.Cmd.DISC, next(self._cookies)))
            self._sock.close()

    def __enter__(self) -> NBDBlockDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
