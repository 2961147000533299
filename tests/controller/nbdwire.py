"""Helpers for the tests of the sans-I/O NBD core (``nasblade.nbd.proto``): drive a
``ServerConnection`` with bytes and split the option replies it writes."""

from __future__ import annotations

from nasblade.nbd import proto


def events(conn: proto.ServerConnection, data: bytes) -> list[proto.Event]:
    """Feed ``data`` to ``conn`` and return every event it produces."""
    conn.receive_data(data)
    out = []
    while (ev := conn.next_event()) is not None:
        out.append(ev)
    return out


def replies(raw: bytes) -> list[tuple[int, int, bytes]]:
    """Option replies in ``raw`` as (option, reply type, payload)."""
    out = []
    while raw:
        opt, rtype, length = proto.parse_option_reply_header(raw[:20])
        out.append((opt, rtype, raw[20 : 20 + length]))
        raw = raw[20 + length :]
    return out
