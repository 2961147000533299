"""Sans-I/O core of the NBD protocol, both directions (server and client).

Nothing here touches a socket. The server shell (``nasblade.controller.nbdserver``), the synchronous
client (``nasblade.nbd.client``) and the block processor's proxy feed received bytes in and
take bytes to send out; tests and fuzzers drive the same objects directly.

Wire rules follow the NBD protocol document (``doc/proto.md`` of the NetworkBlockDevice
project), fixed newstyle negotiation only:

- Handshake: the server sends ``NBDMAGIC``, ``IHAVEOPT`` and 16 bits of handshake flags; the
  client answers 32 bits of client flags. Unknown client flags close the connection.
- Option haggling: ``IHAVEOPT, u32 option, u32 length, data``; each option gets one or more
  replies ``REPLY_MAGIC, u32 option, u32 reply type, u32 length, data``. ``EXPORT_NAME`` is
  answered with ``u64 size, u16 flags`` (+124 zero bytes unless ``NO_ZEROES``) and no reply
  header. A bad option magic cannot be resynchronised: the connection is closed.
- Transmission: requests ``u32 REQUEST_MAGIC, u16 flags, u16 type, u64 cookie, u64 offset,
  u32 length`` (+ payload for WRITE); simple replies ``u32 SIMPLE_REPLY_MAGIC, u32 error,
  u64 cookie`` (+ payload for a successful READ). A bad request magic closes the connection.
  A WRITE whose payload is over the advertised maximum is drained first (bounded memory)
  and only then answered ``EINVAL``, so a client still sending the payload never sees the
  reply early; a payload over ``DRAIN_LIMIT`` is not worth draining and closes the
  connection (the protocol lets a server disconnect on lengths that look like an attack).
- Extensions a shell opts in to (``Extensions``): structured replies
  (``NBD_OPT_STRUCTURED_REPLY``), the ``base:allocation`` meta context
  (``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT``, ``NBD_CMD_BLOCK_STATUS``),
  ``NBD_CMD_CACHE`` and ``NBD_CMD_FLAG_FAST_ZERO``. Transmission flags of extensions the
  shell did not opt in to are cleared from what the export reports, so a shell never
  advertises a command it cannot answer. ``NBD_FLAG_SEND_DF`` is set exactly when
  structured replies were negotiated.
- Structured reply chunks: ``u32 STRUCTURED_REPLY_MAGIC, u16 flags (DONE), u16 type,
  u64 cookie, u32 length`` + payload: ``OFFSET_DATA`` (u64 offset + data), ``OFFSET_HOLE``
  (u64 offset, u32 size), ``BLOCK_STATUS`` (u32 context id, then u32 length + u32 flags per
  extent), ``ERROR`` (u32 error, u16 message length, message), ``NONE``. Once structured
  replies are negotiated every error is sent as an ``ERROR`` chunk (a READ must never get a
  simple reply); other successes keep the 16-byte simple reply, which the protocol allows.
- TLS (``NBD_OPT_STARTTLS``, the protocol document's "TLS support" section): a connection
  made with ``tls=True`` is in the protocol's FORCEDTLS mode. Before TLS every option but
  ``STARTTLS`` and ``ABORT`` is answered ``NBD_REP_ERR_TLS_REQD`` (``EXPORT_NAME``, which
  cannot be answered, closes the connection). ``STARTTLS`` is acknowledged and returns
  ``StartTLS``: the shell sends the ACK, runs the TLS server handshake on the same socket and
  calls ``tls_started()``; bytes the client sent after ``STARTTLS`` and before its TLS
  handshake break the protocol and close the connection. Option state from before TLS
  (structured replies, meta contexts) is forgotten. ``STARTTLS`` again over TLS is
  ``NBD_REP_ERR_INVALID``; without ``tls=True`` it is ``NBD_REP_ERR_UNSUP``.
- Access policy: ``ExportLookup.permits(name)`` says whether this client may use an export
  at all. ``GO``/``INFO``/meta context options for a refused name get
  ``NBD_REP_ERR_POLICY`` (checked before the name is looked up, so a refusal tells nothing
  about whether the export exists); ``EXPORT_NAME`` closes; ``LIST`` shows only permitted
  exports.

Parsing is incremental: ``ServerConnection.receive_data`` buffers bytes and
``next_event`` returns one event or ``None`` when more input is needed (h11 style). Shells
built on ``asyncio.BufferedProtocol`` may use ``recv_buffer`` / ``recv_done`` instead, which
receive large WRITE payloads directly into the buffer handed to the device write.
"""

from __future__ import annotations

import collections
import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from nasblade.buffers import Spares

# --- constants -------------------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

# handshake flags (server) / client flags
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1
KNOWN_CLIENT_FLAGS = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES

# transmission flags
TF_HAS_FLAGS = 1 << 0
TF_READ_ONLY = 1 << 1
TF_SEND_FLUSH = 1 << 2
TF_SEND_FUA = 1 << 3
TF_ROTATIONAL = 1 << 4
TF_SEND_TRIM = 1 << 5
TF_SEND_WRITE_ZEROES = 1 << 6
TF_SEND_DF = 1 << 7
TF_CAN_MULTI_CONN = 1 << 8
TF_SEND_CACHE = 1 << 10
TF_SEND_FAST_ZERO = 1 << 11
#: transmission flags that need support from the shell (see ``Extensions``)
_TF_EXTENSIONS = TF_SEND_DF | TF_SEND_CACHE | TF_SEND_FAST_ZERO


class Opt(enum.IntEnum):
    EXPORT_NAME = 1
    ABORT = 2
    LIST = 3
    PEEK_EXPORT = 4
    STARTTLS = 5
    INFO = 6
    GO = 7
    STRUCTURED_REPLY = 8
    LIST_META_CONTEXT = 9
    SET_META_CONTEXT = 10
    EXTENDED_HEADERS = 11


REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_PLATFORM = 0x80000004
REP_ERR_TLS_REQD = 0x80000005
REP_ERR_UNKNOWN = 0x80000006
REP_ERR_SHUTDOWN = 0x80000007
REP_ERR_BLOCK_SIZE_REQD = 0x80000008
REP_ERR_TOO_BIG = 0x80000009

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3


class Cmd(enum.IntEnum):
    READ = 0
    WRITE = 1
    DISC = 2
    FLUSH = 3
    TRIM = 4
    CACHE = 5
    WRITE_ZEROES = 6
    BLOCK_STATUS = 7
    RESIZE = 8


CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

# structured replies
REPLY_FLAG_DONE = 1 << 0
REPLY_TYPE_NONE = 0
REPLY_TYPE_OFFSET_DATA = 1
REPLY_TYPE_OFFSET_HOLE = 2
REPLY_TYPE_BLOCK_STATUS = 5
REPLY_TYPE_ERROR = (1 << 15) + 1
REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2

# the base:allocation meta context
BASE_ALLOCATION = "base:allocation"
STATE_HOLE = 1 << 0
STATE_ZERO = 1 << 1
#: the id this server gives ``base:allocation`` in ``NBD_REP_META_CONTEXT`` replies
BASE_ALLOCATION_ID = 1
#: at most this many extents in one BLOCK_STATUS chunk (the protocol's recommendation)
MAX_EXTENTS = 1 << 20

# NBD error values (the protocol's own numbering, equal to Linux errno values)
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108

#: Flags each baseline command accepts. Extensions add commands and flags per connection,
#: only when negotiated and advertised (see ``ServerConnection._allowed_flags``).
ALLOWED_CMD_FLAGS: dict[int, int] = {
    Cmd.READ: CMD_FLAG_FUA,  # FUA on READ is meaningless but harmless; some clients set it
    Cmd.WRITE: CMD_FLAG_FUA,
    Cmd.DISC: 0,
    Cmd.FLUSH: 0,
    Cmd.TRIM: CMD_FLAG_FUA,
    Cmd.WRITE_ZEROES: CMD_FLAG_FUA | CMD_FLAG_NO_HOLE,
}

MAX_OPTION_LENGTH = 65536
MAX_PAYLOAD = 32 * 1024 * 1024
#: an oversized WRITE payload up to this length is read and discarded (then EINVAL);
#: a longer one closes the connection
DRAIN_LIMIT = 8 * MAX_PAYLOAD
#: the protocol's limit on strings (export names, meta context names and queries)
MAX_STRING = 4096
MAX_NAME = 4096
#: WRITE payloads at least this large are received straight into their own buffer
DIRECT_PAYLOAD = 64 * 1024
#: bytes of payload buffers a connection keeps for reuse (``nasblade.buffers.Spares``):
#: a queue of 16 requests of 1 MiB, twice over
SPARE_BYTES = 32 * 1024 * 1024

_HANDSHAKE = struct.Struct(">QQH")
_OPT_HDR = struct.Struct(">QII")
_OPT_REPLY_HDR = struct.Struct(">QIII")
_REQUEST = struct.Struct(">IHHQQI")
_SIMPLE_REPLY = struct.Struct(">IIQ")
_CHUNK = struct.Struct(">IHHQI")  # structured reply chunk header
_U64 = struct.Struct(">Q")
_HOLE = struct.Struct(">QI")  # OFFSET_HOLE payload
_ERROR = struct.Struct(">IH")  # start of every error chunk payload
_EXTENT = struct.Struct(">II")  # one BLOCK_STATUS descriptor
_U32 = struct.Struct(">I")
REQUEST_SIZE = _REQUEST.size
REPLY_SIZE = _SIMPLE_REPLY.size
CHUNK_HEADER_SIZE = _CHUNK.size


class ProtocolError(Exception):
    """The peer broke the protocol in a way that cannot be answered; close the connection."""


# --- export names with a reservation identity --------------------------------------------


@dataclass(frozen=True)
class ExportName:
    """An export name ``LU`` or ``LU;holder=NAME;epoch=N`` (see docs/control-api.md)."""

    lu: str
    holder: str | None = None
    epoch: int | None = None

    def encode(self) -> str:
        if self.holder is None and self.epoch is None:
            return self.lu
        if self.holder is None or self.epoch is None:
            raise ValueError("holder and epoch go together")
        for part in (self.lu, self.holder):
            if ";" in part or "=" in part:
                raise ValueError(f"{part!r} may not contain ';' or '='")
        return f"{self.lu};holder={self.holder};epoch={self.epoch}"


def parse_export_name(name: str) -> ExportName:
    """Parse an export name; raises ``ValueError`` for a malformed one."""
    parts = name.split(";")
    lu = parts[0]
    if not lu:
        raise ValueError("empty LU name")
    if len(parts) == 1:
        return ExportName(lu)
    attrs: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or key in attrs or key not in ("holder", "epoch") or not value:
            raise ValueError(f"bad export name attribute {part!r}")
        attrs[key] = value
    if set(attrs) != {"holder", "epoch"}:
        raise ValueError("export name needs both holder= and epoch=")
    if not (attrs["epoch"].isascii() and attrs["epoch"].isdigit()) or int(attrs["epoch"]) < 1:
        raise ValueError("epoch must be a positive integer")
    return ExportName(lu, attrs["holder"], int(attrs["epoch"]))


# --- server side ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportInfo:
    """What the server shell tells the core about an export."""

    name: str
    size: int
    flags: int
    description: str = ""


class ExportLookup:
    """The server shell's catalogue, as seen by the handshake (subclass or duck-type)."""

    def lookup(self, name: str) -> ExportInfo | None:  # pragma: no cover - interface
        raise NotImplementedError

    def names(self) -> list[ExportInfo]:  # pragma: no cover - interface
        raise NotImplementedError

    def permits(self, name: str) -> bool:
        """Whether this connection's client may open (or see) export ``name``."""
        return True


@dataclass(frozen=True)
class Extensions:
    """What the shell around a ``ServerConnection`` can answer beyond the baseline.

    Everything is off by default: a shell that only sends simple replies (the block
    processor's proxy) keeps answering ``NBD_OPT_STRUCTURED_REPLY`` with ``ERR_UNSUP``.
    """

    structured_replies: bool = False
    #: ``base:allocation`` for ``NBD_CMD_BLOCK_STATUS`` (needs structured replies)
    base_allocation: bool = False
    #: ``NBD_CMD_CACHE`` (advertised when the export's flags carry ``TF_SEND_CACHE``)
    cache: bool = False
    #: ``NBD_CMD_FLAG_FAST_ZERO`` (advertised when the export's flags carry it)
    fast_zero: bool = False


@dataclass(frozen=True)
class Request:
    """One transmission-phase request. ``payload`` is set for WRITE only (a view, no copy)."""

    flags: int
    cmd: int
    cookie: int
    offset: int
    length: int
    payload: memoryview | None = None

    @property
    def fua(self) -> bool:
        return bool(self.flags & CMD_FLAG_FUA)

    @property
    def fast_zero(self) -> bool:
        return bool(self.flags & CMD_FLAG_FAST_ZERO)

    @property
    def no_hole(self) -> bool:
        return bool(self.flags & CMD_FLAG_NO_HOLE)


@dataclass(frozen=True)
class BadRequest:
    """A request the shell must answer with ``error`` (no device I/O)."""

    cookie: int
    error: int
    reason: str


@dataclass(frozen=True)
class Negotiated:
    """The handshake finished: ``export`` was chosen, transmission starts."""

    export: ExportInfo


@dataclass(frozen=True)
class Closed:
    """The connection must be closed (after sending ``data_to_send()``)."""

    reason: str


@dataclass(frozen=True)
class StartTLS:
    """``NBD_OPT_STARTTLS`` was acknowledged: send ``data_to_send()``, run the TLS server
    handshake on the socket, then call ``tls_started()`` and go on feeding decrypted bytes."""


Event = Request | BadRequest | Negotiated | Closed | StartTLS


class _Phase(enum.Enum):
    CLIENT_FLAGS = 1
    OPTIONS = 2
    TRANSMISSION = 3
    CLOSED = 4


@dataclass
class ServerConnection:
    """Server side of one NBD connection, sans I/O.

    Usage: send ``initial_bytes()``; then for each chunk received call ``receive_data`` and
    drain ``next_event()`` until it returns ``None``; send ``data_to_send()`` after each event.
    During the handshake the core answers options by itself using ``exports``; it returns
    ``Negotiated`` once, then ``Request``/``BadRequest`` events, and ``Closed`` at the end.
    Replies to requests are built by the shell with ``simple_reply`` (successes without
    data), ``error_reply`` and ``read_reply_header`` (which pick simple or structured
    replies by what was negotiated) and the chunk builders below.
    """

    exports: ExportLookup
    max_payload: int = MAX_PAYLOAD
    extensions: Extensions = field(default_factory=Extensions)
    #: FORCEDTLS: nothing but ``STARTTLS`` (and ``ABORT``) before TLS is up
    tls: bool = False
    #: TLS is up on this connection (``tls_started()``)
    tls_active: bool = False
    _tls_pending: bool = False
    #: structured replies were negotiated (``NBD_OPT_STRUCTURED_REPLY`` acknowledged)
    structured: bool = False
    #: meta context ids selected for the export in transmission (``NBD_CMD_BLOCK_STATUS``)
    contexts: tuple[int, ...] = ()
    _meta_export: str | None = None
    _meta_ids: tuple[int, ...] = ()
    _after_skip: Event | None = None
    _buf: bytearray = field(default_factory=bytearray)
    _pos: int = 0
    _out: bytearray = field(default_factory=bytearray)
    _phase: _Phase = _Phase.CLIENT_FLAGS
    _no_zeroes: bool = False
    _skip: int = 0
    export: ExportInfo | None = None
    # zero-copy receive of large WRITE payloads (see recv_buffer / recv_done)
    _scratch: bytearray = field(default_factory=lambda: bytearray(256 * 1024))
    _payload: bytearray | None = None
    _payload_got: int = 0
    _payload_hdr: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0)
    _header_next: bool = False  # the last request had a large payload: receive one header alone
    # requests whose large payload was received in full, not yet returned by next_event (they
    # precede everything still in the receive buffer)
    _ready: collections.deque[tuple[Event, int]] = field(default_factory=collections.deque)
    _ready_bytes: int = 0
    _spares: Spares = field(default_factory=lambda: Spares(SPARE_BYTES))

    def initial_bytes(self) -> bytes:
        return _HANDSHAKE.pack(NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES)

    def _payload_pending(self) -> int:
        return 0 if self._payload is None else len(self._payload) - self._payload_got

    def recv_buffer(self) -> memoryview:
        """Where the shell should receive the next bytes (``asyncio.BufferedProtocol.get_buffer``).

        While a large WRITE payload is outstanding this is the rest of that payload's own
        buffer, so payload bytes go from the socket to the device write with no copy. After
        such a request, and with nothing buffered, it is one request header's worth: a stream
        of large writes (a sequential writer) then has every payload received in place, where
        a full scratch buffer would take the next header and up to 256 KiB of its payload, to
        be copied twice (into the buffer, then into the payload's own).
        """
        if self._payload is None and self._phase is _Phase.TRANSMISSION and not self._skip:
            # the shell may receive again before the next request is parsed: a large WRITE
            # whose header is here gets its own buffer now
            self._direct_payload()
        if self._payload_pending():
            assert self._payload is not None
            return memoryview(self._payload)[self._payload_got :]
        if self._header_next and self._pos == len(self._buf):
            return memoryview(self._scratch)[:REQUEST_SIZE]
        return memoryview(self._scratch)

    def recv_done(self, n: int) -> None:
        """``n`` bytes were received into the last ``recv_buffer()``."""
        if self._payload_pending():
            self._payload_got += n
            if not self._payload_pending():
                self._payload_complete()
        else:
            self.receive_data(memoryview(self._scratch)[:n])

    def _payload_complete(self) -> None:
        """The large payload is all here: its request is ready (before anything buffered)."""
        assert self._payload is not None
        done = memoryview(self._payload)
        self._payload = None
        self._header_next = True
        self._ready.append((self._request(*self._payload_hdr, done), len(done)))
        self._ready_bytes += len(done)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        pending = self._payload_pending()
        if pending:
            assert self._payload is not None
            n = min(pending, len(data))
            self._payload[self._payload_got : self._payload_got + n] = data[:n]
            self._payload_got += n
            data = data[n:]
            if not self._payload_pending():
                self._payload_complete()
            if not data:
                return
        if self._pos and self._pos == len(self._buf):
            del self._buf[:]
            self._pos = 0
        self._buf += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as events (payloads of ready requests included)."""
        return len(self._buf) - self._pos + self._ready_bytes

    def _compact(self) -> None:
        if self._pos > 1 << 20 or self._pos == len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0

    def _take(self, n: int) -> memoryview | None:
        if len(self._buf) - self._pos < n:
            return None
        view = memoryview(self._buf)[self._pos : self._pos + n]
        self._pos += n
        return view

    def next_event(self) -> Event | None:
        while True:
            if self._phase is _Phase.CLOSED:
                return None
            if self._skip:
                n = min(self._skip, len(self._buf) - self._pos)
                self._pos += n
                self._skip -= n
                if self._skip:
                    self._compact()
                    return None
                if self._after_skip is not None:
                    # an oversized WRITE is answered only once its payload was drained
                    done, self._after_skip = self._after_skip, None
                    return done
            if self._phase is _Phase.TRANSMISSION:
                ev = self._next_request()
            else:
                ev = self._next_handshake_step()
            if ev is not _AGAIN:
                return ev  # type: ignore[return-value]

    # handshake ----------------------------------------------------------------------------

    def _close(self, reason: str) -> Closed:
        self._phase = _Phase.CLOSED
        return Closed(reason)

    def tls_started(self) -> None:
        """The shell finished the TLS handshake after ``StartTLS``; options go on over TLS."""
        if not self._tls_pending:
            raise RuntimeError("tls_started() without a StartTLS event")
        self._tls_pending = False
        self.tls_active = True

    def _next_handshake_step(self) -> Event | object | None:
        if self._tls_pending:
            if self.buffered:
                return self._close("client sent data between STARTTLS and its TLS handshake")
            return None
        if self._phase is _Phase.CLIENT_FLAGS:
            raw = self._take(4)
            if raw is None:
                return None
            (cflags,) = struct.unpack(">I", raw)
            if cflags & ~KNOWN_CLIENT_FLAGS:
                return self._close(f"unknown client flags {cflags:#x}")
            if not cflags & FLAG_C_FIXED_NEWSTYLE:
                return self._close("client does not speak fixed newstyle")
            self._no_zeroes = bool(cflags & FLAG_C_NO_ZEROES)
            self._phase = _Phase.OPTIONS
            return _AGAIN
        if len(self._buf) - self._pos < _OPT_HDR.size:
            return None
        magic, opt, length = _OPT_HDR.unpack_from(self._buf, self._pos)
        if magic != IHAVEOPT:
            return self._close("bad option magic")
        if length > MAX_OPTION_LENGTH:
            self._pos += _OPT_HDR.size
            self._skip = length
            self._opt_reply(opt, REP_ERR_TOO_BIG, b"option too long")
            return _AGAIN
        if len(self._buf) - self._pos < _OPT_HDR.size + length:
            return None
        self._pos += _OPT_HDR.size
        data = bytes(self._take(length) or b"")
        self._compact()
        if self.tls and not self.tls_active and opt not in (Opt.STARTTLS, Opt.ABORT):
            if opt == Opt.EXPORT_NAME:
                return self._close("EXPORT_NAME before TLS (TLS is required)")
            self._opt_reply(opt, REP_ERR_TLS_REQD, b"TLS is required: send NBD_OPT_STARTTLS first")
            return _AGAIN
        handler = _OPTION_HANDLERS.get(opt, ServerConnection._opt_unsupported)
        return handler(self, opt, data)

    def _opt_starttls(self, opt: int, data: bytes) -> object:
        if not self.tls:
            return self._opt_unsupported(opt, data)
        if self.tls_active:
            self._opt_reply(opt, REP_ERR_INVALID, b"TLS is already up")
            return _AGAIN
        if data:
            self._opt_reply(opt, REP_ERR_INVALID, b"STARTTLS takes no data")
            return _AGAIN
        self._opt_reply(opt, REP_ACK)
        # forget what was negotiated in the clear (the protocol: state before TLS is void)
        self.structured = False
        self._meta_export, self._meta_ids = None, ()
        self._tls_pending = True
        return StartTLS()

    def _refused(self, opt: int, name: str) -> bool:
        """Answer ``NBD_REP_ERR_POLICY`` when this client may not use export ``name``."""
        if self.exports.permits(name):
            return False
        self._opt_reply(opt, REP_ERR_POLICY, f"export {name!r} is not open to this client".encode())
        return True

    def _opt_reply(self, opt: int, rtype: int, data: bytes = b"") -> None:
        self._out += _OPT_REPLY_HDR.pack(REPLY_MAGIC, opt, rtype, len(data)) + data

    def _opt_unsupported(self, opt: int, data: bytes) -> object:
        self._opt_reply(opt, REP_ERR_UNSUP, b"option not supported")
        return _AGAIN

    def _opt_abort(self, opt: int, data: bytes) -> Event:
        self._opt_reply(opt, REP_ACK)
        return self._close("client aborted")

    def _opt_list(self, opt: int, data: bytes) -> object:
        if data:
            self._opt_reply(opt, REP_ERR_INVALID, b"LIST takes no data")
            return _AGAIN
        for info in self.exports.names():
            if not self.exports.permits(info.name):
                continue
            name = info.name.encode()
            self._opt_reply(opt, REP_SERVER, struct.pack(">I", len(name)) + name)
        self._opt_reply(opt, REP_ACK)
        return _AGAIN

    def _opt_export_name(self, opt: int, data: bytes) -> Event:
        try:
            name = data.decode()
        except UnicodeDecodeError:
            return self._close("export name is not UTF-8 (EXPORT_NAME)")
        if not self.exports.permits(name):
            return self._close("export refused by policy (EXPORT_NAME)")
        info = self.exports.lookup(name)
        if info is None:
            return self._close("unknown export (EXPORT_NAME)")
        info = self._advertised(info)
        self._out += struct.pack(">QH", info.size, info.flags)
        if not self._no_zeroes:
            self._out += bytes(124)
        return self._start(info)

    def _start(self, info: ExportInfo) -> Negotiated:
        self.export = info
        # BLOCK_STATUS only for contexts set for this very export name (NBD: "the final time
        # it was sent, it referred to the same export name")
        self.contexts = self._meta_ids if self._meta_export == info.name else ()
        self._phase = _Phase.TRANSMISSION
        return Negotiated(info)

    def _advertised(self, info: ExportInfo) -> ExportInfo:
        """``info`` with the transmission flags this connection can honour."""
        ext = self.extensions
        flags = info.flags & ~_TF_EXTENSIONS
        if self.structured:
            flags |= TF_SEND_DF
        if ext.cache:
            flags |= info.flags & TF_SEND_CACHE
        if ext.fast_zero and info.flags & TF_SEND_WRITE_ZEROES:
            flags |= info.flags & TF_SEND_FAST_ZERO
        return info if flags == info.flags else replace(info, flags=flags)

    def _opt_structured_reply(self, opt: int, data: bytes) -> object:
        if not self.extensions.structured_replies:
            return self._opt_unsupported(opt, data)
        if data:
            self._opt_reply(opt, REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")
            return _AGAIN
        self.structured = True
        self._opt_reply(opt, REP_ACK)
        return _AGAIN

    def _opt_meta_context(self, opt: int, data: bytes) -> object:
        """``NBD_OPT_LIST_META_CONTEXT`` / ``NBD_OPT_SET_META_CONTEXT``.

        SET replaces the selection even when it fails. LIST with no query lists every
        context; a query ``NS:`` lists the contexts of namespace ``NS`` (LIST only); SET
        selects exact names. Unknown names and namespaces are ignored, not errors.
        """
        if opt == Opt.SET_META_CONTEXT:
            self._meta_export, self._meta_ids = None, ()
        if not self.extensions.structured_replies:
            return self._opt_unsupported(opt, data)
        if not self.structured:
            self._opt_reply(opt, REP_ERR_INVALID, b"negotiate NBD_OPT_STRUCTURED_REPLY first")
            return _AGAIN
        try:
            name, queries = parse_meta_context_request(data)
        except ProtocolError as exc:
            self._opt_reply(opt, REP_ERR_INVALID, str(exc).encode())
            return _AGAIN
        if self._refused(opt, name):
            return _AGAIN
        if self.exports.lookup(name) is None:
            self._opt_reply(opt, REP_ERR_UNKNOWN, f"unknown export {name!r}".encode())
            return _AGAIN
        available = [BASE_ALLOCATION] if self.extensions.base_allocation else []
        listing = opt == Opt.LIST_META_CONTEXT
        if listing and not queries:
            found = available
        else:
            found = [c for c in available
                     if any(q == c or (listing and q.endswith(":") and c.startswith(q)) for q in queries)]
        for ctx in found:
            ctx_id = 0 if listing else _CONTEXT_IDS[ctx]
            self._opt_reply(opt, REP_META_CONTEXT, _U32.pack(ctx_id) + ctx.encode())
        if not listing:
            self._meta_export, self._meta_ids = name, tuple(_CONTEXT_IDS[c] for c in found)
        self._opt_reply(opt, REP_ACK)
        return _AGAIN

    def _opt_info_go(self, opt: int, data: bytes) -> object:
        if len(data) < 6:
            self._opt_reply(opt, REP_ERR_INVALID, b"short INFO/GO request")
            return _AGAIN
        (namelen,) = struct.unpack_from(">I", data)
        if namelen > len(data) - 6:
            self._opt_reply(opt, REP_ERR_INVALID, b"bad name length")
            return _AGAIN
        (nreq,) = struct.unpack_from(">H", data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * nreq:
            self._opt_reply(opt, REP_ERR_INVALID, b"bad information request count")
            return _AGAIN
        requests = set(struct.unpack_from(f">{nreq}H", data, 6 + namelen))
        try:
            name = data[4 : 4 + namelen].decode()
        except UnicodeDecodeError:
            self._opt_reply(opt, REP_ERR_INVALID, b"export name is not UTF-8")
            return _AGAIN
        if self._refused(opt, name):
            return _AGAIN
        info = self.exports.lookup(name)
        if info is None:
            self._opt_reply(opt, REP_ERR_UNKNOWN, f"unknown export {name!r}".encode())
            return _AGAIN
        info = self._advertised(info)
        if INFO_NAME in requests:
            self._opt_reply(opt, REP_INFO, struct.pack(">H", INFO_NAME) + name.encode())
        if INFO_DESCRIPTION in requests and info.description:
            desc = info.description.encode()
            self._opt_reply(opt, REP_INFO, struct.pack(">H", INFO_DESCRIPTION) + desc)
        self._opt_reply(
            opt, REP_INFO, struct.pack(">HIII", INFO_BLOCK_SIZE, 1, 4096, self.max_payload)
        )
        self._opt_reply(opt, REP_INFO, struct.pack(">HQH", INFO_EXPORT, info.size, info.flags))
        self._opt_reply(opt, REP_ACK)
        if opt == Opt.GO:
            return self._start(info)
        return _AGAIN

    # transmission -------------------------------------------------------------------------

    def _next_request(self) -> Event | object | None:
        if self._ready:
            ev, nbytes = self._ready.popleft()
            self._ready_bytes -= nbytes
            return ev
        if self._payload is not None:  # a large payload still arriving
            return None
        if len(self._buf) - self._pos < REQUEST_SIZE:
            self._compact()
            return None
        magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(self._buf, self._pos)
        if magic != REQUEST_MAGIC:
            return self._close("bad request magic")
        has_payload = cmd == Cmd.WRITE
        if has_payload and length > self.max_payload:
            if length > DRAIN_LIMIT:
                return self._close(f"WRITE payload of {length} bytes is not worth draining")
            # Drain the payload, then answer: a reply sent while the client is still sending
            # the payload has a cookie the client does not consider in flight yet.
            self._pos += REQUEST_SIZE
            self._skip = length
            self._after_skip = BadRequest(
                cookie, EINVAL, f"WRITE of {length} bytes over the maximum payload {self.max_payload}")
            return _AGAIN
        if has_payload and len(self._buf) - self._pos < REQUEST_SIZE + length:
            self._direct_payload()
            self._compact()
            return None
        self._pos += REQUEST_SIZE
        self._header_next = False
        payload = None
        if has_payload:
            # Copy the payload out so the receive buffer can grow/compact while the shell
            # still holds this request (a memcpy is ~20x faster than the socket).
            view = self._take(length)
            assert view is not None
            payload = memoryview(bytes(view))
            view.release()
        return self._request(flags, cmd, cookie, offset, length, payload)

    def _direct_payload(self) -> None:
        """If the request at the read position is a WRITE with a large payload (at least
        ``DIRECT_PAYLOAD``, at most ``max_payload``) not all here yet, consume its header and
        give the payload its own buffer, which the shell receives the rest into
        (``recv_buffer``); ``_next_request`` returns the request once it is full."""
        if len(self._buf) - self._pos < REQUEST_SIZE:
            return
        magic, flags, cmd, cookie, offset, length = _REQUEST.unpack_from(self._buf, self._pos)
        if magic != REQUEST_MAGIC or cmd != Cmd.WRITE or not DIRECT_PAYLOAD <= length <= self.max_payload:
            return
        if len(self._buf) - self._pos >= REQUEST_SIZE + length:
            return
        self._pos += REQUEST_SIZE
        have = len(self._buf) - self._pos
        self._payload = self._spares.get(length)  # a buffer no request holds any more
        self._payload[:have] = memoryview(self._buf)[self._pos :]
        self._payload_got = have
        self._payload_hdr = (flags, cmd, cookie, offset, length)
        self._pos += have

    def _allowed_flags(self, cmd: int) -> int | None:
        """The command flags ``cmd`` accepts here, ``None`` if the command is not valid."""
        advertised = self.export.flags if self.export is not None else 0
        if cmd == Cmd.READ:
            return CMD_FLAG_FUA | (CMD_FLAG_DF if advertised & TF_SEND_DF else 0)
        if cmd == Cmd.WRITE_ZEROES:
            return (ALLOWED_CMD_FLAGS[cmd]
                    | (CMD_FLAG_FAST_ZERO if advertised & TF_SEND_FAST_ZERO else 0))
        if cmd == Cmd.BLOCK_STATUS:
            return CMD_FLAG_REQ_ONE if self.contexts else None
        if cmd == Cmd.CACHE:
            return 0 if advertised & TF_SEND_CACHE else None
        return ALLOWED_CMD_FLAGS.get(cmd)

    def _request(self, flags: int, cmd: int, cookie: int, offset: int, length: int,
                 payload: memoryview | None) -> Event:
        allowed = self._allowed_flags(cmd)
        if allowed is None:
            return BadRequest(cookie, EINVAL, f"unknown command {cmd}")
        if flags & ~allowed:
            return BadRequest(cookie, EINVAL, f"flags {flags:#x} not valid for command {cmd}")
        if cmd == Cmd.DISC:
            return self._close("client disconnected")
        if cmd == Cmd.READ and length > self.max_payload:
            return BadRequest(cookie, EOVERFLOW, f"read of {length} over {self.max_payload}")
        return Request(flags, cmd, cookie, offset, length, payload)


    # replies ------------------------------------------------------------------------------

    def error_reply(self, cookie: int, error: int, message: str = "") -> bytes:
        """A failed request's reply: an ``ERROR`` chunk once structured replies are on."""
        if self.structured:
            return error_chunk(cookie, error, message)
        return simple_reply(cookie, error)

    def read_reply_header(self, cookie: int, offset: int, length: int) -> bytes:
        """What precedes the ``length`` data bytes of a successful READ sent in one piece.

        A structured reply to a zero-length READ is a lone ``NONE`` chunk: an ``OFFSET_DATA``
        chunk must carry at least one byte.
        """
        if self.structured:
            if not length:
                return none_chunk(cookie)
            return data_chunk_header(cookie, offset, length, done=True)
        return simple_reply(cookie)


_AGAIN = object()

_CONTEXT_IDS = {BASE_ALLOCATION: BASE_ALLOCATION_ID}

_OPTION_HANDLERS = {
    Opt.EXPORT_NAME: ServerConnection._opt_export_name,
    Opt.ABORT: ServerConnection._opt_abort,
    Opt.LIST: ServerConnection._opt_list,
    Opt.INFO: ServerConnection._opt_info_go,
    Opt.GO: ServerConnection._opt_info_go,
    Opt.STRUCTURED_REPLY: ServerConnection._opt_structured_reply,
    Opt.LIST_META_CONTEXT: ServerConnection._opt_meta_context,
    Opt.SET_META_CONTEXT: ServerConnection._opt_meta_context,
    Opt.STARTTLS: ServerConnection._opt_starttls,
}


# --- replies (server builds, client parses) -------------------------------------------------


def simple_reply(cookie: int, error: int = 0) -> bytes:
    """The 16-byte simple reply header (a READ's data follows it on success)."""
    return _SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk(cookie: int, rtype: int, payload: bytes = b"", *, done: bool = True) -> bytes:
    """One structured reply chunk with its payload."""
    flags = REPLY_FLAG_DONE if done else 0
    return _CHUNK.pack(STRUCTURED_REPLY_MAGIC, flags, rtype, cookie, len(payload)) + payload


def data_chunk_header(cookie: int, offset: int, length: int, *, done: bool) -> bytes:
    """Header and offset of an ``OFFSET_DATA`` chunk; ``length`` data bytes follow it."""
    flags = REPLY_FLAG_DONE if done else 0
    return (_CHUNK.pack(STRUCTURED_REPLY_MAGIC, flags, REPLY_TYPE_OFFSET_DATA, cookie,
                        _U64.size + length) + _U64.pack(offset))


def hole_chunk(cookie: int, offset: int, length: int, *, done: bool) -> bytes:
    """An ``OFFSET_HOLE`` chunk: ``length`` (> 0) bytes at ``offset`` read as zeroes."""
    return chunk(cookie, REPLY_TYPE_OFFSET_HOLE, _HOLE.pack(offset, length), done=done)


def error_chunk(cookie: int, error: int, message: str = "", *, done: bool = True) -> bytes:
    """An ``ERROR`` chunk (the message is cut to the protocol's 4096-byte limit)."""
    text = message.encode()[:MAX_STRING]
    return chunk(cookie, REPLY_TYPE_ERROR, _ERROR.pack(error, len(text)) + text, done=done)


def none_chunk(cookie: int) -> bytes:
    """The ``NONE`` chunk that ends a structured reply."""
    return chunk(cookie, REPLY_TYPE_NONE)


def block_status_chunk(cookie: int, context_id: int, extents: Sequence[tuple[int, int]], *,
                       done: bool) -> bytes:
    """A ``BLOCK_STATUS`` chunk: ``(length, flags)`` descriptors from the request offset."""
    if not extents:
        raise ValueError("a BLOCK_STATUS chunk needs at least one extent")
    body = bytearray(_U32.pack(context_id))
    for length, flags in extents:
        body += _EXTENT.pack(length, flags)
    return chunk(cookie, REPLY_TYPE_BLOCK_STATUS, bytes(body), done=done)


def parse_chunk_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, int]:
    """Return (flags, type, cookie, payload length) from a 20-byte chunk header."""
    magic, flags, rtype, cookie, length = _CHUNK.unpack(data)
    if magic != STRUCTURED_REPLY_MAGIC:
        raise ProtocolError(f"bad structured reply magic {magic:#x}")
    return int(flags), int(rtype), int(cookie), int(length)


def parse_error_chunk(payload: bytes) -> tuple[int, str]:
    """Return (error, message) from an error chunk's payload."""
    error, n = _ERROR.unpack_from(payload)
    if _ERROR.size + n > len(payload):
        raise ProtocolError("error message longer than its chunk")
    return int(error), payload[_ERROR.size : _ERROR.size + n].decode(errors="replace")


def parse_hole_chunk(payload: bytes) -> tuple[int, int]:
    """Return (offset, length) from an ``OFFSET_HOLE`` payload."""
    offset, length = _HOLE.unpack(payload)
    return int(offset), int(length)


def parse_block_status(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Return (context id, [(length, flags), ...]) from a ``BLOCK_STATUS`` payload."""
    if len(payload) < _U32.size + _EXTENT.size or (len(payload) - _U32.size) % _EXTENT.size:
        raise ProtocolError("bad BLOCK_STATUS payload length")
    (ctx,) = _U32.unpack_from(payload)
    return int(ctx), [(int(a), int(b)) for a, b in _EXTENT.iter_unpack(payload[_U32.size :])]


# --- meta context option data (both directions) ---------------------------------------------


def build_meta_context(opt: int, name: str, queries: Sequence[str]) -> bytes:
    """A ``LIST_META_CONTEXT`` / ``SET_META_CONTEXT`` option: export name, then queries."""
    raw = name.encode()
    body = bytearray(_U32.pack(len(raw)) + raw + _U32.pack(len(queries)))
    for q in queries:
        qb = q.encode()
        body += _U32.pack(len(qb)) + qb
    return build_option(opt, bytes(body))


def parse_meta_context_request(data: bytes) -> tuple[str, list[str]]:
    """Decode a meta context option's data; ``ProtocolError`` says what is malformed."""
    pos = 0

    def string(what: str) -> str:
        nonlocal pos
        if len(data) - pos < _U32.size:
            raise ProtocolError(f"{what}: length missing")
        (n,) = _U32.unpack_from(data, pos)
        pos += _U32.size
        if n > len(data) - pos or n > MAX_STRING:
            raise ProtocolError(f"{what}: length {n} beyond the option data")
        try:
            text = data[pos : pos + n].decode()
        except UnicodeDecodeError:
            raise ProtocolError(f"{what} is not UTF-8") from None
        pos += n
        return text

    name = string("export name")
    if len(data) - pos < _U32.size:
        raise ProtocolError("number of queries missing")
    (count,) = _U32.unpack_from(data, pos)
    pos += _U32.size
    if count > (len(data) - pos) // _U32.size:
        raise ProtocolError(f"{count} queries cannot fit the option data")
    queries = [string("query") for _ in range(count)]
    if pos != len(data):
        raise ProtocolError("trailing bytes after the queries")
    for q in queries:
        if ":" not in q:
            raise ProtocolError(f"query {q!r} has no namespace")
    return name, queries


# --- client side ----------------------------------------------------------------------------


def client_flags() -> bytes:
    return struct.pack(">I", FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES)


def parse_server_greeting(data: bytes) -> int:
    """Check the 18-byte server greeting; return the handshake flags."""
    magic, opt_magic, hflags = _HANDSHAKE.unpack(data)
    if magic != NBDMAGIC or opt_magic != IHAVEOPT:
        raise ProtocolError("not a newstyle NBD server")
    if not hflags & FLAG_FIXED_NEWSTYLE:
        raise ProtocolError("server does not speak fixed newstyle")
    return int(hflags)


def build_starttls() -> bytes:
    """The ``NBD_OPT_STARTTLS`` option (the server ACKs it, then the TLS handshake starts)."""
    return build_option(Opt.STARTTLS)


def build_option(opt: int, data: bytes = b"") -> bytes:
    return _OPT_HDR.pack(IHAVEOPT, opt, len(data)) + data


def build_go(name: str, *, info_requests: Iterable[int] = (INFO_BLOCK_SIZE,), opt: int = Opt.GO) -> bytes:
    raw = name.encode()
    reqs = list(info_requests)
    body = struct.pack(">I", len(raw)) + raw + struct.pack(f">H{len(reqs)}H", len(reqs), *reqs)
    return build_option(opt, body)


OPTION_REPLY_HEADER_SIZE = _OPT_REPLY_HDR.size


@dataclass(frozen=True)
class OptionReply:
    option: int
    type: int
    data: bytes

    @property
    def is_error(self) -> bool:
        return bool(self.type & 0x80000000)


def parse_option_reply_header(data: bytes) -> tuple[int, int, int]:
    """Return (option, reply type, length) from a 20-byte option reply header."""
    magic, opt, rtype, length = _OPT_REPLY_HDR.unpack(data)
    if magic != REPLY_MAGIC:
        raise ProtocolError("bad option reply magic")
    return int(opt), int(rtype), int(length)


def parse_info_export(data: bytes) -> tuple[int, int]:
    """Decode an ``NBD_INFO_EXPORT`` reply payload into (size, transmission flags)."""
    kind, size, flags = struct.unpack(">HQH", data)
    if kind != INFO_EXPORT:
        raise ProtocolError("not an NBD_INFO_EXPORT payload")
    return int(size), int(flags)


def build_request(
    cmd: int, cookie: int, offset: int = 0, length: int = 0, *, flags: int = 0
) -> bytes:
    """A request header (the caller sends a WRITE's payload after it)."""
    return _REQUEST.pack(REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def parse_simple_reply(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """Return (error, cookie) from a 16-byte reply header."""
    magic, error, cookie = _SIMPLE_REPLY.unpack(data)
    if magic != SIMPLE_REPLY_MAGIC:
        raise ProtocolError(f"bad reply magic {magic:#x}")
    return int(error), int(cookie)
