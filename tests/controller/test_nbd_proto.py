"""Unit tests of the sans-I/O NBD core (``nasblade.nbd.proto``): handshake and requests."""

from __future__ import annotations

import struct

import pytest
from nasblade.nbd import proto


class Exports(proto.ExportLookup):
    def __init__(self) -> None:
        self.table = {"disk": proto.ExportInfo("disk", 1 << 20, proto.TF_HAS_FLAGS | proto.TF_SEND_FLUSH)}

    def lookup(self, name: str) -> proto.ExportInfo | None:
        lu = name.split(";")[0]
        info = self.table.get(lu)
        return None if info is None else proto.ExportInfo(name, info.size, info.flags)

    def names(self) -> list[proto.ExportInfo]:
        return list(self.table.values())


def events(conn: proto.ServerConnection, data: bytes) -> list[proto.Event]:
    conn.receive_data(data)
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def replies(raw: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    while raw:
        opt, rtype, length = proto.parse_option_reply_header(raw[:20])
        out.append((opt, rtype, raw[20 : 20 + length]))
        raw = raw[20 + length :]
    return out


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


def test_oversized_write_payload_is_skipped_and_stream_stays_in_sync() -> None:
    conn = proto.ServerConnection(Exports(), max_payload=1024)
    events(conn, proto.client_flags() + proto.build_go("disk"))
    evs = events(conn, proto.build_request(proto.Cmd.WRITE, 1, 0, 5000) + b"x" * 3000)
    assert evs == [proto.BadRequest(1, proto.EOVERFLOW, evs[0].reason)]  # type: ignore[union-attr]
    evs = events(conn, b"x" * 2000 + proto.build_request(proto.Cmd.FLUSH, 2))
    assert len(evs) == 1 and isinstance(evs[0], proto.Request) and evs[0].cookie == 2


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
                                  "fs;holder=a;holder=b;epoch=1"])
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


def test_receive_data_and_recv_buffer_mix() -> None:
    conn = negotiated()
    big = b"\x5a" * 200000
    raw = proto.build_request(proto.Cmd.WRITE, 9, 0, len(big)) + big + proto.build_request(proto.Cmd.FLUSH, 10)
    evs = events(conn, raw[:1000])  # header + start of payload via receive_data
    evs += feed_buffered(conn, raw[1000:150000], 4096)
    evs += events(conn, raw[150000:])
    assert [getattr(e, "cookie", None) for e in evs] == [9, 10]
    assert isinstance(evs[0], proto.Request) and bytes(evs[0].payload or b"") == big
