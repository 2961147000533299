"""``FileSystem``: inodes, directories and extent-mapped file data on one block device.

Metadata (inodes, directory entries, extents, the free-space map, counters and the handle
secret) lives in an SQLite database stored on the LU through ``nasblade.fs.vfs``; file data
lives in 4 KiB blocks of the data region, mapped by extents ``(ino, lblk, nblk, pblk)`` and
written with one ``pwrite`` per physically contiguous run.

Transactions and durability (docs/file-system.md has the full argument):

- Every operation runs inside a SAVEPOINT of one long *group transaction*, so a failing
  operation leaves no partial change and many operations share one commit.
- ``commit()`` is the group commit: if file data was written since the last barrier it first
  flushes the device (data before the metadata that points at it, like ext4 data=ordered),
  then returns the blocks freed in this transaction to the free map and commits; the WAL
  ``xSync`` is the second flush. Callers (the NFS layer) reply to a stable request only after
  the ``commit()`` that covers it returned.
- Blocks freed by an uncommitted transaction are not reused before it commits, so a crash can
  never leave a surviving file pointing at blocks another file overwrote.
- Bytes past EOF inside the last block are always zero (new blocks are zero-padded, a
  truncation zeroes the tail), so extending a file never exposes old data.

Directories are indexed by ``(dir, name)`` and by ``(dir, cookie)``: lookups are B-tree
searches and READDIR resumes at a cookie, a per-directory counter assigned at link time that
never changes while the entry exists, so cookies stay valid across directory changes.
Permission checks use ``Cred`` (the AUTH_SYS identity after squashing).

Directory quotas (tree quotas, like XFS project quotas): a directory can be made a *quota root*
with a byte limit (``set_quota``); every inode records the quota root it lies under
(``inode.qroot``: 0 outside any quota tree, the root itself for a quota root) and the ``quota``
table keeps each root's limit and exact usage (``quota_bytes_sql``), updated in the same SAVEPOINT
as the change that causes it. Growth past the limit fails with EDQUOT; hard links and renames
across a quota boundary fail with EXDEV; quota trees do not nest.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator
from typing import Any

import apsw

from nasblade.blockdev import BlockDevice
from nasblade.fs import layout, vfs
from nasblade.fs.datacache import Budget, DataCache
from nasblade.fs.readahead import ReadAhead
from nasblade.fs.writebehind import WriteBehind

log = logging.getLogger(__name__)

ROOT_INO = 1
NAME_MAX = 255
PATH_MAX = 4096
BLOCK = layout.BLOCK
MAX_SIZE = (1 << 63) - 1
# Regular files up to this size keep their data in the inode row ("inline"), so their data
# and metadata commit together with one flush; a file that grows past it moves to extents.
INLINE_MAX = 8192

SCHEMA = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE inode(
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    gen INTEGER NOT NULL,
    type INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    nlink INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    gid INTEGER NOT NULL,
    size INTEGER NOT NULL,
    atime INTEGER NOT NULL,
    mtime INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    rdev INTEGER NOT NULL DEFAULT 0,
    parent INTEGER NOT NULL DEFAULT 0,
    next_cookie INTEGER NOT NULL DEFAULT 3,
    target BLOB,
    verf BLOB,
    inline BLOB,
    qroot INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE dirent(
    dir INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, cookie INTEGER NOT NULL,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
CREATE UNIQUE INDEX dirent_cookie ON dirent(dir, cookie);
CREATE TABLE extent(
    ino INTEGER NOT NULL, lblk INTEGER NOT NULL, nblk INTEGER NOT NULL, pblk INTEGER NOT NULL,
    PRIMARY KEY (ino, lblk)
) WITHOUT ROWID;
CREATE TABLE free(start INTEGER PRIMARY KEY, len INTEGER NOT NULL);
CREATE INDEX free_len ON free(len, start);
CREATE TABLE quota(
    root INTEGER PRIMARY KEY, limit_bytes INTEGER NOT NULL, used_bytes INTEGER NOT NULL, files INTEGER NOT NULL
);
CREATE INDEX inode_qroot ON inode(qroot) WHERE qroot != 0;
"""
# Added to file systems made before directory quotas, on their first read-write mount.
_QUOTA_UPGRADE = """
ALTER TABLE inode ADD COLUMN qroot INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS quota(
    root INTEGER PRIMARY KEY, limit_bytes INTEGER NOT NULL, used_bytes INTEGER NOT NULL, files INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS inode_qroot ON inode(qroot) WHERE qroot != 0;
"""


class FType(enum.IntEnum):
    """File types, numbered like NFSv3's ``ftype3``."""

    REG = 1
    DIR = 2
    BLK = 3
    CHR = 4
    LNK = 5
    SOCK = 6
    FIFO = 7


class FsError(Exception):
    """An operation failed with ``errno`` (mapped to an nfsstat3 by the NFS layer)."""

    def __init__(self, err: int, msg: str = "") -> None:
        super().__init__(err, msg or os.strerror(err))
        self.errno = err


# Special files: names with attributes only (no data, no target). The server never opens
# them; only device nodes (CHR, BLK) carry an ``rdev``.
SPECIAL = frozenset({FType.BLK, FType.CHR, FType.SOCK, FType.FIFO})
DEVICES = frozenset({FType.BLK, FType.CHR})
_U64 = (1 << 64) - 1


def makedev(major: int, minor: int) -> int:
    """``rdev`` of a device node: NFSv3's ``specdata3`` (two 32-bit words) as one 64-bit value.

    Stored in the ``inode.rdev`` column (which every file system has had since mkfs; 0 for
    other types) as a signed 64-bit SQLite integer, see ``_rdev_to_sql``.
    """
    if not (0 <= major <= 0xFFFFFFFF and 0 <= minor <= 0xFFFFFFFF):
        raise FsError(errno.EINVAL, "device numbers are 32-bit")
    return major << 32 | minor


def major(rdev: int) -> int:
    return rdev >> 32


def minor(rdev: int) -> int:
    return rdev & 0xFFFFFFFF


def _rdev_to_sql(rdev: int) -> int:
    return rdev - (1 << 64) if rdev >= 1 << 63 else rdev


@dataclasses.dataclass(frozen=True)
class Cred:
    """The caller's identity after export squashing."""

    uid: int
    gid: int
    gids: tuple[int, ...] = ()

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.gids


ROOT = Cred(0, 0)


@dataclasses.dataclass
class Attr:
    ino: int
    gen: int
    type: FType
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    atime: int
    mtime: int
    ctime: int
    rdev: int
    parent: int
    used: int = 0


@dataclasses.dataclass(frozen=True)
class SetAttr:
    """Attributes to change; ``None`` leaves one alone. Times are ns; -1 means server time."""

    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime: int | None = None
    mtime: int | None = None


@dataclasses.dataclass(frozen=True)
class DirEntry:
    name: bytes
    ino: int
    cookie: int


@dataclasses.dataclass(frozen=True)
class FsStat:
    total_bytes: int
    free_bytes: int
    total_files: int
    free_files: int


@dataclasses.dataclass(frozen=True)
class Quota:
    """A directory quota: the tree under directory ``root`` may hold ``limit_bytes``.

    ``used_bytes`` is what ``quota_bytes_sql`` charges (allocated blocks, inline bytes, symlink
    targets) summed over the tree; ``files`` counts its inodes, the root directory included.
    """

    root: int
    limit_bytes: int
    used_bytes: int
    files: int


R_OK, W_OK, X_OK = 4, 2, 1
_ATTR_COLS = "ino, gen, type, mode, nlink, uid, gid, size, atime, mtime, ctime, rdev, parent"


def now_ns() -> int:
    return time.time_ns()


def quota_bytes_sql(table: str = "inode") -> str:
    """What an inode costs its quota, as SQL over a row of ``table`` (``inode`` or an alias).

    Allocated data blocks x ``BLOCK`` + inline bytes + symlink target bytes: the space the file
    takes, counted exactly, so every change to extents, ``inline`` or ``target`` changes it by a
    known amount. Directories and special files cost 0 bytes (each still counts as a file).
    """
    return (
        f"COALESCE(length({table}.inline), 0) + COALESCE(length({table}.target), 0)"
        f" + {BLOCK} * (SELECT COALESCE(SUM(nblk), 0) FROM extent WHERE extent.ino = {table}.ino)"
    )


def mkfs(dev: BlockDevice, *, fs_uuid: bytes | None = None, root_mode: int = 0o755) -> layout.Superblock:
    """Create an empty file system on ``dev``; the superblock is written last."""
    dev.pwrite(0, bytes(layout.SB_SIZE), fua=True)
    sb = layout.plan(dev.size, fs_uuid=fs_uuid)
    dev.pwrite(sb.meta_off, layout.region_header(0).ljust(layout.REGION_HDR, b"\0"))
    dev.pwrite(sb.wal_off, layout.region_header(0).ljust(layout.REGION_HDR, b"\0"))
    dev.flush()
    v = vfs.RegionVFS(dev, sb)
    conn = apsw.Connection(v.db_uri, vfs=v.name)
    try:
        _pragmas(conn, sb)
        with conn:
            conn.execute(SCHEMA)
            t = now_ns()
            conn.execute(
                "INSERT INTO inode(ino, gen, type, mode, nlink, uid, gid, size, atime, mtime, ctime, parent)"
                " VALUES (?, 1, ?, ?, 2, 0, 0, 0, ?, ?, ?, ?)",
                (ROOT_INO, FType.DIR, root_mode, t, t, t, ROOT_INO),
            )
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("secret", secrets.token_bytes(32)),
                    ("next_gen", 2),
                    ("free_blocks", sb.data_blocks),
                    ("inodes", 1),
                    ("uuid", sb.uuid),
                ],
            )
            conn.execute("INSERT INTO free(start, len) VALUES (0, ?)", (sb.data_blocks,))
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    dev.flush()
    dev.pwrite(0, sb.pack(), fua=True)
    return sb


def _pragmas(conn: apsw.Connection, sb: layout.Superblock) -> None:
    # Checkpoint once a quarter of the WAL region holds committed frames; together with the
    # transaction budget (half the region, see FileSystem._Op) the WAL never overflows.
    conn.execute(f"PRAGMA wal_autocheckpoint={max(64, sb.wal_len // 4 // 4096)}")
    for pragma, expect in (
        ("PRAGMA page_size=4096", None),
        ("PRAGMA locking_mode=EXCLUSIVE", "exclusive"),
        ("PRAGMA journal_mode=WAL", "wal"),
        ("PRAGMA synchronous=FULL", None),
        ("PRAGMA temp_store=MEMORY", None),
        ("PRAGMA cache_size=-65536", None),
    ):
        rows = conn.execute(pragma).fetchall()
        if expect is not None and (not rows or str(rows[0][0]).lower() != expect):
            raise layout.LayoutError(f"{pragma} gave {rows}")


class FileSystem:
    """A mounted file system. Not thread-safe: one owner (the server's event loop) calls it."""

    def __init__(
        self,
        dev: BlockDevice,
        *,
        readonly: bool = False,
        readahead: BlockDevice | None = None,
        writebehind: BlockDevice | None = None,
        cache_bytes: int = 0,
        cache_budget: Budget | None = None,
    ) -> None:
        self.dev = dev
        # the read cache: within ``cache_budget`` (shared with the file processor's other file
        # systems) if given, else ``cache_bytes`` of its own
        self.cache = DataCache(cache_bytes, budget=cache_budget)
        self.readahead = ReadAhead(readahead) if readahead is not None else None
        self.writebehind = WriteBehind(writebehind) if writebehind is not None else None
        self.sb = layout.read_superblock(dev)
        self.vfs = vfs.RegionVFS(dev, self.sb)
        # Typed as Any: apsw's row values are a union of every SQLite type.
        self.db: Any = apsw.Connection(self.vfs.db_uri, vfs=self.vfs.name)
        _pragmas(self.db, self.sb)
        self.txn_budget = self.vfs.wal.capacity // 2
        self.lost_transactions = 0
        self.readonly = readonly
        self.secret: bytes = self._meta("secret")
        self._in_txn = False
        self._data_dirty = False
        self._data_fua = False  # FUA data writes since the last commit (durable when completed)
        self._pending_free: list[tuple[int, int]] = []
        self._sp = 0
        self.commits = 0
        self.ops_since_commit = 0
        self.db.execute("PRAGMA quick_check(1)")
        self.has_quota_schema = self._upgrade_quota_schema()
        # Only ever set while mounted (never cleared): with no quota root at all, no inode has
        # a ``qroot`` and accounting can skip the look-ups.
        self._quotas_on = self.has_quota_schema and self.db.execute("SELECT 1 FROM quota LIMIT 1").fetchone() is not None

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def fsid(self) -> int:
        return self.sb.fsid

    def _meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            raise layout.LayoutError(f"metadata key {key!r} missing")
        return row[0]

    def note(self, key: str) -> str | None:
        """A small text another layer keeps with the file system (the NSM record), or ``None``."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", ("note:" + key,)).fetchone()
        return None if row is None else str(row[0])

    def set_note(self, key: str, value: str) -> None:
        """Store ``note(key)`` in the group transaction (durable at the next ``commit``)."""
        with self._op():
            self.db.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                ("note:" + key, value),
            )

    def _upgrade_quota_schema(self) -> bool:
        """Add the quota column, table and index to an older file system (one transaction).

        Returns whether the schema has them (a read-only mount of an old file system does not).
        """
        cols = {str(r[1]) for r in self.db.execute("PRAGMA table_info(inode)").fetchall()}
        if "qroot" in cols:
            return True
        if self.readonly:
            return False
        with self.db:
            self.db.execute(_QUOTA_UPGRADE)
        log.info("file system upgraded with directory quotas (inode.qroot, quota table)")
        return True

    def _meta_add(self, key: str, delta: int) -> None:
        self.db.execute("UPDATE meta SET value = value + ? WHERE key=?", (delta, key))

    def _begin(self) -> None:
        if not self._in_txn:
            self.db.execute("BEGIN IMMEDIATE")
            self._in_txn = True

    class _Op:
        def __init__(self, fs: FileSystem) -> None:
            self.fs = fs

        def __enter__(self) -> None:
            fs = self.fs
            if fs.readonly:
                raise FsError(errno.EROFS)
            fs._begin()
            fs._sp = len(fs._pending_free)
            fs.db.execute("SAVEPOINT op")

        def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
            fs = self.fs
            if not fs.db.in_transaction:
                # SQLite rolled the whole transaction back (SQLITE_FULL, I/O error).
                fs._transaction_lost()
                if et is None or isinstance(ev, apsw.FullError):
                    raise FsError(errno.ENOSPC, "metadata region full")
                return
            if et is None:
                fs.db.execute("RELEASE op")
                fs.ops_since_commit += 1
                if fs.vfs.wal.unsynced_bytes > fs.txn_budget:
                    fs.commit()
            else:
                fs.db.execute("ROLLBACK TO op")
                fs.db.execute("RELEASE op")
                del fs._pending_free[fs._sp :]
                if isinstance(ev, apsw.FullError):
                    raise FsError(errno.ENOSPC, "metadata region full") from ev

    def _op(self) -> FileSystem._Op:
        return FileSystem._Op(self)

    @property
    def dirty(self) -> bool:
        """True when there are changes not yet committed."""
        return self._in_txn or self._data_dirty

    def commit(self) -> None:
        """Group commit: data barrier, then make every change so far durable."""
        if self._data_dirty:
            self._drain()
            self.dev.flush()
        elif self._data_fua:
            self._drain()  # raises if a FUA write failed
        self._data_dirty = self._data_fua = False
        if not self._in_txn:
            return
        for start, n in self._pending_free:
            self._free_insert(start, n)
        self._pending_free.clear()
        try:
            self.db.execute("COMMIT")
        except apsw.Error:
            if not self.db.in_transaction:
                self._transaction_lost()
            raise
        self._in_txn = False
        self.commits += 1
        self.ops_since_commit = 0

    def _transaction_lost(self) -> None:
        """The open group transaction was rolled back: its unstable changes are gone.

        Callers that acknowledged UNSTABLE writes must change their write verifier
        (``lost_transactions`` counts these events).
        """
        log.error("metadata transaction rolled back; uncommitted changes are lost")
        self._in_txn = False
        self._pending_free.clear()
        self.lost_transactions += 1

    def _close_helpers(self) -> None:
        for helper in (self.readahead, self.writebehind):
            if helper is not None:
                try:
                    helper.close()
                except OSError as exc:
                    log.error("closing a device helper: %s", exc)
        self.readahead = None
        self.writebehind = None
        self.cache.close()  # its pages leave the shared budget with the mount

    def abort(self) -> None:
        """Close without committing (after a device failure): uncommitted changes are dropped."""
        self._close_helpers()
        self.db.close()

    def close(self) -> None:
        """Commit, checkpoint and close the database (the device stays open)."""
        try:
            if not self.readonly:
                self.commit()
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._close_helpers()
            self.db.close()

    # -- inodes -----------------------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        row = self.db.execute(f"SELECT {_ATTR_COLS}, length(inline) FROM inode WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise FsError(errno.ESTALE)
        a = Attr(*row[:-1])
        a.type = FType(a.type)
        a.rdev &= _U64
        if row[-1] is not None:
            a.used = int(row[-1])
        elif a.type == FType.REG:
            used = self.db.execute("SELECT COALESCE(SUM(nblk), 0) FROM extent WHERE ino=?", (ino,)).fetchone()
            a.used = int(used[0]) * BLOCK
        elif a.type == FType.DIR:
            a.used = BLOCK
        return a

    def generation(self, ino: int) -> int | None:
        row = self.db.execute("SELECT gen FROM inode WHERE ino=?", (ino,)).fetchone()
        return None if row is None else int(row[0])

    def access(self, a: Attr, cred: Cred, want: int) -> int:
        """Return the subset of ``want`` (R_OK|W_OK|X_OK bits) that ``cred`` has on ``a``."""
        if cred.is_root:
            granted = R_OK | W_OK
            if a.type == FType.DIR or a.mode & 0o111:
                granted |= X_OK
            return want & granted
        if cred.uid == a.uid:
            bits = (a.mode >> 6) & 7
        elif cred.in_group(a.gid):
            bits = (a.mode >> 3) & 7
        else:
            bits = a.mode & 7
        return want & bits

    def _require(self, a: Attr, cred: Cred, want: int) -> None:
        if self.access(a, cred, want) != want:
            raise FsError(errno.EACCES)

    def _dir(self, ino: int) -> Attr:
        a = self.getattr(ino)
        if a.type != FType.DIR:
            raise FsError(errno.ENOTDIR)
        return a

    # -- directories ------------------------------------------------------------------------

    def lookup(self, dir_ino: int, name: bytes, cred: Cred) -> int:
        d = self._dir(dir_ino)
        self._require(d, cred, X_OK)
        if name == b"." or name == b"":
            return dir_ino
        if name == b"..":
            return d.parent
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)
        row = self.db.execute("SELECT ino FROM dirent WHERE dir=? AND name=?", (dir_ino, name)).fetchone()
        if row is None:
            raise FsError(errno.ENOENT)
        return int(row[0])

    def _check_name(self, name: bytes) -> None:
        if name in (b"", b".", b"..") or b"/" in name or b"\0" in name:
            raise FsError(errno.EINVAL if name not in (b".", b"..") else errno.EEXIST)
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG)

    def _entry(self, dir_ino: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT ino FROM dirent WHERE dir=? AND name=?", (dir_ino, name)).fetchone()
        return None if row is None else int(row[0])

    def _link_entry(self, dir_ino: int, name: bytes, ino: int, t: int) -> None:
        cookie = self.db.execute(
            "UPDATE inode SET next_cookie = next_cookie + 1, mtime=?, ctime=? WHERE ino=? RETURNING next_cookie - 1",
            (t, t, dir_ino),
        ).fetchone()[0]
        self.db.execute("INSERT INTO dirent(dir, name, ino, cookie) VALUES (?, ?, ?, ?)", (dir_ino, name, ino, cookie))

    def _unlink_entry(self, dir_ino: int, name: bytes, t: int) -> None:
        self.db.execute("DELETE FROM dirent WHERE dir=? AND name=?", (dir_ino, name))
        self.db.execute("UPDATE inode SET mtime=?, ctime=? WHERE ino=?", (t, t, dir_ino))

    def _new_inode(
        self, *, ftype: FType, mode: int, cred: Cred, parent: int, gid: int, t: int, target: bytes | None = None,
        rdev: int = 0, verf: bytes | None = None,
    ) -> int:
        # A new inode joins its directory's quota tree (a quota root's qroot is itself).
        qroot = self._qroot(parent)
        size = len(target) if target is not None else 0
        self._charge(qroot, size, 1)
        gen = self.db.execute(
            "UPDATE meta SET value = value + 1 WHERE key='next_gen' RETURNING value - 1"
        ).fetchone()[0]
        nlink = 2 if ftype == FType.DIR else 1
        row = self.db.execute(
            "INSERT INTO inode(gen, type, mode, nlink, uid, gid, size, atime, mtime, ctime, rdev, parent, target, verf,"
            " inline, qroot) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING ino",
            (gen, ftype, mode & 0o7777, nlink, cred.uid, gid, size, t, t, t, _rdev_to_sql(rdev), parent, target, verf,
             b"" if ftype == FType.REG else None, qroot),
        ).fetchone()
        self._meta_add("inodes", 1)
        return int(row[0])

    def _prepare_create(self, dir_ino: int, name: bytes, cred: Cred) -> Attr:
        self._check_name(name)
        d = self._dir(dir_ino)
        self._require(d, cred, W_OK | X_OK)
        return d

    def _new_gid(self, d: Attr, cred: Cred) -> int:
        return d.gid if d.mode & stat.S_ISGID else cred.gid

    def create(
        self, dir_ino: int, name: bytes, cred: Cred, *, mode: int = 0o644, exclusive: bytes | None = None,
        guarded: bool = False,
    ) -> tuple[int, bool]:
        """Create a regular file. Returns ``(ino, created)``.

        ``exclusive`` is the EXCLUSIVE createverf3: it is stored with the inode and a retry
        with the same verifier finds the file and succeeds. ``guarded`` fails on an existing
        name; otherwise (UNCHECKED) an existing regular file is returned unchanged (what to
        apply to it is the caller's decision: the NFS layer applies only the size) and any
        other existing type fails with EEXIST. Like open(2) and knfsd, an existing name needs
        only search permission on the directory; creating one needs write permission too.
        """
        with self._op():
            self._check_name(name)
            d = self._dir(dir_ino)
            self._require(d, cred, X_OK)
            existing = self._entry(dir_ino, name)
            if existing is None:
                self._require(d, cred, W_OK)
            else:
                if exclusive is not None:
                    row = self.db.execute("SELECT verf FROM inode WHERE ino=?", (existing,)).fetchone()
                    if row is not None and row[0] == exclusive:
                        return existing, False
                    raise FsError(errno.EEXIST)
                if guarded:
                    raise FsError(errno.EEXIST)
                if self.getattr(existing).type != FType.REG:
                    raise FsError(errno.EEXIST)
                return existing, False
            t = now_ns()
            ino = self._new_inode(
                ftype=FType.REG, mode=mode, cred=cred, parent=dir_ino, gid=self._new_gid(d, cred), t=t, verf=exclusive
            )
            self._link_entry(dir_ino, name, ino, t)
            return ino, True

    def mkdir(self, dir_ino: int, name: bytes, cred: Cred, *, mode: int = 0o755) -> int:
        with self._op():
            d = self._prepare_create(dir_ino, name, cred)
            if self._entry(dir_ino, name) is not None:
                raise FsError(errno.EEXIST)
            t = now_ns()
            if d.mode & stat.S_ISGID:
                mode |= stat.S_ISGID
            ino = self._new_inode(ftype=FType.DIR, mode=mode, cred=cred, parent=dir_ino, gid=self._new_gid(d, cred), t=t)
            self._link_entry(dir_ino, name, ino, t)
            self.db.execute("UPDATE inode SET nlink = nlink + 1 WHERE ino=?", (dir_ino,))
            return ino

    def symlink(self, dir_ino: int, name: bytes, target: bytes, cred: Cred, *, mode: int = 0o777) -> int:
        with self._op():
            d = self._prepare_create(dir_ino, name, cred)
            if len(target) > PATH_MAX:
                raise FsError(errno.ENAMETOOLONG)
            if self._entry(dir_ino, name) is not None:
                raise FsError(errno.EEXIST)
            t = now_ns()
            ino = self._new_inode(
                ftype=FType.LNK, mode=mode, cred=cred, parent=dir_ino, gid=self._new_gid(d, cred), t=t, target=target
            )
            self._link_entry(dir_ino, name, ino, t)
            return ino

    def mknod(self, dir_ino: int, name: bytes, ftype: FType, cred: Cred, *, mode: int, rdev: int = 0) -> int:
        """Create a special file: FIFO, socket, or (root only) a character/block device.

        ``rdev`` (see ``makedev``) is kept for device nodes and must be 0 for the others.
        """
        if ftype not in SPECIAL:
            raise FsError(errno.EINVAL, f"mknod of type {ftype}")
        if not 0 <= rdev <= _U64 or (rdev and ftype not in DEVICES):
            raise FsError(errno.EINVAL, "bad rdev")
        with self._op():
            d = self._prepare_create(dir_ino, name, cred)
            if ftype in DEVICES and not cred.is_root:
                raise FsError(errno.EPERM)
            if self._entry(dir_ino, name) is not None:
                raise FsError(errno.EEXIST)
            t = now_ns()
            ino = self._new_inode(ftype=ftype, mode=mode, cred=cred, parent=dir_ino, gid=self._new_gid(d, cred), t=t, rdev=rdev)
            self._link_entry(dir_ino, name, ino, t)
            return ino

    def readlink(self, ino: int) -> bytes:
        row = self.db.execute("SELECT type, target FROM inode WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise FsError(errno.ESTALE)
        if row[0] != FType.LNK:
            raise FsError(errno.EINVAL)
        return bytes(row[1])

    def _sticky_ok(self, d: Attr, victim: int, cred: Cred) -> None:
        if d.mode & stat.S_ISVTX and not cred.is_root and cred.uid != d.uid:
            owner = self.db.execute("SELECT uid FROM inode WHERE ino=?", (victim,)).fetchone()[0]
            if owner != cred.uid:
                raise FsError(errno.EACCES)

    def _drop_link(self, ino: int, t: int) -> None:
        row = self.db.execute(
            "UPDATE inode SET nlink = nlink - 1, ctime=? WHERE ino=? RETURNING nlink, type", (t, ino)
        ).fetchone()
        if row[0] <= 0 or (row[1] == FType.DIR and row[0] <= 1):
            self._destroy(ino)

    def _destroy(self, ino: int) -> None:
        if self._quotas_on:
            qroot, nbytes = self.db.execute(
                f"SELECT qroot, {quota_bytes_sql()} FROM inode WHERE ino=?", (ino,)
            ).fetchone()
            if qroot == ino:  # the quota root itself goes (rmdir, rename over it, remove_tree)
                self.db.execute("DELETE FROM quota WHERE root=?", (ino,))
            else:
                self._charge(qroot, -int(nbytes), -1)
        for start, n in self.db.execute("SELECT pblk, nblk FROM extent WHERE ino=?", (ino,)).fetchall():
            self._pending_free.append((start, n))
        self.db.execute("DELETE FROM extent WHERE ino=?", (ino,))
        self.db.execute("DELETE FROM inode WHERE ino=?", (ino,))
        self._meta_add("inodes", -1)

    def remove(self, dir_ino: int, name: bytes, cred: Cred) -> int:
        with self._op():
            d = self._dir(dir_ino)
            self._require(d, cred, W_OK | X_OK)
            ino = self._entry(dir_ino, name)
            if ino is None:
                raise FsError(errno.ENOENT)
            if self.getattr(ino).type == FType.DIR:
                raise FsError(errno.EISDIR)
            self._sticky_ok(d, ino, cred)
            t = now_ns()
            self._unlink_entry(dir_ino, name, t)
            self._drop_link(ino, t)
            return ino

    def rmdir(self, dir_ino: int, name: bytes, cred: Cred) -> int:
        with self._op():
            if name == b".":
                raise FsError(errno.EINVAL)
            if name == b"..":
                raise FsError(errno.ENOTEMPTY)
            d = self._dir(dir_ino)
            self._require(d, cred, W_OK | X_OK)
            ino = self._entry(dir_ino, name)
            if ino is None:
                raise FsError(errno.ENOENT)
            if self.getattr(ino).type != FType.DIR:
                raise FsError(errno.ENOTDIR)
            if self.db.execute("SELECT 1 FROM dirent WHERE dir=? LIMIT 1", (ino,)).fetchone():
                raise FsError(errno.ENOTEMPTY)
            self._sticky_ok(d, ino, cred)
            t = now_ns()
            self._unlink_entry(dir_ino, name, t)
            self.db.execute("UPDATE inode SET nlink = nlink - 1 WHERE ino=?", (dir_ino,))
            self._destroy(ino)
            return ino

    def link(self, ino: int, dir_ino: int, name: bytes, cred: Cred) -> None:
        with self._op():
            d = self._prepare_create(dir_ino, name, cred)
            a = self.getattr(ino)
            if self._entry(dir_ino, name) is not None:
                raise FsError(errno.EEXIST)
            if a.type == FType.DIR:
                raise FsError(errno.EPERM)  # like link(2); NFS3ERR_ISDIR is not a LINK error
            if self._qroot(ino) != self._qroot(dir_ino):
                raise FsError(errno.EXDEV, "hard link across a quota tree boundary")
            del d
            t = now_ns()
            self._link_entry(dir_ino, name, ino, t)
            self.db.execute("UPDATE inode SET nlink = nlink + 1, ctime=? WHERE ino=?", (t, ino))

    def _is_ancestor(self, anc: int, ino: int) -> bool:
        """True if ``anc`` is ``ino`` or one of its ancestors (walks ``parent`` links)."""
        seen = 0
        while True:
            if ino == anc:
                return True
            if ino == ROOT_INO:
                return False
            row = self.db.execute("SELECT parent FROM inode WHERE ino=?", (ino,)).fetchone()
            if row is None:
                return False
            ino = int(row[0])
            seen += 1
            if seen > 1 << 20:
                raise FsError(errno.ELOOP)

    def rename(self, from_dir: int, from_name: bytes, to_dir: int, to_name: bytes, cred: Cred) -> None:
        with self._op():
            if from_name in (b".", b"..") or to_name in (b".", b".."):
                raise FsError(errno.EINVAL)
            self._check_name(to_name)
            fd = self._dir(from_dir)
            td = self._dir(to_dir)
            self._require(fd, cred, W_OK | X_OK)
            self._require(td, cred, W_OK | X_OK)
            src = self._entry(from_dir, from_name)
            if src is None:
                raise FsError(errno.ENOENT)
            sa = self.getattr(src)
            self._sticky_ok(fd, src, cred)
            dst = self._entry(to_dir, to_name)
            if dst == src:
                return
            if sa.type == FType.DIR and from_dir != to_dir and self._is_ancestor(src, to_dir):
                raise FsError(errno.EINVAL)
            if self._quotas_on:
                # A quota root lies outside every quota tree (no nesting): it may move only there.
                area = self._qroot(src)
                if (0 if area == src else area) != self._qroot(to_dir):
                    raise FsError(errno.EXDEV, "rename across a quota tree boundary")
            if dst is not None and self._is_ancestor(dst, from_dir):
                raise FsError(errno.ENOTEMPTY)  # the target contains the source (as Linux)
            t = now_ns()
            if dst is not None:
                da = self.getattr(dst)
                self._sticky_ok(td, dst, cred)
                if sa.type == FType.DIR:
                    if da.type != FType.DIR:
                        raise FsError(errno.ENOTDIR)
                    if self.db.execute("SELECT 1 FROM dirent WHERE dir=? LIMIT 1", (dst,)).fetchone():
                        raise FsError(errno.ENOTEMPTY)
                elif da.type == FType.DIR:
                    raise FsError(errno.EISDIR)
                self._unlink_entry(to_dir, to_name, t)
                if da.type == FType.DIR:
                    self.db.execute("UPDATE inode SET nlink = nlink - 1 WHERE ino=?", (to_dir,))
                    self._destroy(dst)
                else:
                    self._drop_link(dst, t)
            self._unlink_entry(from_dir, from_name, t)
            self._link_entry(to_dir, to_name, src, t)
            self.db.execute("UPDATE inode SET ctime=? WHERE ino=?", (t, src))
            if sa.type == FType.DIR and from_dir != to_dir:
                self.db.execute("UPDATE inode SET parent=? WHERE ino=?", (to_dir, src))
                self.db.execute("UPDATE inode SET nlink = nlink - 1 WHERE ino=?", (from_dir,))
                self.db.execute("UPDATE inode SET nlink = nlink + 1 WHERE ino=?", (to_dir,))

    def readdir(self, dir_ino: int, cookie: int, cred: Cred, *, limit: int) -> tuple[list[DirEntry], bool]:
        """Entries after ``cookie`` (0 = start; 1 and 2 are "." and ".."). Returns (entries, eof)."""
        d = self._dir(dir_ino)
        self._require(d, cred, R_OK)
        out: list[DirEntry] = []
        if cookie < 1:
            out.append(DirEntry(b".", dir_ino, 1))
        if cookie < 2:
            out.append(DirEntry(b"..", d.parent, 2))
        rows = self.db.execute(
            "SELECT name, ino, cookie FROM dirent WHERE dir=? AND cookie>? ORDER BY cookie LIMIT ?",
            (dir_ino, max(cookie, 2), limit + 1),
        ).fetchall()
        out.extend(DirEntry(bytes(n), i, c) for n, i, c in rows)
        eof = len(out) <= limit
        return out[:limit], eof

    def iter_dir(self, dir_ino: int) -> Iterator[DirEntry]:
        for n, i, c in self.db.execute("SELECT name, ino, cookie FROM dirent WHERE dir=? ORDER BY cookie", (dir_ino,)):
            yield DirEntry(bytes(n), i, c)

    # -- attributes -------------------------------------------------------------------------

    def setattr(self, ino: int, sa: SetAttr, cred: Cred) -> bool:
        """Change attributes; returns False when nothing changed (nothing to commit).

        A request that only sets the size a regular file already has (the SETATTR an
        ``open(O_TRUNC)`` of a new file sends) changes nothing and is not a modification.
        """
        a = self.getattr(ino)
        if (
            sa.size is not None
            and sa.size == a.size
            and a.type == FType.REG
            and dataclasses.replace(sa, size=None) == SetAttr()
            and (cred.uid == a.uid or self.access(a, cred, W_OK) == W_OK)
            and not self.readonly
        ):
            return False
        with self._op():
            a = self.getattr(ino)
            owner = cred.is_root or cred.uid == a.uid
            t = now_ns()
            sets: list[str] = []
            vals: list[Any] = []
            if sa.mode is not None:
                if not owner:
                    raise FsError(errno.EPERM)
                mode = sa.mode & 0o7777
                if not cred.is_root and not cred.in_group(a.gid):
                    mode &= ~stat.S_ISGID
                sets.append("mode=?")
                vals.append(mode)
            if sa.uid is not None and sa.uid != a.uid:
                if not cred.is_root:
                    raise FsError(errno.EPERM)
                sets.append("uid=?")
                vals.append(sa.uid)
            if sa.gid is not None and sa.gid != a.gid:
                if not (cred.is_root or (cred.uid == a.uid and cred.in_group(sa.gid))):
                    raise FsError(errno.EPERM)
                sets.append("gid=?")
                vals.append(sa.gid)
                # POSIX chown(): an unprivileged change of an executable regular file's owner or
                # group clears its set-user-ID and set-group-ID bits (knfsd and ganesha do too)
                mode = vals[sets.index("mode=?")] if "mode=?" in sets else a.mode & 0o7777
                if not cred.is_root and a.type == FType.REG and mode & 0o111 \
                        and mode & (stat.S_ISUID | stat.S_ISGID):
                    mode &= ~(stat.S_ISUID | stat.S_ISGID)
                    if "mode=?" in sets:
                        vals[sets.index("mode=?")] = mode
                    else:
                        sets.append("mode=?")
                        vals.append(mode)
            for col, v in (("atime", sa.atime), ("mtime", sa.mtime)):
                if v is None:
                    continue
                if v == -1:
                    if not owner and self.access(a, cred, W_OK) != W_OK:
                        raise FsError(errno.EACCES)
                    v = t
                elif not owner:
                    raise FsError(errno.EPERM)
                sets.append(f"{col}=?")
                vals.append(v)
            if sa.size is not None:
                if a.type == FType.DIR:
                    raise FsError(errno.EISDIR)
                if a.type != FType.REG:
                    raise FsError(errno.EINVAL)
                if cred.uid != a.uid and self.access(a, cred, W_OK) != W_OK:
                    raise FsError(errno.EACCES)
                if sa.size > MAX_SIZE:
                    raise FsError(errno.EFBIG)
                if sa.size != a.size:
                    self._truncate(a, sa.size)
                    sets.append("size=?")
                    vals.append(sa.size)
                    if sa.mtime is None:
                        sets.append("mtime=?")
                        vals.append(t)
            sets.append("ctime=?")
            vals.append(t)
            self.db.execute(f"UPDATE inode SET {', '.join(sets)} WHERE ino=?", (*vals, ino))
            return True

    # -- data -------------------------------------------------------------------------------

    def _extents(self, ino: int, b0: int, b1: int) -> list[tuple[int, int, int]]:
        """Extents ``(lblk, nblk, pblk)`` overlapping logical blocks [b0, b1)."""
        out: list[tuple[int, int, int]] = []
        first = self.db.execute(
            "SELECT lblk, nblk, pblk FROM extent WHERE ino=? AND lblk<=? ORDER BY lblk DESC LIMIT 1", (ino, b0)
        ).fetchone()
        if first is not None and first[0] + first[1] > b0:
            out.append(first)
        out.extend(
            self.db.execute(
                "SELECT lblk, nblk, pblk FROM extent WHERE ino=? AND lblk>? AND lblk<? ORDER BY lblk", (ino, b0, b1)
            ).fetchall()
        )
        return out

    def _inline(self, ino: int) -> bytes | None:
        row = self.db.execute("SELECT inline FROM inode WHERE ino=?", (ino,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def _uninline(self, a: Attr, data: bytes) -> None:
        """Move an inline file's data to extents (before it grows past ``INLINE_MAX``)."""
        self.db.execute("UPDATE inode SET inline=NULL WHERE ino=?", (a.ino,))
        self._charge_ino(a.ino, -len(data))
        if data:
            self._write_data(a, 0, memoryview(data))

    def _truncate(self, a: Attr, size: int) -> None:
        inl = self._inline(a.ino)
        if inl is not None:
            if size <= INLINE_MAX:
                self._charge_ino(a.ino, size - len(inl))
                self.db.execute("UPDATE inode SET inline=? WHERE ino=?", (inl[:size].ljust(size, b"\0"), a.ino))
            else:
                self._uninline(a, inl)
            return
        if size >= a.size:
            return
        keep = (size + BLOCK - 1) // BLOCK
        freed = 0
        for lblk, nblk, pblk in self.db.execute(
            "SELECT lblk, nblk, pblk FROM extent WHERE ino=? AND lblk + nblk > ?", (a.ino, keep)
        ).fetchall():
            if lblk >= keep:
                self.db.execute("DELETE FROM extent WHERE ino=? AND lblk=?", (a.ino, lblk))
                self._pending_free.append((pblk, nblk))
                freed += nblk
            else:
                cut = keep - lblk
                self.db.execute("UPDATE extent SET nblk=? WHERE ino=? AND lblk=?", (cut, a.ino, lblk))
                self._pending_free.append((pblk + cut, nblk - cut))
                freed += nblk - cut
        self._charge_ino(a.ino, -freed * BLOCK)
        tail = size % BLOCK
        if tail:
            lb = size // BLOCK
            ext = self._extents(a.ino, lb, lb + 1)
            if ext:
                lblk, _, pblk = ext[0]
                if self.readahead is not None:
                    self.readahead.invalidate()
                self._data_write(self._phys(pblk + lb - lblk) + tail, bytes(BLOCK - tail))

    def _data_write(self, offset: int, data: bytes | bytearray | memoryview, *, fua: bool = False) -> None:
        """Every write to the data region goes through here (write-behind when enabled).

        A ``fua`` write is durable once it completes, so it needs no FLUSH before the commit
        that makes its metadata durable: only the wait for its completion (``_drain``).
        """
        if fua:
            self._data_fua = True
        else:
            self._data_dirty = True
        self.cache.write(offset, data)
        if self.writebehind is not None:
            self.writebehind.submit(offset, data, fua=fua)
        else:
            self.dev.pwrite(offset, data, fua=fua)

    def _drain(self) -> None:
        """Make pending write-behind data visible to reads and to the next flush."""
        if self.writebehind is not None and not self.writebehind.idle:
            self.writebehind.drain()

    def _phys(self, pblk: int) -> int:
        return self.sb.data_off + pblk * BLOCK

    def read(self, ino: int, offset: int, count: int, cred: Cred | None = None) -> tuple[bytes, bool, Attr]:
        """Read up to ``count`` bytes; returns ``(data, eof, attr)``."""
        a = self.getattr(ino)
        if a.type != FType.REG:
            raise FsError(errno.EISDIR if a.type == FType.DIR else errno.EINVAL)
        if cred is not None and not (cred.uid == a.uid) and self.access(a, cred, R_OK) != R_OK:
            raise FsError(errno.EACCES)
        if offset >= a.size or count == 0:
            return b"", offset >= a.size, a
        end = min(a.size, offset + count)
        inl = self._inline(ino)
        if inl is not None:
            return inl[offset:end], end >= a.size, a
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        exts = self._extents(ino, b0, b1)
        if len(exts) == 1 and exts[0][0] <= b0 and exts[0][0] + exts[0][1] >= b1:
            lblk, nblk, pblk = exts[0]
            phys = self._phys(pblk) + offset - lblk * BLOCK
            n = end - offset
            data = self.cache.read(phys, n)
            if data is not None:
                return data, end >= a.size, a
            self._drain()
            if self.readahead is not None:
                data = self.readahead.take(phys, n)
                # Prefetch what a sequential reader asks for next, inside this extent and file.
                limit = min(self._phys(pblk + nblk), phys + (a.size - offset))
                nxt = [(p, min(n, limit - p)) for p in (phys + n, phys + 2 * n) if p < limit]
                self.readahead.schedule(nxt)
            if data is None:
                data = self.dev.pread(phys, n)
            self.cache.fill(phys, data)
        else:
            buf = bytearray(end - offset)
            for lblk, nblk, pblk in exts:
                s = max(offset, lblk * BLOCK)
                e = min(end, (lblk + nblk) * BLOCK)
                if s < e:
                    p = self._phys(pblk) + s - lblk * BLOCK
                    part = self.cache.read(p, e - s)
                    if part is None:
                        self._drain()
                        part = self.dev.pread(p, e - s)
                        self.cache.fill(p, part)
                    buf[s - offset : e - offset] = part
            data = bytes(buf)
        return data, end >= a.size, a

    def write(self, ino: int, offset: int, data: bytes | memoryview, cred: Cred | None = None,
              *, stable: bool = False) -> Attr:
        """Write ``data`` at ``offset`` (allocating blocks as needed); returns the new attributes.

        The data is on the device (not yet flushed) when this returns; ``commit()`` makes it
        and the metadata durable. A ``stable`` write (the caller commits next) goes to the device
        with FUA, so that commit needs no separate FLUSH for it.
        """
        with self._op():
            a = self.getattr(ino)
            if a.type != FType.REG:
                raise FsError(errno.EISDIR if a.type == FType.DIR else errno.EINVAL)
            if cred is not None and not (cred.uid == a.uid) and self.access(a, cred, W_OK) != W_OK:
                raise FsError(errno.EACCES)
            n = len(data)
            end = offset + n
            if end > MAX_SIZE:
                raise FsError(errno.EFBIG)
            if not n:  # POSIX write(2): zero bytes "shall have no other results" (no size, no mtime)
                return a
            t = now_ns()
            newsize = max(a.size, end)
            inl = self._inline(ino)
            if inl is not None and newsize <= INLINE_MAX:
                self._charge_ino(ino, newsize - len(inl))
                buf = bytearray(inl.ljust(newsize, b"\0"))
                buf[offset:end] = data
                self.db.execute(
                    "UPDATE inode SET inline=?, size=?, mtime=?, ctime=? WHERE ino=?", (bytes(buf), newsize, t, t, ino)
                )
                a.size = newsize
                a.mtime = a.ctime = t
                return a
            if inl is not None:
                self._uninline(a, inl)
            self._write_data(a, offset, memoryview(data), fua=stable)
            self.db.execute("UPDATE inode SET size=?, mtime=?, ctime=? WHERE ino=?", (newsize, t, t, ino))
            a.size = newsize
            a.mtime = a.ctime = t
            return a

    def _write_data(self, a: Attr, offset: int, data: memoryview, *, fua: bool = False) -> None:
        if self.readahead is not None:
            self.readahead.invalidate()
        end = offset + len(data)
        b0, b1 = offset // BLOCK, (end + BLOCK - 1) // BLOCK
        exts = self._extents(a.ino, b0, b1)
        # Segments of [b0, b1): (lblk, nblk, pblk, new)
        segs: list[tuple[int, int, int, bool]] = []
        cur = b0
        holes: list[tuple[int, int]] = []
        for lblk, nblk, pblk in exts:
            if lblk > cur:
                holes.append((cur, lblk - cur))
                segs.append((cur, lblk - cur, -1, True))
            s = max(lblk, cur)
            e = min(lblk + nblk, b1)
            segs.append((s, e - s, pblk + s - lblk, False))
            cur = e
        if cur < b1:
            holes.append((cur, b1 - cur))
            segs.append((cur, b1 - cur, -1, True))
        need = sum(h[1] for h in holes)
        if need:
            self._charge_ino(a.ino, need * BLOCK)
            free = int(self._meta("free_blocks"))
            if need > free:
                raise FsError(errno.ENOSPC)
        resolved: list[tuple[int, int, int, bool]] = []
        for lblk, nblk, pblk, new in segs:
            if not new:
                resolved.append((lblk, nblk, pblk, False))
                continue
            for l2, n2, p2 in self._allocate(a.ino, lblk, nblk):
                resolved.append((l2, n2, p2, True))
        # Coalesce physically contiguous runs into single writes.
        runs: list[list[Any]] = []
        for lblk, nblk, pblk, new in resolved:
            if runs and runs[-1][2] + runs[-1][1] == pblk and runs[-1][0] + runs[-1][1] == lblk:
                runs[-1][1] += nblk
                runs[-1][3] = runs[-1][3] or new
                runs[-1][4].append((lblk, nblk, new))
            else:
                runs.append([lblk, nblk, pblk, new, [(lblk, nblk, new)]])
        for lblk, nblk, pblk, _any_new, parts in runs:
            rs = lblk * BLOCK
            re_ = (lblk + nblk) * BLOCK
            s = max(rs, offset)
            e = min(re_, end)
            payload = data[s - offset : e - offset]
            head_new = parts[0][2] and s > rs
            tail_new = parts[-1][2] and e < re_ and e % BLOCK
            if head_new or tail_new:
                ws = rs if head_new else s
                we = ((e + BLOCK - 1) // BLOCK) * BLOCK if tail_new else e
                buf = bytearray(we - ws)
                buf[s - ws : e - ws] = payload
                self._data_write(self._phys(pblk) + ws - rs, buf, fua=fua)
            else:
                self._data_write(self._phys(pblk) + s - rs, payload, fua=fua)

    def _allocate(self, ino: int, lblk: int, nblk: int) -> list[tuple[int, int, int]]:
        """Allocate ``nblk`` blocks for logical ``lblk``; insert (and merge) extents."""
        out: list[tuple[int, int, int]] = []
        prev = self.db.execute(
            "SELECT lblk, nblk, pblk FROM extent WHERE ino=? AND lblk<? ORDER BY lblk DESC LIMIT 1", (ino, lblk)
        ).fetchone()
        goal: int | None = None
        if prev is not None:
            goal = prev[2] + (lblk - prev[0])
        remaining = nblk
        while remaining:
            start, got = self._take_free(remaining, goal)
            out.append((lblk, got, start))
            merged = False
            if prev is not None and prev[0] + prev[1] == lblk and prev[2] + prev[1] == start:
                self.db.execute("UPDATE extent SET nblk = nblk + ? WHERE ino=? AND lblk=?", (got, ino, prev[0]))
                prev = (prev[0], prev[1] + got, prev[2])
                merged = True
            if not merged:
                self.db.execute("INSERT INTO extent(ino, lblk, nblk, pblk) VALUES (?, ?, ?, ?)", (ino, lblk, got, start))
                prev = (lblk, got, start)
            lblk += got
            remaining -= got
            goal = start + got
        # Merge with a following extent that is now contiguous.
        nxt = self.db.execute("SELECT lblk, nblk, pblk FROM extent WHERE ino=? AND lblk=?", (ino, lblk)).fetchone()
        if nxt is not None and prev is not None and prev[2] + prev[1] == nxt[2]:
            self.db.execute("DELETE FROM extent WHERE ino=? AND lblk=?", (ino, lblk))
            self.db.execute("UPDATE extent SET nblk = nblk + ? WHERE ino=? AND lblk=?", (nxt[1], ino, prev[0]))
        self._meta_add("free_blocks", -nblk)
        return out

    def _take_free(self, want: int, goal: int | None) -> tuple[int, int]:
        row = None
        if goal is not None:
            row = self.db.execute(
                "SELECT start, len FROM free WHERE start<=? ORDER BY start DESC LIMIT 1", (goal,)
            ).fetchone()
            if row is not None and row[0] + row[1] > goal:
                start, length = row
                got = min(want, start + length - goal)
                self.db.execute("DELETE FROM free WHERE start=?", (start,))
                if goal > start:
                    self.db.execute("INSERT INTO free(start, len) VALUES (?, ?)", (start, goal - start))
                if goal + got < start + length:
                    self.db.execute("INSERT INTO free(start, len) VALUES (?, ?)", (goal + got, start + length - goal - got))
                return goal, got
        row = self.db.execute("SELECT start, len FROM free WHERE len>=? ORDER BY len, start LIMIT 1", (want,)).fetchone()
        if row is None:
            row = self.db.execute("SELECT start, len FROM free ORDER BY len DESC LIMIT 1").fetchone()
        if row is None:
            raise FsError(errno.ENOSPC)
        start, length = row
        got = min(want, length)
        self.db.execute("DELETE FROM free WHERE start=?", (start,))
        if got < length:
            self.db.execute("INSERT INTO free(start, len) VALUES (?, ?)", (start + got, length - got))
        return start, got

    def _free_insert(self, start: int, n: int) -> None:
        if n <= 0:
            return
        self._meta_add("free_blocks", n)
        before = self.db.execute(
            "SELECT start, len FROM free WHERE start<? ORDER BY start DESC LIMIT 1", (start,)
        ).fetchone()
        after = self.db.execute("SELECT start, len FROM free WHERE start=?", (start + n,)).fetchone()
        if after is not None:
            self.db.execute("DELETE FROM free WHERE start=?", (after[0],))
            n += after[1]
        if before is not None and before[0] + before[1] == start:
            self.db.execute("UPDATE free SET len = len + ? WHERE start=?", (n, before[0]))
        else:
            self.db.execute("INSERT INTO free(start, len) VALUES (?, ?)", (start, n))

    # -- directory quotas -------------------------------------------------------------------

    def _qroot(self, ino: int) -> int:
        """The quota root ``ino`` lies under (itself for a quota root), 0 for none."""
        if not self._quotas_on:
            return 0
        row = self.db.execute("SELECT qroot FROM inode WHERE ino=?", (ino,)).fetchone()
        return 0 if row is None else int(row[0])

    def _charge(self, qroot: int, nbytes: int, files: int = 0) -> None:
        """Add ``nbytes`` and ``files`` to the usage of quota ``qroot`` (nothing for 0).

        Growth (more bytes, or a new inode) that would leave the usage above the limit fails
        with EDQUOT before it changes anything; the operation's SAVEPOINT undoes the rest.
        """
        if qroot == 0 or (nbytes == 0 and files == 0):
            return
        if nbytes > 0 or files > 0:
            row = self.db.execute("SELECT limit_bytes, used_bytes FROM quota WHERE root=?", (qroot,)).fetchone()
            if row is not None and row[1] + nbytes > row[0]:
                raise FsError(errno.EDQUOT)
        self.db.execute(
            "UPDATE quota SET used_bytes = used_bytes + ?, files = files + ? WHERE root=?", (nbytes, files, qroot)
        )

    def _charge_ino(self, ino: int, nbytes: int) -> None:
        if nbytes and self._quotas_on:
            self._charge(self._qroot(ino), nbytes)

    def _walk(self, top: int) -> tuple[list[tuple[int, int]], dict[int, int]]:
        """Every inode under directory ``top`` as ``(ino, type)``, ``top`` first and each
        directory before its children, and how many entries of the tree name each inode."""
        found: list[tuple[int, int]] = [(top, FType.DIR)]
        entries: dict[int, int] = {}
        dirs = [top]
        while dirs:
            d = dirs.pop()
            for child, ftype in self.db.execute(
                "SELECT e.ino, i.type FROM dirent e JOIN inode i ON i.ino = e.ino WHERE e.dir=?", (d,)
            ).fetchall():
                seen = entries.get(child, 0)
                entries[child] = seen + 1
                if not seen:
                    found.append((child, ftype))
                    if ftype == FType.DIR:
                        dirs.append(child)
        return found, entries

    def set_quota(self, ino: int, limit_bytes: int) -> None:
        """Make directory ``ino`` a quota root limited to ``limit_bytes``, or change its limit.

        On a populated directory the usage is counted once by walking the tree. Quota trees do
        not nest (EINVAL for the root directory, inside a quota tree or around one), and a tree
        may not hold a hard link to a file outside it (EXDEV). A limit below the usage is
        accepted; growth then fails with EDQUOT.
        """
        if limit_bytes < 0:
            raise FsError(errno.EINVAL, "negative quota limit")
        with self._op():
            if ino == ROOT_INO:
                raise FsError(errno.EINVAL, "no quota on the root directory")
            self._dir(ino)
            row = self.db.execute("SELECT qroot FROM inode WHERE ino=?", (ino,)).fetchone()
            if row[0] == ino:
                self.db.execute("UPDATE quota SET limit_bytes=? WHERE root=?", (limit_bytes, ino))
                return
            if row[0] != 0:
                raise FsError(errno.EINVAL, f"inside the quota tree of {row[0]}")
            found, entries = self._walk(ino)
            used = 0
            for child, _ in found:
                qroot, nlink, ftype, nbytes = self.db.execute(
                    f"SELECT qroot, nlink, type, {quota_bytes_sql()} FROM inode WHERE ino=?", (child,)
                ).fetchone()
                if qroot != 0:
                    raise FsError(errno.EINVAL, f"contains the quota tree of {qroot}")
                if ftype != FType.DIR and nlink > entries[child]:
                    raise FsError(errno.EXDEV, f"inode {child} has hard links outside the tree")
                used += int(nbytes)
            self._quotas_on = True
            self.db.executemany("UPDATE inode SET qroot=? WHERE ino=?", ((ino, child) for child, _ in found))
            self.db.execute(
                "INSERT INTO quota(root, limit_bytes, used_bytes, files) VALUES (?, ?, ?, ?)",
                (ino, limit_bytes, used, len(found)),
            )

    def clear_quota(self, ino: int) -> None:
        """Drop the quota of directory ``ino`` (nothing to do when it has none)."""
        if not self.has_quota_schema or self.db.execute("SELECT 1 FROM quota WHERE root=?", (ino,)).fetchone() is None:
            return
        with self._op():
            self.db.execute("UPDATE inode SET qroot=0 WHERE qroot=? AND qroot != 0", (ino,))
            self.db.execute("DELETE FROM quota WHERE root=?", (ino,))

    def quota_of(self, ino: int) -> Quota | None:
        """The quota governing inode ``ino``: of the quota root it lies under or is, if any."""
        if not self.has_quota_schema:
            self.getattr(ino)  # ESTALE for a missing inode, as below
            return None
        row = self.db.execute("SELECT qroot FROM inode WHERE ino=?", (ino,)).fetchone()
        if row is None:
            raise FsError(errno.ESTALE)
        if row[0] == 0:
            return None
        q = self.db.execute(
            "SELECT root, limit_bytes, used_bytes, files FROM quota WHERE root=?", (row[0],)
        ).fetchone()
        return None if q is None else Quota(*q)

    def quotas(self) -> list[Quota]:
        """Every quota root, by inode number."""
        if not self.has_quota_schema:
            return []
        return [
            Quota(*r)
            for r in self.db.execute("SELECT root, limit_bytes, used_bytes, files FROM quota ORDER BY root").fetchall()
        ]

    def remove_tree(self, dir_ino: int, name: bytes) -> None:
        """Remove entry ``name`` of ``dir_ino`` and everything under it, as root (one operation).

        Frees the blocks of every file whose last link goes (at the next ``commit``, like any
        removal) and drops the quota of every quota root removed.
        """
        with self._op():
            self._dir(dir_ino)
            ino = self._entry(dir_ino, name)
            if ino is None:
                raise FsError(errno.ENOENT)
            t = now_ns()
            is_dir = self.getattr(ino).type == FType.DIR
            self._unlink_entry(dir_ino, name, t)
            if not is_dir:
                self._drop_link(ino, t)
                return
            self.db.execute("UPDATE inode SET nlink = nlink - 1 WHERE ino=?", (dir_ino,))
            found, _ = self._walk(ino)
            for d in reversed([i for i, ftype in found if ftype == FType.DIR]):  # children first
                for child, ftype in self.db.execute(
                    "SELECT e.ino, i.type FROM dirent e JOIN inode i ON i.ino = e.ino WHERE e.dir=?", (d,)
                ).fetchall():
                    if ftype != FType.DIR:
                        self._drop_link(child, t)
                self.db.execute("DELETE FROM dirent WHERE dir=?", (d,))
                self._destroy(d)

    # -- whole file system ------------------------------------------------------------------

    def fsstat(self, ino: int | None = None) -> FsStat:
        """Space and inode figures: of the file system, or of the quota tree ``ino`` lies in
        (total = the limit, free = what the limit leaves, capped by the real free space)."""
        free_blocks = int(self._meta("free_blocks"))
        inodes = int(self._meta("inodes"))
        max_files = 1 << 32
        st = FsStat(
            total_bytes=self.sb.data_blocks * BLOCK,
            free_bytes=free_blocks * BLOCK,
            total_files=max_files,
            free_files=max_files - inodes,
        )
        q = None if ino is None else self.quota_of(ino)
        if q is None:
            return st
        return dataclasses.replace(
            st, total_bytes=q.limit_bytes, free_bytes=max(0, min(q.limit_bytes - q.used_bytes, st.free_bytes))
        )
