"""Directory quotas (tree quotas) of ``nasblade.fs.FileSystem``: EDQUOT on growth past the limit
with nothing changed, space given back by truncation and removal, usage counted when a quota
is set on a populated directory, EXDEV across quota boundaries, no nesting, ``remove_tree``,
FSSTAT of a quota tree, persistence, the upgrade of an older file system and fsck's recount."""

from __future__ import annotations

import errno
import gzip
from collections.abc import Callable
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck
from nasblade.fs.fs import BLOCK, ROOT, ROOT_INO, FsError, FType, Quota, SetAttr

# A file system made before directory quotas (see test_fs_special.py): /dir/small holds 12 inline
# bytes, /big 16 KiB in extents, /link -> dir/small, /fifo.
FORMAT1_IMAGE = Path(__file__).parent / "data" / "fs-format1-9a23875.img.gz"


def fails(fn: Callable[[], object], code: int) -> None:
    with pytest.raises(FsError) as e:
        fn()
    assert e.value.errno == code, e.value


def used(f: fsmod.FileSystem, ino: int) -> tuple[int, int]:
    q = f.quota_of(ino)
    assert q is not None
    return q.used_bytes, q.files


def free_bytes(f: fsmod.FileSystem) -> int:
    f.commit()  # freed blocks return to the free map at the commit
    return f.fsstat().free_bytes


def test_write_past_the_limit_fails_with_edquot_and_changes_nothing(fsys: fsmod.FileSystem) -> None:
    d = fsys.mkdir(ROOT_INO, b"vol", ROOT)
    fsys.set_quota(d, 4 * BLOCK)
    assert fsys.quota_of(d) == Quota(d, 4 * BLOCK, 0, 1)
    ino, _ = fsys.create(d, b"f", ROOT)
    fsys.write(ino, 0, b"a" * (3 * BLOCK))
    assert used(fsys, d) == (3 * BLOCK, 2)
    free0 = free_bytes(fsys)
    fails(lambda: fsys.write(ino, 3 * BLOCK, b"b" * (2 * BLOCK)), errno.EDQUOT)
    fails(lambda: fsys.write(ino, 10 * BLOCK, b"b" * (2 * BLOCK)), errno.EDQUOT)  # two holes' worth
    a = fsys.getattr(ino)
    assert (a.size, a.used) == (3 * BLOCK, 3 * BLOCK)
    assert fsys.read(ino, 0, 1 << 20)[0] == b"a" * (3 * BLOCK)
    assert used(fsys, d) == (3 * BLOCK, 2)
    assert free_bytes(fsys) == free0
    # Exactly up to the limit is fine; overwriting allocated blocks costs nothing.
    fsys.write(ino, 3 * BLOCK, b"c" * BLOCK)
    fsys.write(ino, 0, b"z" * (4 * BLOCK))
    assert used(fsys, d) == (4 * BLOCK, 2)
    # Truncating up leaves a hole (no blocks): allowed even at the limit.
    fsys.setattr(ino, SetAttr(size=100 * BLOCK), ROOT)
    assert used(fsys, d) == (4 * BLOCK, 2)


def test_inline_growth_uninlining_and_setattr_size_are_charged(fsys: fsmod.FileSystem) -> None:
    d = fsys.mkdir(ROOT_INO, b"vol", ROOT)
    fsys.set_quota(d, 10000)
    ino, _ = fsys.create(d, b"small", ROOT)
    fsys.write(ino, 0, b"x" * 8000)  # inline: 8000 bytes
    assert used(fsys, d) == (8000, 2)
    # Growing past INLINE_MAX moves the data to 3 blocks (12288 bytes): over the limit.
    fails(lambda: fsys.write(ino, 8000, b"y" * 1000), errno.EDQUOT)
    fsys.set_quota(d, 8050)
    fails(lambda: fsys.setattr(ino, SetAttr(size=8100), ROOT), errno.EDQUOT)  # inline growth
    fsys.set_quota(d, 10000)
    assert fsys.read(ino, 0, 10000)[0] == b"x" * 8000
    assert fsys.getattr(ino).used == 8000  # still inline
    fsys.write(ino, 8000, b"y" * 192)  # inline up to 8192 fits
    assert used(fsys, d) == (8192, 2)
    fails(lambda: fsys.write(ino, 8192, b"!" * 2000), errno.EDQUOT)
    fsys.setattr(ino, SetAttr(size=9000), ROOT)  # un-inlined: 2 blocks of data, then a hole
    assert used(fsys, d) == (2 * BLOCK, 2)
    assert fsys.read(ino, 0, 10000)[0] == b"x" * 8000 + b"y" * 192 + bytes(808)
    fsys.setattr(ino, SetAttr(size=10), ROOT)
    assert used(fsys, d) == (BLOCK, 2)  # the file stays in extents once moved
    fsys.setattr(ino, SetAttr(size=0), ROOT)
    assert used(fsys, d) == (0, 2)
    fsys.set_quota(d, 3 * BLOCK)
    small, _ = fsys.create(d, b"small2", ROOT)
    fsys.write(small, 0, b"x" * 10)
    fsys.write(small, 8190, b"abcd")  # un-inlined into 3 blocks
    fails(lambda: fsys.write(ino, 0, b"x" * 10), errno.EDQUOT)  # in extents: needs a block
    assert used(fsys, d) == (3 * BLOCK, 3)
    assert fsys.getattr(small).used == 3 * BLOCK
    # A symlink's target counts as bytes; special files and directories cost only an inode.
    fails(lambda: fsys.symlink(d, b"s", b"t", ROOT), errno.EDQUOT)
    fsys.mkdir(d, b"sub", ROOT)
    fsys.mknod(d, b"fifo", FType.FIFO, ROOT, mode=0o644)
    assert used(fsys, d) == (3 * BLOCK, 5)


def test_truncate_and_remove_give_space_back(fsys: fsmod.FileSystem) -> None:
    free0 = free_bytes(fsys)
    d = fsys.mkdir(ROOT_INO, b"vol", ROOT)
    fsys.set_quota(d, 1 << 20)
    sub = fsys.mkdir(d, b"sub", ROOT)
    ino, _ = fsys.create(sub, b"f", ROOT)
    fsys.write(ino, 0, bytes(10 * BLOCK))
    fsys.link(ino, d, b"f2", ROOT)
    assert used(fsys, d) == (10 * BLOCK, 3)
    fsys.setattr(ino, SetAttr(size=4 * BLOCK + 1), ROOT)
    assert used(fsys, d) == (5 * BLOCK, 3)
    fsys.remove(sub, b"f", ROOT)  # another link remains: nothing freed
    assert used(fsys, d) == (5 * BLOCK, 3)
    fsys.remove(d, b"f2", ROOT)
    assert used(fsys, d) == (0, 2)
    fsys.symlink(sub, b"s", b"12345", ROOT)
    small, _ = fsys.create(sub, b"small", ROOT)
    fsys.write(small, 0, b"abc")
    assert used(fsys, d) == (8, 4)
    fsys.remove(sub, b"s", ROOT)
    fsys.remove(sub, b"small", ROOT)
    fsys.rmdir(d, b"sub", ROOT)
    assert used(fsys, d) == (0, 1)
    # The empty quota root itself can go too, taking its quota with it.
    fsys.rmdir(ROOT_INO, b"vol", ROOT)
    assert fsys.quotas() == []
    assert free_bytes(fsys) == free0


def test_set_quota_on_a_populated_directory_counts_its_usage(fsys: fsmod.FileSystem) -> None:
    d = fsys.mkdir(ROOT_INO, b"data", ROOT)
    sub = fsys.mkdir(d, b"sub", ROOT)
    big, _ = fsys.create(sub, b"big", ROOT)
    fsys.write(big, 0, bytes(5 * BLOCK + 1))  # 6 blocks
    sparse, _ = fsys.create(d, b"sparse", ROOT)
    fsys.write(sparse, 1 << 30, b"x")  # 1 block
    small, _ = fsys.create(sub, b"small", ROOT)
    fsys.write(small, 0, b"hello")
    fsys.symlink(d, b"ln", b"sub/small", ROOT)
    fsys.link(small, d, b"small2", ROOT)  # hard link inside the tree: counted once
    outside, _ = fsys.create(ROOT_INO, b"outside", ROOT)
    fsys.write(outside, 0, bytes(BLOCK * 3))
    fsys.set_quota(d, 100 * BLOCK)
    assert fsys.quota_of(d) == Quota(d, 100 * BLOCK, 7 * BLOCK + 5 + 9, 6)
    for ino in (d, sub, big, sparse, small):
        q = fsys.quota_of(ino)
        assert q is not None and q.root == d
    assert fsys.quota_of(outside) is None and fsys.quota_of(ROOT_INO) is None
    assert fsys.quotas() == [fsys.quota_of(d)]
    # Setting it again changes only the limit.
    fsys.set_quota(d, 50 * BLOCK)
    assert fsys.quota_of(d) == Quota(d, 50 * BLOCK, 7 * BLOCK + 5 + 9, 6)


def test_raising_the_limit_lets_writes_continue_and_lowering_stops_growth(fsys: fsmod.FileSystem) -> None:
    d = fsys.mkdir(ROOT_INO, b"vol", ROOT)
    fsys.set_quota(d, 2 * BLOCK)
    ino, _ = fsys.create(d, b"f", ROOT)
    fsys.write(ino, 0, bytes(2 * BLOCK))
    fails(lambda: fsys.write(ino, 2 * BLOCK, b"x"), errno.EDQUOT)
    fsys.set_quota(d, 4 * BLOCK)
    fsys.write(ino, 2 * BLOCK, bytes(2 * BLOCK))
    assert used(fsys, d) == (4 * BLOCK, 2)
    fsys.set_quota(d, BLOCK)  # below the usage: accepted
    fails(lambda: fsys.write(ino, 4 * BLOCK, b"x"), errno.EDQUOT)
    fails(lambda: fsys.create(d, b"g", ROOT), errno.EDQUOT)  # over the limit: no new inodes
    fails(lambda: fsys.mkdir(d, b"g", ROOT), errno.EDQUOT)
    assert fsys._entry(d, b"g") is None
    fsys.setattr(ino, SetAttr(size=BLOCK), ROOT)  # shrinking always works
    assert used(fsys, d) == (BLOCK, 2)
    fsys.create(d, b"g", ROOT)  # at the limit, an empty file costs no bytes
    assert used(fsys, d) == (BLOCK, 3)


def test_links_and_renames_across_a_quota_boundary_fail_with_exdev(fsys: fsmod.FileSystem) -> None:
    a = fsys.mkdir(ROOT_INO, b"a", ROOT)
    b = fsys.mkdir(ROOT_INO, b"b", ROOT)
    plain = fsys.mkdir(ROOT_INO, b"plain", ROOT)
    fsys.set_quota(a, 1 << 20)
    fsys.set_quota(b, 1 << 20)
    fa, _ = fsys.create(a, b"fa", ROOT)
    fsys.write(fa, 0, b"data")
    fp, _ = fsys.create(plain, b"fp", ROOT)
    sub = fsys.mkdir(a, b"sub", ROOT)
    for fn in (
        lambda: fsys.rename(a, b"fa", b, b"fa", ROOT),  # between two trees
        lambda: fsys.rename(a, b"fa", plain, b"fa", ROOT),  # out of a tree
        lambda: fsys.rename(plain, b"fp", a, b"fp", ROOT),  # into a tree
        lambda: fsys.rename(a, b"sub", ROOT_INO, b"sub", ROOT),  # a directory out of a tree
        lambda: fsys.rename(ROOT_INO, b"b", a, b"b", ROOT),  # a quota root into another tree
        lambda: fsys.rename(ROOT_INO, b"plain", a, b"plain", ROOT),
        lambda: fsys.link(fa, b, b"fa", ROOT),
        lambda: fsys.link(fa, ROOT_INO, b"fa", ROOT),
        lambda: fsys.link(fp, a, b"fp", ROOT),
    ):
        fails(fn, errno.EXDEV)
    assert used(fsys, a) == (4, 3) and used(fsys, b) == (0, 1)
    assert fsys._entry(a, b"fa") == fa and fsys._entry(plain, b"fp") == fp
    # Inside one tree, and a quota root moving outside any tree, are fine.
    fsys.rename(a, b"fa", sub, b"fa", ROOT)
    fsys.link(fa, a, b"fa2", ROOT)
    fsys.rename(ROOT_INO, b"b", plain, b"b2", ROOT)
    assert fsys.quota_of(b) == Quota(b, 1 << 20, 0, 1)
    fsys.rename(ROOT_INO, b"plain", ROOT_INO, b"plain2", ROOT)
    assert used(fsys, a) == (4, 3)
    # Without the quota the boundary is gone.
    fsys.clear_quota(a)
    fsys.clear_quota(a)  # idempotent
    assert fsys.quota_of(fa) is None and fsys.quota_of(a) is None
    fsys.rename(sub, b"fa", ROOT_INO, b"fa", ROOT)


def test_quota_trees_do_not_nest(fsys: fsmod.FileSystem) -> None:
    top = fsys.mkdir(ROOT_INO, b"top", ROOT)
    mid = fsys.mkdir(top, b"mid", ROOT)
    low = fsys.mkdir(mid, b"low", ROOT)
    f, _ = fsys.create(ROOT_INO, b"file", ROOT)
    fsys.set_quota(mid, 1 << 20)
    fails(lambda: fsys.set_quota(low, 1 << 20), errno.EINVAL)  # inside a quota tree
    fails(lambda: fsys.set_quota(top, 1 << 20), errno.EINVAL)  # around one
    fails(lambda: fsys.set_quota(ROOT_INO, 1 << 20), errno.EINVAL)
    fails(lambda: fsys.set_quota(f, 1 << 20), errno.ENOTDIR)
    fails(lambda: fsys.set_quota(top, -1), errno.EINVAL)
    # A tree may not hold a hard link to a file outside it.
    other = fsys.mkdir(ROOT_INO, b"other", ROOT)
    fsys.link(f, other, b"f", ROOT)
    fails(lambda: fsys.set_quota(other, 1 << 20), errno.EXDEV)
    assert [q.root for q in fsys.quotas()] == [mid]
    assert fsys.quota_of(other) is None and fsys.quota_of(top) is None


def test_remove_tree_frees_blocks_and_drops_the_quota(fsys: fsmod.FileSystem) -> None:
    free0 = free_bytes(fsys)
    vol = fsys.mkdir(ROOT_INO, b"vol", ROOT)
    fsys.set_quota(vol, 1 << 30)
    d = vol
    for i in range(5):
        d = fsys.mkdir(d, b"d%d" % i, ROOT)
        for j in range(3):
            ino, _ = fsys.create(d, b"f%d" % j, ROOT)
            fsys.write(ino, 0, bytes((i + j + 1) * 5000))
        fsys.symlink(d, b"s", b"f0", ROOT)
        fsys.link(ino, vol, b"link%d" % i, ROOT)
    assert free_bytes(fsys) < free0
    keep = fsys.mkdir(ROOT_INO, b"keep", ROOT)
    kept, _ = fsys.create(keep, b"k", ROOT)
    fsys.write(kept, 0, bytes(3 * BLOCK))
    free1 = free_bytes(fsys)
    fsys.remove_tree(ROOT_INO, b"vol")
    assert fsys.quotas() == []
    fails(lambda: fsys.quota_of(vol), errno.ESTALE)
    fails(lambda: fsys.getattr(d), errno.ESTALE)
    fails(lambda: fsys.lookup(ROOT_INO, b"vol", ROOT), errno.ENOENT)
    fails(lambda: fsys.remove_tree(ROOT_INO, b"vol"), errno.ENOENT)
    assert free_bytes(fsys) == free0 - 3 * BLOCK > free1  # only keep/k still holds blocks
    assert fsys.getattr(ROOT_INO).nlink == 3  # ".", "..", keep
    # A tree without a quota; a hard link from outside survives its removal.
    fsys.link(kept, ROOT_INO, b"k2", ROOT)
    fsys.remove_tree(ROOT_INO, b"keep")
    assert fsys.read(kept, 0, 10)[0] == bytes(10)
    fsys.remove_tree(ROOT_INO, b"k2")  # a file entry works too
    assert free_bytes(fsys) == free0
    assert fsys.db.execute("SELECT COUNT(*) FROM inode").fetchone()[0] == 1


def test_fsstat_of_an_inode_in_a_quota_tree_reports_the_quota(fsys: fsmod.FileSystem) -> None:
    vol = fsys.mkdir(ROOT_INO, b"vol", ROOT)
    fsys.set_quota(vol, 10 * BLOCK)
    ino, _ = fsys.create(vol, b"f", ROOT)
    fsys.write(ino, 0, bytes(4 * BLOCK))
    whole = fsys.fsstat()
    assert fsys.fsstat(ROOT_INO) == whole
    assert fsys.fsstat(None) == whole
    for x in (vol, ino):
        st = fsys.fsstat(x)
        assert (st.total_bytes, st.free_bytes) == (10 * BLOCK, 6 * BLOCK)
        assert (st.total_files, st.free_files) == (whole.total_files, whole.free_files)
    fsys.set_quota(vol, 2 * BLOCK)  # over the limit: nothing free
    assert fsys.fsstat(ino).free_bytes == 0
    fsys.set_quota(vol, 1 << 60)  # a limit above the real space: the real free space
    assert fsys.fsstat(ino).free_bytes == whole.free_bytes


def test_quota_usage_survives_close_and_reopen(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    vol = f.mkdir(ROOT_INO, b"vol", ROOT)
    f.set_quota(vol, 8 * BLOCK)
    ino, _ = f.create(vol, b"f", ROOT)
    f.write(ino, 0, bytes(5 * BLOCK))
    f.close()
    f = fsmod.FileSystem(device)
    try:
        assert f.quota_of(ino) == Quota(vol, 8 * BLOCK, 5 * BLOCK, 2)
        fails(lambda: f.write(ino, 5 * BLOCK, bytes(4 * BLOCK)), errno.EDQUOT)
        g, _ = f.create(vol, b"g", ROOT)  # accounting continues on the new mount
        f.write(g, 0, b"abc")
        assert f.quota_of(vol) == Quota(vol, 8 * BLOCK, 5 * BLOCK + 3, 3)
    finally:
        f.close()
    rep = fsck.check(device)
    assert rep.clean, rep.problems
    assert rep.quotas == 1


def test_uncommitted_quota_changes_roll_back_with_the_operation(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    vol = f.mkdir(ROOT_INO, b"vol", ROOT)
    f.commit()
    f.set_quota(vol, BLOCK)
    ino, _ = f.create(vol, b"f", ROOT)
    f.write(ino, 0, bytes(BLOCK))
    f.abort()  # never committed: neither the quota nor the file exists
    f = fsmod.FileSystem(device)
    try:
        assert f.quotas() == [] and f._entry(vol, b"f") is None
    finally:
        f.close()


def test_an_old_file_system_gains_the_quota_schema(tmp_path: Path) -> None:
    img = tmp_path / "old.img"
    img.write_bytes(gzip.decompress(FORMAT1_IMAGE.read_bytes()))
    dev = FileBlockDevice(img)
    try:
        ro = fsmod.FileSystem(dev, readonly=True)  # a read-only mount changes nothing
        assert not ro.has_quota_schema and ro.quotas() == [] and ro.quota_of(ROOT_INO) is None
        ro.abort()
        f = fsmod.FileSystem(dev)
        assert f.has_quota_schema
        cols = {r[1] for r in f.db.execute("PRAGMA table_info(inode)").fetchall()}
        assert "qroot" in cols
        d = f.lookup(ROOT_INO, b"dir", ROOT)
        f.set_quota(d, 1 << 20)
        assert f.quota_of(d) == Quota(d, 1 << 20, len(b"inline data\n"), 2)
        fails(lambda: f.rename(d, b"small", ROOT_INO, b"small", ROOT), errno.EXDEV)
        big = f.lookup(ROOT_INO, b"big", ROOT)
        assert f.quota_of(big) is None
        f.close()
        f = fsmod.FileSystem(dev)  # the second mount finds the schema in place
        assert f.quota_of(f.lookup(d, b"small", ROOT)) == Quota(d, 1 << 20, 12, 2)
        f.close()
        rep = fsck.check(dev)
        assert rep.clean, rep.problems
    finally:
        dev.close()


def test_fsck_recount_agrees_and_finds_damage(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    vol = f.mkdir(ROOT_INO, b"vol", ROOT)
    f.set_quota(vol, 1 << 20)
    ino, _ = f.create(vol, b"f", ROOT)
    f.write(ino, 0, bytes(3 * BLOCK))
    f.symlink(vol, b"s", b"f", ROOT)
    f.commit()
    rep = fsck.check_mounted(f)
    assert rep.clean, rep.problems
    assert rep.quotas == 1
    f.db.execute("UPDATE quota SET used_bytes = used_bytes + 1, files = files - 1")
    f.db.execute("UPDATE inode SET qroot=0 WHERE ino=?", (ino,))
    rep = fsck.check_mounted(f)
    f.db.close()
    assert rep.problems == [
        f"entry b'f' in {vol} (quota root {vol}) names inode {ino} with quota root 0",
        f"quota {vol} records {3 * BLOCK + 2} bytes in 2 files, recount gives 1 bytes in 2 files",
    ]
