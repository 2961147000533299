"""``check``: a read-only consistency check of a nasblade file system.

Opened like a mount (so the WAL is recovered first), then it verifies, in order: SQLite's own
``integrity_check``; the counters in ``meta``; that every directory entry points at an inode
and every inode's link count equals the entries that name it (directories: 2 + sub-directories,
and exactly one parent entry); that ``..`` links agree with the tree; that cookies are below the
directory's next cookie; that file extents and free extents lie inside the data region, never
overlap and cover it exactly; that no extent lies past its file's end; and that every inode has
a known type, with special files (FIFOs, sockets, device nodes) holding no data, no target
and an ``rdev`` only when they are device nodes; and, for directory quotas, that every inode's
``qroot`` matches the tree it lies in (no nesting) and each quota's ``used_bytes`` and ``files``
equal a recount. Used by ``nasblade fsck`` and by the crash tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from nasblade.blockdev import BlockDevice
from nasblade.fs import fs as fsmod


@dataclasses.dataclass
class Report:
    problems: list[str] = dataclasses.field(default_factory=list)
    inodes: int = 0
    directories: int = 0
    files: int = 0
    special: int = 0
    quotas: int = 0
    used_blocks: int = 0
    free_blocks: int = 0

    @property
    def clean(self) -> bool:
        return not self.problems


def check(dev: BlockDevice, *, max_problems: int = 100) -> Report:
    fs = fsmod.FileSystem(dev)
    try:
        return check_mounted(fs, max_problems=max_problems)
    finally:
        fs.close()


def check_mounted(fs: fsmod.FileSystem, *, max_problems: int = 100) -> Report:
    rep = Report()
    db: Any = fs.db

    def bad(msg: str) -> None:
        if len(rep.problems) < max_problems:
            rep.problems.append(msg)

    rows = db.execute("PRAGMA integrity_check").fetchall()
    if rows != [("ok",)]:
        for (r,) in rows:
            bad(f"sqlite: {r}")
        return rep
    qcol = "qroot" if fs.has_quota_schema else "0"
    inodes = {
        r[0]: r
        for r in db.execute(
            f"SELECT ino, type, nlink, size, parent, next_cookie, target, length(inline), rdev, {qcol} FROM inode"
        ).fetchall()
    }
    rep.inodes = len(inodes)
    if fsmod.ROOT_INO not in inodes:
        bad("root inode missing")
        return rep
    refs: dict[int, int] = {}
    subdirs: dict[int, int] = {}
    dir_entries: dict[int, int] = {}
    for d, name, ino, cookie in db.execute("SELECT dir, name, ino, cookie FROM dirent"):
        if d not in inodes:
            bad(f"entry {bytes(name)!r} in missing directory {d}")
            continue
        if inodes[d][1] != fsmod.FType.DIR:
            bad(f"entry {bytes(name)!r} in non-directory {d}")
        if cookie >= inodes[d][5] or cookie < 3:
            bad(f"entry {bytes(name)!r} in {d} has cookie {cookie} outside [3, {inodes[d][5]})")
        if ino not in inodes:
            bad(f"entry {bytes(name)!r} in {d} points at missing inode {ino}")
            continue
        refs[ino] = refs.get(ino, 0) + 1
        qroot, dir_qroot = inodes[ino][9], inodes[d][9]
        if (0 if qroot == ino else qroot) != dir_qroot:
            bad(f"entry {bytes(name)!r} in {d} (quota root {dir_qroot}) names inode {ino} with quota root {qroot}")
        if inodes[ino][1] == fsmod.FType.DIR:
            subdirs[d] = subdirs.get(d, 0) + 1
            dir_entries[ino] = d
    types = {int(k) for k in fsmod.FType}
    for ino, (_, ftype, nlink, size, parent, _nc, target, inline_len, rdev, _q) in inodes.items():
        if ftype not in types:
            bad(f"inode {ino} has unknown type {ftype}")
        if rdev and ftype not in fsmod.DEVICES:
            bad(f"inode {ino} of type {ftype} has rdev {rdev}")
        if ftype in fsmod.SPECIAL:
            rep.special += 1
            if size != 0 or target is not None:
                bad(f"special file {ino} has size {size} or a target")
        if ftype == fsmod.FType.DIR:
            rep.directories += 1
            want = 2 + subdirs.get(ino, 0)
            if nlink != want:
                bad(f"directory {ino} has nlink {nlink}, expected {want}")
            if ino == fsmod.ROOT_INO:
                if parent != ino:
                    bad("root's parent is not itself")
                if refs.get(ino):
                    bad("root has a directory entry")
            else:
                if refs.get(ino, 0) != 1:
                    bad(f"directory {ino} has {refs.get(ino, 0)} entries (expected 1)")
                elif dir_entries.get(ino) != parent:
                    bad(f"directory {ino} has '..' {parent} but lives in {dir_entries.get(ino)}")
        else:
            rep.files += 1
            if nlink != refs.get(ino, 0):
                bad(f"inode {ino} has nlink {nlink}, but {refs.get(ino, 0)} entries")
            if nlink == 0:
                bad(f"orphan inode {ino}")
            if ftype == fsmod.FType.LNK and target is None:
                bad(f"symlink {ino} without a target")
            if inline_len is not None and (ftype != fsmod.FType.REG or inline_len != size):
                bad(f"inode {ino} has {inline_len} inline bytes but size {size}")
    # Space map: extents and free ranges must tile [0, data_blocks) exactly.
    total = fs.sb.data_blocks
    ranges: list[tuple[int, int, str]] = []
    blocks: dict[int, int] = {}
    for ino, lblk, nblk, pblk in db.execute("SELECT ino, lblk, nblk, pblk FROM extent"):
        if ino not in inodes:
            bad(f"extent of missing inode {ino}")
            continue
        blocks[ino] = blocks.get(ino, 0) + nblk
        if nblk <= 0:
            bad(f"empty extent in inode {ino}")
        if lblk * fsmod.BLOCK >= inodes[ino][3] and nblk > 0:
            bad(f"inode {ino} has an extent at block {lblk} past its size {inodes[ino][3]}")
        if inodes[ino][7] is not None:
            bad(f"inline inode {ino} also has extents")
        ranges.append((pblk, nblk, f"inode {ino}"))
        rep.used_blocks += nblk
    for start, length in db.execute("SELECT start, len FROM free"):
        ranges.append((start, length, "free"))
        rep.free_blocks += length
    ranges.sort()
    pos = 0
    for start, length, owner in ranges:
        if start < pos:
            bad(f"blocks {start}..{start + length} of {owner} overlap another range")
        elif start > pos:
            bad(f"blocks {pos}..{start} are neither used nor free")
        pos = max(pos, start + length)
    if pos != total:
        bad(f"space map ends at {pos}, data region has {total} blocks")
    _check_quotas(fs, inodes, blocks, rep, bad)
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("free_blocks") != rep.free_blocks:
        bad(f"free_blocks counter {meta.get('free_blocks')} != free map {rep.free_blocks}")
    if meta.get("inodes") != rep.inodes:
        bad(f"inode counter {meta.get('inodes')} != {rep.inodes}")
    return rep


def _check_quotas(
    fs: fsmod.FileSystem, inodes: dict[int, Any], blocks: dict[int, int], rep: Report, bad: Callable[[str], None]
) -> None:
    """Quota roots are directories labelled with themselves; usage equals a recount."""
    if not fs.has_quota_schema:
        return
    if inodes[fsmod.ROOT_INO][9] != 0:
        bad(f"root directory has quota root {inodes[fsmod.ROOT_INO][9]}")
    used: dict[int, int] = {}
    files: dict[int, int] = {}
    for ino, row in inodes.items():
        qroot = row[9]
        if qroot:
            target, inline_len = row[6], row[7]
            nbytes = (inline_len or 0) + (len(target) if target is not None else 0) + blocks.get(ino, 0) * fsmod.BLOCK
            used[qroot] = used.get(qroot, 0) + nbytes
            files[qroot] = files.get(qroot, 0) + 1
    quotas = fs.quotas()
    rep.quotas = len(quotas)
    roots = set()
    for q in quotas:
        roots.add(q.root)
        if q.root not in inodes or inodes[q.root][1] != fsmod.FType.DIR or inodes[q.root][9] != q.root:
            bad(f"quota root {q.root} is not a directory labelled with its own quota")
        if q.limit_bytes < 0:
            bad(f"quota {q.root} has a negative limit {q.limit_bytes}")
        if (q.used_bytes, q.files) != (used.get(q.root, 0), files.get(q.root, 0)):
            bad(
                f"quota {q.root} records {q.used_bytes} bytes in {q.files} files,"
                f" recount gives {used.get(q.root, 0)} bytes in {files.get(q.root, 0)} files"
            )
    for qroot in sorted(set(used) - roots):
        bad(f"{files[qroot]} inodes have quota root {qroot}, which has no quota")
