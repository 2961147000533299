"""Unit tests of the sans-I/O RPC core: XDR round trips, record marking, dispatch order,
malformed input and the duplicate request cache (no sockets)."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nasblade.latency import BUCKETS as LATENCY_BUCKETS
from nasblade.latency import Figures as CallFigures
from nasblade.nfs import handles
from nasblade.nfs import types as t
from nasblade.rpc import message, record, xdr
from nasblade.rpc.dispatch import Call, Dispatcher, Procedure, Program

fattrs = st.builds(
    t.Fattr,
    type=st.integers(1, 7),
    mode=st.integers(0, 0o7777),
    nlink=st.integers(0, 2**32 - 1),
    uid=st.integers(0, 2**32 - 1),
    gid=st.integers(0, 2**32 - 1),
    size=st.integers(0, 2**64 - 1),
    used=st.integers(0, 2**64 - 1),
    rdev=st.builds(t.SpecData, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
    fsid=st.integers(0, 2**64 - 1),
    fileid=st.integers(0, 2**64 - 1),
    atime=st.builds(t.NfsTime, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
    mtime=st.builds(t.NfsTime, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
    ctime=st.builds(t.NfsTime, st.integers(0, 2**32 - 1), st.integers(0, 999_999_999)),
)


@given(fattrs)
def test_fattr_round_trip(a: t.Fattr) -> None:
    raw = t.FATTR.encode(a)
    assert len(raw) == 84
    assert t.FATTR.decode(raw) == a


@given(st.binary(max_size=300), st.integers(0, 2**64 - 1), st.sampled_from(list(t.StableHow)))
def test_write_args_round_trip(data: bytes, offset: int, stable: int) -> None:
    args = t.WriteArgs(b"h" * 46, offset, len(data), stable, memoryview(data))
    raw = t.WRITE_ARGS.encode(args)
    assert len(raw) % 4 == 0
    back = t.WRITE_ARGS.decode(raw)
    assert bytes(back.data) == data and back.offset == offset and back.stable == stable


@given(st.lists(st.builds(t.Entry, st.integers(0, 2**64 - 1), st.binary(max_size=40), st.integers(0, 2**64 - 1))))
def test_readdir_linked_list_round_trip(entries: list[t.Entry]) -> None:
    ok = t.ReaddirOk(None, b"\0" * 8, entries, True)
    assert t.READDIR_RES.decode(t.READDIR_RES.encode((t.Stat.OK, ok))) == (t.Stat.OK, ok)


def test_sattr_and_unions_round_trip() -> None:
    s = t.Sattr(0o644, None, 7, 10, (t.TimeHow.SET_TO_SERVER_TIME, None), (t.TimeHow.SET_TO_CLIENT_TIME, t.NfsTime(5, 6)))
    assert t.SATTR.decode(t.SATTR.encode(s)) == s
    how = (t.CreateMode.EXCLUSIVE, b"12345678")
    args = t.CreateArgs(t.DirOpArgs(b"d", b"name"), how)
    assert t.CREATE_ARGS.decode(t.CREATE_ARGS.encode(args)) == args


@dataclasses.dataclass
class Derived:
    small: xdr.U32
    big: xdr.I64
    flag: bool
    when: t.NfsTime
    maybe: t.NfsTime | None
    fh: t.Fh | None


@dataclasses.dataclass
class Untyped:
    n: int


def test_struct_is_derived_from_the_dataclass_annotations() -> None:
    codec = xdr.struct(Derived)
    assert codec is xdr.struct(Derived)
    value = Derived(7, -2, True, t.NfsTime(1, 2), None, b"h")
    raw = codec.encode(value)
    # u32, hyper, bool, nfstime3 (2 x u32), absent *nfstime3, present *nfs_fh3 ("h" padded)
    assert raw == struct.pack(">IqIIIIII", 7, -2, 1, 1, 2, 0, 1, 1) + b"h\0\0\0"
    assert codec.decode(raw) == value
    with pytest.raises(TypeError, match=r"Untyped\.n"):
        xdr.struct(Untyped)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\0\0\0",
        struct.pack(">I", 5) + b"abc",  # opaque longer than the input
        struct.pack(">I", 2) + b"ab",  # missing padding
        struct.pack(">I", 0xFFFFFFFF),
    ],
)
def test_truncated_opaque_is_rejected(raw: bytes) -> None:
    with pytest.raises(xdr.XdrError):
        xdr.Opaque().decode(raw)


def test_bad_bool_optional_enum_are_rejected() -> None:
    with pytest.raises(xdr.XdrError):
        xdr.Bool.decode(struct.pack(">I", 2))
    with pytest.raises(xdr.XdrError):
        xdr.Optional(xdr.UInt).decode(struct.pack(">II", 7, 1))
    with pytest.raises(xdr.XdrError):
        t.WRITE_ARGS.decode(t.FH.encode(b"x") + struct.pack(">QII", 0, 0, 9) + struct.pack(">I", 0))
    with pytest.raises(xdr.XdrError):
        xdr.Array(xdr.UInt).decode(struct.pack(">I", 1 << 30))


def test_trailing_bytes_are_rejected() -> None:
    with pytest.raises(xdr.XdrError):
        xdr.UInt.decode(b"\0\0\0\1\0\0\0\0")


@given(st.binary(max_size=5000), st.integers(1, 700), st.integers(1, 97))
def test_record_marking_multi_fragment_any_split(payload: bytes, frag: int, chunk: int) -> None:
    stream = b"".join(bytes(b) for b in record.frame(payload, max_fragment=frag)) * 2
    reader = record.RecordReader()
    got: list[bytes] = []
    for i in range(0, len(stream), chunk):
        got.extend(bytes(r) for r in reader.feed(stream[i : i + chunk]))
    assert got == [payload, payload]
    assert reader.pending() == 0


def test_record_dribbled_in_byte_by_byte() -> None:
    """A record of 80,000 bytes in 80,004 one-byte chunks (header included) comes out whole and
    once, with ``pending`` exact after every chunk. (The reader keeps chunks in a deque, so this
    is linear; how long it takes is bench material, not asserted here.)"""
    payload = bytes(random.Random(7).randrange(256) for _ in range(80_000))
    stream = struct.pack(">I", 0x80000000 | len(payload)) + payload
    reader = record.RecordReader(max_record=1 << 20)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += [bytes(r) for r in reader.feed(stream[i : i + 1])]
        if i < len(stream) - 1:
            assert reader.pending() == i + 1 - (4 if i >= 3 else 0)
    assert got == [payload] and reader.pending() == 0


def test_record_size_is_bounded() -> None:
    reader = record.RecordReader(max_record=1000)
    with pytest.raises(record.RecordError):
        reader.feed(struct.pack(">I", 0x80000000 | 5000))
    reader = record.RecordReader(max_record=1000)
    with pytest.raises(record.RecordError):
        for _ in range(3):
            reader.feed(struct.pack(">I", 600) + bytes(600))


# -- dispatch ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    a: int
    b: int


PAIR = xdr.Struct(Pair, [("a", xdr.UInt), ("b", xdr.UInt)])


def make_dispatcher() -> tuple[Dispatcher, list[int]]:
    calls: list[int] = []

    def add(call: Call, p: Pair) -> int:
        calls.append(p.a + p.b)
        return p.a + p.b

    def boom(call: Call, args: None) -> None:
        raise RuntimeError("handler bug")

    d = Dispatcher()
    d.register(
        Program(
            400000,
            {
                2: {1: Procedure("ADD", PAIR, xdr.UInt, add, cached=True), 2: Procedure("BOOM", xdr.Void, xdr.Void, boom)},
                3: {},
            },
        )
    )
    return d, calls


def call_bytes(*, xid: int = 1, rpcvers: int = 2, prog: int = 400000, vers: int = 2, proc: int = 1, flavor: int = 1, args: bytes = b"") -> bytes:
    enc = xdr.Encoder()
    for v in (xid, 0, rpcvers, prog, vers, proc):
        enc.u32(v)
    body = message.AUTH_SYS_PARMS.encode(message.AuthSys(0, b"h", 1000, 1000, [])) if flavor == 1 else b""
    message.OPAQUE_AUTH.pack(enc, message.OpaqueAuth(flavor, body))
    message.OPAQUE_AUTH.pack(enc, message.NULL_VERF)
    return enc.getvalue() + args


def reply(d: Dispatcher, raw: bytes, client: str = "127.0.0.1") -> message.Reply:
    out = d.handle(raw, client)
    assert out is not None
    return message.decode_reply(b"".join(bytes(b) for b in out.buffers))


def test_dispatch_success_and_protocol_order() -> None:
    d, calls = make_dispatcher()
    ok = reply(d, call_bytes(args=PAIR.encode(Pair(2, 3))))
    assert (ok.reply_stat, ok.stat, xdr.UInt.unpack(ok.body)) == (0, 0, 5)
    # RPC version is checked before anything else (even a bad program).
    r = reply(d, call_bytes(rpcvers=3, prog=1))
    assert (r.reply_stat, r.stat, r.mismatch) == (message.MSG_DENIED, message.RejectStat.RPC_MISMATCH, (2, 2))
    # Auth before program.
    r = reply(d, call_bytes(flavor=6, prog=1))
    assert (r.reply_stat, r.stat, r.auth_stat) == (1, message.RejectStat.AUTH_ERROR, message.AuthStat.AUTH_BADCRED)
    r = reply(d, call_bytes(prog=1, proc=99))
    assert (r.reply_stat, r.stat) == (0, message.AcceptStat.PROG_UNAVAIL)
    r = reply(d, call_bytes(vers=9, proc=99))
    assert (r.stat, r.mismatch) == (message.AcceptStat.PROG_MISMATCH, (2, 3))
    r = reply(d, call_bytes(proc=99))
    assert r.stat == message.AcceptStat.PROC_UNAVAIL
    r = reply(d, call_bytes(args=b"\0\0\0\1"))
    assert r.stat == message.AcceptStat.GARBAGE_ARGS
    r = reply(d, call_bytes(proc=2))
    assert r.stat == message.AcceptStat.SYSTEM_ERR
    assert calls == [5]


def test_bad_auth_sys_body_is_badcred() -> None:
    d, _ = make_dispatcher()
    enc = xdr.Encoder()
    for v in (9, 0, 2, 400000, 2, 1):
        enc.u32(v)
    message.OPAQUE_AUTH.pack(enc, message.OpaqueAuth(1, b"\0\0\0\1"))
    message.OPAQUE_AUTH.pack(enc, message.NULL_VERF)
    r = reply(d, enc.getvalue())
    assert r.stat == message.RejectStat.AUTH_ERROR and r.auth_stat == message.AuthStat.AUTH_BADCRED


def test_replies_are_not_made_for_non_calls() -> None:
    d, _ = make_dispatcher()
    assert d.handle(b"\0\0\0\1\0\0\0\1", "c") is None
    assert d.handle(b"\0\0", "c") is None


def test_duplicate_request_cache_replays_without_executing() -> None:
    d, calls = make_dispatcher()
    raw = call_bytes(xid=77, args=PAIR.encode(Pair(1, 1)))
    first = d.handle(raw, "10.0.0.1")
    again = d.handle(raw, "10.0.0.1")
    other_client = d.handle(raw, "10.0.0.2")
    assert first is not None and again is not None and other_client is not None
    assert again.replayed and not first.replayed and not other_client.replayed
    assert b"".join(map(bytes, again.buffers)) == b"".join(map(bytes, first.buffers))
    assert calls == [2, 2]
    # Same XID, different arguments: a different request, executed.
    d.handle(call_bytes(xid=77, args=PAIR.encode(Pair(5, 5))), "10.0.0.1")
    assert calls == [2, 2, 10]


def test_transports_per_program_and_in_the_cache_key() -> None:
    """A program offered over TCP only is PROG_UNAVAIL over UDP (NFS v3); the handler sees the
    transport; the duplicate request cache keys on it (a UDP retransmission replays the UDP reply,
    a TCP call with the same XID is another request) and the call statistics count both."""
    seen: list[str] = []

    def add(call: Call, p: Pair) -> int:
        seen.append(call.transport)
        return p.a + p.b

    d = Dispatcher()
    d.register(Program(400000, {2: {1: Procedure("ADD", PAIR, xdr.UInt, add, cached=True)}}, name="both"))
    d.register(Program(400001, {2: {1: Procedure("ADD", PAIR, xdr.UInt, add)}}, name="tcp",
                       transports=frozenset({"tcp"})))
    only_tcp = call_bytes(prog=400001, args=PAIR.encode(Pair(1, 2)))
    out = d.handle(only_tcp, "10.0.0.1", transport="udp")
    assert out is not None and message.decode_reply(b"".join(map(bytes, out.buffers))).stat == message.AcceptStat.PROG_UNAVAIL
    assert d.handle(only_tcp, "10.0.0.1", transport="tcp") is not None
    raw = call_bytes(xid=78, args=PAIR.encode(Pair(1, 1)))
    first, again = (d.handle(raw, "10.0.0.1", transport="udp") for _ in range(2))
    over_tcp = d.handle(raw, "10.0.0.1")
    assert first is not None and again is not None and over_tcp is not None
    assert again.replayed and not over_tcp.replayed
    assert seen == ["tcp", "udp", "tcp"]
    assert {k: f.count for k, f in d.stats.calls.items()} == {("tcp", "ADD"): 1, ("both", "ADD"): 2}


def test_call_stats_count_executed_calls_with_their_latency() -> None:
    """``Dispatcher.stats``: executed calls per (program, procedure), a failing handler included;
    a replay from the duplicate request cache and a rejected call are not executions."""
    d, _ = make_dispatcher()
    for xid in (1, 2, 3):
        reply(d, call_bytes(xid=xid, args=PAIR.encode(Pair(xid, 1))))
    reply(d, call_bytes(xid=3, args=PAIR.encode(Pair(3, 1))))  # retransmission: replayed
    reply(d, call_bytes(xid=4, proc=2))  # BOOM: SYSTEM_ERR, still executed
    reply(d, call_bytes(xid=5, proc=9))  # PROC_UNAVAIL
    reply(d, call_bytes(xid=6, args=b"\x00"))  # GARBAGE_ARGS
    assert {k: f.count for k, f in d.stats.calls.items()} == {("400000", "ADD"): 3, ("400000", "BOOM"): 1}
    add = d.stats.calls[("400000", "ADD")]
    assert sum(add.buckets) == 3 and len(add.buckets) == len(LATENCY_BUCKETS) + 1 and add.seconds > 0
    f = CallFigures()
    for seconds in (0.0001, 0.00011, 3.0):  # a bound is its own bucket's (Prometheus "le")
        f.add(seconds)
    assert (f.buckets[0], f.buckets[1], f.buckets[-1], f.count) == (1, 1, 1, 3)
    assert f.cumulative()[:2] == [1, 2] and f.cumulative()[-1] == 3


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_records_never_crash_the_dispatcher(raw: bytes) -> None:
    d, _ = make_dispatcher()
    d.handle(raw, "127.0.0.1")
    d.handle(call_bytes() + raw, "127.0.0.1")


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.integers(1, 2**63), st.integers(0, 2**64 - 1))
def test_handles_round_trip_and_resist_forgery(export_id: int, fsid: int, ino: int, gen: int) -> None:
    secret = b"s" * 32
    h = handles.Handle(export_id, fsid, ino, gen)
    raw = handles.encode(h, secret)
    assert len(raw) <= t.FHSIZE3
    assert handles.decode(raw, secret) == h
    assert handles.decode(raw, b"x" * 32) is None
    forged = bytearray(raw)
    forged[20] ^= 1
    assert handles.decode(bytes(forged), secret) is None
    assert handles.decode(raw[:-1], secret) is None
