"""Unit tests of ``NBD_OPT_STARTTLS`` and the export access policy in the sans-I/O core."""

from __future__ import annotations

import struct

import pytest
from nasblade.nbd import proto
from nbdwire import events, replies


class Exports(proto.ExportLookup):
    """Two exports; ``mine`` is open to the client, ``theirs`` is not."""

    def __init__(self) -> None:
        self.table = {n: proto.ExportInfo(n, 1 << 20, proto.TF_HAS_FLAGS | proto.TF_SEND_FLUSH)
                      for n in ("mine", "theirs")}

    def lookup(self, name: str) -> proto.ExportInfo | None:
        return self.table.get(name)

    def names(self) -> list[proto.ExportInfo]:
        return list(self.table.values())

    def permits(self, name: str) -> bool:
        return name != "theirs" and name != "ghost"


def tls_up(conn: proto.ServerConnection) -> None:
    evs = events(conn, proto.client_flags() + proto.build_starttls())
    assert evs == [proto.StartTLS()]
    assert [(o, t) for o, t, _ in replies(conn.data_to_send())] == [(proto.Opt.STARTTLS, proto.REP_ACK)]
    conn.tls_started()


@pytest.mark.parametrize("opt", [proto.build_go("mine"), proto.build_go("mine", opt=proto.Opt.INFO),
                                 proto.build_option(proto.Opt.LIST),
                                 proto.build_option(proto.Opt.STRUCTURED_REPLY),
                                 proto.build_option(99)])
def test_forced_tls_refuses_every_option_before_starttls(opt: bytes) -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    assert events(conn, proto.client_flags() + opt) == []
    ((_, rtype, _),) = replies(conn.data_to_send())
    assert rtype == proto.REP_ERR_TLS_REQD
    # the connection keeps negotiating: STARTTLS still works afterwards
    assert events(conn, proto.build_starttls()) == [proto.StartTLS()]


def test_export_name_before_tls_closes() -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    evs = events(conn, proto.client_flags() + proto.build_option(proto.Opt.EXPORT_NAME, b"mine"))
    assert isinstance(evs[0], proto.Closed)
    assert conn.data_to_send() == b""  # no export data leaked


def test_abort_before_tls_is_acknowledged() -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    evs = events(conn, proto.client_flags() + proto.build_option(proto.Opt.ABORT))
    assert isinstance(evs[0], proto.Closed)
    assert replies(conn.data_to_send())[0][1] == proto.REP_ACK


def test_go_after_tls_negotiates() -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    tls_up(conn)
    evs = events(conn, proto.build_go("mine"))
    assert isinstance(evs[-1], proto.Negotiated)
    assert conn.tls_active


def test_starttls_twice_is_invalid_and_with_data_is_invalid() -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    assert events(conn, proto.client_flags() + proto.build_option(proto.Opt.STARTTLS, b"x")) == []
    assert replies(conn.data_to_send())[0][1] == proto.REP_ERR_INVALID
    assert events(conn, proto.build_starttls()) == [proto.StartTLS()]
    conn.data_to_send()
    conn.tls_started()
    assert events(conn, proto.build_starttls()) == []
    assert replies(conn.data_to_send())[0][1] == proto.REP_ERR_INVALID


def test_starttls_without_tls_is_unsupported() -> None:
    conn = proto.ServerConnection(Exports())
    assert events(conn, proto.client_flags() + proto.build_starttls()) == []
    assert replies(conn.data_to_send())[0][1] == proto.REP_ERR_UNSUP
    assert isinstance(events(conn, proto.build_go("mine"))[-1], proto.Negotiated)


def test_bytes_between_starttls_and_handshake_close() -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    evs = events(conn, proto.client_flags() + proto.build_starttls() + b"\x16\x03\x01 early")
    assert evs[0] == proto.StartTLS()
    assert isinstance(evs[1], proto.Closed)


def test_tls_started_needs_a_starttls() -> None:
    conn = proto.ServerConnection(Exports(), tls=True)
    with pytest.raises(RuntimeError):
        conn.tls_started()


def test_state_from_before_tls_is_forgotten() -> None:
    conn = proto.ServerConnection(Exports(), tls=True, extensions=proto.Extensions(structured_replies=True))
    conn.structured = True  # as if negotiated in the clear (a non-forced server would allow it)
    tls_up(conn)
    assert not conn.structured


def test_policy_refuses_go_info_and_meta_context_with_err_policy() -> None:
    conn = proto.ServerConnection(Exports(), extensions=proto.Extensions(structured_replies=True,
                                                                         base_allocation=True))
    evs = events(conn, proto.client_flags() + proto.build_go("theirs")
                 + proto.build_go("theirs", opt=proto.Opt.INFO)
                 + proto.build_go("ghost")
                 + proto.build_option(proto.Opt.STRUCTURED_REPLY)
                 + proto.build_meta_context(proto.Opt.LIST_META_CONTEXT, "theirs", []))
    assert evs == []
    types = [t for _, t, _ in replies(conn.data_to_send())]
    # a name that does not exist is refused the same way (no existence oracle)
    assert types == [proto.REP_ERR_POLICY] * 3 + [proto.REP_ACK, proto.REP_ERR_POLICY]
    assert isinstance(events(conn, proto.build_go("mine"))[-1], proto.Negotiated)


def test_policy_hides_refused_exports_from_list() -> None:
    conn = proto.ServerConnection(Exports())
    events(conn, proto.client_flags() + proto.build_option(proto.Opt.LIST))
    reps = replies(conn.data_to_send())
    assert [d for _, t, d in reps if t == proto.REP_SERVER] == [struct.pack(">I", 4) + b"mine"]
    assert reps[-1][1] == proto.REP_ACK


def test_policy_closes_export_name() -> None:
    conn = proto.ServerConnection(Exports())
    evs = events(conn, proto.client_flags() + proto.build_option(proto.Opt.EXPORT_NAME, b"theirs"))
    assert isinstance(evs[0], proto.Closed)
    assert conn.data_to_send() == b""
