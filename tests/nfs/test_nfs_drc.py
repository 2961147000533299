"""Duplicate request cache: a retransmitted non-idempotent call (same XID, same client, same
arguments) gets the original reply and is not executed again, so it never undoes newer
changes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nasblade.nfs import types as t
from nasblade.rpc import message, xdr
from nfs_harness import FileProcessor
from nfs_rpcclient import RawClient, auth_sys

pytestmark = pytest.mark.component
GETATTR_RES = t.result(t.FATTR, xdr.Void)


@pytest.fixture
def rc(served: FileProcessor) -> Iterator[RawClient]:
    c = RawClient("127.0.0.1", served.nfs_port)
    yield c
    c.close()


def raw_call(c: RawClient, xid: int, proc: int, args: bytes) -> bytes:
    c.send_record(message.encode_call(xid=xid, prog=t.NFS_PROGRAM, vers=3, proc=proc, cred=auth_sys(), args=args))
    return c.recv_record()


def root(c: RawClient) -> bytes:
    stat, ok = c.mnt(b"/admin")
    assert stat == 0
    return bytes(ok.fhandle)  # type: ignore[attr-defined]


def test_replayed_create_after_remove_is_not_recreated(rc: RawClient) -> None:
    r = root(rc)
    create = t.CREATE_ARGS.encode(t.CreateArgs(t.DirOpArgs(r, b"drc-c"), (t.CreateMode.GUARDED, t.Sattr(mode=0o644))))
    first = raw_call(rc, 900001, 8, create)
    assert t.CREATE_RES.unpack(message.decode_reply(first).body)[0] == t.Stat.OK
    removed = raw_call(rc, 900002, 12, t.DIROPARGS.encode(t.DirOpArgs(r, b"drc-c")))
    assert t.WCC_RES.unpack(message.decode_reply(removed).body)[0] == t.Stat.OK
    # Retransmission of the GUARDED CREATE: the original OK reply, and no new file.
    again = raw_call(rc, 900001, 8, create)
    assert again == first
    assert rc.nfs(3, t.DIROPARGS, t.DirOpArgs(r, b"drc-c"), t.LOOKUP_RES)[0] == t.Stat.NOENT  # type: ignore[index]
    # Retransmitted REMOVE: the original OK (not NOENT).
    assert raw_call(rc, 900002, 12, t.DIROPARGS.encode(t.DirOpArgs(r, b"drc-c"))) == removed
    # A new XID is a new request and is executed.
    fresh = raw_call(rc, 900003, 8, create)
    assert t.CREATE_RES.unpack(message.decode_reply(fresh).body)[0] == t.Stat.OK


def test_replayed_write_does_not_overwrite_newer_data(rc: RawClient, served: FileProcessor) -> None:
    r = root(rc)
    stat, ok = rc.nfs(8, t.CREATE_ARGS, t.CreateArgs(t.DirOpArgs(r, b"drc-w"), (t.CreateMode.UNCHECKED, t.Sattr())), t.CREATE_RES)  # type: ignore[misc]
    assert stat == 0
    fh = bytes(ok.obj)

    def write(data: bytes) -> bytes:
        return t.WRITE_ARGS.encode(t.WriteArgs(fh, 0, len(data), t.StableHow.FILE_SYNC, memoryview(data)))

    old = raw_call(rc, 910001, 7, write(b"old data"))
    new = raw_call(rc, 910002, 7, write(b"NEW DATA"))
    assert t.WRITE_RES.unpack(message.decode_reply(new).body)[0] == 0
    # The old WRITE is retransmitted (even on a new connection from the same client).
    other = RawClient("127.0.0.1", served.nfs_port)
    assert raw_call(other, 910001, 7, write(b"old data")) == old
    other.close()
    stat, rd = rc.nfs(6, t.READ_ARGS, t.ReadArgs(fh, 0, 100), t.READ_RES)  # type: ignore[misc]
    assert stat == 0 and bytes(rd.data) == b"NEW DATA"


def test_replayed_rename_and_mkdir(rc: RawClient) -> None:
    r = root(rc)
    mk = t.MKDIR_ARGS.encode(t.MkdirArgs(t.DirOpArgs(r, b"drc-d"), t.Sattr()))
    first = raw_call(rc, 920001, 9, mk)
    assert t.CREATE_RES.unpack(message.decode_reply(first).body)[0] == 0
    assert raw_call(rc, 920001, 9, mk) == first  # not EXIST
    ren = t.RENAME_ARGS.encode(t.RenameArgs(t.DirOpArgs(r, b"drc-d"), t.DirOpArgs(r, b"drc-d2")))
    first_ren = raw_call(rc, 920002, 14, ren)
    assert t.RENAME_RES.unpack(message.decode_reply(first_ren).body)[0] == 0
    mk_again = raw_call(rc, 920003, 9, mk)  # a new drc-d, new XID
    assert t.CREATE_RES.unpack(message.decode_reply(mk_again).body)[0] == 0
    assert raw_call(rc, 920002, 14, ren) == first_ren  # does not move the new drc-d over drc-d2
    assert rc.nfs(3, t.DIROPARGS, t.DirOpArgs(r, b"drc-d"), t.LOOKUP_RES)[0] == 0  # type: ignore[index]
    assert rc.nfs(3, t.DIROPARGS, t.DirOpArgs(r, b"drc-d2"), t.LOOKUP_RES)[0] == 0  # type: ignore[index]
