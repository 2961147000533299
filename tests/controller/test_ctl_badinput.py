"""Bad input on the wire: malformed handshakes and requests, each answered per the NBD
protocol, while another client keeps being served."""

from __future__ import annotations

import os
import socket
import struct

import pytest
from ctlharness import Controller
from nasblade.nbd import proto
from nasblade.nbd.client import NBDBlockDevice

pytestmark = pytest.mark.component


def connect(controller: Controller) -> socket.socket:
    host, port = controller.nbd.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    greeting = recv_exact(s, 18)
    proto.parse_server_greeting(greeting)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def option_reply(s: socket.socket) -> tuple[int, int, bytes]:
    opt, rtype, length = proto.parse_option_reply_header(recv_exact(s, 20))
    return opt, rtype, recv_exact(s, length)


def in_transmission(controller: Controller, lu: str) -> socket.socket:
    s = connect(controller)
    s.sendall(proto.client_flags() + proto.build_go(lu))
    while option_reply(s)[1] != proto.REP_ACK:
        pass
    return s


HANDSHAKES = [
    # (name, bytes after the greeting, expected: "close" or an option reply type)
    ("unknown client flags", struct.pack(">I", 0x10), "close"),
    ("no fixed newstyle", struct.pack(">I", 0), "close"),
    ("bad option magic", proto.client_flags() + struct.pack(">QII", 1, 7, 0), "close"),
    ("unknown option", proto.client_flags() + proto.build_option(77, b"junk"), proto.REP_ERR_UNSUP),
    ("structured replies with data", proto.client_flags() + proto.build_option(proto.Opt.STRUCTURED_REPLY, b"x"), proto.REP_ERR_INVALID),
    ("meta context before structured replies", proto.client_flags()
     + proto.build_meta_context(proto.Opt.SET_META_CONTEXT, "shared", ["base:allocation"]), proto.REP_ERR_INVALID),
    ("meta context query overruns", proto.client_flags() + proto.build_option(proto.Opt.STRUCTURED_REPLY)
     + proto.build_option(proto.Opt.LIST_META_CONTEXT, struct.pack(">I", 6) + b"shared" + struct.pack(">II", 1, 99) + b"base:"),
     proto.REP_ERR_INVALID),
    ("meta context unknown export", proto.client_flags() + proto.build_option(proto.Opt.STRUCTURED_REPLY)
     + proto.build_meta_context(proto.Opt.LIST_META_CONTEXT, "nope", []), proto.REP_ERR_UNKNOWN),
    ("starttls", proto.client_flags() + proto.build_option(proto.Opt.STARTTLS), proto.REP_ERR_UNSUP),
    ("GO unknown export", proto.client_flags() + proto.build_go("nope"), proto.REP_ERR_UNKNOWN),
    ("GO malformed", proto.client_flags() + proto.build_option(proto.Opt.GO, b"\xff\xff\xff\xff"), proto.REP_ERR_INVALID),
    ("GO bad reservation name", proto.client_flags() + proto.build_go("lu;holder=x"), proto.REP_ERR_UNKNOWN),
    ("LIST with data", proto.client_flags() + proto.build_option(proto.Opt.LIST, b"x"), proto.REP_ERR_INVALID),
    ("huge option", proto.client_flags() + struct.pack(">QII", proto.IHAVEOPT, proto.Opt.GO, 1 << 20) + bytes(1 << 20), proto.REP_ERR_TOO_BIG),
    ("EXPORT_NAME unknown", proto.client_flags() + proto.build_option(proto.Opt.EXPORT_NAME, b"nope"), "close"),
    ("truncated then hang up", proto.client_flags() + b"\x49\x48", "close-by-us"),
]


@pytest.mark.parametrize(("name", "data", "expect"), HANDSHAKES, ids=[h[0] for h in HANDSHAKES])
def test_malformed_handshakes(shared_controller: Controller, name: str, data: bytes, expect: object) -> None:
    controller, lu = shared_controller, "shared"
    with NBDBlockDevice.connect(controller.url(lu)) as good:
        good.pwrite(0, b"ok" * 256)
        s = connect(controller)
        s.sendall(data)
        if expect == "close":
            assert closed(s)
        elif expect == "close-by-us":
            s.shutdown(socket.SHUT_WR)
            assert closed(s)
        else:
            # structured replies negotiated first (as a client must) are acknowledged
            while (reply := option_reply(s))[:2] == (proto.Opt.STRUCTURED_REPLY, proto.REP_ACK):
                pass
            assert reply[1] == expect
            # haggling continues: a valid GO still works on the same connection
            s.sendall(proto.build_go(lu))
            while (r := option_reply(s))[1] != proto.REP_ACK:
                assert r[1] == proto.REP_INFO
        s.close()
        assert good.pread(0, 512) == b"ok" * 256


REQUESTS = [
    # (name, request bytes, expected error, connection stays usable)
    ("unknown command", proto.build_request(42, 1, 0, 0), proto.EINVAL, True),
    ("block status not negotiated", proto.build_request(proto.Cmd.BLOCK_STATUS, 1, 0, 4096), proto.EINVAL, True),
    ("unknown flag on read", proto.build_request(proto.Cmd.READ, 1, 0, 512, flags=0x100), proto.EINVAL, True),
    ("DF not negotiated", proto.build_request(proto.Cmd.READ, 1, 0, 512, flags=proto.CMD_FLAG_DF), proto.EINVAL, True),
    ("read past the end", proto.build_request(proto.Cmd.READ, 1, 64 << 20, 512), proto.EINVAL, True),
    ("read offset overflow", proto.build_request(proto.Cmd.READ, 1, (1 << 64) - 512, 512), proto.EINVAL, True),
    ("write past the end", proto.build_request(proto.Cmd.WRITE, 1, (64 << 20) - 256, 512) + bytes(512), proto.ENOSPC, True),
    ("zeroes past the end", proto.build_request(proto.Cmd.WRITE_ZEROES, 1, 64 << 20, 512), proto.ENOSPC, True),
    ("trim past the end", proto.build_request(proto.Cmd.TRIM, 1, 64 << 20, 512), proto.EINVAL, True),
    ("oversized read", proto.build_request(proto.Cmd.READ, 1, 0, 1 << 30), proto.EOVERFLOW, True),
    ("oversized write (drained, then EINVAL)", proto.build_request(proto.Cmd.WRITE, 1, 0, (32 << 20) + 1) + bytes((32 << 20) + 1), proto.EINVAL, True),
    ("write with bad flags", proto.build_request(proto.Cmd.WRITE, 1, 0, 16, flags=proto.CMD_FLAG_DF) + bytes(16), proto.EINVAL, True),
    ("bad request magic", b"\x12\x34\x56\x78" + bytes(24), None, False),
]


@pytest.mark.parametrize(("name", "data", "error", "usable"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_malformed_requests(shared_controller: Controller, name: str, data: bytes,
                            error: int | None, usable: bool) -> None:
    controller, lu = shared_controller, "shared"
    good = NBDBlockDevice.connect(controller.url(lu))
    s = in_transmission(controller, lu)
    s.sendall(data)
    if error is None:
        assert closed(s)
    else:
        err, cookie = proto.parse_simple_reply(recv_exact(s, 16))
        assert (err, cookie) == (error, 1)
    if usable:
        s.sendall(proto.build_request(proto.Cmd.READ, 2, 0, 512))
        assert proto.parse_simple_reply(recv_exact(s, 16)) == (0, 2)
        recv_exact(s, 512)
    s.close()
    payload = os.urandom(4096)
    good.pwrite(4096, payload)
    assert good.pread(4096, 4096) == payload
    good.close()


def test_half_sent_write_then_disconnect(controller: Controller, lu: str) -> None:
    s = in_transmission(controller, lu)
    s.sendall(proto.build_request(proto.Cmd.WRITE, 1, 0, 1 << 20) + bytes(1000))
    s.close()
    with NBDBlockDevice.connect(controller.url(lu)) as good:
        assert good.pread(0, 1000) == bytes(1000)


def test_pipelined_requests_all_answered(controller: Controller, lu: str) -> None:
    s = in_transmission(controller, lu)
    batch = b"".join(proto.build_request(proto.Cmd.WRITE, i, i * 4096, 4096) + bytes([i]) * 4096 for i in range(64))
    batch += b"".join(proto.build_request(proto.Cmd.READ, 100 + i, i * 4096, 4096) for i in range(64))
    s.sendall(batch)
    got = {}
    for _ in range(128):
        err, cookie = proto.parse_simple_reply(recv_exact(s, 16))
        assert err == 0
        got[cookie] = recv_exact(s, 4096) if cookie >= 100 else b""
    assert all(got[100 + i] == bytes([i]) * 4096 for i in range(64))
    s.sendall(proto.build_request(proto.Cmd.DISC, 999))
    assert closed(s)


def test_oversized_write_is_answered_only_after_its_payload(controller: Controller, lu: str) -> None:
    """The EINVAL for a WRITE over the 32 MiB maximum comes after the whole payload was read
    (an early reply carries a cookie the client does not consider in flight yet), and the
    connection stays in sync for the next request."""
    s = in_transmission(controller, lu)
    length = (32 << 20) + 4096
    s.sendall(proto.build_request(proto.Cmd.WRITE, 1, 0, length) + b"\xee" * (length - 1))
    s.settimeout(1.0)
    with pytest.raises(TimeoutError):
        s.recv(1)  # one payload byte still missing: no reply may have been sent
    s.settimeout(10)
    s.sendall(b"\xee" + proto.build_request(proto.Cmd.READ, 2, 0, 512))
    assert proto.parse_simple_reply(recv_exact(s, 16)) == (proto.EINVAL, 1)
    assert proto.parse_simple_reply(recv_exact(s, 16)) == (0, 2)
    assert recv_exact(s, 512) == bytes(512)  # nothing of the refused payload was written
    s.close()
