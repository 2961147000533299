"""Table-driven ONC RPC dispatch with protocol-order checks and a duplicate request cache.

``Dispatcher.handle`` takes one complete call message (a record from ``nasblade.rpc.record``
over TCP, or one datagram over UDP), the peer address and the transport it came over
(``"tcp"``/``"udp"``), and returns the reply buffers. A call is checked in protocol order, each
failure with its own reply (RFC 5531 §9):

1. RPC version ≠ 2 → MSG_DENIED / RPC_MISMATCH (2, 2)
2. credential flavour not AUTH_NONE/AUTH_SYS, or an undecodable AUTH_SYS body →
   MSG_DENIED / AUTH_ERROR (AUTH_BADCRED)
3. unknown program, or one not offered over this transport (``Program.transports``: NFS v3 is
   TCP-only) → PROG_UNAVAIL
4. unknown version → PROG_MISMATCH (lowest, highest)
5. unknown procedure → PROC_UNAVAIL
6. undecodable arguments → GARBAGE_ARGS (the connection keeps working)

Programs (``nasblade.nfs.nfs3``, ``nasblade.nfs.mount``, ``nasblade.nfs.portmap``) register
``Procedure`` entries keyed by ``(program, version, procedure)``. A handler may set
``call.needs_commit``: the reply must then wait until the file system's next group commit
(``nasblade.fileproc.server`` holds it back). Non-idempotent procedures are marked
``cached``; their replies go into the ``DuplicateRequestCache`` keyed by client address,
transport, XID, procedure and a checksum of the arguments, so a retransmission (on UDP the
normal way to recover from a lost datagram) gets the original reply instead of being executed
twice.

Every executed call (one that passed the checks; a replayed reply from the cache is not one)
is counted in ``Dispatcher.stats`` (``nasblade.latency.Latencies``) by program and procedure, with the time the
handler and the encoding of its reply took, in the buckets of a latency histogram. That time is
the server's work on the call: a reply held back for the group commit waits on top of it. The
file processor reports these figures (``FileProcessor.call_stats``) to its block processor, which
serves them as Prometheus metrics (``nasblade.blockproc.metrics``).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
import zlib
from collections.abc import Callable
from typing import Any

from nasblade import latency
from nasblade.rpc import message, xdr

log = logging.getLogger(__name__)

Buffers = list[bytes | memoryview]
DRC_CSUM_LEN = 256


@dataclasses.dataclass
class Call:
    """One decoded call as a handler sees it."""

    header: message.CallHeader
    cred: message.AuthSys | None
    client: str
    needs_commit: bool = False
    transport: str = "tcp"
    """What the call came over, ``"tcp"`` or ``"udp"`` (NLM sends its ``*_RES`` calls back over it)."""


@dataclasses.dataclass(frozen=True)
class Procedure:
    name: str
    args: xdr.Type[Any]
    res: xdr.Type[Any]
    handler: Callable[[Call, Any], Any]
    cached: bool = False


@dataclasses.dataclass(frozen=True)
class Program:
    number: int
    versions: dict[int, dict[int, Procedure]]
    name: str = ""
    """How the call statistics name the program (``nfs``, ``mount``...); its number when empty."""
    transports: frozenset[str] = frozenset({"tcp", "udp"})
    """The transports the program is offered over; a call over another one is PROG_UNAVAIL."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    xid: int
    buffers: Buffers
    needs_commit: bool
    replayed: bool = False


@dataclasses.dataclass
class _Entry:
    buffers: Buffers
    needs_commit: bool


class DuplicateRequestCache:
    """Bounded LRU of replies to non-idempotent calls (RFC 1813 §4.4 and Juszczak's DRC)."""

    def __init__(self, *, capacity: int = 16384) -> None:
        self.capacity = capacity
        self._entries: collections.OrderedDict[tuple[Any, ...], _Entry] = collections.OrderedDict()
        self.hits = 0

    def get(self, key: tuple[Any, ...]) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.hits += 1
        return entry

    def put(self, key: tuple[Any, ...], entry: _Entry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


class Dispatcher:
    """Routes calls to registered programs; see the module docstring for the check order."""

    def __init__(self, *, drc: DuplicateRequestCache | None = None) -> None:
        self.programs: dict[int, Program] = {}
        self.drc = drc if drc is not None else DuplicateRequestCache()
        self.stats = latency.Latencies()  # by (program name, procedure name)

    def register(self, program: Program) -> None:
        self.programs[program.number] = program

    def handle(self, record: bytes | memoryview, client: str, *, transport: str = "tcp") -> Outcome | None:
        """Process one call message; ``None`` means no reply is possible (not a call)."""
        dec = xdr.Decoder(record)
        try:
            hdr = message.decode_call(dec)
        except xdr.XdrError:
            log.debug("dropping undecodable record from %s", client)
            return None
        xid = hdr.xid
        if hdr.rpcvers != message.RPC_VERSION:
            return self._plain(xid, message.denied(xid, message.RejectStat.RPC_MISMATCH))
        cred: message.AuthSys | None = None
        if hdr.cred.flavor == message.AuthFlavor.AUTH_SYS:
            try:
                cred = message.AUTH_SYS_PARMS.decode(hdr.cred.body)
            except xdr.XdrError:
                return self._auth_error(xid)
        elif hdr.cred.flavor != message.AuthFlavor.AUTH_NONE:
            return self._auth_error(xid)
        program = self.programs.get(hdr.prog)
        if program is None or transport not in program.transports:
            return self._plain(xid, message.accepted_error(xid, message.AcceptStat.PROG_UNAVAIL))
        procs = program.versions.get(hdr.vers)
        if procs is None:
            return self._plain(
                xid,
                message.accepted_error(
                    xid, message.AcceptStat.PROG_MISMATCH, low=min(program.versions), high=max(program.versions)
                ),
            )
        proc = procs.get(hdr.proc)
        if proc is None:
            return self._plain(xid, message.accepted_error(xid, message.AcceptStat.PROC_UNAVAIL))
        args_view = dec.buf[dec.pos :]
        key: tuple[Any, ...] | None = None
        if proc.cached:
            # Like Linux's DRC: XID + client + procedure + length + a checksum of the first
            # bytes of the arguments (hashing a whole 1 MiB WRITE would cost milliseconds).
            key = (client, transport, xid, hdr.prog, hdr.vers, hdr.proc, len(args_view), zlib.crc32(args_view[:DRC_CSUM_LEN]))
            hit = self.drc.get(key)
            if hit is not None:
                return Outcome(xid, hit.buffers, hit.needs_commit, replayed=True)
        try:
            args = proc.args.unpack(dec)
            dec.done()
        except xdr.XdrError as exc:
            log.debug("GARBAGE_ARGS from %s for %s: %s", client, proc.name, exc)
            return self._plain(xid, message.accepted_error(xid, message.AcceptStat.GARBAGE_ARGS))
        call = Call(hdr, cred, client, transport=transport)
        started = time.perf_counter()
        try:
            result = proc.handler(call, args)
            body = xdr.Encoder()
            proc.res.pack(body, result)
        except Exception:
            log.exception("%s failed for %s", proc.name, client)
            return self._plain(xid, message.accepted_error(xid, message.AcceptStat.SYSTEM_ERR))
        finally:
            self.stats.add((program.name or str(program.number), proc.name), time.perf_counter() - started)
        buffers = message.success(xid, body)
        if key is not None:
            self.drc.put(key, _Entry(buffers, call.needs_commit))
        return Outcome(xid, buffers, call.needs_commit)

    @staticmethod
    def _plain(xid: int, data: bytes) -> Outcome:
        return Outcome(xid, [data], False)

    def _auth_error(self, xid: int) -> Outcome:
        return self._plain(
            xid, message.denied(xid, message.RejectStat.AUTH_ERROR, auth=message.AuthStat.AUTH_BADCRED)
        )
