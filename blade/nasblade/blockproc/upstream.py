"""The block processor's NBD client side: a reconnecting pool of connections to one LU.

``UpstreamPool`` keeps ``connections`` NBD/TCP (or Unix) connections to the controller for one
export and pipelines requests over them (cookie → future). Wire encoding and decoding come
from the sans-I/O core ``nasblade.nbd.proto``; this module only moves bytes.

Failure rules (NBD semantics; nothing is silently dropped):

- A request whose connection is lost before its reply is re-sent on a new connection once the
  pool has reconnected (back-off from 50 ms to 0.5 s, for at most ``retry_for`` seconds; then the
  request is answered ``EIO``). Re-sending READ, WRITE, TRIM, WRITE_ZEROES and FLUSH is safe:
  NBD gives no ordering between requests in flight, so a client cannot have depended on the
  lost one.
- An error reply from the controller (``EPERM`` when fenced, ``ENOSPC``, ``EIO``…) is passed
  back unchanged and not retried.
- Writes acknowledged without FUA live in the controller's write-back cache until a FLUSH; if
  the controller restarts in between they could be gone. The pool therefore keeps a *replay
  journal* of acknowledged, not-yet-flushed writes and replays it, in order, on every new
  connection before any other request is sent. FUA writes join the journal while it is not
  empty, so a replay never puts an older write back over a newer durable one. A successful FLUSH trims the journal up to
  what was acknowledged before the FLUSH was sent; when the journal passes ``journal_limit``
  bytes the pool sends a FLUSH of its own. If the replay itself is refused (``EPERM``: the LU
  was taken over meanwhile), the unflushed writes are gone and the next FLUSH returns that
  error, so the file system never commits on top of them.
- Sequential READs are prefetched (``_read``); see its docstring for the coherence rule.

TLS: with ``tls`` (an ``ssl.SSLContext`` holding the blade's client certificate; by default the
one named by ``NASBLADE_NBD_TLS_DIR``, see ``nasblade.tls``) every TCP connection sends
``NBD_OPT_STARTTLS`` right after the greeting, runs the TLS handshake (the controller's
certificate is checked against the array's CA and the host name) and negotiates the export
over TLS. A refusal (``NBD_REP_ERR_POLICY``: the LU is not this group's) fails the connect.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import ssl
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from nasblade import tls
from nasblade.nbd import proto

log = logging.getLogger(__name__)

_STREAMS = 8  # sequential readers followed at once per LU (read-ahead)
_SMALL = 64 * 1024  # payloads up to this size are sent in one buffer with their header
_HIGH_WATER = 8 << 20  # wait for the socket to drain past this much queued data
_BACKOFF_START = 0.05
_BACKOFF_MAX = 0.5


_CMD_NAMES = {int(c): c.name.lower() for c in proto.Cmd}


def _as_bytes(payload: bytes | memoryview) -> bytes:
    """The payload as ``bytes``, without a copy when it already is a whole bytes object."""
    if isinstance(payload, bytes):
        return payload
    obj = payload.obj
    if isinstance(obj, bytes) and len(obj) == payload.nbytes:
        return obj
    return bytes(payload)


def _chain(src: asyncio.Future[Reply], dst: asyncio.Future[Reply]) -> None:
    if dst.done():
        return
    if src.cancelled():
        dst.cancel()
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


class BusyClock:
    """Wall time during which at least one request was outstanding: a hop's busy time.

    The block processor keeps one for what it waits on at the controller (per pool) and one
    for what the file processor waits on at the block processor (the proxy); the difference is
    the block processor's own share (``bench/stack`` reports all three hops this way).
    """

    def __init__(self) -> None:
        self.active = 0
        self.since = 0.0
        self.total = 0.0

    def start(self) -> None:
        if self.active == 0:
            self.since = time.monotonic()
        self.active += 1

    def stop(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.total += time.monotonic() - self.since

    def seconds(self) -> float:
        return self.total + (time.monotonic() - self.since if self.active else 0.0)


class ConnectionLost(ConnectionError):
    """The connection died with the request in flight; the pool will re-send it."""


@dataclass(frozen=True)
class Reply:
    error: int
    data: bytes | bytearray = b""
    """A READ's payload (a bytearray nobody writes to once the reply is delivered)."""


@dataclass
class _JournalEntry:
    seq: int
    cmd: int
    offset: int
    length: int
    flags: int
    payload: bytes | None


async def _recv_exact(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        if not chunk:
            raise ConnectionLost("server closed the connection during the handshake")
        buf += chunk
    return bytes(buf)


async def _handshake(loop: asyncio.AbstractEventLoop, sock: socket.socket, export: str) -> tuple[int, int]:
    """Fixed-newstyle handshake with ``NBD_OPT_GO`` (wire rules in ``nasblade.nbd.proto``)."""
    proto.parse_server_greeting(await _recv_exact(loop, sock, 18))
    await loop.sock_sendall(sock, proto.client_flags())
    return await _go(lambda n: _recv_exact(loop, sock, n), export,
                     lambda data: loop.sock_sendall(sock, data))


async def _starttls(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Greeting, client flags and ``NBD_OPT_STARTTLS`` in the clear, up to the server's ACK."""
    proto.parse_server_greeting(await _recv_exact(loop, sock, 18))
    await loop.sock_sendall(sock, proto.client_flags() + proto.build_starttls())
    _opt, rtype, length = proto.parse_option_reply_header(
        await _recv_exact(loop, sock, proto.OPTION_REPLY_HEADER_SIZE))
    data = await _recv_exact(loop, sock, length) if length else b""
    if rtype != proto.REP_ACK:
        raise OSError(13, f"controller refused STARTTLS: {data.decode(errors='replace')}")


async def _go(recv: Callable[[int], Awaitable[bytes]], export: str,
              send: Callable[[bytes], Awaitable[None]]) -> tuple[int, int]:
    """``NBD_OPT_GO`` for ``export``; returns (size, transmission flags)."""
    await send(proto.build_go(export))
    size = flags = -1
    while True:
        _opt, rtype, length = proto.parse_option_reply_header(
            await recv(proto.OPTION_REPLY_HEADER_SIZE)
        )
        data = await recv(length) if length else b""
        if rtype == proto.REP_ACK:
            break
        if rtype & 0x80000000:
            code = 13 if rtype == proto.REP_ERR_POLICY else 2  # EACCES / ENOENT
            raise OSError(code, f"controller refused export {export!r}: {data.decode(errors='replace')}")
        if rtype == proto.REP_INFO and len(data) >= 2:
            (kind,) = struct.unpack_from(">H", data)
            if kind == proto.INFO_EXPORT:
                size, flags = proto.parse_info_export(data)
    if size < 0:
        raise proto.ProtocolError("server sent no NBD_INFO_EXPORT")
    return size, flags


_HEADER_BUF = 64 << 10  # receive buffer for reply headers (and the bytes that follow them)


class Connection(asyncio.BufferedProtocol):
    """One negotiated NBD connection with pipelined requests.

    A buffered protocol: reply headers are received into one reusable buffer and parsed
    there; a READ's payload is received (and, with TLS, decrypted) straight into the bytearray
    that becomes the reply's data, so a payload is written to memory once on its way through.
    ``send`` queues a request and returns the future of its reply, so the proxy's fast path
    needs no task per request.
    """

    def __init__(self, *, size: int, flags: int) -> None:
        self.size = size
        self.flags = flags
        self.transport: asyncio.Transport | None = None
        self._hdr = bytearray(_HEADER_BUF)
        self._hdr_fill = 0
        # The READ payload being received: (buffer, bytes received, future).
        self._want: tuple[bytearray, int, asyncio.Future[Reply]] | None = None
        self._cookies = itertools.count(1)
        self._pending: dict[int, tuple[int, int, asyncio.Future[Reply]]] = {}
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.closed = False
        self.clock: BusyClock | None = None
        self._handshake_writer: asyncio.StreamWriter | None = None

    @classmethod
    async def open(
        cls, *, host: str | None, port: int | None, unix: str | None, export: str,
        tls_context: ssl.SSLContext | None = None,
    ) -> Connection:
        if tls_context is not None and not unix:
            return await cls._open_tls(host=host or "127.0.0.1", port=port, export=export,
                                       context=tls_context)
        loop = asyncio.get_running_loop()
        if unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, unix if unix else (host, port))
            size, flags = await _handshake(loop, sock, export)
            if unix:
                _, conn = await loop.create_unix_connection(lambda: cls(size=size, flags=flags), sock=sock)
            else:
                _, conn = await loop.create_connection(lambda: cls(size=size, flags=flags), sock=sock)
        except BaseException:
            sock.close()
            raise
        return conn

    @classmethod
    async def _open_tls(cls, *, host: str, port: int | None, export: str,
                        context: ssl.SSLContext) -> Connection:
        """STARTTLS in the clear, the TLS handshake, ``NBD_OPT_GO`` over TLS; then this
        protocol takes the TLS transport over from the stream used for the handshake."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        writer: asyncio.StreamWriter | None = None
        try:
            await loop.sock_connect(sock, (host, port))
            await _starttls(loop, sock)
            reader, writer = await asyncio.open_connection(sock=sock, ssl=context, server_hostname=host)

            async def send(data: bytes) -> None:
                assert writer is not None
                writer.write(data)
                await writer.drain()

            size, flags = await _go(reader.readexactly, export, send)
            if getattr(reader, "_buffer", b""):
                raise proto.ProtocolError("server sent data after NBD_OPT_GO")
        except asyncio.IncompleteReadError as exc:
            if writer is not None:
                writer.transport.abort()
            sock.close()
            raise ConnectionLost("server closed the connection during the handshake") from exc
        except BaseException:
            if writer is not None:
                writer.transport.abort()
            sock.close()
            raise
        conn = cls(size=size, flags=flags)
        conn._handshake_writer = writer  # a collected StreamWriter closes its transport
        transport = writer.transport
        transport.set_protocol(conn)
        conn.connection_made(transport)
        return conn

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._want is not None:
            payload, got, _fut = self._want
            return memoryview(payload)[got:]
        return memoryview(self._hdr)[self._hdr_fill :]

    def buffer_updated(self, nbytes: int) -> None:
        if self._want is not None:
            payload, got, fut = self._want
            got += nbytes
            if got < len(payload):
                self._want = (payload, got, fut)
                return
            self._want = None
            self._complete(fut, Reply(0, payload))
            return
        self._hdr_fill += nbytes
        try:
            self._parse_headers()
        except proto.ProtocolError as exc:
            log.warning("upstream protocol error: %s", exc)
            self._fail_all(str(exc))

    def _complete(self, fut: asyncio.Future[Reply], reply: Reply) -> None:
        self._stop_clock()
        if not fut.done():
            fut.set_result(reply)

    def _parse_headers(self) -> None:
        """Parse the replies in the header buffer; a READ's payload bytes that arrived with
        its header are moved into the payload buffer, the rest is received straight into it."""
        buf, fill, pos = self._hdr, self._hdr_fill, 0
        while fill - pos >= proto.REPLY_SIZE:
            error, cookie = proto.parse_simple_reply(buf[pos : pos + proto.REPLY_SIZE])
            pos += proto.REPLY_SIZE
            entry = self._pending.pop(cookie, None)
            if entry is None:
                raise proto.ProtocolError(f"reply for unknown cookie {cookie}")
            cmd, length, fut = entry
            if cmd != proto.Cmd.READ or error or not length:
                self._complete(fut, Reply(error))
                continue
            payload = bytearray(length)
            got = min(length, fill - pos)
            payload[:got] = buf[pos : pos + got]
            pos += got
            if got < length:
                self._want = (payload, got, fut)
                break
            self._complete(fut, Reply(0, payload))
        if pos:
            rest = fill - pos
            buf[:rest] = buf[pos:fill]
            self._hdr_fill = rest

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail_all(f"connection lost: {exc!r}")

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- requests -----------------------------------------------------------------------------

    def _fail_all(self, reason: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        want, self._want = self._want, None
        futs = [fut for _c, _l, fut in pending.values()] + ([want[2]] if want else [])
        for fut in futs:
            self._stop_clock()
            if not fut.done():
                fut.set_exception(ConnectionLost(reason))
        self._can_write.set()
        if self.transport is not None:
            self.transport.abort()

    def _stop_clock(self) -> None:
        if self.clock is not None:
            self.clock.stop()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def send(
        self, cmd: int, offset: int, length: int, *, flags: int = 0, payload: bytes | memoryview | None = None
    ) -> asyncio.Future[Reply]:
        """Queue one request; the future resolves to its reply or raises ``ConnectionLost``."""
        if self.closed or self.transport is None:
            raise ConnectionLost("connection is closed")
        cookie = next(self._cookies)
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[cookie] = (cmd, length, fut)
        if self.clock is not None:
            self.clock.start()
        header = proto.build_request(cmd, cookie, offset, length, flags=flags)
        if payload is None:
            self.transport.write(header)
        elif len(payload) <= _SMALL:
            self.transport.write(header + bytes(payload))
        else:
            self.transport.writelines((header, payload))
        return fut

    @property
    def writable(self) -> bool:
        return self._can_write.is_set()

    async def wait_writable(self) -> None:
        await self._can_write.wait()

    async def request(
        self, cmd: int, offset: int, length: int, *, flags: int = 0, payload: bytes | memoryview | None = None
    ) -> Reply:
        fut = self.send(cmd, offset, length, flags=flags, payload=payload)
        return await fut

    async def close(self) -> None:
        if self.transport is not None and not self.closed:
            with contextlib.suppress(OSError, RuntimeError):
                self.transport.write(proto.build_request(proto.Cmd.DISC, 0))
            self.transport.close()
        self.closed = True


@dataclass
class PoolStats:
    reconnects: int = 0
    retried: int = 0
    replayed_writes: int = 0
    requests: int = 0
    by_command: dict[str, int] = field(default_factory=dict)
    readahead_issued: int = 0
    readahead_hits: int = 0


@dataclass
class UpstreamPool:
    """A reconnecting set of connections to one export of the controller."""

    export: str
    host: str | None = None
    port: int | None = None
    unix: str | None = None
    connections: int = 2
    retry_for: float = 60.0
    tls: ssl.SSLContext | Callable[[], ssl.SSLContext | None] | None = tls.default_client_context
    """The blade's client credentials for TCP connections (``None``: plaintext), or what gives
    them at each connection (the default: ``NASBLADE_NBD_TLS_DIR``'s files as they are then,
    so a renewed certificate is used from the next reconnection on)."""
    journal_limit: int = 64 << 20
    on_cached: Callable[[int, int], None] | None = None
    """Called with (offset, length) for each write the controller acknowledged into its cache."""

    size: int = 0
    flags: int = 0
    stats: PoolStats = field(default_factory=PoolStats)
    _conns: list[Connection] = field(default_factory=list)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _reconnecting: asyncio.Task[None] | None = None
    _journal: list[_JournalEntry] = field(default_factory=list)
    _journal_bytes: int = 0
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _rr: int = 0
    _closing: bool = False
    _auto_flush: asyncio.Task[Reply] | None = None
    readahead: int = 2
    """How many requests ahead to prefetch once reads are sequential (0: never)."""
    _ahead: dict[tuple[int, int], asyncio.Future[Reply]] = field(default_factory=dict)
    _read_ends: dict[int, None] = field(default_factory=dict)
    """Where the last ``_STREAMS`` READs ended, oldest first: a READ starting at one of them
    continues a sequential reader (several readers interleave on one LU)."""
    _writes_in_flight: int = 0
    _sticky_error: int = 0
    busy: BusyClock = field(default_factory=BusyClock)
    """Time with at least one request of this pool outstanding at the controller."""
    """An error of writes already acknowledged (lost in a failed replay), owed to the next FLUSH."""

    async def start(self) -> None:
        """Connect (raising if the first connection cannot be made at all)."""
        await self._connect_all()

    async def _connect_all(self) -> None:
        conns = []
        try:
            for _ in range(self.connections):
                conns.append(
                    await Connection.open(host=self.host, port=self.port, unix=self.unix, export=self.export,
                                          tls_context=self.tls() if callable(self.tls) else self.tls)
                )
        except BaseException:
            for c in conns:
                await c.close()
            raise
        if self.size and conns[0].size != self.size:
            log.warning("export %s changed size from %d to %d", self.export, self.size, conns[0].size)
        self.size, self.flags = conns[0].size, conns[0].flags
        await self._replay(conns[0])
        for c in conns:
            c.clock = self.busy
        self._conns = conns
        self._ready.set()

    async def _replay(self, conn: Connection) -> None:
        for i, entry in enumerate(list(self._journal)):
            reply = await conn.request(entry.cmd, entry.offset, entry.length, flags=entry.flags, payload=entry.payload)
            if reply.error:
                # e.g. EPERM: another blade took the LU over meanwhile. These writes cannot be
                # made durable any more; the next FLUSH reports it instead of succeeding.
                lost = len(self._journal) - i
                log.error("replaying %d unflushed writes of %s failed at offset %d (error %d);"
                          " the next FLUSH fails", lost, self.export, entry.offset, reply.error)
                self._journal.clear()
                self._journal_bytes = 0
                self._sticky_error = reply.error
                return
            self.stats.replayed_writes += 1

    def _lost(self) -> None:
        if self._closing or not self._ready.is_set():
            return
        self._ready.clear()
        self.stats.reconnects += 1
        self._reconnecting = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        old, self._conns = self._conns, []
        for c in old:
            await c.close()
        delay = _BACKOFF_START
        while not self._closing:
            try:
                await self._connect_all()
                log.info("reconnected to %s (replayed %d writes)", self.export, len(self._journal))
                return
            except (OSError, asyncio.IncompleteReadError, proto.ProtocolError, ConnectionLost) as exc:
                log.info("reconnect to %s failed (%s); retrying in %.2fs", self.export, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _BACKOFF_MAX)

    def _pick(self) -> Connection:
        live = [c for c in self._conns if not c.closed]
        if not live:
            raise ConnectionLost("no live connection")
        self._rr = (self._rr + 1) % len(live)
        return min(live[self._rr :] + live[: self._rr], key=lambda c: c.in_flight)

    def _count(self, cmd: int) -> int:
        """Account for a new request; return its flush mark (journal position) for a FLUSH."""
        self.stats.requests += 1
        name = _CMD_NAMES.get(cmd, str(cmd))
        self.stats.by_command[name] = self.stats.by_command.get(name, 0) + 1
        return next(self._seq) if cmd == proto.Cmd.FLUSH else 0

    async def request(
        self, cmd: int, offset: int, length: int, *, flags: int = 0, payload: bytes | memoryview | None = None
    ) -> Reply:
        """Send one request, re-sending it across reconnects; ``Reply(EIO)`` after ``retry_for``."""
        flush_mark = self._count(cmd)
        return await self._with_retry(cmd, offset, length, flags, payload, flush_mark, retried=False)

    async def _with_retry(
        self, cmd: int, offset: int, length: int, flags: int, payload: bytes | memoryview | None,
        flush_mark: int, *, retried: bool,
    ) -> Reply:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        while True:
            if retried:
                self.stats.retried += 1
            retried = True
            if not self._ready.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return Reply(proto.EIO)
                try:
                    await asyncio.wait_for(self._ready.wait(), remaining)
                except TimeoutError:
                    return Reply(proto.EIO)
            try:
                reply = await self._pick().request(cmd, offset, length, flags=flags, payload=payload)
            except ConnectionLost:
                if self._closing:  # a closed pool (LU released or fenced off) answers, never spins
                    return Reply(proto.EIO)
                self._lost()
                continue
            break
        return self._finish(cmd, offset, length, flags, payload, flush_mark, reply)

    def submit(
        self, cmd: int, offset: int, length: int, *, flags: int = 0, payload: bytes | memoryview | None = None
    ) -> asyncio.Future[Reply]:
        """``request`` as a future, with read-ahead for sequential reads (see ``_read``)."""
        if cmd == proto.Cmd.READ:
            return self._read(offset, length, flags)
        if cmd != proto.Cmd.FLUSH:
            # anything that may change data: forget read-ahead, and issue none until it is done
            self._ahead.clear()
            self._read_ends.clear()
            self._writes_in_flight += 1
            fut = self._submit(cmd, offset, length, flags=flags, payload=payload)
            fut.add_done_callback(self._write_done)
            return fut
        return self._submit(cmd, offset, length, flags=flags, payload=payload)

    def _write_done(self, _fut: asyncio.Future[Reply]) -> None:
        self._writes_in_flight -= 1

    def _read(self, offset: int, length: int, flags: int) -> asyncio.Future[Reply]:
        """Serve a READ, from a prefetched reply when one matches exactly.

        Read-ahead rule (coherent because this blade is the LU's only writer while it holds the
        reservation): when a READ starts where the previous one ended, the next ``readahead``
        requests of the same length are prefetched (for up to ``_STREAMS`` interleaved readers;
        the oldest prefetch is dropped for a new one). Prefetching happens only while no write,
        trim or zeroing is in flight, and every such request drops all prefetched data on
        arrival, so a READ never sees data older than a write it was ordered after.
        """
        hit = self._ahead.pop((offset, length), None)
        ends = self._read_ends
        sequential = offset in ends
        ends.pop(offset, None)
        ends[offset + length] = None
        if len(ends) > _STREAMS:
            del ends[next(iter(ends))]
        if hit is not None:
            self.stats.readahead_hits += 1
            self._count(proto.Cmd.READ)
            fut = hit
        else:
            fut = self._submit(proto.Cmd.READ, offset, length, flags=flags)
        if sequential and self.readahead and not self._writes_in_flight:
            for k in range(1, self.readahead + 1):
                start = offset + k * length
                key = (start, length)
                if start + length > self.size or key in self._ahead:
                    continue
                while len(self._ahead) >= _STREAMS * self.readahead:
                    # the oldest prefetch goes (a reader that stopped must not hold its slot)
                    del self._ahead[next(iter(self._ahead))]
                self.stats.readahead_issued += 1
                self._ahead[key] = self._submit(proto.Cmd.READ, start, length, counted=False)
        return fut

    def _submit(
        self, cmd: int, offset: int, length: int, *, flags: int = 0,
        payload: bytes | memoryview | None = None, counted: bool = True,
    ) -> asyncio.Future[Reply]:
        """``request`` as a future. While connected it costs no task: the request goes straight
        onto a connection and a callback finishes it; a lost connection falls back to the
        retrying coroutine."""
        loop = asyncio.get_running_loop()
        flush_mark = self._count(cmd) if counted else 0
        if self._ready.is_set():
            try:
                inner = self._pick().send(cmd, offset, length, flags=flags, payload=payload)
            except ConnectionLost:
                self._lost()
            else:
                outer: asyncio.Future[Reply] = loop.create_future()

                def finish(f: asyncio.Future[Reply]) -> None:
                    exc = None if f.cancelled() else f.exception()
                    if f.cancelled() or isinstance(exc, ConnectionLost):
                        self._lost()
                        retry = loop.create_task(
                            self._with_retry(cmd, offset, length, flags, payload, flush_mark, retried=True)
                        )
                        retry.add_done_callback(lambda t: _chain(t, outer))
                        return
                    if exc is not None:
                        if not outer.done():
                            outer.set_exception(exc)
                        return
                    reply = self._finish(cmd, offset, length, flags, payload, flush_mark, f.result())
                    if not outer.done():
                        outer.set_result(reply)

                inner.add_done_callback(finish)
                return outer
        return asyncio.ensure_future(
            self._with_retry(cmd, offset, length, flags, payload, flush_mark, retried=False)
        )

    def writable(self) -> bool:
        """False while every connection's send buffer is over its high-water mark."""
        return any(c.writable for c in self._conns if not c.closed)

    def _finish(
        self, cmd: int, offset: int, length: int, flags: int, payload: bytes | memoryview | None,
        flush_mark: int, reply: Reply,
    ) -> Reply:
        if reply.error:
            return reply
        if cmd == proto.Cmd.FLUSH and self._sticky_error:
            error, self._sticky_error = self._sticky_error, 0
            return Reply(error)
        self._after_success(cmd, offset, length, flags, payload, flush_mark)
        return reply

    def _after_success(
        self, cmd: int, offset: int, length: int, flags: int, payload: bytes | memoryview | None, flush_mark: int
    ) -> None:
        if cmd == proto.Cmd.FLUSH:
            self._journal = [e for e in self._journal if e.seq > flush_mark]
            self._journal_bytes = sum(e.length for e in self._journal if e.payload is not None)
            return
        if cmd not in (proto.Cmd.WRITE, proto.Cmd.WRITE_ZEROES, proto.Cmd.TRIM):
            return
        if not self._journal and flags & proto.CMD_FLAG_FUA:
            return  # durable already, and no older unflushed write it must stay ordered after
        # FUA writes are journaled too while older unflushed writes are: a replay must not
        # put an older write back over a newer durable one
        data = _as_bytes(payload) if payload is not None else None
        self._journal.append(_JournalEntry(next(self._seq), cmd, offset, length, flags, data))
        if data is not None:
            self._journal_bytes += len(data)
        if self.on_cached is not None and cmd != proto.Cmd.TRIM and not flags & proto.CMD_FLAG_FUA:
            self.on_cached(offset, length)
        if self._journal_bytes > self.journal_limit and (self._auto_flush is None or self._auto_flush.done()):
            self._auto_flush = asyncio.create_task(self.request(proto.Cmd.FLUSH, 0, 0))

    @property
    def journal_bytes(self) -> int:
        return self._journal_bytes

    async def close(self) -> None:
        self._closing = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
        for c in self._conns:
            await c.close()
        self._conns = []
