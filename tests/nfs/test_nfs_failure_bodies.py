"""The failure arms of NFSv3 results (RFC 1813 resfail), built by the one procedure wrapper in
``nasblade.nfs.nfs3``: the nfsstat3 of the error and the post_op_attr / wcc_data of the
handles the call named, or empty attributes when a handle did not resolve (dispatcher-level,
no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.nfs import exports, nfs3, volume
from nasblade.nfs import types as t
from nasblade.rpc import dispatch, xdr
from nfs_rpcclient import call_dispatcher


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.dev = FileBlockDevice(tmp_path / "lu.img", size=64 << 20)
        fsmod.mkfs(self.dev)
        self.fs = fsmod.FileSystem(self.dev)
        self.file, _ = self.fs.create(fsmod.ROOT_INO, b"f", fsmod.ROOT)
        self.fs.write(self.file, 0, b"x" * 10)
        self.sub = self.fs.mkdir(fsmod.ROOT_INO, b"sub", fsmod.ROOT)
        self.fs.commit()
        exp = exports.Export.build("/x", ["127.0.0.0/8"], root_squash=False)
        self.ro = exports.Export.build("/ro", ["127.0.0.0/8"], subdir="/sub", access="ro", root_squash=False)
        self.vol = volume.Volume.open("fs", self.fs, [exp, self.ro])
        self.d = dispatch.Dispatcher()
        self.d.register(nfs3.Nfs3({self.fs.fsid: self.vol}).program())
        self.root = self.vol.handle(exp.export_id, self.vol.roots[exp.export_id])
        self.fh = self.vol.handle(exp.export_id, self.file)
        self.ro_root = self.vol.handle(self.ro.export_id, self.sub)
        self.stale = self.vol.handle(exp.export_id, self.file, gen=12345)
        self.xid = 0

    def call(self, proc: int, args_type: xdr.Type[Any], args: Any, res: xdr.Type[Any]) -> tuple[int, Any, bool]:
        self.xid += 1
        return call_dispatcher(self.d, self.xid, proc, args_type, args, res)

    def close(self) -> None:
        self.fs.close()
        self.dev.close()


@pytest.fixture
def srv(tmp_path: Path) -> Any:
    s = Server(tmp_path)
    yield s
    s.close()


def test_wcc_data_of_the_directory_on_a_file_system_error(srv: Server) -> None:
    stat, wcc, sync = srv.call(12, t.DIROPARGS, t.DirOpArgs(srv.root, b"missing"), t.WCC_RES)
    assert stat == t.Stat.NOENT and sync
    assert wcc.before is not None and wcc.after is not None and wcc.after.fileid == fsmod.ROOT_INO
    stat, wcc, _ = srv.call(8, t.CREATE_ARGS, t.CreateArgs(t.DirOpArgs(srv.root, b"f"), (t.CreateMode.GUARDED, t.Sattr())), t.CREATE_RES)
    assert stat == t.Stat.EXIST and wcc.before is not None and wcc.after is not None


def test_empty_attributes_when_the_handle_does_not_resolve(srv: Server) -> None:
    assert srv.call(12, t.DIROPARGS, t.DirOpArgs(srv.stale, b"f"), t.WCC_RES)[:2] == (t.Stat.STALE, t.NO_WCC)
    assert srv.call(12, t.DIROPARGS, t.DirOpArgs(b"junk", b"f"), t.WCC_RES)[:2] == (t.Stat.BADHANDLE, t.NO_WCC)
    assert srv.call(1, t.FH, srv.stale, t.GETATTR_RES)[:2] == (t.Stat.STALE, None)
    assert srv.call(3, t.DIROPARGS, t.DirOpArgs(srv.stale, b"f"), t.LOOKUP_RES)[:2] == (t.Stat.STALE, None)
    # a modifying call on a read-only export: ROFS before anything is read
    stat, wcc, _ = srv.call(12, t.DIROPARGS, t.DirOpArgs(srv.ro_root, b"f"), t.WCC_RES)
    assert (stat, wcc) == (t.Stat.ROFS, t.NO_WCC)


def test_post_op_attr_of_the_object(srv: Server) -> None:
    stat, attr, _ = srv.call(3, t.DIROPARGS, t.DirOpArgs(srv.root, b"missing"), t.LOOKUP_RES)
    assert stat == t.Stat.NOENT and attr.fileid == fsmod.ROOT_INO
    stat, attr, _ = srv.call(5, t.FH, srv.fh, t.READLINK_RES)
    assert stat == t.Stat.INVAL and attr.fileid == srv.file
    stat, attr, _ = srv.call(16, t.READDIR_ARGS, t.ReaddirArgs(srv.root, 5, b"badverf!", 4096), t.READDIR_RES)
    assert stat == t.Stat.BAD_COOKIE and attr.fileid == fsmod.ROOT_INO


def test_two_handles_rename_and_link(srv: Server) -> None:
    args = t.RenameArgs(t.DirOpArgs(srv.root, b"missing"), t.DirOpArgs(srv.root, b"g"))
    stat, res, sync = srv.call(14, t.RENAME_ARGS, args, t.RENAME_RES)
    assert stat == t.Stat.NOENT and sync
    assert res.fromdir_wcc.before is not None and res.todir_wcc.after is not None
    args = t.RenameArgs(t.DirOpArgs(srv.root, b"f"), t.DirOpArgs(srv.stale, b"g"))
    assert srv.call(14, t.RENAME_ARGS, args, t.RENAME_RES)[:2] == (t.Stat.STALE, t.RenameRes(t.NO_WCC, t.NO_WCC))
    stat, res, _ = srv.call(15, t.LINK_ARGS, t.LinkArgs(srv.fh, t.DirOpArgs(srv.root, b"f")), t.LINK_RES)
    assert stat == t.Stat.EXIST and res.file_attributes.fileid == srv.file
    assert res.linkdir_wcc.before is not None and res.linkdir_wcc.after.fileid == fsmod.ROOT_INO


def test_nfs_error_raised_by_a_procedure(srv: Server) -> None:
    data = memoryview(b"y" * 8)
    stat, wcc, sync = srv.call(7, t.WRITE_ARGS, t.WriteArgs(srv.fh, 0, 9, t.StableHow.FILE_SYNC, data), t.WRITE_RES)
    assert stat == t.Stat.INVAL and not sync
    assert wcc.before is not None and wcc.before.size == 10 and wcc.after.size == 10
    guard = t.NfsTime(1, 2)
    stat, wcc, _ = srv.call(2, t.SETATTR_ARGS, t.SetattrArgs(srv.fh, t.Sattr(mode=0o600), guard), t.WCC_RES)
    assert stat == t.Stat.NOT_SYNC and wcc.after.mode == 0o644


def test_ok_bodies_are_the_typed_results(srv: Server) -> None:
    stat, ok, _ = srv.call(3, t.DIROPARGS, t.DirOpArgs(srv.root, b"f"), t.LOOKUP_RES)
    assert stat == t.Stat.OK and isinstance(ok, t.LookupOk) and ok.obj_attributes.fileid == srv.file
    stat, ok, sync = srv.call(21, t.COMMIT_ARGS, t.CommitArgs(srv.fh, 0, 0), t.COMMIT_RES)
    assert stat == t.Stat.OK and isinstance(ok, t.CommitOk) and sync and ok.verf == srv.vol.write_verifier
