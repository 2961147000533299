"""The NFS version 3 program (RFC 1813 §3): all 22 procedures over ``nasblade.fs``.

Every procedure that takes a file handle resolves it through ``_resolve``, which applies the
checks in this order: handle well-formed with a valid MAC (else BADHANDLE) → file system and
export known (else STALE) → client address in the export's CIDR allow-list (else ACCES) →
inode and generation current (else STALE); then the AUTH_SYS credential is squashed by the
export rules and write procedures on a read-only export get ROFS. File-system errors
(``FsError``) map to nfsstat3 codes through ``ERRNO_TO_STAT``.

Durability: procedures that change metadata, stable WRITEs and COMMIT set
``call.needs_commit``; the server sends their replies only after the volume's next group
commit. UNSTABLE WRITEs reply at once with the server's write verifier; COMMIT answers with
the same verifier, which changes whenever the server restarts (or is regenerated on takeover),
so clients resend what they wrote unstably to a previous instance.

Non-idempotent procedures (SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR,
RENAME, LINK) are flagged ``cached`` so the dispatcher's duplicate request cache replays their
original replies.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import struct
from collections.abc import Callable
from typing import Any

import apsw

from nasblade.fs import fs as fsmod
from nasblade.fs.fs import Attr, Cred, FsError, FType
from nasblade.nfs import handles
from nasblade.nfs import types as t
from nasblade.nfs.exports import Export
from nasblade.nfs.volume import Volume
from nasblade.rpc import xdr
from nasblade.rpc.dispatch import Call, Procedure, Program

log = logging.getLogger(__name__)

MAX_IO = 1 << 20
PREF_IO = 1 << 20

ERRNO_TO_STAT: dict[int, t.Stat] = {
    errno.EPERM: t.Stat.PERM,
    errno.ENOENT: t.Stat.NOENT,
    errno.EIO: t.Stat.IO,
    errno.ENXIO: t.Stat.NXIO,
    errno.EACCES: t.Stat.ACCES,
    errno.EEXIST: t.Stat.EXIST,
    errno.EXDEV: t.Stat.XDEV,
    errno.ENODEV: t.Stat.NODEV,
    errno.ENOTDIR: t.Stat.NOTDIR,
    errno.EISDIR: t.Stat.ISDIR,
    errno.EINVAL: t.Stat.INVAL,
    errno.EFBIG: t.Stat.FBIG,
    errno.ENOSPC: t.Stat.NOSPC,
    errno.EROFS: t.Stat.ROFS,
    errno.EMLINK: t.Stat.MLINK,
    errno.ENAMETOOLONG: t.Stat.NAMETOOLONG,
    errno.ENOTEMPTY: t.Stat.NOTEMPTY,
    errno.EDQUOT: t.Stat.DQUOT,
    errno.ESTALE: t.Stat.STALE,
    errno.ELOOP: t.Stat.INVAL,
    errno.ENOTSUP: t.Stat.NOTSUPP,
}


class NfsError(Exception):
    def __init__(self, stat: t.Stat) -> None:
        super().__init__(stat.name)
        self.stat = stat


class Ctx:
    """A resolved file handle: the volume, export, inode and the caller's squashed identity."""

    __slots__ = ("cred", "export", "export_id", "ino", "vol")

    def __init__(self, vol: Volume, export: Export, export_id: int, ino: int, cred: Cred) -> None:
        self.vol = vol
        self.export = export
        self.export_id = export_id
        self.ino = ino
        self.cred = cred

    @property
    def fs(self) -> fsmod.FileSystem:
        return self.vol.fs

    def fh(self, ino: int) -> bytes:
        return self.vol.handle(self.export_id, ino)


def fattr(a: Attr, fsid: int) -> t.Fattr:
    rdev = t.SpecData(a.rdev >> 32, a.rdev & 0xFFFFFFFF)
    return t.Fattr(
        type=int(a.type),
        mode=a.mode & 0o7777,
        nlink=a.nlink,
        uid=a.uid,
        gid=a.gid,
        size=a.size,
        used=a.used,
        rdev=rdev,
        fsid=fsid,
        fileid=a.ino,
        atime=t.NfsTime.from_ns(a.atime),
        mtime=t.NfsTime.from_ns(a.mtime),
        ctime=t.NfsTime.from_ns(a.ctime),
    )


def wcc_attr(a: Attr) -> t.WccAttr:
    return t.WccAttr(a.size, t.NfsTime.from_ns(a.mtime), t.NfsTime.from_ns(a.ctime))


class Nfs3:
    """The NFSv3 program bound to a table of volumes (normally one per listener)."""

    def __init__(self, volumes: dict[int, Volume]) -> None:
        self.volumes = volumes

    # -- handle resolution ------------------------------------------------------------------

    def _resolve(self, call: Call, raw: bytes, *, write: bool = False) -> Ctx:
        fsid = handles.peek_fsid(raw)
        if fsid is None:
            raise NfsError(t.Stat.BADHANDLE)
        vol = self.volumes.get(fsid)
        if vol is None:
            raise NfsError(t.Stat.STALE)
        h = handles.decode(raw, vol.fs.secret)
        if h is None:
            raise NfsError(t.Stat.BADHANDLE)
        export = vol.exports.get(h.export_id)
        if export is None:
            raise NfsError(t.Stat.STALE)
        if not export.allows(call.client):
            raise NfsError(t.Stat.ACCES)
        if vol.fs.generation(h.ino) != h.gen:
            raise NfsError(t.Stat.STALE)
        if write and export.readonly:
            raise NfsError(t.Stat.ROFS)
        return Ctx(vol, export, h.export_id, h.ino, export.cred(call.cred))

    @staticmethod
    def _attr(ctx: Ctx, ino: int | None = None) -> t.Fattr | None:
        try:
            return fattr(ctx.fs.getattr(ctx.ino if ino is None else ino), ctx.fs.fsid)
        except FsError:
            return None

    @staticmethod
    def _pre(ctx: Ctx, ino: int | None = None) -> t.WccAttr | None:
        try:
            return wcc_attr(ctx.fs.getattr(ctx.ino if ino is None else ino))
        except FsError:
            return None

    def _wcc(self, ctx: Ctx, pre: t.WccAttr | None, ino: int | None = None) -> t.WccData:
        return t.WccData(pre, self._attr(ctx, ino))

    # -- procedures -------------------------------------------------------------------------

    def null(self, call: Call, args: None) -> None:
        return None

    def getattr(self, call: Call, fh: bytes) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, fh)
            return t.Stat.OK, fattr(ctx.fs.getattr(ctx.ino), ctx.fs.fsid)
        except NfsError as e:
            return e.stat, None
        except FsError as e:
            return _stat(e), None

    def setattr(self, call: Call, args: t.SetattrArgs) -> tuple[int, Any]:
        call.needs_commit = True
        try:
            ctx = self._resolve(call, args.object, write=True)
        except NfsError as e:
            return e.stat, t.NO_WCC
        pre = self._pre(ctx)
        try:
            if args.guard is not None:
                cur = ctx.fs.getattr(ctx.ino)
                if t.NfsTime.from_ns(cur.ctime) != args.guard:
                    return t.Stat.NOT_SYNC, self._wcc(ctx, pre)
            changed = ctx.fs.setattr(ctx.ino, _setattr(args.new_attributes), ctx.cred)
            call.needs_commit = changed
            return t.Stat.OK, self._wcc(ctx, pre)
        except FsError as e:
            return _stat(e), self._wcc(ctx, pre)

    def lookup(self, call: Call, args: t.DirOpArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.dir)
        except NfsError as e:
            return e.stat, None
        try:
            if args.name == b".." and ctx.ino == ctx.vol.roots.get(ctx.export_id):
                ino = ctx.ino
            else:
                ino = ctx.fs.lookup(ctx.ino, args.name, ctx.cred)
            return t.Stat.OK, t.LookupOk(ctx.fh(ino), self._attr(ctx, ino), self._attr(ctx))
        except FsError as e:
            return _stat(e), self._attr(ctx)

    def access(self, call: Call, args: t.AccessArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.object)
            a = ctx.fs.getattr(ctx.ino)
        except NfsError as e:
            return e.stat, None
        except FsError as e:
            return _stat(e), None
        fs, cred, want = ctx.fs, ctx.cred, args.access
        granted = 0
        if want & t.ACCESS_READ and fs.access(a, cred, fsmod.R_OK):
            granted |= t.ACCESS_READ
        if a.type == FType.DIR:
            if want & t.ACCESS_LOOKUP and fs.access(a, cred, fsmod.X_OK):
                granted |= t.ACCESS_LOOKUP
            if fs.access(a, cred, fsmod.W_OK | fsmod.X_OK) == fsmod.W_OK | fsmod.X_OK:
                granted |= want & (t.ACCESS_MODIFY | t.ACCESS_EXTEND | t.ACCESS_DELETE)
        else:
            if fs.access(a, cred, fsmod.W_OK):
                granted |= want & (t.ACCESS_MODIFY | t.ACCESS_EXTEND)
            if want & t.ACCESS_EXECUTE and fs.access(a, cred, fsmod.X_OK):
                granted |= t.ACCESS_EXECUTE
        if ctx.export.readonly:
            granted &= ~(t.ACCESS_MODIFY | t.ACCESS_EXTEND | t.ACCESS_DELETE)
        return t.Stat.OK, t.AccessOk(fattr(a, fs.fsid), granted)

    def readlink(self, call: Call, fh: bytes) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, fh)
        except NfsError as e:
            return e.stat, None
        try:
            return t.Stat.OK, t.ReadlinkOk(self._attr(ctx), ctx.fs.readlink(ctx.ino))
        except FsError as e:
            return _stat(e), self._attr(ctx)

    def read(self, call: Call, args: t.ReadArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.file)
        except NfsError as e:
            return e.stat, None
        try:
            data, eof, a = ctx.fs.read(ctx.ino, args.offset, min(args.count, MAX_IO), ctx.cred)
            return t.Stat.OK, t.ReadOk(fattr(a, ctx.fs.fsid), len(data), eof, data)
        except FsError as e:
            return _stat(e), self._attr(ctx)

    def write(self, call: Call, args: t.WriteArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.file, write=True)
        except NfsError as e:
            return e.stat, t.NO_WCC
        pre = self._pre(ctx)
        data = args.data
        if args.count < len(data):
            data = data[: args.count]
        elif args.count > len(data):
            return t.Stat.INVAL, self._wcc(ctx, pre)
        if len(data) > MAX_IO:
            return t.Stat.INVAL, self._wcc(ctx, pre)
        try:
            a = ctx.fs.write(ctx.ino, args.offset, data, ctx.cred)
        except FsError as e:
            return _stat(e), self._wcc(ctx, pre)
        committed = t.StableHow.UNSTABLE
        if args.stable != t.StableHow.UNSTABLE:
            call.needs_commit = True
            committed = t.StableHow.FILE_SYNC
        a.used = ((a.size + fsmod.BLOCK - 1) // fsmod.BLOCK) * fsmod.BLOCK
        wcc = t.WccData(pre, fattr(a, ctx.fs.fsid))
        return t.Stat.OK, t.WriteOk(wcc, len(data), committed, ctx.vol.write_verifier)

    def _made(self, ctx: Ctx, pre: t.WccAttr | None, ino: int) -> tuple[int, Any]:
        return t.Stat.OK, t.CreateOk(ctx.fh(ino), self._attr(ctx, ino), self._wcc(ctx, pre))

    def _create_common(
        self, call: Call, where: t.DirOpArgs, make: Callable[[Ctx], int]
    ) -> tuple[int, Any]:
        call.needs_commit = True
        try:
            ctx = self._resolve(call, where.dir, write=True)
        except NfsError as e:
            return e.stat, t.NO_WCC
        pre = self._pre(ctx)
        try:
            return self._made(ctx, pre, make(ctx))
        except FsError as e:
            return _stat(e), self._wcc(ctx, pre)
        except NfsError as e:
            return e.stat, self._wcc(ctx, pre)

    def create(self, call: Call, args: t.CreateArgs) -> tuple[int, Any]:
        """CREATE (RFC 1813 §3.3.8) with knfsd's semantics for a name that already exists.

        - UNCHECKED: a new file gets every attribute of ``obj_attributes``. An existing
          regular file keeps its mode, owner and times; only ``size`` is applied (the
          truncation of ``open(O_CREAT|O_TRUNC)``), so the loser of two clients racing
          ``open(O_CREAT)`` does not change the winner's mode. Any other existing type: EXIST.
        - GUARDED: an existing name of any type is EXIST.
        - EXCLUSIVE: the verifier is stored with the new file; a retransmission with the
          same verifier finds it and succeeds, another verifier gets EXIST.
        """
        mode_kind, body = args.how
        name = args.where.name

        def make(ctx: Ctx) -> int:
            if mode_kind == t.CreateMode.EXCLUSIVE:
                ino, _ = ctx.fs.create(ctx.ino, name, ctx.cred, mode=0o644, exclusive=bytes(body))
                return ino
            sattr: t.Sattr = body
            ino, created = ctx.fs.create(
                ctx.ino,
                name,
                ctx.cred,
                mode=sattr.mode if sattr.mode is not None else 0o644,
                guarded=mode_kind == t.CreateMode.GUARDED,
            )
            if created:
                extra = _setattr(dataclasses_replace_mode(sattr, drop_mode=True))
            else:
                extra = fsmod.SetAttr(size=sattr.size)
            if extra != fsmod.SetAttr():
                ctx.fs.setattr(ino, extra, ctx.cred)
            return ino

        return self._create_common(call, args.where, make)

    def mkdir(self, call: Call, args: t.MkdirArgs) -> tuple[int, Any]:
        sattr = args.attributes

        def make(ctx: Ctx) -> int:
            mode = sattr.mode if sattr.mode is not None else 0o755
            return ctx.fs.mkdir(ctx.ino, args.where.name, ctx.cred, mode=mode)

        return self._create_common(call, args.where, make)

    def symlink(self, call: Call, args: t.SymlinkArgs) -> tuple[int, Any]:
        def make(ctx: Ctx) -> int:
            return ctx.fs.symlink(ctx.ino, args.where.name, args.symlink_data, ctx.cred)

        return self._create_common(call, args.where, make)

    def mknod(self, call: Call, args: t.MknodArgs) -> tuple[int, Any]:
        """MKNOD (RFC 1813 §3.3.11): FIFOs, sockets and (root only) character/block devices.

        ``specdata1``/``specdata2`` of a device are stored as its major/minor and come back
        as ``rawdev`` in fattr3. Mode comes from the sattr3 (default 0644); owner and times
        are applied like CREATE's, size is ignored (special files have none). Any other type
        is BADTYPE. Special files are never opened by the server: READ/WRITE get INVAL.
        """
        kind, body = args.what

        def make(ctx: Ctx) -> int:
            if kind in (FType.CHR, FType.BLK):
                dev: t.DeviceData = body
                sattr: t.Sattr = dev.dev_attributes
                rdev = fsmod.makedev(dev.spec.specdata1, dev.spec.specdata2)
            elif kind in (FType.SOCK, FType.FIFO):
                sattr = body
                rdev = 0
            else:
                raise NfsError(t.Stat.BADTYPE)
            mode = sattr.mode if sattr.mode is not None else 0o644
            ino = ctx.fs.mknod(ctx.ino, args.where.name, FType(kind), ctx.cred, mode=mode, rdev=rdev)
            extra = _setattr(dataclasses_replace_mode(sattr, drop_mode=True))
            extra = dataclasses.replace(extra, size=None)
            if extra != fsmod.SetAttr():
                ctx.fs.setattr(ino, extra, ctx.cred)
            return ino

        return self._create_common(call, args.where, make)

    def _dirop(self, call: Call, args: t.DirOpArgs, op: Callable[[Ctx], Any]) -> tuple[int, Any]:
        call.needs_commit = True
        try:
            ctx = self._resolve(call, args.dir, write=True)
        except NfsError as e:
            return e.stat, t.NO_WCC
        pre = self._pre(ctx)
        try:
            op(ctx)
            return t.Stat.OK, self._wcc(ctx, pre)
        except FsError as e:
            return _stat(e), self._wcc(ctx, pre)

    def remove(self, call: Call, args: t.DirOpArgs) -> tuple[int, Any]:
        return self._dirop(call, args, lambda ctx: ctx.fs.remove(ctx.ino, args.name, ctx.cred))

    def rmdir(self, call: Call, args: t.DirOpArgs) -> tuple[int, Any]:
        return self._dirop(call, args, lambda ctx: ctx.fs.rmdir(ctx.ino, args.name, ctx.cred))

    def rename(self, call: Call, args: t.RenameArgs) -> tuple[int, Any]:
        call.needs_commit = True
        empty = t.RenameRes(t.NO_WCC, t.NO_WCC)
        try:
            src = self._resolve(call, args.from_.dir, write=True)
            dst = self._resolve(call, args.to.dir, write=True)
        except NfsError as e:
            return e.stat, empty
        if src.vol is not dst.vol:
            return t.Stat.XDEV, empty
        pre_s, pre_d = self._pre(src), self._pre(dst)
        try:
            src.fs.rename(src.ino, args.from_.name, dst.ino, args.to.name, src.cred)
            stat = t.Stat.OK
        except FsError as e:
            stat = _stat(e)
        return stat, t.RenameRes(self._wcc(src, pre_s), self._wcc(dst, pre_d))

    def link(self, call: Call, args: t.LinkArgs) -> tuple[int, Any]:
        call.needs_commit = True
        empty = t.LinkRes(None, t.NO_WCC)
        try:
            f = self._resolve(call, args.file, write=True)
            d = self._resolve(call, args.link.dir, write=True)
        except NfsError as e:
            return e.stat, empty
        if f.vol is not d.vol:
            return t.Stat.XDEV, empty
        pre = self._pre(d)
        try:
            f.fs.link(f.ino, d.ino, args.link.name, d.cred)
            stat = t.Stat.OK
        except FsError as e:
            stat = _stat(e)
        return stat, t.LinkRes(self._attr(f), self._wcc(d, pre))

    @staticmethod
    def _cookieverf(ctx: Ctx) -> bytes:
        gen = ctx.fs.generation(ctx.ino) or 0
        return struct.pack(">Q", gen)

    def _entries(self, ctx: Ctx, cookie: int, verf: bytes, budget: int, per_entry: int) -> tuple[list[Any], bool]:
        if cookie != 0 and verf != bytes(8) and verf != self._cookieverf(ctx):
            raise NfsError(t.Stat.BAD_COOKIE)
        limit = max(1, budget // per_entry)
        ents, eof = ctx.fs.readdir(ctx.ino, cookie, ctx.cred, limit=limit)
        return ents, eof

    def readdir(self, call: Call, args: t.ReaddirArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.dir)
        except NfsError as e:
            return e.stat, None
        try:
            budget = max(args.count, 512) - 128
            ents, eof = self._entries(ctx, args.cookie, args.cookieverf, budget, 64)
            out: list[t.Entry] = []
            used = 0
            for ent in ents:
                size = 24 + ((len(ent.name) + 3) & ~3)
                if used + size > budget:
                    eof = False
                    break
                used += size
                ino = ent.ino
                if ent.name == b".." and ctx.ino == ctx.vol.roots.get(ctx.export_id):
                    ino = ctx.ino
                out.append(t.Entry(ino, ent.name, ent.cookie))
            if not out and not eof:
                return t.Stat.TOOSMALL, self._attr(ctx)
            return t.Stat.OK, t.ReaddirOk(self._attr(ctx), self._cookieverf(ctx), out, eof)
        except NfsError as e:
            return e.stat, self._attr(ctx)
        except FsError as e:
            return _stat(e), self._attr(ctx)

    def readdirplus(self, call: Call, args: t.ReaddirplusArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.dir)
        except NfsError as e:
            return e.stat, None
        try:
            budget = max(args.maxcount, 1024) - 160
            dbudget = max(args.dircount, 256)
            ents, eof = self._entries(ctx, args.cookie, args.cookieverf, min(budget, dbudget * 8), 200)
            out: list[t.EntryPlus] = []
            used = dused = 0
            root = ctx.vol.roots.get(ctx.export_id)
            for ent in ents:
                nsize = (len(ent.name) + 3) & ~3
                size = 24 + nsize + 92 + 8 + handles.SIZE + 4
                if used + size > budget or dused + 24 + nsize > dbudget:
                    eof = False
                    break
                used += size
                dused += 24 + nsize
                ino = ctx.ino if ent.name == b".." and ctx.ino == root else ent.ino
                try:
                    a = ctx.fs.getattr(ino)
                    fh = ctx.vol.handle(ctx.export_id, ino, a.gen)
                    out.append(t.EntryPlus(ino, ent.name, ent.cookie, fattr(a, ctx.fs.fsid), fh))
                except FsError:
                    out.append(t.EntryPlus(ino, ent.name, ent.cookie, None, None))
            if not out and not eof:
                return t.Stat.TOOSMALL, self._attr(ctx)
            return t.Stat.OK, t.ReaddirplusOk(self._attr(ctx), self._cookieverf(ctx), out, eof)
        except NfsError as e:
            return e.stat, self._attr(ctx)
        except FsError as e:
            return _stat(e), self._attr(ctx)

    def fsstat(self, call: Call, fh: bytes) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, fh)
        except NfsError as e:
            return e.stat, None
        s = ctx.fs.fsstat()
        return t.Stat.OK, t.FsstatOk(
            self._attr(ctx), s.total_bytes, s.free_bytes, s.free_bytes, s.total_files, s.free_files, s.free_files, 0
        )

    def fsinfo(self, call: Call, fh: bytes) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, fh)
        except NfsError as e:
            return e.stat, None
        return t.Stat.OK, t.FsinfoOk(
            obj_attributes=self._attr(ctx),
            rtmax=MAX_IO,
            rtpref=PREF_IO,
            rtmult=fsmod.BLOCK,
            wtmax=MAX_IO,
            wtpref=PREF_IO,
            wtmult=fsmod.BLOCK,
            dtpref=64 << 10,
            maxfilesize=fsmod.MAX_SIZE,
            time_delta=t.NfsTime(0, 1),
            properties=t.FSF_LINK | t.FSF_SYMLINK | t.FSF_HOMOGENEOUS | t.FSF_CANSETTIME,
        )

    def pathconf(self, call: Call, fh: bytes) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, fh)
        except NfsError as e:
            return e.stat, None
        return t.Stat.OK, t.PathconfOk(self._attr(ctx), 0xFFFFFFFF, fsmod.NAME_MAX, True, True, False, True)

    def commit(self, call: Call, args: t.CommitArgs) -> tuple[int, Any]:
        try:
            ctx = self._resolve(call, args.file)
        except NfsError as e:
            return e.stat, t.NO_WCC
        call.needs_commit = True
        pre = self._pre(ctx)
        return t.Stat.OK, t.CommitOk(t.WccData(pre, self._attr(ctx)), ctx.vol.write_verifier)

    # -- the program table ------------------------------------------------------------------

    def program(self) -> Program:
        def P(
            name: str, args: xdr.Type[Any], res: xdr.Type[Any], fn: Callable[[Call, Any], Any], cached: bool = False
        ) -> Procedure:
            return Procedure(name, args, res, _device_errors(name, fn, _FAIL.get(name)), cached)

        procs = {
            0: P("NULL", xdr.Void, xdr.Void, self.null),
            1: P("GETATTR", t.FH, t.result(t.FATTR, xdr.Void), self.getattr),
            2: P("SETATTR", t.SETATTR_ARGS, t.WCC_RES, self.setattr, cached=True),
            3: P("LOOKUP", t.DIROPARGS, t.LOOKUP_RES, self.lookup),
            4: P("ACCESS", t.ACCESS_ARGS, t.ACCESS_RES, self.access),
            5: P("READLINK", t.FH, t.READLINK_RES, self.readlink),
            6: P("READ", t.READ_ARGS, t.READ_RES, self.read),
            7: P("WRITE", t.WRITE_ARGS, t.WRITE_RES, self.write, cached=True),
            8: P("CREATE", t.CREATE_ARGS, t.CREATE_RES, self.create, cached=True),
            9: P("MKDIR", t.MKDIR_ARGS, t.CREATE_RES, self.mkdir, cached=True),
            10: P("SYMLINK", t.SYMLINK_ARGS, t.CREATE_RES, self.symlink, cached=True),
            11: P("MKNOD", t.MKNOD_ARGS, t.CREATE_RES, self.mknod, cached=True),
            12: P("REMOVE", t.DIROPARGS, t.WCC_RES, self.remove, cached=True),
            13: P("RMDIR", t.DIROPARGS, t.WCC_RES, self.rmdir, cached=True),
            14: P("RENAME", t.RENAME_ARGS, t.RENAME_RES, self.rename, cached=True),
            15: P("LINK", t.LINK_ARGS, t.LINK_RES, self.link, cached=True),
            16: P("READDIR", t.READDIR_ARGS, t.READDIR_RES, self.readdir),
            17: P("READDIRPLUS", t.READDIRPLUS_ARGS, t.READDIRPLUS_RES, self.readdirplus),
            18: P("FSSTAT", t.FH, t.FSSTAT_RES, self.fsstat),
            19: P("FSINFO", t.FH, t.FSINFO_RES, self.fsinfo),
            20: P("PATHCONF", t.FH, t.PATHCONF_RES, self.pathconf),
            21: P("COMMIT", t.COMMIT_ARGS, t.COMMIT_RES, self.commit),
        }
        return Program(t.NFS_PROGRAM, {t.NFS_V3: procs})


_FAIL: dict[str, Any] = {
    "SETATTR": t.NO_WCC,
    "WRITE": t.NO_WCC,
    "CREATE": t.NO_WCC,
    "MKDIR": t.NO_WCC,
    "SYMLINK": t.NO_WCC,
    "MKNOD": t.NO_WCC,
    "REMOVE": t.NO_WCC,
    "RMDIR": t.NO_WCC,
    "COMMIT": t.NO_WCC,
    "RENAME": t.RenameRes(t.NO_WCC, t.NO_WCC),
    "LINK": t.LinkRes(None, t.NO_WCC),
}


def _device_errors(name: str, fn: Callable[[Call, Any], Any], fail: Any) -> Callable[[Call, Any], Any]:
    """Answer NFS3ERR_IO when the block device or the metadata store fails mid-call."""
    if name == "NULL":
        return fn

    def handler(call: Call, args: Any) -> Any:
        try:
            return fn(call, args)
        except (OSError, apsw.Error) as exc:
            log.error("%s failed on the device: %s", name, exc)
            return t.Stat.IO, fail

    return handler


def _stat(e: FsError) -> t.Stat:
    return ERRNO_TO_STAT.get(e.errno, t.Stat.IO)


def _setattr(s: t.Sattr) -> fsmod.SetAttr:
    def when(v: tuple[int, Any]) -> int | None:
        how, body = v
        if how == t.TimeHow.SET_TO_SERVER_TIME:
            return -1
        if how == t.TimeHow.SET_TO_CLIENT_TIME:
            ns: int = body.to_ns()
            return ns
        return None

    return fsmod.SetAttr(mode=s.mode, uid=s.uid, gid=s.gid, size=s.size, atime=when(s.atime), mtime=when(s.mtime))


def dataclasses_replace_mode(s: t.Sattr, *, drop_mode: bool) -> t.Sattr:
    """The attributes to apply after CREATE: the mode was applied at creation if it was new."""
    return t.Sattr(None if drop_mode else s.mode, s.uid, s.gid, s.size, s.atime, s.mtime)
