"""CREATE (RFC 1813 §3.3.8) on a name that already exists, over the wire: the raw RPC client
for each mode, and two libnfs clients racing ``open(O_CREAT)``.

What the server must do (knfsd's behaviour): UNCHECKED on an existing regular file applies
only the size and keeps mode, owner and times; UNCHECKED on anything else and GUARDED on
anything are EXIST; EXCLUSIVE succeeds again only with the same verifier."""

from __future__ import annotations

import os
import stat as st
from collections.abc import Iterator
from typing import Any

import libnfs
import pytest
from nasblade.fs.fs import FType
from nasblade.nfs import types as t
from nasblade.rpc import xdr
from nfs_harness import FileProcessor
from nfs_rpcclient import RawClient, auth_sys

pytestmark = pytest.mark.component
SERVED_LU_SIZE = 128 << 20  # small files only (see conftest.served)

GETATTR_RES = t.result(t.FATTR, xdr.Void)
USER = auth_sys(1000, 1000)


@pytest.fixture
def rc(served: FileProcessor) -> Iterator[RawClient]:
    c = RawClient("127.0.0.1", served.nfs_port)
    yield c
    c.close()


def root_of(c: RawClient, export: bytes) -> bytes:
    stat, body = c.mnt(export)
    assert stat == t.MountStat.OK, stat
    return bytes(body.fhandle)  # type: ignore[attr-defined]


def create(c: RawClient, d: bytes, name: bytes, how: tuple[int, Any], **kw: Any) -> tuple[int, Any]:
    return c.nfs(8, t.CREATE_ARGS, t.CreateArgs(t.DirOpArgs(d, name), how), t.CREATE_RES, **kw)  # type: ignore[return-value]


def mkdir(c: RawClient, d: bytes, name: bytes, mode: int) -> bytes:
    stat, ok = c.nfs(9, t.MKDIR_ARGS, t.MkdirArgs(t.DirOpArgs(d, name), t.Sattr(mode=mode)), t.CREATE_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK, stat
    return bytes(ok.obj)


def getattr_(c: RawClient, fh: bytes) -> t.Fattr:
    stat, fa = c.nfs(1, t.FH, fh, GETATTR_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK, stat
    return fa  # type: ignore[no-any-return]


def write(c: RawClient, fh: bytes, data: bytes) -> None:
    args = t.WriteArgs(fh, 0, len(data), t.StableHow.FILE_SYNC, memoryview(data))
    stat, _ = c.nfs(7, t.WRITE_ARGS, args, t.WRITE_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK, stat


def client_time(sec: int) -> tuple[int, t.NfsTime]:
    return (t.TimeHow.SET_TO_CLIENT_TIME, t.NfsTime(sec, 0))


def test_unchecked_create_of_an_existing_file_applies_only_the_size(rc: RawClient) -> None:
    d = mkdir(rc, root_of(rc, b"/admin"), b"unchecked", 0o777)
    stat, ok = create(rc, d, b"f", (t.CreateMode.UNCHECKED, t.Sattr(mode=0o600, uid=1000, gid=1000)))
    assert stat == t.Stat.OK and ok.obj_attributes.mode == 0o600
    f = bytes(ok.obj)
    write(rc, f, b"hello")
    before = getattr_(rc, f)
    assert (before.uid, before.gid, before.size) == (1000, 1000, 5)
    # A second UNCHECKED CREATE with every attribute but the size: nothing changes.
    other = t.Sattr(mode=0o666, uid=0, gid=0, atime=client_time(1000), mtime=client_time(2000))
    stat, again = create(rc, d, b"f", (t.CreateMode.UNCHECKED, other))
    assert stat == t.Stat.OK and bytes(again.obj) == f
    after = getattr_(rc, f)
    assert (after.mode, after.uid, after.gid, after.size) == (0o600, 1000, 1000, 5)
    assert (after.atime, after.mtime) == (before.atime, before.mtime)
    # With a size (open(O_CREAT|O_TRUNC)): the size alone is applied.
    stat, again = create(rc, d, b"f", (t.CreateMode.UNCHECKED, t.Sattr(mode=0o644, size=0, mtime=client_time(3))))
    assert stat == t.Stat.OK
    after = getattr_(rc, f)
    assert (after.mode, after.uid, after.size) == (0o600, 1000, 0)
    assert after.mtime.seconds != 3


def test_create_modes_on_existing_names(rc: RawClient) -> None:
    d = mkdir(rc, root_of(rc, b"/admin"), b"modes", 0o777)
    stat, ok = create(rc, d, b"f", (t.CreateMode.GUARDED, t.Sattr(mode=0o640)))
    assert stat == t.Stat.OK
    f = bytes(ok.obj)
    assert create(rc, d, b"f", (t.CreateMode.GUARDED, t.Sattr(mode=0o600)))[0] == t.Stat.EXIST
    # EXCLUSIVE on a file created otherwise: no verifier matches it.
    assert create(rc, d, b"f", (t.CreateMode.EXCLUSIVE, b"verf0001"))[0] == t.Stat.EXIST
    assert getattr_(rc, f).mode == 0o640
    # EXCLUSIVE: a retransmission (new XID, same verifier) gets the same file; another
    # verifier gets EXIST.
    first = create(rc, d, b"x", (t.CreateMode.EXCLUSIVE, b"verf0001"))
    again = create(rc, d, b"x", (t.CreateMode.EXCLUSIVE, b"verf0001"))
    assert first[0] == again[0] == t.Stat.OK and bytes(first[1].obj) == bytes(again[1].obj)
    assert create(rc, d, b"x", (t.CreateMode.EXCLUSIVE, b"verf0002"))[0] == t.Stat.EXIST
    # Existing names that are not regular files: EXIST in every mode.
    mkdir(rc, d, b"sub", 0o755)
    mk = t.MknodArgs(t.DirOpArgs(d, b"pipe"), (FType.FIFO, t.Sattr(mode=0o600)))
    assert rc.nfs(11, t.MKNOD_ARGS, mk, t.CREATE_RES)[0] == t.Stat.OK  # type: ignore[index]
    for name in (b"sub", b"pipe"):
        for how in ((t.CreateMode.UNCHECKED, t.Sattr()), (t.CreateMode.GUARDED, t.Sattr())):
            assert create(rc, d, name, how)[0] == t.Stat.EXIST, (name, how)


def test_existing_file_in_a_directory_the_caller_cannot_write(rc: RawClient) -> None:
    """open(O_CREAT) of an existing file needs search permission on the directory only."""
    d = mkdir(rc, root_of(rc, b"/admin"), b"readonly-dir", 0o755)
    stat, ok = create(rc, d, b"shared", (t.CreateMode.UNCHECKED, t.Sattr(mode=0o666)))
    assert stat == t.Stat.OK
    write(rc, bytes(ok.obj), b"data")
    x = root_of(rc, b"/x")
    stat, lk = rc.nfs(3, t.DIROPARGS, t.DirOpArgs(x, b"readonly-dir"), t.LOOKUP_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK
    xd = bytes(lk.object)
    stat, res = create(rc, xd, b"shared", (t.CreateMode.UNCHECKED, t.Sattr(mode=0o600, size=0)), cred=USER)
    assert stat == t.Stat.OK, stat
    fa = getattr_(rc, bytes(res.obj))
    assert (fa.mode, fa.size, fa.uid) == (0o666, 0, 0)
    assert create(rc, xd, b"shared", (t.CreateMode.GUARDED, t.Sattr()), cred=USER)[0] == t.Stat.EXIST
    assert create(rc, xd, b"new", (t.CreateMode.UNCHECKED, t.Sattr()), cred=USER)[0] == t.Stat.ACCES


def test_two_libnfs_clients_racing_open_o_creat_keep_the_first_mode(served: FileProcessor) -> None:
    """The loser of an open(O_CREAT) race must not re-apply its mode to the winner's file."""
    a = libnfs.NFS(served.url("/admin"))
    b = libnfs.NFS(served.url("/admin"))
    assert a.mkdir("/race") == 0
    fa, fb = libnfs.new_NFSFileHandle(), libnfs.new_NFSFileHandle()
    assert libnfs.nfs_create(a._nfs, "/race/f", os.O_CREAT | os.O_WRONLY, 0o600, fa) == 0
    assert libnfs.nfs_create(b._nfs, "/race/f", os.O_CREAT | os.O_WRONLY, 0o644, fb) == 0
    for c, h in ((a, fa), (b, fb)):
        libnfs.nfs_close(c._nfs, libnfs.NFSFileHandle_value(h))
    s = libnfs.nfs_stat_64()
    assert libnfs.nfs_stat64(b._nfs, "/race/f", s) == 0
    assert st.S_ISREG(s.nfs_mode) and s.nfs_mode & 0o7777 == 0o600
