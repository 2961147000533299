"""NFSv3 (RFC 1813 §2-3) and MOUNT v3 (RFC 1813 §5) wire types, declared once.

Each struct is a dataclass plus an ``xdr.Struct`` declaration in wire order; results are
``xdr.Union`` values ``(status, body)`` whose OK arm and failure arm are declared here.
``nasblade.nfs.nfs3`` and ``nasblade.nfs.mount`` build and consume these values.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

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


@dataclasses.dataclass
class NfsTime:
    seconds: int
    nseconds: int

    @classmethod
    def from_ns(cls, ns: int) -> NfsTime:
        s, n = divmod(max(ns, 0), 1_000_000_000)
        return cls(s & 0xFFFFFFFF, n)

    def to_ns(self) -> int:
        return self.seconds * 1_000_000_000 + min(self.nseconds, 999_999_999)


NFSTIME = xdr.Struct(NfsTime, [("seconds", xdr.UInt), ("nseconds", xdr.UInt)])


@dataclasses.dataclass
class SpecData:
    specdata1: int
    specdata2: int


SPECDATA = xdr.Struct(SpecData, [("specdata1", xdr.UInt), ("specdata2", xdr.UInt)])


@dataclasses.dataclass
class Fattr:
    type: int
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev: SpecData
    fsid: int
    fileid: int
    atime: NfsTime
    mtime: NfsTime
    ctime: NfsTime


FATTR = xdr.Struct(
    Fattr,
    [
        ("type", FTYPE),
        ("mode", xdr.UInt),
        ("nlink", xdr.UInt),
        ("uid", xdr.UInt),
        ("gid", xdr.UInt),
        ("size", xdr.UHyper),
        ("used", xdr.UHyper),
        ("rdev", SPECDATA),
        ("fsid", xdr.UHyper),
        ("fileid", xdr.UHyper),
        ("atime", NFSTIME),
        ("mtime", NFSTIME),
        ("ctime", NFSTIME),
    ],
)
POST_OP_ATTR = xdr.Optional(FATTR)


@dataclasses.dataclass
class WccAttr:
    size: int
    mtime: NfsTime
    ctime: NfsTime


WCC_ATTR = xdr.Struct(WccAttr, [("size", xdr.UHyper), ("mtime", NFSTIME), ("ctime", NFSTIME)])


@dataclasses.dataclass
class WccData:
    before: WccAttr | None
    after: Fattr | None


WCC_DATA = xdr.Struct(WccData, [("before", xdr.Optional(WCC_ATTR)), ("after", POST_OP_ATTR)])
NO_WCC = WccData(None, None)
POST_OP_FH = xdr.Optional(FH)

# set_mode3 / set_uid3 / set_gid3 / set_size3 are "optional" unions on a bool.
SET_U32 = xdr.Optional(xdr.UInt)
SET_U64 = xdr.Optional(xdr.UHyper)
SET_TIME = xdr.Union({TimeHow.DONT_CHANGE: xdr.Void, TimeHow.SET_TO_SERVER_TIME: xdr.Void, TimeHow.SET_TO_CLIENT_TIME: NFSTIME})


@dataclasses.dataclass
class Sattr:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: tuple[int, Any] = (TimeHow.DONT_CHANGE, None)
    mtime: tuple[int, Any] = (TimeHow.DONT_CHANGE, None)


SATTR = xdr.Struct(
    Sattr,
    [("mode", SET_U32), ("uid", SET_U32), ("gid", SET_U32), ("size", SET_U64), ("atime", SET_TIME), ("mtime", SET_TIME)],
)


@dataclasses.dataclass
class DirOpArgs:
    dir: bytes
    name: bytes


DIROPARGS = xdr.Struct(DirOpArgs, [("dir", FH), ("name", FILENAME)])


def result(ok: xdr.Type[Any], fail: xdr.Type[Any]) -> xdr.Union:
    """``union switch (nfsstat3 status) { case NFS3_OK: ok; default: fail; }``."""
    return xdr.Union({Stat.OK: ok}, default=fail)


# -- per-procedure arguments and results (RFC 1813 §3.3) ------------------------------------


@dataclasses.dataclass
class SetattrArgs:
    object: bytes
    new_attributes: Sattr
    guard: NfsTime | None


SETATTR_ARGS = xdr.Struct(SetattrArgs, [("object", FH), ("new_attributes", SATTR), ("guard", xdr.Optional(NFSTIME))])


@dataclasses.dataclass
class LookupOk:
    object: bytes
    obj_attributes: Fattr | None
    dir_attributes: Fattr | None


LOOKUP_RES = result(
    xdr.Struct(LookupOk, [("object", FH), ("obj_attributes", POST_OP_ATTR), ("dir_attributes", POST_OP_ATTR)]),
    POST_OP_ATTR,
)


@dataclasses.dataclass
class AccessArgs:
    object: bytes
    access: int


ACCESS_ARGS = xdr.Struct(AccessArgs, [("object", FH), ("access", xdr.UInt)])


@dataclasses.dataclass
class AccessOk:
    obj_attributes: Fattr | None
    access: int


ACCESS_RES = result(xdr.Struct(AccessOk, [("obj_attributes", POST_OP_ATTR), ("access", xdr.UInt)]), POST_OP_ATTR)


@dataclasses.dataclass
class ReadlinkOk:
    symlink_attributes: Fattr | None
    data: bytes


READLINK_RES = result(xdr.Struct(ReadlinkOk, [("symlink_attributes", POST_OP_ATTR), ("data", PATH)]), POST_OP_ATTR)


@dataclasses.dataclass
class ReadArgs:
    file: bytes
    offset: int
    count: int


READ_ARGS = xdr.Struct(ReadArgs, [("file", FH), ("offset", xdr.UHyper), ("count", xdr.UInt)])


@dataclasses.dataclass
class ReadOk:
    file_attributes: Fattr | None
    count: int
    eof: bool
    data: Any


READ_RES = result(
    xdr.Struct(ReadOk, [("file_attributes", POST_OP_ATTR), ("count", xdr.UInt), ("eof", xdr.Bool), ("data", xdr.Bulk())]),
    POST_OP_ATTR,
)


@dataclasses.dataclass
class WriteArgs:
    file: bytes
    offset: int
    count: int
    stable: int
    data: memoryview


WRITE_ARGS = xdr.Struct(
    WriteArgs,
    [
        ("file", FH),
        ("offset", xdr.UHyper),
        ("count", xdr.UInt),
        ("stable", xdr.Enum(list(StableHow))),
        ("data", xdr.Bulk()),
    ],
)


@dataclasses.dataclass
class WriteOk:
    file_wcc: WccData
    count: int
    committed: int
    verf: bytes


WRITE_RES = result(
    xdr.Struct(WriteOk, [("file_wcc", WCC_DATA), ("count", xdr.UInt), ("committed", xdr.UInt), ("verf", VERF8)]),
    WCC_DATA,
)

CREATEHOW = xdr.Union({CreateMode.UNCHECKED: SATTR, CreateMode.GUARDED: SATTR, CreateMode.EXCLUSIVE: VERF8})


@dataclasses.dataclass
class CreateArgs:
    where: DirOpArgs
    how: tuple[int, Any]


CREATE_ARGS = xdr.Struct(CreateArgs, [("where", DIROPARGS), ("how", CREATEHOW)])


@dataclasses.dataclass
class CreateOk:
    obj: bytes | None
    obj_attributes: Fattr | None
    dir_wcc: WccData


CREATE_RES = result(
    xdr.Struct(CreateOk, [("obj", POST_OP_FH), ("obj_attributes", POST_OP_ATTR), ("dir_wcc", WCC_DATA)]), WCC_DATA
)


@dataclasses.dataclass
class MkdirArgs:
    where: DirOpArgs
    attributes: Sattr


MKDIR_ARGS = xdr.Struct(MkdirArgs, [("where", DIROPARGS), ("attributes", SATTR)])


@dataclasses.dataclass
class SymlinkArgs:
    where: DirOpArgs
    symlink_attributes: Sattr
    symlink_data: bytes


SYMLINK_ARGS = xdr.Struct(
    SymlinkArgs, [("where", DIROPARGS), ("symlink_attributes", SATTR), ("symlink_data", PATH)]
)


@dataclasses.dataclass
class DeviceData:
    dev_attributes: Sattr
    spec: SpecData


DEVICEDATA = xdr.Struct(DeviceData, [("dev_attributes", SATTR), ("spec", SPECDATA)])
MKNODDATA = xdr.Union({3: DEVICEDATA, 4: DEVICEDATA, 6: SATTR, 7: SATTR}, default=xdr.Void)


@dataclasses.dataclass
class MknodArgs:
    where: DirOpArgs
    what: tuple[int, Any]


MKNOD_ARGS = xdr.Struct(MknodArgs, [("where", DIROPARGS), ("what", MKNODDATA)])
WCC_RES = result(WCC_DATA, WCC_DATA)


@dataclasses.dataclass
class RenameArgs:
    from_: DirOpArgs
    to: DirOpArgs


RENAME_ARGS = xdr.Struct(RenameArgs, [("from_", DIROPARGS), ("to", DIROPARGS)])


@dataclasses.dataclass
class RenameRes:
    fromdir_wcc: WccData
    todir_wcc: WccData


_RENAME_BODY = xdr.Struct(RenameRes, [("fromdir_wcc", WCC_DATA), ("todir_wcc", WCC_DATA)])
RENAME_RES = result(_RENAME_BODY, _RENAME_BODY)


@dataclasses.dataclass
class LinkArgs:
    file: bytes
    link: DirOpArgs


LINK_ARGS = xdr.Struct(LinkArgs, [("file", FH), ("link", DIROPARGS)])


@dataclasses.dataclass
class LinkRes:
    file_attributes: Fattr | None
    linkdir_wcc: WccData


_LINK_BODY = xdr.Struct(LinkRes, [("file_attributes", POST_OP_ATTR), ("linkdir_wcc", WCC_DATA)])
LINK_RES = result(_LINK_BODY, _LINK_BODY)


@dataclasses.dataclass
class ReaddirArgs:
    dir: bytes
    cookie: int
    cookieverf: bytes
    count: int


READDIR_ARGS = xdr.Struct(
    ReaddirArgs, [("dir", FH), ("cookie", xdr.UHyper), ("cookieverf", VERF8), ("count", xdr.UInt)]
)


@dataclasses.dataclass
class Entry:
    fileid: int
    name: bytes
    cookie: int


ENTRY = xdr.Struct(Entry, [("fileid", xdr.UHyper), ("name", FILENAME), ("cookie", xdr.UHyper)])


@dataclasses.dataclass
class ReaddirOk:
    dir_attributes: Fattr | None
    cookieverf: bytes
    entries: list[Entry]
    eof: bool


READDIR_RES = result(
    xdr.Struct(
        ReaddirOk,
        [("dir_attributes", POST_OP_ATTR), ("cookieverf", VERF8), ("entries", xdr.LinkedList(ENTRY)), ("eof", xdr.Bool)],
    ),
    POST_OP_ATTR,
)


@dataclasses.dataclass
class ReaddirplusArgs:
    dir: bytes
    cookie: int
    cookieverf: bytes
    dircount: int
    maxcount: int


READDIRPLUS_ARGS = xdr.Struct(
    ReaddirplusArgs,
    [("dir", FH), ("cookie", xdr.UHyper), ("cookieverf", VERF8), ("dircount", xdr.UInt), ("maxcount", xdr.UInt)],
)


@dataclasses.dataclass
class EntryPlus:
    fileid: int
    name: bytes
    cookie: int
    name_attributes: Fattr | None
    name_handle: bytes | None


ENTRYPLUS = xdr.Struct(
    EntryPlus,
    [
        ("fileid", xdr.UHyper),
        ("name", FILENAME),
        ("cookie", xdr.UHyper),
        ("name_attributes", POST_OP_ATTR),
        ("name_handle", POST_OP_FH),
    ],
)


@dataclasses.dataclass
class ReaddirplusOk:
    dir_attributes: Fattr | None
    cookieverf: bytes
    entries: list[EntryPlus]
    eof: bool


READDIRPLUS_RES = result(
    xdr.Struct(
        ReaddirplusOk,
        [
            ("dir_attributes", POST_OP_ATTR),
            ("cookieverf", VERF8),
            ("entries", xdr.LinkedList(ENTRYPLUS)),
            ("eof", xdr.Bool),
        ],
    ),
    POST_OP_ATTR,
)


@dataclasses.dataclass
class FsstatOk:
    obj_attributes: Fattr | None
    tbytes: int
    fbytes: int
    abytes: int
    tfiles: int
    ffiles: int
    afiles: int
    invarsec: int


FSSTAT_RES = result(
    xdr.Struct(
        FsstatOk,
        [("obj_attributes", POST_OP_ATTR)]
        + [(n, xdr.UHyper) for n in ("tbytes", "fbytes", "abytes", "tfiles", "ffiles", "afiles")]
        + [("invarsec", xdr.UInt)],
    ),
    POST_OP_ATTR,
)


@dataclasses.dataclass
class FsinfoOk:
    obj_attributes: Fattr | None
    rtmax: int
    rtpref: int
    rtmult: int
    wtmax: int
    wtpref: int
    wtmult: int
    dtpref: int
    maxfilesize: int
    time_delta: NfsTime
    properties: int


FSINFO_RES = result(
    xdr.Struct(
        FsinfoOk,
        [("obj_attributes", POST_OP_ATTR)]
        + [(n, xdr.UInt) for n in ("rtmax", "rtpref", "rtmult", "wtmax", "wtpref", "wtmult", "dtpref")]
        + [("maxfilesize", xdr.UHyper), ("time_delta", NFSTIME), ("properties", xdr.UInt)],
    ),
    POST_OP_ATTR,
)


@dataclasses.dataclass
class PathconfOk:
    obj_attributes: Fattr | None
    linkmax: int
    name_max: int
    no_trunc: bool
    chown_restricted: bool
    case_insensitive: bool
    case_preserving: bool


_PATHCONF_FIELDS: list[tuple[str, xdr.Type[Any]]] = [
    ("obj_attributes", POST_OP_ATTR),
    ("linkmax", xdr.UInt),
    ("name_max", xdr.UInt),
]
_PATHCONF_FIELDS += [(n, xdr.Bool) for n in ("no_trunc", "chown_restricted", "case_insensitive", "case_preserving")]
PATHCONF_RES = result(xdr.Struct(PathconfOk, _PATHCONF_FIELDS), POST_OP_ATTR)


@dataclasses.dataclass
class CommitArgs:
    file: bytes
    offset: int
    count: int


COMMIT_ARGS = xdr.Struct(CommitArgs, [("file", FH), ("offset", xdr.UHyper), ("count", xdr.UInt)])


@dataclasses.dataclass
class CommitOk:
    file_wcc: WccData
    verf: bytes


COMMIT_RES = result(xdr.Struct(CommitOk, [("file_wcc", WCC_DATA), ("verf", VERF8)]), WCC_DATA)

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


@dataclasses.dataclass
class MountOk:
    fhandle: bytes
    auth_flavors: list[int]


MOUNT_RES = xdr.Union({MountStat.OK: xdr.Struct(MountOk, [("fhandle", FH), ("auth_flavors", xdr.Array(xdr.Int))])}, default=xdr.Void)


@dataclasses.dataclass
class MountBody:
    hostname: bytes
    directory: bytes


MOUNTLIST = xdr.LinkedList(xdr.Struct(MountBody, [("hostname", xdr.String(255)), ("directory", DIRPATH)]))


@dataclasses.dataclass
class ExportNode:
    ex_dir: bytes
    ex_groups: list[bytes]


_EXPORT_FIELDS: list[tuple[str, xdr.Type[Any]]] = [("ex_dir", DIRPATH), ("ex_groups", xdr.LinkedList(xdr.String(255)))]
EXPORTS = xdr.LinkedList(xdr.Struct(ExportNode, _EXPORT_FIELDS))

# -- portmapper v2 (RFC 1833 §3) ------------------------------------------------------------

IPPROTO_TCP = 6
IPPROTO_UDP = 17


@dataclasses.dataclass
class Mapping:
    prog: int
    vers: int
    prot: int
    port: int


MAPPING = xdr.Struct(Mapping, [("prog", xdr.UInt), ("vers", xdr.UInt), ("prot", xdr.UInt), ("port", xdr.UInt)])
PMAPLIST = xdr.LinkedList(MAPPING)
