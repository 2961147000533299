"""A failing block device (I/O error, or a fenced writer's EPERM) gives NFS3ERR_IO, not a
crash or SYSTEM_ERR, and the program keeps answering (dispatcher-level, no sockets)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from nasblade.blockdev import Buffer, FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.nfs import exports, nfs3, volume
from nasblade.nfs import types as t
from nasblade.rpc import dispatch, message, xdr
from nfs_rpcclient import auth_sys


class FailingDevice(FileBlockDevice):
    fail = False

    def pread(self, offset: int, length: int) -> bytes:
        if self.fail:
            raise OSError(errno.EIO, "injected read error")
        return super().pread(offset, length)

    def pwrite(self, offset: int, data: Buffer, *, fua: bool = False) -> None:
        if self.fail:
            raise OSError(errno.EPERM, "fenced")
        super().pwrite(offset, data, fua=fua)


def call(d: dispatch.Dispatcher, proc: int, args: bytes, res: xdr.Type[Any]) -> Any:
    out = d.handle(message.encode_call(xid=proc, prog=t.NFS_PROGRAM, vers=3, proc=proc, cred=auth_sys(), args=args), "127.0.0.1")
    assert out is not None
    rep = message.decode_reply(b"".join(bytes(b) for b in out.buffers))
    assert rep.stat == message.AcceptStat.SUCCESS
    return res.unpack(rep.body)


def test_device_errors_become_nfs3err_io(tmp_path: Path) -> None:
    dev = FailingDevice(tmp_path / "lu.img", size=64 << 20)
    fsmod.mkfs(dev)
    f = fsmod.FileSystem(dev)
    ino, _ = f.create(fsmod.ROOT_INO, b"big", fsmod.ROOT)
    f.write(ino, 0, b"x" * 100_000)
    f.commit()
    exp = exports.Export.build("/x", ["127.0.0.0/8"], root_squash=False)
    vol = volume.Volume.open("fs", f, [exp])
    d = dispatch.Dispatcher()
    d.register(nfs3.Nfs3({f.fsid: vol}).program())
    fh = vol.handle(exp.export_id, ino)
    dev.fail = True
    stat, _ = call(d, 6, t.READ_ARGS.encode(t.ReadArgs(fh, 0, 4096)), t.READ_RES)
    assert stat == t.Stat.IO
    data = memoryview(b"y" * 8192)
    stat, _ = call(d, 7, t.WRITE_ARGS.encode(t.WriteArgs(fh, 200_000, 8192, t.StableHow.UNSTABLE, data)), t.WRITE_RES)
    assert stat == t.Stat.IO
    dev.fail = False
    stat, ok = call(d, 6, t.READ_ARGS.encode(t.ReadArgs(fh, 0, 10)), t.READ_RES)
    assert stat == t.Stat.OK and bytes(ok.data) == b"x" * 10
    f.close()
    dev.close()
