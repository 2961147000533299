"""Directory quotas through the NFSv3 procedures (dispatcher-level, no sockets): FSSTAT on a
handle inside a quota tree answers the tree's limit and free space, WRITE past the limit is
NFS3ERR_DQUOT with the file unchanged, and RENAME/LINK across the boundary is NFS3ERR_XDEV."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.nfs import exports, nfs3, volume
from nasblade.nfs import types as t
from nasblade.rpc import dispatch, xdr
from nfs_rpcclient import call_dispatcher

LIMIT = 4 * fsmod.BLOCK


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.dev = FileBlockDevice(tmp_path / "lu.img", size=64 << 20)
        fsmod.mkfs(self.dev)
        self.fs = fsmod.FileSystem(self.dev)
        self.vol_ino = self.fs.mkdir(fsmod.ROOT_INO, b"vol", fsmod.ROOT)
        self.fs.set_quota(self.vol_ino, LIMIT)
        self.file, _ = self.fs.create(self.vol_ino, b"f", fsmod.ROOT)
        self.fs.commit()
        exp = exports.Export.build("/x", ["127.0.0.0/8"], root_squash=False)
        self.vol = volume.Volume.open("fs", self.fs, [exp])
        self.d = dispatch.Dispatcher()
        self.d.register(nfs3.Nfs3({self.fs.fsid: self.vol}).program())
        self.root = self.vol.handle(exp.export_id, fsmod.ROOT_INO)
        self.qdir = self.vol.handle(exp.export_id, self.vol_ino)
        self.fh = self.vol.handle(exp.export_id, self.file)
        self.xid = 0

    def call(self, proc: int, args_type: xdr.Type[Any], args: Any, res: xdr.Type[Any]) -> tuple[int, Any]:
        self.xid += 1
        stat, body, _ = call_dispatcher(self.d, self.xid, proc, args_type, args, res)
        return stat, body

    def write(self, offset: int, data: bytes) -> tuple[int, Any]:
        args = t.WriteArgs(self.fh, offset, len(data), t.StableHow.FILE_SYNC, memoryview(data))
        return self.call(7, t.WRITE_ARGS, args, t.WRITE_RES)


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.fs.close()
    s.dev.close()


def test_fsstat_in_a_quota_tree_reports_the_quota(srv: Server) -> None:
    stat, whole = srv.call(18, t.FH, srv.root, t.FSSTAT_RES)
    assert stat == t.Stat.OK and whole.tbytes == srv.fs.sb.data_blocks * fsmod.BLOCK
    assert srv.write(0, bytes(fsmod.BLOCK * 3))[0] == t.Stat.OK
    for fh in (srv.qdir, srv.fh):
        stat, ok = srv.call(18, t.FH, fh, t.FSSTAT_RES)
        assert stat == t.Stat.OK
        assert (ok.tbytes, ok.fbytes, ok.abytes) == (LIMIT, fsmod.BLOCK, fsmod.BLOCK)


def test_write_past_the_quota_is_dquot(srv: Server) -> None:
    assert srv.write(0, bytes(fsmod.BLOCK * 3))[0] == t.Stat.OK
    stat, wcc = srv.write(fsmod.BLOCK * 3, b"x" * (fsmod.BLOCK * 2))
    assert stat == t.Stat.DQUOT
    assert wcc.after is not None and wcc.after.size == fsmod.BLOCK * 3
    assert srv.fs.getattr(srv.file).size == fsmod.BLOCK * 3


def test_rename_and_link_out_of_a_quota_tree_are_xdev(srv: Server) -> None:
    args = t.RenameArgs(t.DirOpArgs(srv.qdir, b"f"), t.DirOpArgs(srv.root, b"g"))
    assert srv.call(14, t.RENAME_ARGS, args, t.RENAME_RES)[0] == t.Stat.XDEV
    link = t.LinkArgs(srv.fh, t.DirOpArgs(srv.root, b"g"))
    assert srv.call(15, t.LINK_ARGS, link, t.LINK_RES)[0] == t.Stat.XDEV
