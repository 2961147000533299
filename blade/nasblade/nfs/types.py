"""NFSv3 (RFC 1813 §2-3), MOUNT v3 (RFC 1813 §5) and portmapper v2 wire types, declared once.

Each struct is a dataclass whose field annotations carry the XDR types (``xdr.U64``,
``Fh``, ``PostOpAttr``…), in wire order; its codec (``FATTR = xdr.struct(Fattr)``) is derived
from that one declaration. Results are ``xdr.Union`` values ``(status, body)`` whose OK arm
(the procedure's ``…Ok`` dataclass) and failure arm are declared here.
``nasblade.nfs.nfs3``, ``nasblade.nfs.mount`` and ``nasblade.nfs.portmap`` build and consume
these values.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Any, TypeAlias

from nasblade.rpc import xdr

NFS_PROGRAM = 100003
NFS_V3 = 3
MOUNT_PROGRAM = 100005
MOUNT_V3 = 3
PMAP_PROGRAM = 100000
PMAP_V2 = 2
FHSIZE3 = 64
NFS3_WRITEVERFSIZE = 8
NFS3_CREATEVERFSIZE = 8
NFS3_COOKIEVERFSIZE = 8


class Stat(enum.IntEnum):
    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    NXIO = 6
    ACCES = 13
    EXIST = 17
    XDEV = 18
    NODEV = 19
    NOTDIR = 20
    ISDIR = 21
    INVAL = 22
    FBIG = 27
    NOSPC = 28
    ROFS = 30
    MLINK = 31
    NAMETOOLONG = 63
    NOTEMPTY = 66
    DQUOT = 69
    STALE = 70
    REMOTE = 71
    BADHANDLE = 10001
    NOT_SYNC = 10002
    BAD_COOKIE = 10003
    NOTSUPP = 10004
    TOOSMALL = 10005
    SERVERFAULT = 10006
    BADTYPE = 10007
    JUKEBOX = 10008


class StableHow(enum.IntEnum):
    UNSTABLE = 0
    DATA_SYNC = 1
    FILE_SYNC = 2


class CreateMode(enum.IntEnum):
    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


class TimeHow(enum.IntEnum):
    DONT_CHANGE = 0
    SET_TO_SERVER_TIME = 1
    SET_TO_CLIENT_TIME = 2


ACCESS_READ = 0x01
ACCESS_LOOKUP = 0x02
ACCESS_MODIFY = 0x04
ACCESS_EXTEND = 0x08
ACCESS_DELETE = 0x10
ACCESS_EXECUTE = 0x20

FSF_LINK = 0x01
FSF_SYMLINK = 0x02
FSF_HOMOGENEOUS = 0x08
FSF_CANSETTIME = 0x10

FH = xdr.Opaque(FHSIZE3)
FILENAME = xdr.String()
PATH = xdr.String()
VERF8 = xdr.FixedOpaque(8)
FTYPE = xdr.Enum(range(1, 8))

# Field annotations of the RFC's named types (the codec rides along in ``Annotated``).
Fh: TypeAlias = Annotated[bytes, FH]  # nfs_fh3
Filename: TypeAlias = Annotated[bytes, FILENAME]
Path: TypeAlias = Annotated[bytes, PATH]
Verf: TypeAlias = Annotated[bytes, VERF8]  # writeverf3, createverf3, cookieverf3
Discriminated: TypeAlias = tuple[int, Any]  # an xdr.Union value: (discriminant, arm)


@dataclasses.dataclass
class NfsTime:
    seconds: xdr.U32
    nseconds: xdr.U32

    @classmethod
    def from_ns(cls, ns: int) -> NfsTime:
        s, n = divmod(max(ns, 0), 1_000_000_000)
        return cls(s & 0xFFFFFFFF, n)

    def to_ns(self) -> int:
        return self.seconds * 1_000_000_000 + min(self.nseconds, 999_999_999)


NFSTIME = xdr.struct(NfsTime)


@dataclasses.dataclass
class SpecData:
    specdata1: xdr.U32
    specdata2: xdr.U32


SPECDATA = xdr.struct(SpecData)


@dataclasses.dataclass
class Fattr:
    type: Annotated[int, FTYPE]
    mode: xdr.U32
    nlink: xdr.U32
    uid: xdr.U32
    gid: xdr.U32
    size: xdr.U64
    used: xdr.U64
    rdev: SpecData
    fsid: xdr.U64
    fileid: xdr.U64
    atime: NfsTime
    mtime: NfsTime
    ctime: NfsTime


FATTR = xdr.struct(Fattr)
PostOpAttr: TypeAlias = Fattr | None  # post_op_attr
POST_OP_ATTR = xdr.field_type(PostOpAttr)


@dataclasses.dataclass
class WccAttr:
    size: xdr.U64
    mtime: NfsTime
    ctime: NfsTime


WCC_ATTR = xdr.struct(WccAttr)


@dataclasses.dataclass
class WccData:
    before: WccAttr | None
    after: PostOpAttr


WCC_DATA = xdr.struct(WccData)
NO_WCC = WccData(None, None)
POST_OP_FH = xdr.field_type(Fh | None)

# set_mode3 / set_uid3 / set_gid3 / set_size3 are "optional" unions on a bool.
SET_U32 = xdr.field_type(xdr.U32 | None)
SET_U64 = xdr.field_type(xdr.U64 | None)
SET_TIME = xdr.Union({TimeHow.DONT_CHANGE: xdr.Void, TimeHow.SET_TO_SERVER_TIME: xdr.Void, TimeHow.SET_TO_CLIENT_TIME: NFSTIME})


@dataclasses.dataclass
class Sattr:
    mode: xdr.U32 | None = None
    uid: xdr.U32 | None = None
    gid: xdr.U32 | None = None
    size: xdr.U64 | None = None
    atime: Annotated[Discriminated, SET_TIME] = (TimeHow.DONT_CHANGE, None)
    mtime: Annotated[Discriminated, SET_TIME] = (TimeHow.DONT_CHANGE, None)


SATTR = xdr.struct(Sattr)


@dataclasses.dataclass
class DirOpArgs:
    dir: Fh
    name: Filename


DIROPARGS = xdr.struct(DirOpArgs)


def result(ok: xdr.Type[Any], fail: xdr.Type[Any]) -> xdr.Union:
    """``union switch (nfsstat3 status) { case NFS3_OK: ok; default: fail; }``."""
    return xdr.Union({Stat.OK: ok}, default=fail)


# -- per-procedure arguments and results (RFC 1813 §3.3) ------------------------------------

GETATTR_RES = result(FATTR, xdr.Void)


@dataclasses.dataclass
class SetattrArgs:
    object: Fh
    new_attributes: Sattr
    guard: NfsTime | None


SETATTR_ARGS = xdr.struct(SetattrArgs)


@dataclasses.dataclass
class LookupOk:
    object: Fh
    obj_attributes: PostOpAttr
    dir_attributes: PostOpAttr


LOOKUP_RES = result(xdr.struct(LookupOk), POST_OP_ATTR)


@dataclasses.dataclass
class AccessArgs:
    object: Fh
    access: xdr.U32


ACCESS_ARGS = xdr.struct(AccessArgs)


@dataclasses.dataclass
class AccessOk:
    obj_attributes: PostOpAttr
    access: xdr.U32


ACCESS_RES = result(xdr.struct(AccessOk), POST_OP_ATTR)


@dataclasses.dataclass
class ReadlinkOk:
    symlink_attributes: PostOpAttr
    data: Path


READLINK_RES = result(xdr.struct(ReadlinkOk), POST_OP_ATTR)


@dataclasses.dataclass
class ReadArgs:
    file: Fh
    offset: xdr.U64
    count: xdr.U32


READ_ARGS = xdr.struct(ReadArgs)


@dataclasses.dataclass
class ReadOk:
    file_attributes: PostOpAttr
    count: xdr.U32
    eof: bool
    data: Annotated[bytes | memoryview, xdr.Bulk()]


READ_RES = result(xdr.struct(ReadOk), POST_OP_ATTR)


@dataclasses.dataclass
class WriteArgs:
    file: Fh
    offset: xdr.U64
    count: xdr.U32
    stable: Annotated[int, xdr.Enum(list(StableHow))]
    data: Annotated[memoryview, xdr.Bulk()]


WRITE_ARGS = xdr.struct(WriteArgs)


@dataclasses.dataclass
class WriteOk:
    file_wcc: WccData
    count: xdr.U32
    committed: xdr.U32
    verf: Verf


WRITE_RES = result(xdr.struct(WriteOk), WCC_DATA)

CREATEHOW = xdr.Union({CreateMode.UNCHECKED: SATTR, CreateMode.GUARDED: SATTR, CreateMode.EXCLUSIVE: VERF8})


@dataclasses.dataclass
class CreateArgs:
    where: DirOpArgs
    how: Annotated[Discriminated, CREATEHOW]


CREATE_ARGS = xdr.struct(CreateArgs)


@dataclasses.dataclass
class CreateOk:
    obj: Fh | None
    obj_attributes: PostOpAttr
    dir_wcc: WccData


CREATE_RES = result(xdr.struct(CreateOk), WCC_DATA)


@dataclasses.dataclass
class MkdirArgs:
    where: DirOpArgs
    attributes: Sattr


MKDIR_ARGS = xdr.struct(MkdirArgs)


@dataclasses.dataclass
class SymlinkArgs:
    where: DirOpArgs
    symlink_attributes: Sattr
    symlink_data: Path


SYMLINK_ARGS = xdr.struct(SymlinkArgs)


@dataclasses.dataclass
class DeviceData:
    dev_attributes: Sattr
    spec: SpecData


DEVICEDATA = xdr.struct(DeviceData)
MKNODDATA = xdr.Union({3: DEVICEDATA, 4: DEVICEDATA, 6: SATTR, 7: SATTR}, default=xdr.Void)


@dataclasses.dataclass
class MknodArgs:
    where: DirOpArgs
    what: Annotated[Discriminated, MKNODDATA]


MKNOD_ARGS = xdr.struct(MknodArgs)
WCC_RES = result(WCC_DATA, WCC_DATA)


@dataclasses.dataclass
class RenameArgs:
    from_: DirOpArgs
    to: DirOpArgs


RENAME_ARGS = xdr.struct(RenameArgs)


@dataclasses.dataclass
class RenameRes:
    fromdir_wcc: WccData
    todir_wcc: WccData


RENAME_RES = result(xdr.struct(RenameRes), xdr.struct(RenameRes))


@dataclasses.dataclass
class LinkArgs:
    file: Fh
    link: DirOpArgs


LINK_ARGS = xdr.struct(LinkArgs)


@dataclasses.dataclass
class LinkRes:
    file_attributes: PostOpAttr
    linkdir_wcc: WccData


LINK_RES = result(xdr.struct(LinkRes), xdr.struct(LinkRes))


@dataclasses.dataclass
class ReaddirArgs:
    dir: Fh
    cookie: xdr.U64
    cookieverf: Verf
    count: xdr.U32


READDIR_ARGS = xdr.struct(ReaddirArgs)


@dataclasses.dataclass
class Entry:
    fileid: xdr.U64
    name: Filename
    cookie: xdr.U64


ENTRY = xdr.struct(Entry)


@dataclasses.dataclass
class ReaddirOk:
    dir_attributes: PostOpAttr
    cookieverf: Verf
    entries: Annotated[list[Entry], xdr.LinkedList(ENTRY)]
    eof: bool


READDIR_RES = result(xdr.struct(ReaddirOk), POST_OP_ATTR)


@dataclasses.dataclass
class ReaddirplusArgs:
    dir: Fh
    cookie: xdr.U64
    cookieverf: Verf
    dircount: xdr.U32
    maxcount: xdr.U32


READDIRPLUS_ARGS = xdr.struct(ReaddirplusArgs)


@dataclasses.dataclass
class EntryPlus:
    fileid: xdr.U64
    name: Filename
    cookie: xdr.U64
    name_attributes: PostOpAttr
    name_handle: Fh | None


ENTRYPLUS = xdr.struct(EntryPlus)


@dataclasses.dataclass
class ReaddirplusOk:
    dir_attributes: PostOpAttr
    cookieverf: Verf
    entries: Annotated[list[EntryPlus], xdr.LinkedList(ENTRYPLUS)]
    eof: bool


READDIRPLUS_RES = result(xdr.struct(ReaddirplusOk), POST_OP_ATTR)


@dataclasses.dataclass
class FsstatOk:
    obj_attributes: PostOpAttr
    tbytes: xdr.U64
    fbytes: xdr.U64
    abytes: xdr.U64
    tfiles: xdr.U64
    ffiles: xdr.U64
    afiles: xdr.U64
    invarsec: xdr.U32


FSSTAT_RES = result(xdr.struct(FsstatOk), POST_OP_ATTR)


@dataclasses.dataclass
class FsinfoOk:
    obj_attributes: PostOpAttr
    rtmax: xdr.U32
    rtpref: xdr.U32
    rtmult: xdr.U32
    wtmax: xdr.U32
    wtpref: xdr.U32
    wtmult: xdr.U32
    dtpref: xdr.U32
    maxfilesize: xdr.U64
    time_delta: NfsTime
    properties: xdr.U32


FSINFO_RES = result(xdr.struct(FsinfoOk), POST_OP_ATTR)


@dataclasses.dataclass
class PathconfOk:
    obj_attributes: PostOpAttr
    linkmax: xdr.U32
    name_max: xdr.U32
    no_trunc: bool
    chown_restricted: bool
    case_insensitive: bool
    case_preserving: bool


PATHCONF_RES = result(xdr.struct(PathconfOk), POST_OP_ATTR)


@dataclasses.dataclass
class CommitArgs:
    file: Fh
    offset: xdr.U64
    count: xdr.U32


COMMIT_ARGS = xdr.struct(CommitArgs)


@dataclasses.dataclass
class CommitOk:
    file_wcc: WccData
    verf: Verf


COMMIT_RES = result(xdr.struct(CommitOk), WCC_DATA)

# -- MOUNT v3 -------------------------------------------------------------------------------


class MountStat(enum.IntEnum):
    OK = 0
    PERM = 1
    NOENT = 2
    IO = 5
    ACCES = 13
    NOTDIR = 20
    INVAL = 22
    NAMETOOLONG = 63
    NOTSUPP = 10004
    SERVERFAULT = 10006


DIRPATH = xdr.String(1024)
Name: TypeAlias = Annotated[bytes, xdr.String(255)]


@dataclasses.dataclass
class MountOk:
    fhandle: Fh
    auth_flavors: Annotated[list[int], xdr.Array(xdr.Int)]


MOUNT_RES = xdr.Union({MountStat.OK: xdr.struct(MountOk)}, default=xdr.Void)


@dataclasses.dataclass
class MountBody:
    hostname: Name
    directory: Annotated[bytes, DIRPATH]


MOUNTLIST = xdr.LinkedList(xdr.struct(MountBody))


@dataclasses.dataclass
class ExportNode:
    ex_dir: Annotated[bytes, DIRPATH]
    ex_groups: Annotated[list[bytes], xdr.LinkedList(xdr.String(255))]


EXPORTS = xdr.LinkedList(xdr.struct(ExportNode))

# -- portmapper v2 (RFC 1833 §3) ------------------------------------------------------------

IPPROTO_TCP = 6
IPPROTO_UDP = 17


@dataclasses.dataclass
class Mapping:
    prog: xdr.U32
    vers: xdr.U32
    prot: xdr.U32
    port: xdr.U32


MAPPING = xdr.struct(Mapping)
PMAPLIST = xdr.LinkedList(MAPPING)
