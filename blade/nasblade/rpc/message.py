"""ONC RPC messages (RFC 5531 §9): call header decoding and reply building.

``decode_call`` reads the call header of one record and leaves the decoder at the first
byte of the procedure arguments; ``accepted``/``denied`` build complete reply records. The
credential flavours understood here are AUTH_NONE and AUTH_SYS (RFC 5531 appendix A);
``nasblade.rpc.dispatch`` rejects the others.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated

from nasblade.rpc import xdr

RPC_VERSION = 2
CALL = 0
REPLY = 1
MSG_ACCEPTED = 0
MSG_DENIED = 1


class AcceptStat(enum.IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class RejectStat(enum.IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class AuthStat(enum.IntEnum):
    AUTH_OK = 0
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5


class AuthFlavor(enum.IntEnum):
    AUTH_NONE = 0
    AUTH_SYS = 1


@dataclasses.dataclass(frozen=True)
class OpaqueAuth:
    flavor: xdr.U32
    body: Annotated[bytes, xdr.Opaque(400)]


@dataclasses.dataclass(frozen=True)
class AuthSys:
    stamp: xdr.U32
    machinename: Annotated[bytes, xdr.String(255)]
    uid: xdr.U32
    gid: xdr.U32
    gids: Annotated[list[int], xdr.Array(xdr.UInt, 16)]


OPAQUE_AUTH = xdr.struct(OpaqueAuth)
AUTH_SYS_PARMS = xdr.struct(AuthSys)
NULL_VERF = OpaqueAuth(AuthFlavor.AUTH_NONE, b"")


@dataclasses.dataclass(frozen=True)
class CallHeader:
    """``rpc_msg`` of a call up to its procedure arguments: xid, msg_type, ``call_body``."""

    xid: xdr.U32
    mtype: xdr.U32
    rpcvers: xdr.U32
    prog: xdr.U32
    vers: xdr.U32
    proc: xdr.U32
    cred: OpaqueAuth
    verf: OpaqueAuth


CALL_HEADER = xdr.struct(CallHeader)


def peek_xid(record: bytes | memoryview) -> tuple[int, int] | None:
    """Return ``(xid, msg_type)`` or ``None`` if the record is too short to have them."""
    dec = xdr.Decoder(record)
    try:
        return dec.u32(), dec.u32()
    except xdr.XdrError:
        return None


def decode_call(dec: xdr.Decoder) -> CallHeader:
    """Decode a call header; raises ``XdrError`` if it is malformed or not a call."""
    hdr = CALL_HEADER.unpack(dec)
    if hdr.mtype != CALL:
        raise xdr.XdrError(f"not a call (msg_type {hdr.mtype})")
    return hdr


def encode_call(
    *, xid: int, prog: int, vers: int, proc: int, cred: OpaqueAuth = NULL_VERF, args: bytes = b""
) -> bytes:
    """Build a call record (used by tests and the benchmark's raw-RPC client)."""
    enc = xdr.Encoder()
    CALL_HEADER.pack(enc, CallHeader(xid, CALL, RPC_VERSION, prog, vers, proc, cred, NULL_VERF))
    enc.parts.append(args)
    return enc.getvalue()


def _accepted_head(xid: int, stat: AcceptStat) -> xdr.Encoder:
    enc = xdr.Encoder()
    enc.u32(xid)
    enc.u32(REPLY)
    enc.u32(MSG_ACCEPTED)
    OPAQUE_AUTH.pack(enc, NULL_VERF)
    enc.u32(stat)
    return enc


def success(xid: int, body: xdr.Encoder) -> list[bytes | memoryview]:
    """A SUCCESS reply; returns the buffers (header + result parts) without joining them."""
    enc = _accepted_head(xid, AcceptStat.SUCCESS)
    return enc.parts + body.parts


def accepted_error(xid: int, stat: AcceptStat, *, low: int = 0, high: int = 0) -> bytes:
    enc = _accepted_head(xid, stat)
    if stat == AcceptStat.PROG_MISMATCH:
        enc.u32(low)
        enc.u32(high)
    return enc.getvalue()


def denied(xid: int, stat: RejectStat, *, auth: AuthStat = AuthStat.AUTH_OK, low: int = 2, high: int = 2) -> bytes:
    enc = xdr.Encoder()
    enc.u32(xid)
    enc.u32(REPLY)
    enc.u32(MSG_DENIED)
    enc.u32(stat)
    if stat == RejectStat.RPC_MISMATCH:
        enc.u32(low)
        enc.u32(high)
    else:
        enc.u32(auth)
    return enc.getvalue()


@dataclasses.dataclass(frozen=True)
class Reply:
    """A decoded reply (client side: tests and the benchmark)."""

    xid: int
    reply_stat: int
    stat: int
    auth_stat: int
    mismatch: tuple[int, int] | None
    body: xdr.Decoder


def decode_reply(record: bytes | memoryview) -> Reply:
    dec = xdr.Decoder(record)
    xid = dec.u32()
    if dec.u32() != REPLY:
        raise xdr.XdrError("not a reply")
    reply_stat = dec.u32()
    mismatch = None
    auth_stat = 0
    if reply_stat == MSG_ACCEPTED:
        OPAQUE_AUTH.unpack(dec)
        stat = dec.u32()
        if stat == AcceptStat.PROG_MISMATCH:
            mismatch = (dec.u32(), dec.u32())
    else:
        stat = dec.u32()
        if stat == RejectStat.RPC_MISMATCH:
            mismatch = (dec.u32(), dec.u32())
        else:
            auth_stat = dec.u32()
    return Reply(xid, reply_stat, stat, auth_stat, mismatch, dec)
