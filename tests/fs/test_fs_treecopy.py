"""``nasblade.fs.treecopy.copy_tree``: the copy inside one file system behind directory-volume
snapshots and clones. Everything a tree holds comes across (data, holes, modes, owners, times,
symlinks, special files, hard links inside the tree); the copy is independent of its source;
it counts against the quota it is made under, and a copy that does not fit leaves nothing."""

from __future__ import annotations

import errno
import os

import pytest
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck
from nasblade.fs.fs import BLOCK, ROOT, ROOT_INO, Cred, FsError, FType, SetAttr, makedev
from nasblade.fs.treecopy import copy_tree

USER = Cred(1000, 1000)


def path(f: fsmod.FileSystem, *names: bytes) -> int:
    ino = ROOT_INO
    for name in names:
        ino = f.lookup(ino, name, ROOT)
    return ino


def read_all(f: fsmod.FileSystem, ino: int) -> bytes:
    return f.read(ino, 0, 1 << 30)[0]


def tree(f: fsmod.FileSystem, top: int) -> dict[bytes, tuple[object, ...]]:
    """Every entry under ``top``: relative path -> what a copy must keep."""
    out: dict[bytes, tuple[object, ...]] = {}
    stack = [(top, b"")]
    while stack:
        d, prefix = stack.pop()
        for e in f.iter_dir(d):
            a = f.getattr(e.ino)
            rel = prefix + e.name
            extra: object = None
            if a.type == FType.REG:
                extra = read_all(f, e.ino)
            elif a.type == FType.LNK:
                extra = f.readlink(e.ino)
            elif a.type == FType.DIR:
                stack.append((e.ino, rel + b"/"))
            mode = None if a.type == FType.LNK else a.mode
            out[rel] = (a.type, mode, a.uid, a.gid, a.size, a.mtime, a.rdev, a.nlink, extra)
    return out


def populate(f: fsmod.FileSystem) -> int:
    vol = f.mkdir(ROOT_INO, b"vol", ROOT, mode=0o755)
    f.setattr(vol, SetAttr(uid=1000, gid=1000), ROOT)
    sub = f.mkdir(vol, b"sub", USER, mode=0o750)
    deep = f.mkdir(sub, b"deeper", USER, mode=0o700)
    small, _ = f.create(vol, b"small", USER, mode=0o640)
    f.write(small, 0, b"twelve bytes")
    big, _ = f.create(sub, b"big", USER, mode=0o600)
    f.write(big, 0, os.urandom(3 * BLOCK + 17))
    sparse, _ = f.create(deep, b"sparse", USER)
    f.write(sparse, 5 << 20, b"tail")  # 5 MiB hole, then 4 bytes
    empty_tail, _ = f.create(vol, b"hole-at-end", USER)
    f.write(empty_tail, 0, b"head")
    f.setattr(empty_tail, SetAttr(size=2 << 20), USER)
    f.symlink(vol, b"link", b"sub/big", USER)
    f.mknod(sub, b"fifo", FType.FIFO, USER, mode=0o644)
    f.mknod(sub, b"tty", FType.CHR, ROOT, mode=0o620, rdev=makedev(4, 1))
    f.link(big, vol, b"big-again", USER)
    f.setattr(small, SetAttr(mtime=1_000_000_000_000_000_000, atime=999), ROOT)
    f.setattr(sub, SetAttr(mtime=2_000_000_000_000_000_000), ROOT)
    return vol


def test_the_copy_holds_everything_the_tree_held(fsys: fsmod.FileSystem) -> None:
    vol = populate(fsys)
    area = fsys.mkdir(ROOT_INO, b"snapshots", ROOT, mode=0o700)
    before = tree(fsys, vol)
    free = fsys.fsstat().free_bytes
    snap = copy_tree(fsys, vol, area, b"s1")
    assert tree(fsys, snap) == before
    a, s = fsys.getattr(vol), fsys.getattr(snap)
    assert (s.mode, s.uid, s.gid, s.mtime) == (a.mode, a.uid, a.gid, a.mtime)
    # one inode with two names in the copy too, apart from the source's
    big, again = path(fsys, b"snapshots", b"s1", b"sub", b"big"), path(fsys, b"snapshots", b"s1", b"big-again")
    assert big == again != path(fsys, b"vol", b"sub", b"big")
    # holes stay holes: the copy takes about what the data takes, not the 7 MiB of sizes
    fsys.commit()
    assert free - fsys.fsstat().free_bytes < 64 * BLOCK
    assert fsys.getattr(path(fsys, b"snapshots", b"s1", b"sub", b"deeper", b"sparse")).used <= 2 * BLOCK
    fsys.commit()
    rep = fsck.check_mounted(fsys)
    assert rep.clean, rep.problems


def test_the_copy_is_independent_of_its_source(fsys: fsmod.FileSystem) -> None:
    vol = populate(fsys)
    snap = copy_tree(fsys, vol, ROOT_INO, b"snap")
    frozen = tree(fsys, snap)
    small = path(fsys, b"vol", b"small")
    fsys.write(small, 0, b"CHANGED")
    fsys.remove(path(fsys, b"vol", b"sub"), b"big", USER)
    fsys.remove_tree(vol, b"sub")
    assert tree(fsys, snap) == frozen
    # and a clone of the copy is writable on its own
    clone = copy_tree(fsys, snap, ROOT_INO, b"clone")
    fsys.write(path(fsys, b"clone", b"small"), 0, b"mine")
    assert read_all(fsys, path(fsys, b"snap", b"small")) == b"twelve bytes"
    assert read_all(fsys, path(fsys, b"clone", b"small")) == b"mineve bytes"
    assert fsys.getattr(clone).type == FType.DIR


def test_a_copy_counts_against_its_quota_and_one_that_does_not_fit_leaves_nothing(fsys: fsmod.FileSystem) -> None:
    src = fsys.mkdir(ROOT_INO, b"src", ROOT)
    for i in range(4):
        ino, _ = fsys.create(src, b"f%d" % i, ROOT)
        fsys.write(ino, 0, os.urandom(4 * BLOCK))
    small = fsys.mkdir(ROOT_INO, b"small", ROOT)
    fsys.set_quota(small, 10 * BLOCK)
    with pytest.raises(FsError) as err:
        copy_tree(fsys, src, small, b"copy")
    assert err.value.errno == errno.EDQUOT
    assert list(fsys.iter_dir(small)) == []
    q = fsys.quota_of(small)
    assert q is not None and (q.used_bytes, q.files) == (0, 1)
    large = fsys.mkdir(ROOT_INO, b"large", ROOT)
    fsys.set_quota(large, 100 * BLOCK)
    copy_tree(fsys, src, large, b"copy")
    q = fsys.quota_of(large)
    assert q is not None and q.used_bytes == 16 * BLOCK and q.files == 1 + 1 + 4


def test_refusals(fsys: fsmod.FileSystem) -> None:
    vol = populate(fsys)
    for args, code in (((path(fsys, b"vol", b"small"), ROOT_INO, b"x"), errno.ENOTDIR),
                       ((vol, ROOT_INO, b"vol"), errno.EEXIST),
                       ((vol, path(fsys, b"vol", b"sub"), b"x"), errno.EINVAL),
                       ((vol, vol, b"x"), errno.EINVAL)):
        with pytest.raises(FsError) as err:
            copy_tree(fsys, *args)
        assert err.value.errno == code, args
