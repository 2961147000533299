"""Unit tests of the sans-I/O NBD core (``nasblade.nbd.proto``): handshake and requests."""

from __future__ import annotations

import struct

import pytest
from nasblade.nbd import proto
from nbdwire import events, replies


class Exports(proto.ExportLookup):
    def __init__(self) -> None:
        self.table = {"disk": proto.ExportInfo("disk", 1 << 20, proto.TF_HAS_FLAGS | proto.TF_SEND_FLUSH)}

    def lookup(self, name: str) -> proto.ExportInfo | None:
        lu = name.split(";")[0]
        info = self.table.get(lu)
        return None if info is None else proto.ExportInfo(name, info.size, info.flags)

    def names(self) -> list[proto.ExportInfo]:
        return list(self.table.values())


def negotiated() -> proto.ServerConnection:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + proto.build_go("disk"))
    assert isinstance(evs[-1], proto.Negotiated)
    conn.data_to_send()
    return conn


def test_greeting_is_fixed_newstyle_with_no_zeroes() -> None:
    conn = proto.ServerConnection(Exports())
    flags = proto.parse_server_greeting(conn.initial_bytes())
    assert flags == proto.FLAG_FIXED_NEWSTYLE | proto.FLAG_NO_ZEROES


def test_go_reports_export_info_and_block_size() -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + proto.build_go("disk"))
    assert evs == [proto.Negotiated(proto.ExportInfo("disk", 1 << 20, 5))]
    reps = replies(conn.data_to_send())
    assert reps[-1][1] == proto.REP_ACK
    infos = {struct.unpack(">H", d[:2])[0]: d for _, t, d in reps if t == proto.REP_INFO}
    assert proto.parse_info_export(infos[proto.INFO_EXPORT]) == (1 << 20, 5)
    assert struct.unpack(">HIII", infos[proto.INFO_BLOCK_SIZE])[1:] == (1, 4096, proto.MAX_PAYLOAD)


def test_info_does_not_enter_transmission() -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + proto.build_go("disk", opt=proto.Opt.INFO))
    assert evs == []
    assert replies(conn.data_to_send())[-1][1] == proto.REP_ACK


def test_list_and_abort() -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + proto.build_option(proto.Opt.LIST))
    reps = replies(conn.data_to_send())
    assert reps[0][1] == proto.REP_SERVER and reps[0][2] == struct.pack(">I", 4) + b"disk"
    assert reps[1][1] == proto.REP_ACK
    evs = events(conn, proto.build_option(proto.Opt.ABORT))
    assert isinstance(evs[0], proto.Closed)
    assert replies(conn.data_to_send()) == [(proto.Opt.ABORT, proto.REP_ACK, b"")]


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (proto.build_go("nope"), proto.REP_ERR_UNKNOWN),
        (proto.build_option(proto.Opt.GO, b"\0\0\0\x09ab"), proto.REP_ERR_INVALID),
        (proto.build_option(proto.Opt.GO, b"\0\0\0\x04disk\0\x05"), proto.REP_ERR_INVALID),
        (proto.build_option(proto.Opt.LIST, b"x"), proto.REP_ERR_INVALID),
        (proto.build_option(proto.Opt.STARTTLS), proto.REP_ERR_UNSUP),
        (proto.build_option(proto.Opt.STRUCTURED_REPLY), proto.REP_ERR_UNSUP),
        (proto.build_option(999, b"abc"), proto.REP_ERR_UNSUP),
        (proto.build_option(proto.Opt.GO, b"x" * (proto.MAX_OPTION_LENGTH + 1)), proto.REP_ERR_TOO_BIG),
    ],
)
def test_bad_options_get_error_replies_and_haggling_continues(data: bytes, reply: int) -> None:
    conn = proto.ServerConnection(Exports())
    assert events(conn, proto.client_flags() + data) == []
    assert replies(conn.data_to_send())[-1][1] == reply
    evs = events(conn, proto.build_go("disk"))
    assert isinstance(evs[-1], proto.Negotiated)


@pytest.mark.parametrize("cflags", [0, 4, 0x80000001])
def test_unknown_or_missing_client_flags_close(cflags: int) -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, struct.pack(">I", cflags))
    assert len(evs) == 1 and isinstance(evs[0], proto.Closed)


def test_bad_option_magic_closes() -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + struct.pack(">QII", 0x1234, 7, 0))
    assert isinstance(evs[-1], proto.Closed)


def test_export_name_unknown_closes_known_starts() -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + proto.build_option(proto.Opt.EXPORT_NAME, b"zzz"))
    assert isinstance(evs[-1], proto.Closed)
    conn = proto.ServerConnection(Exports())
    evs = events(conn, struct.pack(">I", 1) + proto.build_option(proto.Opt.EXPORT_NAME, b"disk"))
    assert isinstance(evs[-1], proto.Negotiated)
    assert len(conn.data_to_send()) == 10 + 124  # size, flags, zero padding without NO_ZEROES


def test_requests_are_parsed_incrementally() -> None:
    conn = negotiated()
    raw = proto.build_request(proto.Cmd.WRITE, 7, 4096, 5, flags=proto.CMD_FLAG_FUA) + b"hello"
    raw += proto.build_request(proto.Cmd.READ, 8, 0, 512)
    got: list[proto.Event] = []
    for i in range(len(raw)):
        got += events(conn, raw[i : i + 1])
    assert len(got) == 2
    w, r = got
    assert isinstance(w, proto.Request) and w.cmd == proto.Cmd.WRITE and w.fua
    assert w.payload is not None and bytes(w.payload) == b"hello" and w.cookie == 7
    assert isinstance(r, proto.Request) and (r.cmd, r.offset, r.length) == (proto.Cmd.READ, 0, 512)


@pytest.mark.parametrize(
    ("cmd", "flags", "length", "error"),
    [
        (99, 0, 0, proto.EINVAL),  # unknown command
        (proto.Cmd.BLOCK_STATUS, 0, 512, proto.EINVAL),  # not negotiated
        (proto.Cmd.READ, proto.CMD_FLAG_DF, 512, proto.EINVAL),  # DF not advertised
        (proto.Cmd.WRITE_ZEROES, proto.CMD_FLAG_FAST_ZERO, 512, proto.EINVAL),
        (proto.Cmd.FLUSH, proto.CMD_FLAG_FUA, 0, proto.EINVAL),
        (proto.Cmd.READ, 0x8000, 512, proto.EINVAL),  # unknown flag bit
        (proto.Cmd.READ, 0, proto.MAX_PAYLOAD + 1, proto.EOVERFLOW),
    ],
)
def test_bad_requests_get_errors(cmd: int, flags: int, length: int, error: int) -> None:
    conn = negotiated()
    evs = events(conn, proto.build_request(cmd, 42, 0, length, flags=flags))
    assert evs == [proto.BadRequest(42, error, evs[0].reason)]  # type: ignore[union-attr]
    assert isinstance(events(conn, proto.build_request(proto.Cmd.FLUSH, 43))[0], proto.Request)


def test_oversized_write_is_answered_einval_only_after_its_payload_was_drained() -> None:
    """A reply while the client still sends the payload has a cookie it does not consider in
    flight yet (libnbd: "no matching cookie found for server reply")."""
    conn = proto.ServerConnection(Exports(), max_payload=1024)
    events(conn, proto.client_flags() + proto.build_go("disk"))
    assert events(conn, proto.build_request(proto.Cmd.WRITE, 1, 0, 5000) + b"x" * 3000) == []
    assert events(conn, b"x" * 1999) == []
    evs = events(conn, b"x" + proto.build_request(proto.Cmd.FLUSH, 2))
    assert evs[0] == proto.BadRequest(1, proto.EINVAL, evs[0].reason)  # type: ignore[union-attr]
    assert len(evs) == 2 and isinstance(evs[1], proto.Request) and evs[1].cookie == 2


def test_oversized_write_drained_through_recv_buffer() -> None:
    conn = negotiated()
    length = proto.MAX_PAYLOAD + 4096
    raw = proto.build_request(proto.Cmd.WRITE, 1, 0, length) + bytes(length) + proto.build_request(proto.Cmd.READ, 2, 0, 512)
    evs = feed_buffered(conn, raw, 1 << 20)
    assert [type(e) for e in evs] == [proto.BadRequest, proto.Request]
    assert isinstance(evs[0], proto.BadRequest) and (evs[0].cookie, evs[0].error) == (1, proto.EINVAL)
    assert conn.buffered == 0


def test_absurd_write_length_closes() -> None:
    conn = negotiated()
    evs = events(conn, proto.build_request(proto.Cmd.WRITE, 1, 0, proto.DRAIN_LIMIT + 1))
    assert len(evs) == 1 and isinstance(evs[0], proto.Closed)


def test_write_with_bad_flags_consumes_its_payload() -> None:
    conn = negotiated()
    evs = events(conn, proto.build_request(proto.Cmd.WRITE, 1, 0, 4, flags=proto.CMD_FLAG_DF) + b"abcd"
                 + proto.build_request(proto.Cmd.FLUSH, 2))
    assert isinstance(evs[0], proto.BadRequest) and evs[0].error == proto.EINVAL
    assert isinstance(evs[1], proto.Request) and evs[1].cookie == 2


def test_bad_request_magic_closes_and_disc_closes() -> None:
    conn = negotiated()
    assert isinstance(events(conn, b"\0" * 28)[0], proto.Closed)
    conn = negotiated()
    assert isinstance(events(conn, proto.build_request(proto.Cmd.DISC, 1))[0], proto.Closed)


def test_simple_reply_round_trip() -> None:
    assert proto.parse_simple_reply(proto.simple_reply(99, proto.EPERM)) == (proto.EPERM, 99)
    with pytest.raises(proto.ProtocolError):
        proto.parse_simple_reply(b"\0" * 16)


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        ("fs1", proto.ExportName("fs1")),
        ("fs1;holder=blade-a;epoch=3", proto.ExportName("fs1", "blade-a", 3)),
        ("fs1;epoch=3;holder=b", proto.ExportName("fs1", "b", 3)),
    ],
)
def test_export_names(name: str, parsed: proto.ExportName) -> None:
    assert proto.parse_export_name(name) == parsed
    assert proto.parse_export_name(parsed.encode()) == parsed


@pytest.mark.parametrize("name", ["", ";holder=a;epoch=1", "fs;holder=a", "fs;epoch=1",
                                  "fs;holder=a;epoch=0", "fs;holder=a;epoch=x", "fs;who=a;epoch=1",
                                  "fs;holder=a;holder=b;epoch=1", "fs;holder=a;epoch=\u00b2"])
def test_bad_export_names(name: str) -> None:
    with pytest.raises(ValueError):
        proto.parse_export_name(name)


def feed_buffered(conn: proto.ServerConnection, data: bytes, chunk: int) -> list[proto.Event]:
    """Feed like asyncio.BufferedProtocol: recv into recv_buffer(), then recv_done()."""
    out: list[proto.Event] = []
    pos = 0
    while pos < len(data):
        buf = conn.recv_buffer()
        n = min(len(buf), chunk, len(data) - pos)
        buf[:n] = data[pos : pos + n]
        conn.recv_done(n)
        pos += n
        while (ev := conn.next_event()) is not None:
            out.append(ev)
    return out


@pytest.mark.parametrize("chunk", [1000, 65536, 1 << 20])
def test_large_write_payloads_arrive_in_their_own_buffer(chunk: int) -> None:
    conn = negotiated()
    big = bytes(range(256)) * 4096 * 3  # 3 MiB
    raw = (proto.build_request(proto.Cmd.READ, 1, 0, 512)
           + proto.build_request(proto.Cmd.WRITE, 2, 4096, len(big), flags=proto.CMD_FLAG_FUA) + big
           + proto.build_request(proto.Cmd.WRITE, 3, 0, 5) + b"small"
           + proto.build_request(proto.Cmd.WRITE, 4, 0, 70000, flags=proto.CMD_FLAG_DF) + bytes(70000)
           + proto.build_request(proto.Cmd.FLUSH, 5))
    evs = feed_buffered(conn, raw, chunk)
    assert [getattr(e, "cookie", None) for e in evs] == [1, 2, 3, 4, 5]
    w = evs[1]
    assert isinstance(w, proto.Request) and w.fua and w.payload is not None and bytes(w.payload) == big
    assert isinstance(evs[2], proto.Request) and bytes(evs[2].payload or b"") == b"small"
    assert isinstance(evs[3], proto.BadRequest) and evs[3].error == proto.EINVAL  # flags checked after payload


def test_a_stream_of_large_writes_is_received_in_place_before_it_is_parsed() -> None:
    """asyncio's shell receives again and again before the request loop parses anything. Each
    large WRITE's payload must still go straight into its own buffer: after one payload the
    shell is given one request header's room, and a header that arrived gets its payload's
    buffer at once (a full scratch buffer took the next header and up to 256 KiB of its
    payload, copied twice: a fifth of the controller's CPU for 1 MiB writes)."""
    conn = negotiated()
    size = 1 << 20
    payloads = [bytes([i]) * size for i in range(4)]
    raw = b"".join(proto.build_request(proto.Cmd.WRITE, i, i * size, size) + p for i, p in enumerate(payloads))
    raw += proto.build_request(proto.Cmd.FLUSH, 9)
    pos, scratch = 0, 0
    while pos < len(raw):  # no next_event() in between, as in a burst of socket reads
        buf = conn.recv_buffer()
        n = min(len(buf), 300_000, len(raw) - pos)
        if buf.obj is conn._scratch:
            scratch += n  # bytes that are copied again
        buf[:n] = raw[pos : pos + n]
        conn.recv_done(n)
        pos += n
    evs = []
    while (ev := conn.next_event()) is not None:
        evs.append(ev)
    assert [getattr(e, "cookie", None) for e in evs] == [0, 1, 2, 3, 9]
    assert all(isinstance(e, proto.Request) and bytes(e.payload or b"") == p for e, p in zip(evs[:4], payloads, strict=True))
    # the first receive (nothing is known yet), then one header each
    assert scratch <= len(conn._scratch) + 4 * proto.REQUEST_SIZE, scratch
    assert conn.buffered == 0


def test_payload_buffers_are_reused_only_when_nobody_holds_them() -> None:
    conn = negotiated()
    size = 100_000

    def write(cookie: int, fill: int) -> proto.Request:
        ev = feed_buffered(conn, proto.build_request(proto.Cmd.WRITE, cookie, 0, size) + bytes([fill]) * size, 4096)
        assert len(ev) == 1 and isinstance(ev[0], proto.Request) and ev[0].payload is not None
        return ev[0]

    first = write(1, 1)
    held = first.payload
    assert held is not None
    second = write(2, 2)  # the first is still held: a new buffer
    assert second.payload is not None and second.payload.obj is not held.obj
    assert bytes(held) == b"\x01" * size
    earlier = {id(held.obj), id(second.payload.obj)}  # both kept in the connection's spares
    del first, held, second
    third = write(3, 3)  # both free now: one is reused, with the new data in full
    assert third.payload is not None and bytes(third.payload) == b"\x03" * size
    assert id(third.payload.obj) in earlier and conn._spares.reused == 1 and conn._spares.allocated == 2


def test_receive_data_and_recv_buffer_mix() -> None:
    conn = negotiated()
    big = b"\x5a" * 200000
    raw = proto.build_request(proto.Cmd.WRITE, 9, 0, len(big)) + big + proto.build_request(proto.Cmd.FLUSH, 10)
    evs = events(conn, raw[:1000])  # header + start of payload via receive_data
    evs += feed_buffered(conn, raw[1000:150000], 4096)
    evs += events(conn, raw[150000:])
    assert [getattr(e, "cookie", None) for e in evs] == [9, 10]
    assert isinstance(evs[0], proto.Request) and bytes(evs[0].payload or b"") == big


# --- extensions: structured replies, meta contexts, CACHE, FAST_ZERO ---------------------------

ALL_EXT = proto.Extensions(structured_replies=True, base_allocation=True, cache=True, fast_zero=True)
EXT_FLAGS = (proto.TF_HAS_FLAGS | proto.TF_SEND_FLUSH | proto.TF_SEND_WRITE_ZEROES | proto.TF_SEND_CACHE
             | proto.TF_SEND_FAST_ZERO)


class ExtExports(Exports):
    def __init__(self) -> None:
        self.table = {"disk": proto.ExportInfo("disk", 1 << 20, EXT_FLAGS),
                      "other": proto.ExportInfo("other", 1 << 20, EXT_FLAGS)}


def ext_conn(ext: proto.Extensions = ALL_EXT) -> proto.ServerConnection:
    conn = proto.ServerConnection(ExtExports(), extensions=ext)
    assert events(conn, proto.client_flags()) == []
    return conn


def negotiate(conn: proto.ServerConnection, *options: bytes, go: str = "disk") -> list[tuple[int, int, bytes]]:
    evs = events(conn, b"".join(options) + proto.build_go(go))
    assert isinstance(evs[-1], proto.Negotiated)
    return replies(conn.data_to_send())


def sr() -> bytes:
    return proto.build_option(proto.Opt.STRUCTURED_REPLY)


def meta(opt: int, name: str, *queries: str) -> bytes:
    return proto.build_meta_context(opt, name, list(queries))


def test_extensions_off_strip_their_transmission_flags() -> None:
    """A shell that did not opt in (the block processor's proxy) never advertises them."""
    conn = proto.ServerConnection(ExtExports())
    events(conn, proto.client_flags() + sr())
    assert replies(conn.data_to_send()) == [(proto.Opt.STRUCTURED_REPLY, proto.REP_ERR_UNSUP, b"option not supported")]
    reps = negotiate(conn)
    (info,) = [d for _, t, d in reps if t == proto.REP_INFO and d[:2] == b"\0\0"]
    flags = proto.parse_info_export(info)[1]
    assert flags == proto.TF_HAS_FLAGS | proto.TF_SEND_FLUSH | proto.TF_SEND_WRITE_ZEROES
    assert not conn.structured and conn.contexts == ()
    for cmd, fl in ((proto.Cmd.CACHE, 0), (proto.Cmd.WRITE_ZEROES, proto.CMD_FLAG_FAST_ZERO),
                    (proto.Cmd.READ, proto.CMD_FLAG_DF), (proto.Cmd.BLOCK_STATUS, 0)):
        (ev,) = events(conn, proto.build_request(cmd, 5, 0, 512, flags=fl))
        assert isinstance(ev, proto.BadRequest) and ev.error == proto.EINVAL
    assert conn.error_reply(5, proto.EIO) == proto.simple_reply(5, proto.EIO)
    assert conn.read_reply_header(5, 0, 512) == proto.simple_reply(5)


def test_structured_replies_add_df_and_errors_become_error_chunks() -> None:
    conn = ext_conn()
    reps = negotiate(conn, sr())
    assert reps[0] == (proto.Opt.STRUCTURED_REPLY, proto.REP_ACK, b"")
    (info,) = [d for _, t, d in reps if t == proto.REP_INFO and d[:2] == b"\0\0"]
    assert proto.parse_info_export(info)[1] == EXT_FLAGS | proto.TF_SEND_DF
    assert conn.structured
    (ev,) = events(conn, proto.build_request(proto.Cmd.READ, 7, 0, 512, flags=proto.CMD_FLAG_DF))
    assert isinstance(ev, proto.Request) and ev.flags == proto.CMD_FLAG_DF
    (ev,) = events(conn, proto.build_request(proto.Cmd.CACHE, 8, 0, 512))
    assert isinstance(ev, proto.Request) and ev.cmd == proto.Cmd.CACHE
    (ev,) = events(conn, proto.build_request(proto.Cmd.WRITE_ZEROES, 9, 0, 512,
                                             flags=proto.CMD_FLAG_FAST_ZERO | proto.CMD_FLAG_NO_HOLE))
    assert isinstance(ev, proto.Request) and ev.fast_zero and ev.no_hole
    (bad,) = events(conn, proto.build_request(proto.Cmd.CACHE, 10, 0, 512, flags=proto.CMD_FLAG_FUA))
    assert isinstance(bad, proto.BadRequest) and bad.error == proto.EINVAL
    raw = conn.error_reply(10, proto.EINVAL, bad.reason)
    flags, rtype, cookie, length = proto.parse_chunk_header(raw[: proto.CHUNK_HEADER_SIZE])
    assert (flags, rtype, cookie) == (proto.REPLY_FLAG_DONE, proto.REPLY_TYPE_ERROR, 10)
    assert proto.parse_error_chunk(raw[proto.CHUNK_HEADER_SIZE :]) == (proto.EINVAL, bad.reason)
    assert length == len(raw) - proto.CHUNK_HEADER_SIZE
    hdr = conn.read_reply_header(11, 4096, 512)
    assert proto.parse_chunk_header(hdr[:20]) == (proto.REPLY_FLAG_DONE, proto.REPLY_TYPE_OFFSET_DATA, 11, 520)
    assert struct.unpack(">Q", hdr[20:]) == (4096,)
    # a zero-length read: no OFFSET_DATA chunk (it needs a byte at least), just NONE
    assert conn.read_reply_header(12, 0, 0) == proto.none_chunk(12)


def test_structured_reply_option_with_data_is_invalid() -> None:
    conn = ext_conn()
    events(conn, proto.build_option(proto.Opt.STRUCTURED_REPLY, b"x"))
    assert replies(conn.data_to_send())[0][1] == proto.REP_ERR_INVALID
    assert not conn.structured


def test_list_meta_context() -> None:
    conn = ext_conn()
    events(conn, meta(proto.Opt.LIST_META_CONTEXT, "disk"))
    assert [r[1] for r in replies(conn.data_to_send())] == [proto.REP_ERR_INVALID]  # needs structured replies
    events(conn, sr())
    conn.data_to_send()
    ctx = (proto.Opt.LIST_META_CONTEXT, proto.REP_META_CONTEXT, b"\0\0\0\0base:allocation")
    ack = (proto.Opt.LIST_META_CONTEXT, proto.REP_ACK, b"")
    for queries, expect in [((), [ctx, ack]), (("base:",), [ctx, ack]), (("base:allocation",), [ctx, ack]),
                            (("base:nothing", "qemu:dirty-bitmap:x"), [ack])]:
        events(conn, meta(proto.Opt.LIST_META_CONTEXT, "disk", *queries))
        assert replies(conn.data_to_send()) == expect, queries
    events(conn, meta(proto.Opt.LIST_META_CONTEXT, "nope"))
    assert replies(conn.data_to_send())[-1][1] == proto.REP_ERR_UNKNOWN
    events(conn, meta(proto.Opt.LIST_META_CONTEXT, "disk", "nonamespace"))
    assert replies(conn.data_to_send())[-1][1] == proto.REP_ERR_INVALID


@pytest.mark.parametrize("data", [
    b"",
    struct.pack(">I", 10) + b"disk",
    struct.pack(">I", 4) + b"disk",
    struct.pack(">I", 4) + b"disk" + struct.pack(">II", 2, 5) + b"base:",
    struct.pack(">I", 4) + b"disk" + struct.pack(">II", 1, 5) + b"base:" + b"junk",
    struct.pack(">I", 2) + b"\xff\xfe" + struct.pack(">I", 0),
])
def test_malformed_meta_context_requests_are_invalid(data: bytes) -> None:
    conn = ext_conn()
    events(conn, sr() + proto.build_option(proto.Opt.SET_META_CONTEXT, data))
    assert replies(conn.data_to_send())[-1][1] == proto.REP_ERR_INVALID
    negotiate(conn)
    assert conn.contexts == ()


def test_set_meta_context_selects_base_allocation_for_that_export_only() -> None:
    conn = ext_conn()
    reps = negotiate(conn, sr(), meta(proto.Opt.SET_META_CONTEXT, "disk", "base:", "base:allocation", "x-y:z"))
    assert reps[1:3] == [(proto.Opt.SET_META_CONTEXT, proto.REP_META_CONTEXT,
                          struct.pack(">I", proto.BASE_ALLOCATION_ID) + b"base:allocation"),
                         (proto.Opt.SET_META_CONTEXT, proto.REP_ACK, b"")]
    assert conn.contexts == (proto.BASE_ALLOCATION_ID,)
    (ev,) = events(conn, proto.build_request(proto.Cmd.BLOCK_STATUS, 3, 0, 4096, flags=proto.CMD_FLAG_REQ_ONE))
    assert isinstance(ev, proto.Request) and ev.cmd == proto.Cmd.BLOCK_STATUS
    # set for another export than the one entered: no context, BLOCK_STATUS refused
    conn = ext_conn()
    negotiate(conn, sr(), meta(proto.Opt.SET_META_CONTEXT, "other", "base:allocation"))
    assert conn.contexts == ()
    (ev,) = events(conn, proto.build_request(proto.Cmd.BLOCK_STATUS, 3, 0, 4096))
    assert isinstance(ev, proto.BadRequest) and ev.error == proto.EINVAL
    # a later SET replaces the selection, even with nothing
    conn = ext_conn()
    negotiate(conn, sr(), meta(proto.Opt.SET_META_CONTEXT, "disk", "base:allocation"),
              meta(proto.Opt.SET_META_CONTEXT, "disk"))
    assert conn.contexts == ()
    # without base_allocation in the extensions nothing is selected
    conn = ext_conn(proto.Extensions(structured_replies=True))
    negotiate(conn, sr(), meta(proto.Opt.SET_META_CONTEXT, "disk", "base:allocation"))
    assert conn.contexts == ()


def test_chunk_builders_and_parsers_agree() -> None:
    raw = proto.block_status_chunk(4, 1, [(4096, proto.STATE_HOLE | proto.STATE_ZERO), (512, 0)], done=True)
    flags, rtype, cookie, length = proto.parse_chunk_header(raw[:20])
    assert (flags, rtype, cookie, length) == (proto.REPLY_FLAG_DONE, proto.REPLY_TYPE_BLOCK_STATUS, 4, 4 + 16)
    assert proto.parse_block_status(raw[20:]) == (1, [(4096, 3), (512, 0)])
    raw = proto.hole_chunk(5, 1 << 40, 65536, done=False)
    assert proto.parse_chunk_header(raw[:20]) == (0, proto.REPLY_TYPE_OFFSET_HOLE, 5, 12)
    assert proto.parse_hole_chunk(raw[20:]) == (1 << 40, 65536)
    raw = proto.none_chunk(6)
    assert proto.parse_chunk_header(raw) == (proto.REPLY_FLAG_DONE, proto.REPLY_TYPE_NONE, 6, 0)
    raw = proto.error_chunk(7, proto.EIO, "x" * 5000)
    assert proto.parse_error_chunk(raw[20:]) == (proto.EIO, "x" * proto.MAX_STRING)
    with pytest.raises(proto.ProtocolError):
        proto.parse_chunk_header(proto.simple_reply(1) + b"\0" * 4)
    with pytest.raises(proto.ProtocolError):
        proto.parse_block_status(b"\0\0\0\1")
    with pytest.raises(ValueError):
        proto.block_status_chunk(1, 1, [], done=True)
    assert proto.parse_meta_context_request(meta(proto.Opt.SET_META_CONTEXT, "disk", "base:allocation")[16:]) == (
        "disk", ["base:allocation"])
