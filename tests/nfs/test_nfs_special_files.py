"""MKNOD (RFC 1813 §3.3.11) over the wire: FIFOs, sockets, character and block devices made
with the raw RPC client and with libnfs; their fattr3 (type, mode, rawdev) from every
procedure that returns attributes; LINK/RENAME/SETATTR/REMOVE on them; READ/WRITE refused
with INVAL (the server never opens a special file); root squash; and their survival across
a restart of the file processor, with fsck clean afterwards."""

from __future__ import annotations

import json
import os
import stat as st
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import libnfs
import pytest
from nasblade.nfs import types as t
from nasblade.rpc import xdr
from nfs_harness import Controller, FileProcessor, export, nasblade
from nfs_rpcclient import RawClient, auth_sys

pytestmark = pytest.mark.component
SERVED_LU_SIZE = 128 << 20  # small files only (see conftest.served)

GETATTR_RES = t.result(t.FATTR, xdr.Void)
NF3BLK, NF3CHR, NF3SOCK, NF3FIFO = 3, 4, 6, 7
# name -> (ftype3, what, mode, (specdata1, specdata2))
NODES: dict[bytes, tuple[int, Any, int, tuple[int, int]]] = {
    b"fifo": (NF3FIFO, t.Sattr(mode=0o640), 0o640, (0, 0)),
    b"sock": (NF3SOCK, t.Sattr(mode=0o755), 0o755, (0, 0)),
    b"null": (NF3CHR, t.DeviceData(t.Sattr(mode=0o666), t.SpecData(1, 3)), 0o666, (1, 3)),
    b"sda1": (NF3BLK, t.DeviceData(t.Sattr(mode=0o660), t.SpecData(8, 1)), 0o660, (8, 1)),
    b"wide": (NF3CHR, t.DeviceData(t.Sattr(), t.SpecData(0xFFFFFFFF, 0xFFFFFFFE)), 0o644, (0xFFFFFFFF, 0xFFFFFFFE)),
}


@pytest.fixture
def rc(served: FileProcessor) -> Iterator[RawClient]:
    c = RawClient("127.0.0.1", served.nfs_port)
    yield c
    c.close()


def root_of(c: RawClient, export_path: bytes) -> bytes:
    stat, body = c.mnt(export_path)
    assert stat == t.MountStat.OK, stat
    return bytes(body.fhandle)  # type: ignore[attr-defined]


def mknod(c: RawClient, d: bytes, name: bytes, ftype: int, what: Any, **kw: Any) -> tuple[int, Any]:
    args = t.MknodArgs(t.DirOpArgs(d, name), (ftype, what))
    return c.nfs(11, t.MKNOD_ARGS, args, t.CREATE_RES, **kw)  # type: ignore[return-value]


def mkdir(c: RawClient, d: bytes, name: bytes, mode: int = 0o777) -> bytes:
    stat, ok = c.nfs(9, t.MKDIR_ARGS, t.MkdirArgs(t.DirOpArgs(d, name), t.Sattr(mode=mode)), t.CREATE_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK, stat
    return bytes(ok.obj)


def check(fa: t.Fattr, ftype: int, mode: int, spec: tuple[int, int]) -> None:
    assert (fa.type, fa.mode, (fa.rdev.specdata1, fa.rdev.specdata2), fa.size) == (ftype, mode, spec, 0)


def test_mknod_each_type_and_its_attributes_everywhere(rc: RawClient) -> None:
    d = mkdir(rc, root_of(rc, b"/admin"), b"nodes")
    fhs = {}
    for name, (ftype, what, mode, spec) in NODES.items():
        stat, ok = mknod(rc, d, name, ftype, what)
        assert stat == t.Stat.OK, (name, stat)
        check(ok.obj_attributes, ftype, mode, spec)
        fhs[name] = bytes(ok.obj)
        assert ok.dir_wcc.after is not None
    for name, (ftype, _, mode, spec) in NODES.items():
        stat, fa = rc.nfs(1, t.FH, fhs[name], GETATTR_RES)  # type: ignore[misc]
        assert stat == t.Stat.OK
        check(fa, ftype, mode, spec)
        stat, lk = rc.nfs(3, t.DIROPARGS, t.DirOpArgs(d, name), t.LOOKUP_RES)  # type: ignore[misc]
        assert stat == t.Stat.OK and bytes(lk.object) == fhs[name]
        check(lk.obj_attributes, ftype, mode, spec)
    stat, rdp = rc.nfs(17, t.READDIRPLUS_ARGS, t.ReaddirplusArgs(d, 0, bytes(8), 4096, 32768), t.READDIRPLUS_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK and rdp.eof
    seen = {bytes(e.name): e for e in rdp.entries}
    for name, (ftype, _, mode, spec) in NODES.items():
        check(seen[name].name_attributes, ftype, mode, spec)
        assert bytes(seen[name].name_handle) == fhs[name]
    # Owner and times of the sattr3 are applied as for CREATE; a size is ignored.
    when = (t.TimeHow.SET_TO_CLIENT_TIME, t.NfsTime(1234, 5))
    stat, ok = mknod(rc, d, b"owned", NF3FIFO, t.Sattr(mode=0o604, uid=7, gid=8, size=99, mtime=when))
    assert stat == t.Stat.OK
    fa = ok.obj_attributes
    assert (fa.mode, fa.uid, fa.gid, fa.size, fa.mtime) == (0o604, 7, 8, 0, t.NfsTime(1234, 5))
    assert rc.nfs(12, t.DIROPARGS, t.DirOpArgs(d, b"owned"), t.WCC_RES)[0] == t.Stat.OK  # type: ignore[index]
    # The name is taken now (CREATE on it: test_nfs_create_modes.py).
    assert mknod(rc, d, b"fifo", NF3FIFO, t.Sattr())[0] == t.Stat.EXIST
    # Not a special type: BADTYPE (regular files, directories and symlinks have their own calls).
    for ftype in (1, 2, 5, 8):
        assert mknod(rc, d, b"bad", ftype, None)[0] == t.Stat.BADTYPE, ftype
    # No data: READ and WRITE are INVAL, a size change too; the attributes stay.
    null = fhs[b"null"]
    for fh in (null, fhs[b"fifo"]):
        assert rc.nfs(6, t.READ_ARGS, t.ReadArgs(fh, 0, 100), t.READ_RES)[0] == t.Stat.INVAL  # type: ignore[index]
        w = t.WriteArgs(fh, 0, 1, t.StableHow.FILE_SYNC, memoryview(b"x"))
        assert rc.nfs(7, t.WRITE_ARGS, w, t.WRITE_RES)[0] == t.Stat.INVAL  # type: ignore[index]
        sa = t.SetattrArgs(fh, t.Sattr(size=0), None)
        assert rc.nfs(2, t.SETATTR_ARGS, sa, t.WCC_RES)[0] == t.Stat.INVAL  # type: ignore[index]
    # SETATTR of mode and owner, LINK, RENAME, REMOVE.
    sa = t.SetattrArgs(null, t.Sattr(mode=0o600, uid=7, gid=8), None)
    assert rc.nfs(2, t.SETATTR_ARGS, sa, t.WCC_RES)[0] == t.Stat.OK  # type: ignore[index]
    stat, lr = rc.nfs(15, t.LINK_ARGS, t.LinkArgs(null, t.DirOpArgs(d, b"null2")), t.LINK_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK and lr.file_attributes.nlink == 2
    check(lr.file_attributes, NF3CHR, 0o600, (1, 3))
    assert (lr.file_attributes.uid, lr.file_attributes.gid) == (7, 8)
    ren = t.RenameArgs(t.DirOpArgs(d, b"null"), t.DirOpArgs(d, b"null-renamed"))
    assert rc.nfs(14, t.RENAME_ARGS, ren, t.RENAME_RES)[0] == t.Stat.OK  # type: ignore[index]
    for name in (b"null-renamed", b"null2", b"fifo", b"sock", b"sda1", b"wide"):
        assert rc.nfs(12, t.DIROPARGS, t.DirOpArgs(d, name), t.WCC_RES)[0] == t.Stat.OK, name  # type: ignore[index]
    assert rc.nfs(1, t.FH, null, GETATTR_RES)[0] == t.Stat.STALE  # type: ignore[index]


def test_mknod_honours_root_squash_and_read_only_exports(rc: RawClient) -> None:
    mkdir(rc, root_of(rc, b"/admin"), b"squash")
    stat, lk = rc.nfs(3, t.DIROPARGS, t.DirOpArgs(root_of(rc, b"/x"), b"squash"), t.LOOKUP_RES)  # type: ignore[misc]
    assert stat == t.Stat.OK
    xd = bytes(lk.object)
    dev = t.DeviceData(t.Sattr(mode=0o600), t.SpecData(1, 5))
    # root is squashed to nobody on /x: no device nodes; a FIFO belongs to nobody.
    assert mknod(rc, xd, b"zero", NF3CHR, dev)[0] == t.Stat.PERM
    stat, ok = mknod(rc, xd, b"fifo", NF3FIFO, t.Sattr(mode=0o606))
    assert stat == t.Stat.OK and ok.obj_attributes.uid == 65534 and ok.obj_attributes.mode == 0o606
    # An ordinary user: FIFOs and sockets yes, devices no.
    user = auth_sys(1000, 1000)
    assert mknod(rc, xd, b"usock", NF3SOCK, t.Sattr(mode=0o700), cred=user)[1].obj_attributes.uid == 1000
    assert mknod(rc, xd, b"ublk", NF3BLK, dev, cred=user)[0] == t.Stat.PERM
    ro = root_of(rc, b"/ro")
    assert mknod(rc, ro, b"rofifo", NF3FIFO, t.Sattr())[0] == t.Stat.ROFS


def test_special_files_made_with_libnfs_survive_a_restart_and_fsck(
    controller: Controller, fp_factory: Callable[..., FileProcessor]
) -> None:
    lu_url = controller.new_lu(128 << 20)
    fp = fp_factory(lu_url, [export("/admin", rootSquash=False)])
    nfs = libnfs.NFS(fp.url("/admin"))
    c = nfs._nfs
    made = {
        "/pipe": (st.S_IFIFO | 0o620, 0),
        "/sock": (st.S_IFSOCK | 0o700, 0),
        "/tty": (st.S_IFCHR | 0o600, os.makedev(4, 64)),
        "/loop": (st.S_IFBLK | 0o660, os.makedev(7, 1)),
    }
    for path, (mode, rdev) in made.items():
        assert libnfs.nfs_mknod(c, path, mode, rdev) == 0, path

    def stats(n: Any) -> dict[str, tuple[int, int]]:
        out = {}
        for path in made:
            s = libnfs.nfs_stat_64()
            assert libnfs.nfs_lstat64(n._nfs, path, s) == 0, path
            out[path] = (s.nfs_mode, s.nfs_rdev)
        return out

    first = stats(nfs)
    assert first == made
    fp.stop()
    fp = fp_factory(lu_url, [export("/admin", rootSquash=False)])
    assert stats(libnfs.NFS(fp.url("/admin"))) == made
    fp.stop()
    check_run = subprocess.run(nasblade("fsck", lu_url), capture_output=True, timeout=300)
    assert check_run.returncode == 0, check_run.stdout + check_run.stderr
    rep = json.loads(check_run.stdout)
    assert rep["clean"] and rep["special"] == len(made)
