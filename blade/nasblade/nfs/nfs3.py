"""The NFS version 3 program (RFC 1813 §3): all 22 procedures over ``nasblade.fs``.

Each procedure is a method that receives its resolved file handles (``Ctx``) and returns its
typed OK body (``t.LookupOk``, ``t.WccData``…) or raises. One wrapper (``Nfs3._wrap``) does the
rest for all of them: it finds the file handles in the argument declaration and resolves each
through ``_resolve``, which applies the checks in this order: handle well-formed with a valid
MAC (else BADHANDLE) → file system and export known (else STALE) → client address in the
export's CIDR allow-list (else ACCES) → inode and generation current (else STALE); then the
AUTH_SYS credential is squashed by the export rules and modifying procedures on a read-only
export get ROFS. ``NfsError`` and file-system errors (``FsError``, mapped through
``ERRNO_TO_STAT``) become the nfsstat3 with the failure arm (``resfail``: post_op_attr /
wcc_data of the handles, ``Failure``) derived from the result's declaration in
``nasblade.nfs.types``; a failing device or metadata store is NFS3ERR_IO.

Durability: procedures that change metadata, stable WRITEs and COMMIT set
``call.needs_commit``; the server sends their replies only after the volume's next group
commit. UNSTABLE WRITEs reply at once with the server's write verifier; COMMIT answers with
the same verifier, which changes whenever the server restarts (or is regenerated on takeover),
so clients resend what they wrote unstably to a previous instance.

Non-idempotent procedures (SETATTR, WRITE, CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR,
RENAME, LINK) are flagged ``cached`` so the dispatcher's duplicate request cache replays their
original replies.

Transport: TCP only (``Program.transports``). RFC 1813 leaves the transport to the
implementation; a 1 MiB READ or WRITE does not fit a datagram, and every current client mounts
over TCP. An NFS call over UDP gets PROG_UNAVAIL, and the portmapper maps NFS only over TCP.
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
    """A procedure's answer is this nfsstat3 (the wrapper adds the failure arm's body)."""

    def __init__(self, stat: t.Stat) -> None:
        super().__init__(stat.name)
        self.stat = stat


class Ctx:
    """A resolved file handle: the volume, export, inode, the caller's squashed identity and,
    when the procedure answers wcc_data for it, the attributes taken before the operation."""

    __slots__ = ("cred", "export", "export_id", "ino", "pre", "vol")

    def __init__(self, vol: Volume, export: Export, export_id: int, ino: int, cred: Cred) -> None:
        self.vol = vol
        self.export = export
        self.export_id = export_id
        self.ino = ino
        self.cred = cred
        self.pre: t.WccAttr | None = None

    @property
    def fs(self) -> fsmod.FileSystem:
        return self.vol.fs

    def fh(self, ino: int) -> bytes:
        return self.vol.handle(self.export_id, ino)

    def attr(self, ino: int | None = None) -> t.Fattr | None:
        """post_op_attr of ``ino`` (default: this handle's inode); absent if it is gone."""
        try:
            return fattr(self.fs.getattr(self.ino if ino is None else ino), self.fs.fsid)
        except FsError:
            return None

    def take_pre(self) -> None:
        """Keep the pre-operation attributes (wcc_attr) for ``wcc``."""
        try:
            self.pre = wcc_attr(self.fs.getattr(self.ino))
        except FsError:
            self.pre = None

    def wcc(self) -> t.WccData:
        """wcc_data of this handle: the attributes before and after the operation."""
        return t.WccData(self.pre, self.attr())


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


class Failure:
    """A procedure's failure arm (RFC 1813 ``resfail``), derived from its result declaration.

    The arm is void, or one post_op_attr / wcc_data per file handle of the arguments, in
    argument order (RENAME: both directories' wcc_data; LINK: the file's post_op_attr and the
    directory's wcc_data). ``body`` fills it from the handles the call resolved; when they did
    not all resolve, or the device failed, the parts are empty (no attributes).
    """

    def __init__(self, name: str, arm: xdr.Type[Any]) -> None:
        self.make: Callable[..., Any] | None = None
        parts: list[xdr.Type[Any]] = [] if arm is xdr.Void else [arm]
        if isinstance(arm, xdr.Struct) and arm is not t.WCC_DATA:
            self.make = arm.cls
            parts = [typ for _, typ in arm.fields]
        post_op_attr = [isinstance(p, xdr.Optional) and p.inner is t.FATTR for p in parts]
        self.wcc = [p is t.WCC_DATA for p in parts]
        if not all(a or w for a, w in zip(post_op_attr, self.wcc, strict=True)):
            raise TypeError(f"{name}: failure arm is not post_op_attr / wcc_data per handle")

    def body(self, ctxs: list[Ctx] | None) -> Any:
        if ctxs is None:
            parts: list[Any] = [t.NO_WCC if w else None for w in self.wcc]
        else:
            parts = [c.wcc() if w else c.attr() for w, c in zip(self.wcc, ctxs, strict=False)]
        if self.make is not None:
            return self.make(*parts)
        return parts[0] if parts else None


def _handle_paths(args: xdr.Type[Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where the file handles (nfs_fh3) are in an argument declaration, in wire order."""
    if args is t.FH:
        return [path]
    if isinstance(args, xdr.Struct):
        return [p for name, typ in args.fields for p in _handle_paths(typ, (*path, name))]
    return []


def _get(value: Any, path: tuple[str, ...]) -> bytes:
    for name in path:
        value = getattr(value, name)
    fh: bytes = value
    return fh


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

    def _wrap(
        self, name: str, args: xdr.Type[Any], res: xdr.Union, fn: Callable[..., Any], *, modifies: bool, sync: bool
    ) -> Callable[[Call, Any], tuple[int, Any]]:
        """The one place where a call's handles are resolved and its failures answered.

        Resolves every file handle of the arguments in order (``_resolve``; ``modifies`` adds
        the ROFS check; handles on two volumes are XDEV), takes the pre-operation attributes
        of those the failure arm reports as wcc_data, and calls ``fn(call, args, *ctxs)``,
        which returns its typed OK body. ``NfsError`` and ``FsError`` become their nfsstat3
        with the failure arm built by ``Failure``; a device or metadata-store error
        (``OSError``, ``apsw.Error``) is NFS3ERR_IO with empty attributes. ``sync``: the reply
        waits for the next group commit even when the procedure fails part way.
        """
        paths = _handle_paths(args)
        failure = Failure(name, res.default or xdr.Void)

        def handler(call: Call, a: Any) -> tuple[int, Any]:
            if sync:
                call.needs_commit = True
            ctxs: list[Ctx] | None = None
            try:
                resolved = [self._resolve(call, _get(a, p), write=modifies) for p in paths]
                if any(c.vol is not resolved[0].vol for c in resolved):
                    raise NfsError(t.Stat.XDEV)
                for c, wcc in zip(resolved, failure.wcc, strict=False):
                    if wcc:
                        c.take_pre()
                ctxs = resolved
                return t.Stat.OK, fn(call, a, *resolved)
            except NfsError as e:
                stat = e.stat
            except FsError as e:
                stat = ERRNO_TO_STAT.get(e.errno, t.Stat.IO)
            except (OSError, apsw.Error) as exc:
                log.error("%s failed on the device: %s", name, exc)
                return t.Stat.IO, failure.body(None)
            return stat, failure.body(ctxs)

        return handler

    # -- procedures: each gets its resolved handles and returns its OK body ------------------

    def null(self, call: Call, args: None) -> None:
        return None

    def getattr(self, call: Call, fh: bytes, ctx: Ctx) -> t.Fattr:
        return fattr(ctx.fs.getattr(ctx.ino), ctx.fs.fsid)

    def setattr(self, call: Call, args: t.SetattrArgs, ctx: Ctx) -> t.WccData:
        if args.guard is not None:
            cur = ctx.fs.getattr(ctx.ino)
            if t.NfsTime.from_ns(cur.ctime) != args.guard:
                raise NfsError(t.Stat.NOT_SYNC)
        call.needs_commit = ctx.fs.setattr(ctx.ino, _setattr(args.new_attributes), ctx.cred)
        return ctx.wcc()

    def lookup(self, call: Call, args: t.DirOpArgs, ctx: Ctx) -> t.LookupOk:
        if args.name == b".." and ctx.ino == ctx.vol.roots.get(ctx.export_id):
            ino = ctx.ino
        else:
            ino = ctx.fs.lookup(ctx.ino, args.name, ctx.cred)
        return t.LookupOk(ctx.fh(ino), ctx.attr(ino), ctx.attr())

    def access(self, call: Call, args: t.AccessArgs, ctx: Ctx) -> t.AccessOk:
        a = ctx.fs.getattr(ctx.ino)
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
        return t.AccessOk(fattr(a, fs.fsid), granted)

    def readlink(self, call: Call, fh: bytes, ctx: Ctx) -> t.ReadlinkOk:
        return t.ReadlinkOk(ctx.attr(), ctx.fs.readlink(ctx.ino))

    def read(self, call: Call, args: t.ReadArgs, ctx: Ctx) -> t.ReadOk:
        data, eof, a = ctx.fs.read(ctx.ino, args.offset, min(args.count, MAX_IO), ctx.cred)
        return t.ReadOk(fattr(a, ctx.fs.fsid), len(data), eof, data)

    def write(self, call: Call, args: t.WriteArgs, ctx: Ctx) -> t.WriteOk:
        data = args.data
        if args.count < len(data):
            data = data[: args.count]
        elif args.count > len(data):
            raise NfsError(t.Stat.INVAL)
        if len(data) > MAX_IO:
            raise NfsError(t.Stat.INVAL)
        a = ctx.fs.write(ctx.ino, args.offset, data, ctx.cred, stable=args.stable != t.StableHow.UNSTABLE)
        committed = t.StableHow.UNSTABLE
        if args.stable != t.StableHow.UNSTABLE:
            call.needs_commit = True
            committed = t.StableHow.FILE_SYNC
        a.used = ((a.size + fsmod.BLOCK - 1) // fsmod.BLOCK) * fsmod.BLOCK
        wcc = t.WccData(ctx.pre, fattr(a, ctx.fs.fsid))
        return t.WriteOk(wcc, len(data), committed, ctx.vol.write_verifier)

    @staticmethod
    def _made(ctx: Ctx, ino: int) -> t.CreateOk:
        return t.CreateOk(ctx.fh(ino), ctx.attr(ino), ctx.wcc())

    def create(self, call: Call, args: t.CreateArgs, ctx: Ctx) -> t.CreateOk:
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
        if mode_kind == t.CreateMode.EXCLUSIVE:
            ino, _ = ctx.fs.create(ctx.ino, name, ctx.cred, mode=0o644, exclusive=bytes(body))
            return self._made(ctx, ino)
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
        return self._made(ctx, ino)

    def mkdir(self, call: Call, args: t.MkdirArgs, ctx: Ctx) -> t.CreateOk:
        sattr = args.attributes
        mode = sattr.mode if sattr.mode is not None else 0o755
        return self._made(ctx, ctx.fs.mkdir(ctx.ino, args.where.name, ctx.cred, mode=mode))

    def symlink(self, call: Call, args: t.SymlinkArgs, ctx: Ctx) -> t.CreateOk:
        return self._made(ctx, ctx.fs.symlink(ctx.ino, args.where.name, args.symlink_data, ctx.cred))

    def mknod(self, call: Call, args: t.MknodArgs, ctx: Ctx) -> t.CreateOk:
        """MKNOD (RFC 1813 §3.3.11): FIFOs, sockets and (root only) character/block devices.

        ``specdata1``/``specdata2`` of a device are stored as its major/minor and come back
        as ``rawdev`` in fattr3. Mode comes from the sattr3 (default 0644); owner and times
        are applied like CREATE's, size is ignored (special files have none). Any other type
        is BADTYPE. Special files are never opened by the server: READ/WRITE get INVAL.
        """
        kind, body = args.what
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
        return self._made(ctx, ino)

    def remove(self, call: Call, args: t.DirOpArgs, ctx: Ctx) -> t.WccData:
        ctx.fs.remove(ctx.ino, args.name, ctx.cred)
        return ctx.wcc()

    def rmdir(self, call: Call, args: t.DirOpArgs, ctx: Ctx) -> t.WccData:
        ctx.fs.rmdir(ctx.ino, args.name, ctx.cred)
        return ctx.wcc()

    def rename(self, call: Call, args: t.RenameArgs, src: Ctx, dst: Ctx) -> t.RenameRes:
        src.fs.rename(src.ino, args.from_.name, dst.ino, args.to.name, src.cred)
        return t.RenameRes(src.wcc(), dst.wcc())

    def link(self, call: Call, args: t.LinkArgs, f: Ctx, d: Ctx) -> t.LinkRes:
        f.fs.link(f.ino, d.ino, args.link.name, d.cred)
        return t.LinkRes(f.attr(), d.wcc())

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

    def readdir(self, call: Call, args: t.ReaddirArgs, ctx: Ctx) -> t.ReaddirOk:
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
            raise NfsError(t.Stat.TOOSMALL)
        return t.ReaddirOk(ctx.attr(), self._cookieverf(ctx), out, eof)

    def readdirplus(self, call: Call, args: t.ReaddirplusArgs, ctx: Ctx) -> t.ReaddirplusOk:
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
            except FsError:  # removed since readdir: listed without attributes or handle
                out.append(t.EntryPlus(ino, ent.name, ent.cookie, None, None))
        if not out and not eof:
            raise NfsError(t.Stat.TOOSMALL)
        return t.ReaddirplusOk(ctx.attr(), self._cookieverf(ctx), out, eof)

    def fsstat(self, call: Call, fh: bytes, ctx: Ctx) -> t.FsstatOk:
        s = ctx.fs.fsstat(ctx.ino)  # inside a directory quota: the quota tree's own figures
        return t.FsstatOk(
            ctx.attr(), s.total_bytes, s.free_bytes, s.free_bytes, s.total_files, s.free_files, s.free_files, 0
        )

    def fsinfo(self, call: Call, fh: bytes, ctx: Ctx) -> t.FsinfoOk:
        return t.FsinfoOk(
            obj_attributes=ctx.attr(),
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

    def pathconf(self, call: Call, fh: bytes, ctx: Ctx) -> t.PathconfOk:
        return t.PathconfOk(ctx.attr(), 0xFFFFFFFF, fsmod.NAME_MAX, True, True, False, True)

    def commit(self, call: Call, args: t.CommitArgs, ctx: Ctx) -> t.CommitOk:
        call.needs_commit = True
        return t.CommitOk(ctx.wcc(), ctx.vol.write_verifier)

    # -- the program table ------------------------------------------------------------------

    def program(self) -> Program:
        def P(
            name: str,
            args: xdr.Type[Any],
            res: xdr.Union,
            fn: Callable[..., Any],
            *,
            modifies: bool = False,
            sync: bool = False,
        ) -> Procedure:
            """``modifies``: ROFS on a read-only export, and kept in the duplicate request cache
            (the non-idempotent procedures are the modifying ones); ``sync``: see ``_wrap``."""
            return Procedure(name, args, res, self._wrap(name, args, res, fn, modifies=modifies, sync=sync), modifies)

        procs = {
            0: Procedure("NULL", xdr.Void, xdr.Void, self.null),
            1: P("GETATTR", t.FH, t.GETATTR_RES, self.getattr),
            2: P("SETATTR", t.SETATTR_ARGS, t.WCC_RES, self.setattr, modifies=True, sync=True),
            3: P("LOOKUP", t.DIROPARGS, t.LOOKUP_RES, self.lookup),
            4: P("ACCESS", t.ACCESS_ARGS, t.ACCESS_RES, self.access),
            5: P("READLINK", t.FH, t.READLINK_RES, self.readlink),
            6: P("READ", t.READ_ARGS, t.READ_RES, self.read),
            7: P("WRITE", t.WRITE_ARGS, t.WRITE_RES, self.write, modifies=True),
            8: P("CREATE", t.CREATE_ARGS, t.CREATE_RES, self.create, modifies=True, sync=True),
            9: P("MKDIR", t.MKDIR_ARGS, t.CREATE_RES, self.mkdir, modifies=True, sync=True),
            10: P("SYMLINK", t.SYMLINK_ARGS, t.CREATE_RES, self.symlink, modifies=True, sync=True),
            11: P("MKNOD", t.MKNOD_ARGS, t.CREATE_RES, self.mknod, modifies=True, sync=True),
            12: P("REMOVE", t.DIROPARGS, t.WCC_RES, self.remove, modifies=True, sync=True),
            13: P("RMDIR", t.DIROPARGS, t.WCC_RES, self.rmdir, modifies=True, sync=True),
            14: P("RENAME", t.RENAME_ARGS, t.RENAME_RES, self.rename, modifies=True, sync=True),
            15: P("LINK", t.LINK_ARGS, t.LINK_RES, self.link, modifies=True, sync=True),
            16: P("READDIR", t.READDIR_ARGS, t.READDIR_RES, self.readdir),
            17: P("READDIRPLUS", t.READDIRPLUS_ARGS, t.READDIRPLUS_RES, self.readdirplus),
            18: P("FSSTAT", t.FH, t.FSSTAT_RES, self.fsstat),
            19: P("FSINFO", t.FH, t.FSINFO_RES, self.fsinfo),
            20: P("PATHCONF", t.FH, t.PATHCONF_RES, self.pathconf),
            21: P("COMMIT", t.COMMIT_ARGS, t.COMMIT_RES, self.commit),
        }
        return Program(t.NFS_PROGRAM, {t.NFS_V3: procs}, name="nfs", transports=frozenset({"tcp"}))


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
