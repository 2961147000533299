"""Wire-level tests with a raw RPC client against a running file processor: protocol-order
errors over TCP, malformed input, record marking, portmapper and MOUNT, every NFSv3
procedure, file-handle forgery and the per-call client check."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from nasblade.nfs import handles
from nasblade.nfs import types as t
from nasblade.rpc import message, record, xdr
from nfs_harness import FileProcessor
from nfs_rpcclient import RawClient, auth_sys

pytestmark = pytest.mark.component


@pytest.fixture
def rc(served: FileProcessor) -> Iterator[RawClient]:
    c = RawClient("127.0.0.1", served.nfs_port)
    yield c
    c.close()


def mount_fh(c: RawClient, path: bytes) -> bytes:
    stat, body = c.mnt(path)
    assert stat == t.MountStat.OK, stat
    return bytes(body.fhandle)


def lookup(c: RawClient, d: bytes, name: bytes) -> tuple[int, Any]:
    return c.nfs(3, t.DIROPARGS, t.DirOpArgs(d, name), t.LOOKUP_RES)  # type: ignore[return-value]


def create(c: RawClient, d: bytes, name: bytes, **kw: Any) -> bytes:
    stat, ok = c.nfs(8, t.CREATE_ARGS, t.CreateArgs(t.DirOpArgs(d, name), (t.CreateMode.UNCHECKED, t.Sattr(mode=0o644))), t.CREATE_RES, **kw)  # type: ignore[misc]
    assert stat == t.Stat.OK, stat
    return bytes(ok.obj)


def test_rpc_errors_in_protocol_order_keep_the_connection(rc: RawClient) -> None:
    rec = bytearray(message.encode_call(xid=1, prog=t.NFS_PROGRAM, vers=3, proc=0, cred=auth_sys()))
    rec[8:12] = struct.pack(">I", 3)  # RPC version 3
    rc.send_record(bytes(rec))
    r = message.decode_reply(rc.recv_record())
    assert (r.reply_stat, r.stat, r.mismatch) == (message.MSG_DENIED, message.RejectStat.RPC_MISMATCH, (2, 2))
    r = rc.call(t.NFS_PROGRAM, 3, 0, cred=message.OpaqueAuth(6, b"gss"))
    assert (r.reply_stat, r.stat, r.auth_stat) == (1, 1, message.AuthStat.AUTH_BADCRED)
    assert rc.call(123456, 1, 0).stat == message.AcceptStat.PROG_UNAVAIL
    r = rc.call(t.NFS_PROGRAM, 4, 0)
    assert (r.stat, r.mismatch) == (message.AcceptStat.PROG_MISMATCH, (3, 3))
    assert rc.call(t.NFS_PROGRAM, 3, 22).stat == message.AcceptStat.PROC_UNAVAIL
    assert rc.call(t.NFS_PROGRAM, 3, 1, b"\0\0\0\x40" + b"x" * 10).stat == message.AcceptStat.GARBAGE_ARGS
    assert rc.call(t.MOUNT_PROGRAM, 3, 1, b"\xff\xff\xff\xff").stat == message.AcceptStat.GARBAGE_ARGS
    # Still serving on the same connection, and AUTH_NONE is accepted.
    r = rc.call(t.NFS_PROGRAM, 3, 0, cred=message.NULL_VERF)
    assert (r.reply_stat, r.stat) == (0, 0)


def test_multi_fragment_records_and_pipelining(served: FileProcessor, rc: RawClient) -> None:
    fh = mount_fh(rc, b"/admin")
    f = create(rc, fh, b"frag")
    data = os.urandom(300_000)
    args = t.WRITE_ARGS.encode(t.WriteArgs(f, 0, len(data), t.StableHow.FILE_SYNC, memoryview(data)))
    rec = message.encode_call(xid=4242, prog=t.NFS_PROGRAM, vers=3, proc=7, cred=auth_sys(), args=args)
    rc.send_record(rec, fragments=7)
    r = message.decode_reply(rc.recv_record())
    stat, ok = t.WRITE_RES.unpack(r.body)
    assert stat == t.Stat.OK and ok.count == len(data)
    # Several calls in one send; all answered.
    batch = b"".join(
        b"".join(bytes(b) for b in record.frame(
            message.encode_call(xid=5000 + i, prog=t.NFS_PROGRAM, vers=3, proc=6, cred=auth_sys(),
                                args=t.READ_ARGS.encode(t.ReadArgs(f, i * 1000, 1000)))))
        for i in range(10)
    )
    rc.sock.sendall(batch)
    got = {}
    for _ in range(10):
        rep = message.decode_reply(rc.recv_record())
        st, rok = t.READ_RES.unpack(rep.body)
        assert st == t.Stat.OK
        got[rep.xid] = bytes(rok.data)
    assert all(got[5000 + i] == data[i * 1000 : (i + 1) * 1000] for i in range(10))


def test_oversized_record_closes_only_that_connection(served: FileProcessor) -> None:
    bad = RawClient("127.0.0.1", served.nfs_port)
    bad.sock.sendall(struct.pack(">I", 0x80000000 | (64 << 20)))
    with pytest.raises((ConnectionError, OSError)):
        bad.recv_record()
    bad.close()
    good = RawClient("127.0.0.1", served.nfs_port)
    assert good.call(t.NFS_PROGRAM, 3, 0).stat == 0
    good.close()


def test_portmapper_getport_and_dump(served: FileProcessor) -> None:
    c = RawClient("127.0.0.1", served.portmap_port)
    r = c.call(t.PMAP_PROGRAM, 2, 3, t.MAPPING.encode(t.Mapping(t.NFS_PROGRAM, 3, t.IPPROTO_TCP, 0)))
    assert xdr.UInt.unpack(r.body) == served.nfs_port
    r = c.call(t.PMAP_PROGRAM, 2, 3, t.MAPPING.encode(t.Mapping(t.MOUNT_PROGRAM, 3, t.IPPROTO_TCP, 0)))
    assert xdr.UInt.unpack(r.body) == served.mount_port
    r = c.call(t.PMAP_PROGRAM, 2, 3, t.MAPPING.encode(t.Mapping(t.NFS_PROGRAM, 4, t.IPPROTO_TCP, 0)))
    assert xdr.UInt.unpack(r.body) == 0
    r = c.call(t.PMAP_PROGRAM, 2, 4)
    maps = t.PMAPLIST.unpack(r.body)
    assert {(m.prog, m.vers, m.port) for m in maps} >= {(t.NFS_PROGRAM, 3, served.nfs_port), (t.MOUNT_PROGRAM, 3, served.mount_port)}
    assert c.call(t.PMAP_PROGRAM, 2, 0).stat == 0
    c.close()


def test_mount_export_dump_umnt(served: FileProcessor) -> None:
    c = RawClient("127.0.0.1", served.mount_port)
    r = c.call(t.MOUNT_PROGRAM, 3, 5)
    exports = {bytes(e.ex_dir): [bytes(g) for g in e.ex_groups] for e in t.EXPORTS.unpack(r.body)}
    assert exports[b"/only2"] == [b"127.0.0.2/32"] and b"/admin" in exports and b"/ro" in exports
    mount_fh(c, b"/x")
    dump = t.MOUNTLIST.unpack(c.call(t.MOUNT_PROGRAM, 3, 2).body)
    assert any(bytes(m.directory) == b"/x" for m in dump)
    c.call(t.MOUNT_PROGRAM, 3, 3, t.DIRPATH.encode(b"/x"))
    dump = t.MOUNTLIST.unpack(c.call(t.MOUNT_PROGRAM, 3, 2).body)
    assert not any(bytes(m.directory) == b"/x" for m in dump)
    assert c.mnt(b"/no-such-export")[0] == t.MountStat.NOENT
    assert c.mnt(b"/admin/../x")[0] == t.MountStat.NOENT
    c.call(t.MOUNT_PROGRAM, 3, 4)
    c.close()


def test_all_22_procedures(rc: RawClient) -> None:
    root = mount_fh(rc, b"/admin")
    assert rc.call(t.NFS_PROGRAM, 3, 0).stat == 0
    stat, fa = rc.nfs(1, t.FH, root, t.result(t.FATTR, xdr.Void))  # type: ignore[misc]
    assert stat == 0 and fa.type == 2
    d_stat, d = rc.nfs(9, t.MKDIR_ARGS, t.MkdirArgs(t.DirOpArgs(root, b"p22"), t.Sattr(mode=0o755)), t.CREATE_RES)  # type: ignore[misc]
    assert d_stat == 0
    dfh = bytes(d.obj)
    f = create(rc, dfh, b"file")
    stat, _ = rc.nfs(2, t.SETATTR_ARGS, t.SetattrArgs(f, t.Sattr(mode=0o600, size=10), None), t.WCC_RES)  # type: ignore[misc]
    assert stat == 0
    stat, _ = rc.nfs(2, t.SETATTR_ARGS, t.SetattrArgs(f, t.Sattr(mode=0o600), t.NfsTime(1, 2)), t.WCC_RES)  # type: ignore[misc]
    assert stat == t.Stat.NOT_SYNC
    stat, lk = lookup(rc, dfh, b"file")
    assert stat == 0 and lk.obj_attributes.size == 10 and lk.obj_attributes.mode == 0o600
    assert lookup(rc, dfh, b"nope")[0] == t.Stat.NOENT
    stat, acc = rc.nfs(4, t.ACCESS_ARGS, t.AccessArgs(f, 0x3F), t.ACCESS_RES)  # type: ignore[misc]
    assert stat == 0 and acc.access & (t.ACCESS_READ | t.ACCESS_MODIFY) == t.ACCESS_READ | t.ACCESS_MODIFY
    big = os.urandom(1 << 20)
    stat, w = rc.nfs(7, t.WRITE_ARGS, t.WriteArgs(f, 0, len(big), t.StableHow.UNSTABLE, memoryview(big)), t.WRITE_RES)  # type: ignore[misc]
    assert stat == 0 and w.count == len(big) and w.committed == t.StableHow.UNSTABLE
    stat, cm = rc.nfs(21, t.COMMIT_ARGS, t.CommitArgs(f, 0, 0), t.COMMIT_RES)  # type: ignore[misc]
    assert stat == 0 and cm.verf == w.verf
    stat, rd = rc.nfs(6, t.READ_ARGS, t.ReadArgs(f, 0, 1 << 20), t.READ_RES)  # type: ignore[misc]
    assert stat == 0 and bytes(rd.data) == big and rd.eof
    stat, s = rc.nfs(10, t.SYMLINK_ARGS, t.SymlinkArgs(t.DirOpArgs(dfh, b"ln"), t.Sattr(), b"file"), t.CREATE_RES)  # type: ignore[misc]
    assert stat == 0
    stat, rl = rc.nfs(5, t.FH, bytes(s.obj), t.READLINK_RES)  # type: ignore[misc]
    assert stat == 0 and bytes(rl.data) == b"file"
    stat, _ = rc.nfs(11, t.MKNOD_ARGS, t.MknodArgs(t.DirOpArgs(dfh, b"fifo"), (7, t.Sattr(mode=0o644))), t.CREATE_RES)  # type: ignore[misc]
    assert stat == 0
    dev = t.DeviceData(t.Sattr(mode=0o644), t.SpecData(1, 3))
    stat, _ = rc.nfs(11, t.MKNOD_ARGS, t.MknodArgs(t.DirOpArgs(dfh, b"chr"), (4, dev)), t.CREATE_RES)  # type: ignore[misc]
    assert stat == 0
    stat, lr = rc.nfs(15, t.LINK_ARGS, t.LinkArgs(f, t.DirOpArgs(root, b"p22-link")), t.LINK_RES)  # type: ignore[misc]
    assert stat == 0 and lr.file_attributes.nlink == 2
    stat, _ = rc.nfs(14, t.RENAME_ARGS, t.RenameArgs(t.DirOpArgs(dfh, b"file"), t.DirOpArgs(dfh, b"file2")), t.RENAME_RES)  # type: ignore[misc]
    assert stat == 0
    stat, rdd = rc.nfs(16, t.READDIR_ARGS, t.ReaddirArgs(dfh, 0, bytes(8), 4096), t.READDIR_RES)  # type: ignore[misc]
    assert stat == 0 and rdd.eof and {bytes(e.name) for e in rdd.entries} == {b".", b"..", b"file2", b"ln", b"fifo", b"chr"}
    stat, rdp = rc.nfs(17, t.READDIRPLUS_ARGS, t.ReaddirplusArgs(dfh, 0, bytes(8), 1024, 8192), t.READDIRPLUS_RES)  # type: ignore[misc]
    assert stat == 0 and all(e.name_handle for e in rdp.entries)
    stat, fs = rc.nfs(18, t.FH, root, t.FSSTAT_RES)  # type: ignore[misc]
    assert stat == 0 and 0 < fs.fbytes < fs.tbytes
    stat, fi = rc.nfs(19, t.FH, root, t.FSINFO_RES)  # type: ignore[misc]
    assert stat == 0 and fi.rtmax == fi.wtmax == 1 << 20 and fi.maxfilesize >= 1 << 62
    stat, pc = rc.nfs(20, t.FH, root, t.PATHCONF_RES)  # type: ignore[misc]
    assert stat == 0 and pc.name_max == 255 and pc.no_trunc
    assert rc.nfs(12, t.DIROPARGS, t.DirOpArgs(dfh, b"file2"), t.WCC_RES)[0] == 0  # type: ignore[index]
    assert rc.nfs(13, t.DIROPARGS, t.DirOpArgs(root, b"p22"), t.WCC_RES)[0] == t.Stat.NOTEMPTY  # type: ignore[index]
    for n in (b"ln", b"fifo", b"chr"):
        assert rc.nfs(12, t.DIROPARGS, t.DirOpArgs(dfh, n), t.WCC_RES)[0] == 0  # type: ignore[index]
    assert rc.nfs(13, t.DIROPARGS, t.DirOpArgs(root, b"p22"), t.WCC_RES)[0] == 0  # type: ignore[index]
    # The removed directory's handle is now stale.
    assert rc.nfs(1, t.FH, dfh, t.result(t.FATTR, xdr.Void))[0] == t.Stat.STALE  # type: ignore[index]


def test_forged_and_foreign_handles(rc: RawClient) -> None:
    root = mount_fh(rc, b"/admin")
    getattr_res = t.result(t.FATTR, xdr.Void)
    forged = bytearray(root)
    forged[20] ^= 0x01  # another inode number, MAC not recomputed
    assert rc.nfs(1, t.FH, bytes(forged), getattr_res)[0] == t.Stat.BADHANDLE  # type: ignore[index]
    assert rc.nfs(1, t.FH, b"short", getattr_res)[0] == t.Stat.BADHANDLE  # type: ignore[index]
    assert rc.nfs(1, t.FH, b"\0" * 64, getattr_res)[0] == t.Stat.BADHANDLE  # type: ignore[index]
    # A well-formed handle of another file system (unknown fsid) is stale.
    other = handles.encode(handles.Handle(1, 12345, 1, 1), b"k" * 32)
    assert rc.nfs(1, t.FH, other, getattr_res)[0] == t.Stat.STALE  # type: ignore[index]


def test_client_address_is_checked_on_every_call(served: FileProcessor) -> None:
    allowed = RawClient("127.0.0.1", served.nfs_port, source="127.0.0.2")
    fh = mount_fh(allowed, b"/only2")
    getattr_res = t.result(t.FATTR, xdr.Void)
    assert allowed.nfs(1, t.FH, fh, getattr_res)[0] == t.Stat.OK  # type: ignore[index]
    # A handle obtained by an allowed client is refused when another address presents it.
    other = RawClient("127.0.0.1", served.nfs_port, source="127.0.0.3")
    assert other.nfs(1, t.FH, fh, getattr_res)[0] == t.Stat.ACCES  # type: ignore[index]
    assert other.mnt(b"/only2")[0] == t.MountStat.ACCES
    allowed.close()
    other.close()


def test_read_only_export_write_gets_rofs(rc: RawClient) -> None:
    ro = mount_fh(rc, b"/ro")
    stat, _ = rc.nfs(9, t.MKDIR_ARGS, t.MkdirArgs(t.DirOpArgs(ro, b"d"), t.Sattr()), t.CREATE_RES)  # type: ignore[misc]
    assert stat == t.Stat.ROFS
    stat, acc = rc.nfs(4, t.ACCESS_ARGS, t.AccessArgs(ro, 0x3F), t.ACCESS_RES)  # type: ignore[misc]
    assert stat == 0 and not acc.access & (t.ACCESS_MODIFY | t.ACCESS_EXTEND | t.ACCESS_DELETE)


def test_exclusive_create_retry_and_readdir_cookies_over_the_wire(rc: RawClient) -> None:
    root = mount_fh(rc, b"/admin")
    stat, d = rc.nfs(9, t.MKDIR_ARGS, t.MkdirArgs(t.DirOpArgs(root, b"excl"), t.Sattr()), t.CREATE_RES)  # type: ignore[misc]
    assert stat == 0
    dfh = bytes(d.obj)
    args = t.CreateArgs(t.DirOpArgs(dfh, b"x"), (t.CreateMode.EXCLUSIVE, b"verf0001"))
    first = rc.nfs(8, t.CREATE_ARGS, args, t.CREATE_RES)
    again = rc.nfs(8, t.CREATE_ARGS, args, t.CREATE_RES)  # a retry with a new XID: same file
    assert first[0] == again[0] == 0 and first[1].obj == again[1].obj  # type: ignore[index]
    other = t.CreateArgs(t.DirOpArgs(dfh, b"x"), (t.CreateMode.EXCLUSIVE, b"verf0002"))
    assert rc.nfs(8, t.CREATE_ARGS, other, t.CREATE_RES)[0] == t.Stat.EXIST  # type: ignore[index]
    for i in range(60):
        create(rc, dfh, b"e%02d" % i)
    stat, page = rc.nfs(16, t.READDIR_ARGS, t.ReaddirArgs(dfh, 0, bytes(8), 600), t.READDIR_RES)  # type: ignore[misc]
    assert stat == 0 and not page.eof
    seen = [bytes(e.name) for e in page.entries]
    cookie, verf = page.entries[-1].cookie, page.cookieverf
    # Directory changes between pages do not invalidate the cookie.
    rc.nfs(12, t.DIROPARGS, t.DirOpArgs(dfh, seen[-1]), t.WCC_RES)
    create(rc, dfh, b"zz-late")
    while True:
        stat, page = rc.nfs(16, t.READDIR_ARGS, t.ReaddirArgs(dfh, cookie, verf, 600), t.READDIR_RES)  # type: ignore[misc]
        assert stat == 0
        seen += [bytes(e.name) for e in page.entries]
        if page.eof:
            break
        cookie = page.entries[-1].cookie
    assert len(seen) == len(set(seen))
    assert set(seen) == {b".", b"..", b"x", b"zz-late"} | {b"e%02d" % i for i in range(60)}
    bad = rc.nfs(16, t.READDIR_ARGS, t.ReaddirArgs(dfh, cookie, b"badverf!", 600), t.READDIR_RES)
    assert bad[0] == t.Stat.BAD_COOKIE  # type: ignore[index]
