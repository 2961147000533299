"""Behaviour of ``nasblade.fs.FileSystem`` on a FileBlockDevice: POSIX semantics the NFS
layer relies on, space accounting, large directories and fsck's ability to find damage."""

from __future__ import annotations

import errno
import os

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck, layout
from nasblade.fs.fs import ROOT, ROOT_INO, Cred, FsError, FType, SetAttr

USER = Cred(1000, 1000)
OTHER = Cred(2000, 2000)


def err(excinfo: pytest.ExceptionInfo[FsError]) -> int:
    return excinfo.value.errno


def test_write_read_sparse_and_64bit_sizes(fsys: fsmod.FileSystem) -> None:
    ino, created = fsys.create(ROOT_INO, b"f", ROOT)
    assert created
    fsys.write(ino, 1, b"abc")
    far = (1 << 40) + 123
    fsys.write(ino, far, b"xyz")
    data, eof, a = fsys.read(ino, 0, 8)
    assert data == b"\0abc\0\0\0\0" and not eof
    assert a.size == far + 3
    data, eof, _ = fsys.read(ino, far - 2, 100)
    assert data == b"\0\0xyz" and eof
    # Only two blocks are allocated for a 1 TiB file.
    assert fsys.getattr(ino).used == 2 * fsmod.BLOCK
    mid, _, _ = fsys.read(ino, 1 << 30, 4096)
    assert mid == bytes(4096)


def test_large_write_is_one_extent_and_reads_back(fsys: fsmod.FileSystem) -> None:
    ino, _ = fsys.create(ROOT_INO, b"big", ROOT)
    blob = os.urandom(3 << 20)
    for off in range(0, len(blob), 1 << 20):
        fsys.write(ino, off, blob[off : off + (1 << 20)])
    assert fsys.read(ino, 0, len(blob))[0] == blob
    n = fsys.db.execute("SELECT COUNT(*) FROM extent WHERE ino=?", (ino,)).fetchone()[0]
    assert n == 1


def test_unaligned_overwrite_and_truncate_zero_the_tail(fsys: fsmod.FileSystem) -> None:
    ino, _ = fsys.create(ROOT_INO, b"t", ROOT)
    fsys.write(ino, 0, b"A" * 10000)
    fsys.write(ino, 4090, b"B" * 20)
    fsys.setattr(ino, SetAttr(size=5000), ROOT)
    fsys.setattr(ino, SetAttr(size=9000), ROOT)
    data = fsys.read(ino, 0, 9000)[0]
    assert data == b"A" * 4090 + b"B" * 20 + b"A" * 890 + bytes(4000)
    fsys.setattr(ino, SetAttr(size=0), ROOT)
    assert fsys.getattr(ino).used == 0
    fsys.commit()
    assert fsys.fsstat().free_bytes == fsys.sb.data_blocks * fsmod.BLOCK


def test_a_zero_length_write_changes_nothing(fsys: fsmod.FileSystem) -> None:
    """POSIX write(2) of zero bytes has no other results: past the end of a small (inline) or a
    large file, the size and mtime stay (fsck, at teardown, agrees with the inline data)."""
    for name, size in ((b"small", 100), (b"large", 3 * fsmod.INLINE_MAX)):
        ino, _ = fsys.create(ROOT_INO, name, ROOT)
        before = fsys.write(ino, 0, b"x" * size)
        after = fsys.write(ino, size + 5000, b"")
        assert (after.size, after.mtime) == (size, before.mtime)
        assert fsys.read(ino, 0, 2 * size + 5000)[0] == b"x" * size
    fsys.commit()


def test_hard_links_symlinks_and_nlink(fsys: fsmod.FileSystem) -> None:
    ino, _ = fsys.create(ROOT_INO, b"a", ROOT)
    d = fsys.mkdir(ROOT_INO, b"d", ROOT)
    fsys.link(ino, d, b"a2", ROOT)
    assert fsys.getattr(ino).nlink == 2
    assert fsys.lookup(d, b"a2", ROOT) == ino
    s = fsys.symlink(ROOT_INO, b"s", b"d/a2", ROOT)
    assert fsys.readlink(s) == b"d/a2"
    assert fsys.getattr(s).type == FType.LNK
    fsys.remove(ROOT_INO, b"a", ROOT)
    assert fsys.getattr(ino).nlink == 1
    fsys.remove(d, b"a2", ROOT)
    with pytest.raises(FsError) as e:
        fsys.getattr(ino)
    assert err(e) == errno.ESTALE
    with pytest.raises(FsError) as e:
        fsys.link(d, ROOT_INO, b"dirlink", ROOT)
    assert err(e) == errno.EPERM
    assert fsys.getattr(ROOT_INO).nlink == 3


def test_rename_semantics(fsys: fsmod.FileSystem) -> None:
    a = fsys.mkdir(ROOT_INO, b"a", ROOT)
    b = fsys.mkdir(ROOT_INO, b"b", ROOT)
    sub = fsys.mkdir(a, b"sub", ROOT)
    f, _ = fsys.create(a, b"f", ROOT)
    g, _ = fsys.create(b, b"g", ROOT)
    fsys.rename(a, b"f", b, b"g", ROOT)  # replaces g
    assert fsys.lookup(b, b"g", ROOT) == f
    with pytest.raises(FsError):
        fsys.getattr(g)
    with pytest.raises(FsError) as e:
        fsys.rename(ROOT_INO, b"a", sub, b"loop", ROOT)
    assert err(e) == errno.EINVAL
    fsys.rename(a, b"sub", b, b"sub2", ROOT)
    assert fsys.getattr(a).nlink == 2 and fsys.getattr(b).nlink == 3
    assert fsys.lookup(sub, b"..", ROOT) == b
    fsys.create(sub, b"x", ROOT)
    c = fsys.mkdir(ROOT_INO, b"c", ROOT)
    full = fsys.mkdir(c, b"full", ROOT)
    fsys.create(full, b"occupant", ROOT)
    with pytest.raises(FsError) as e:
        fsys.rename(b, b"sub2", c, b"full", ROOT)
    assert err(e) == errno.ENOTEMPTY
    fsys.mkdir(c, b"empty", ROOT)
    fsys.rename(b, b"sub2", c, b"empty", ROOT)
    assert fsys.lookup(c, b"empty", ROOT) == sub
    fsys.rename(c, b"empty", b, b"sub2", ROOT)
    with pytest.raises(FsError) as e:
        fsys.rename(b, b"g", c, b"full", ROOT)
    assert err(e) == errno.EISDIR
    fsys.rename(b, b"g", b, b"g", ROOT)
    assert fsys.lookup(b, b"g", ROOT) == f


def test_permissions_from_credentials(fsys: fsmod.FileSystem) -> None:
    fsys.setattr(ROOT_INO, SetAttr(mode=0o777), ROOT)
    f, _ = fsys.create(ROOT_INO, b"rootfile", ROOT, mode=0o644)
    with pytest.raises(FsError) as e:
        fsys.write(f, 0, b"x", USER)
    assert err(e) == errno.EACCES
    assert fsys.read(f, 0, 1, USER)[0] == b""
    mine, _ = fsys.create(ROOT_INO, b"mine", USER, mode=0o600)
    assert fsys.getattr(mine).uid == 1000
    with pytest.raises(FsError) as e:
        fsys.read(mine, 0, 1, OTHER)
    assert err(e) == errno.EACCES
    with pytest.raises(FsError) as e:
        fsys.setattr(mine, SetAttr(mode=0o777), OTHER)
    assert err(e) == errno.EPERM
    with pytest.raises(FsError) as e:
        fsys.setattr(mine, SetAttr(uid=0), USER)
    assert err(e) == errno.EPERM
    d = fsys.mkdir(ROOT_INO, b"closed", ROOT, mode=0o755)
    with pytest.raises(FsError) as e:
        fsys.create(d, b"x", USER)
    assert err(e) == errno.EACCES
    fsys.setattr(ROOT_INO, SetAttr(mode=0o1777), ROOT)
    with pytest.raises(FsError) as e:
        fsys.remove(ROOT_INO, b"mine", OTHER)
    assert err(e) == errno.EACCES
    fsys.remove(ROOT_INO, b"mine", USER)


def test_chgrp_by_the_owner_clears_setid_bits_of_an_executable(fsys: fsmod.FileSystem) -> None:
    """POSIX chown(): an unprivileged owner changing the group of an executable regular file
    loses S_ISUID and S_ISGID; a non-executable file keeps them; root's change keeps them."""
    fsys.setattr(ROOT_INO, SetAttr(mode=0o1777), ROOT)
    member = Cred(1000, 1000, (999,))
    for name, mode, cred, expected in ((b"exe", 0o6755, member, 0o755), (b"data", 0o6644, member, 0o6644),
                                       (b"byroot", 0o6755, ROOT, 0o6755)):
        f, _ = fsys.create(ROOT_INO, name, ROOT, mode=0o644)
        fsys.setattr(f, SetAttr(uid=1000, gid=1000, mode=mode), ROOT)
        fsys.setattr(f, SetAttr(gid=999), cred)
        a = fsys.getattr(f)
        assert (a.gid, a.mode & 0o7777) == (999, expected), name


def test_exclusive_create_verifier_is_stable(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    ino, created = f.create(ROOT_INO, b"x", ROOT, exclusive=b"12345678")
    assert created
    f.commit()
    f.close()
    f = fsmod.FileSystem(device)
    assert f.create(ROOT_INO, b"x", ROOT, exclusive=b"12345678") == (ino, False)
    with pytest.raises(FsError) as e:
        f.create(ROOT_INO, b"x", ROOT, exclusive=b"87654321")
    assert err(e) == errno.EEXIST
    with pytest.raises(FsError) as e:
        f.create(ROOT_INO, b"x", ROOT, guarded=True)
    assert err(e) == errno.EEXIST
    f.close()


def test_inode_numbers_and_generations_are_stable_and_not_reused(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    a, _ = f.create(ROOT_INO, b"a", ROOT)
    gen_a = f.generation(a)
    f.remove(ROOT_INO, b"a", ROOT)
    b, _ = f.create(ROOT_INO, b"b", ROOT)
    assert b != a and f.generation(b) != gen_a
    f.close()
    f = fsmod.FileSystem(device)
    assert f.lookup(ROOT_INO, b"b", ROOT) == b and f.generation(b) is not None
    f.close()


def test_times_are_nanoseconds_and_settable(fsys: fsmod.FileSystem) -> None:
    ino, _ = fsys.create(ROOT_INO, b"t", ROOT)
    fsys.setattr(ino, SetAttr(atime=1_000_000_000_123_456_789, mtime=2_000_000_000_987_654_321), ROOT)
    a = fsys.getattr(ino)
    assert (a.atime, a.mtime) == (1_000_000_000_123_456_789, 2_000_000_000_987_654_321)
    assert a.ctime % 1000 != 0 or a.ctime > 0


def test_readdir_cookies_survive_directory_changes(fsys: fsmod.FileSystem) -> None:
    names = [f"n{i:04d}".encode() for i in range(300)]
    for n in names:
        fsys.create(ROOT_INO, n, ROOT)
    first, eof = fsys.readdir(ROOT_INO, 0, ROOT, limit=102)
    assert not eof and [e.name for e in first[:2]] == [b".", b".."]
    seen = {e.name for e in first[2:]}
    cookie = first[-1].cookie
    # Remove entries on both sides of the cookie and add new ones.
    for n in names[:50] + names[200:250]:
        fsys.remove(ROOT_INO, n, ROOT)
    fsys.create(ROOT_INO, b"late", ROOT)
    rest: list[bytes] = []
    while True:
        ents, eof = fsys.readdir(ROOT_INO, cookie, ROOT, limit=37)
        rest.extend(e.name for e in ents)
        if eof:
            break
        cookie = ents[-1].cookie
    assert not seen & set(rest)
    assert set(rest) == (set(names[100:200]) | set(names[250:]) | {b"late"})


@pytest.mark.slow
def test_directory_with_100000_entries_uses_indexes(fsys: fsmod.FileSystem) -> None:
    n = 100_000
    for i in range(n):
        fsys.create(ROOT_INO, b"f%06d" % i, ROOT)
        if i % 10_000 == 9_999:
            fsys.commit()
    fsys.commit()
    assert fsys.lookup(ROOT_INO, b"f099999", ROOT) > 0
    # Lookups and READDIR resumption are B-tree searches, never scans of the directory.
    for sql, params in (
        ("SELECT ino FROM dirent WHERE dir=? AND name=?", (ROOT_INO, b"f050000")),
        ("SELECT name, ino, cookie FROM dirent WHERE dir=? AND cookie>? ORDER BY cookie LIMIT ?", (ROOT_INO, 5000, 10)),
    ):
        plan = " ".join(str(r[-1]) for r in fsys.db.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall())
        assert "SEARCH" in plan and "SCAN" not in plan, plan
    total = 0
    cookie = 0
    while True:
        ents, eof = fsys.readdir(ROOT_INO, cookie, ROOT, limit=5000)
        total += len(ents)
        if eof:
            break
        cookie = ents[-1].cookie
    assert total == n + 2


def test_full_file_system_answers_enospc_and_stays_consistent(tmp_path: object) -> None:
    from pathlib import Path

    dev = FileBlockDevice(Path(str(tmp_path)) / "small.img", size=layout.MIN_SIZE)
    fsmod.mkfs(dev)
    f = fsmod.FileSystem(dev)
    ino, _ = f.create(ROOT_INO, b"fill", ROOT)
    chunk = os.urandom(1 << 20)
    written = 0
    with pytest.raises(FsError) as e:
        for i in range(10_000):
            f.write(ino, i * len(chunk), chunk)
            written += len(chunk)
    assert err(e) == errno.ENOSPC
    f.commit()
    st = f.fsstat()
    assert st.free_bytes < len(chunk)
    assert f.getattr(ino).size == written
    assert fsck.check_mounted(f).clean
    # Space comes back after a remove (at the next commit) and can be used again.
    f.remove(ROOT_INO, b"fill", ROOT)
    f.commit()
    g, _ = f.create(ROOT_INO, b"again", ROOT)
    f.write(g, 0, chunk)
    f.close()
    rep = fsck.check(dev)
    assert rep.clean, rep.problems
    dev.close()


def test_fsck_finds_damage(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    ino, _ = f.create(ROOT_INO, b"a", ROOT)
    f.write(ino, 0, b"x" * 10000)
    f.commit()
    f.db.execute("UPDATE inode SET nlink = 5 WHERE ino=?", (ino,))
    f.db.execute("DELETE FROM free WHERE start = (SELECT MIN(start) FROM free)")
    rep = fsck.check_mounted(f)
    assert not rep.clean
    text = "\n".join(rep.problems)
    assert "nlink 5" in text and "space map ends at" in text and "free_blocks counter" in text
    f.db.close()


def test_mount_refuses_a_device_without_a_file_system(tmp_path: object) -> None:
    from pathlib import Path

    dev = FileBlockDevice(Path(str(tmp_path)) / "blank.img", size=64 << 20)
    with pytest.raises(layout.LayoutError):
        fsmod.FileSystem(dev)
    dev.close()


def test_small_files_are_inline_until_they_grow(fsys: fsmod.FileSystem) -> None:
    ino, _ = fsys.create(ROOT_INO, b"small", ROOT)
    fsys.write(ino, 0, b"hello")
    fsys.write(ino, 10, b"world")
    assert fsys.read(ino, 0, 100)[0] == b"hello\0\0\0\0\0world"
    assert fsys.db.execute("SELECT COUNT(*) FROM extent WHERE ino=?", (ino,)).fetchone()[0] == 0
    fsys.commit()
    assert not fsys.dirty
    # Growing past INLINE_MAX moves the data to extents, keeping every byte.
    tail = os.urandom(5000)
    fsys.write(ino, fsmod.INLINE_MAX - 100, tail)
    want = b"hello\0\0\0\0\0world".ljust(fsmod.INLINE_MAX - 100, b"\0") + tail
    assert fsys.read(ino, 0, len(want) + 10)[0] == want
    assert fsys.db.execute("SELECT inline FROM inode WHERE ino=?", (ino,)).fetchone()[0] is None
    # Truncating an inline file up past the limit makes it sparse on extents.
    other, _ = fsys.create(ROOT_INO, b"other", ROOT)
    fsys.write(other, 0, b"abc")
    fsys.setattr(other, SetAttr(size=1 << 20), ROOT)
    assert fsys.read(other, 0, 5)[0] == b"abc\0\0" and fsys.getattr(other).size == 1 << 20
    fsys.setattr(other, SetAttr(size=2), ROOT)
    assert fsys.read(other, 0, 10)[0] == b"ab"
    fsys.commit()
    assert fsck.check_mounted(fsys).clean


def test_read_ahead_serves_sequential_reads_and_never_stale_data(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "ra.img"
    dev = FileBlockDevice(path, size=128 << 20)
    fsmod.mkfs(dev)
    f = fsmod.FileSystem(dev, readahead=FileBlockDevice(path))
    ino, _ = f.create(ROOT_INO, b"seq", ROOT)
    blob = bytearray(os.urandom(8 << 20))
    f.write(ino, 0, blob)
    chunk = 1 << 20
    for off in range(0, 4 * chunk, chunk):
        assert f.read(ino, off, chunk)[0] == blob[off : off + chunk]
    assert f.readahead is not None and f.readahead.hits >= 2
    # The next chunk is being prefetched; a write to it must win over the prefetched bytes.
    new = os.urandom(1000)
    f.write(ino, 4 * chunk + 10, new)
    blob[4 * chunk + 10 : 4 * chunk + 1010] = new
    for off in range(4 * chunk, 8 * chunk, chunk):
        assert f.read(ino, off, chunk)[0] == blob[off : off + chunk]
    # Truncation below a prefetched range: reads stop at the new end.
    f.read(ino, 0, chunk)
    f.setattr(ino, SetAttr(size=chunk + 5), ROOT)
    assert f.read(ino, chunk, chunk)[0] == bytes(blob[chunk : chunk + 5])
    f.close()
    assert fsck.check(dev).clean
    dev.close()


def test_write_behind_is_ordered_visible_and_flushed(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "wb.img"
    dev = FileBlockDevice(path, size=128 << 20)
    fsmod.mkfs(dev)
    f = fsmod.FileSystem(dev, readahead=FileBlockDevice(path), writebehind=FileBlockDevice(path))
    ino, _ = f.create(ROOT_INO, b"wb", ROOT)
    want = bytearray()
    for _ in range(24):
        chunk = os.urandom(700_000)
        f.write(ino, len(want), chunk)
        want += chunk
        # Overwrite something just written: the later write must win.
        f.write(ino, len(want) - 1000, b"Z" * 500)
        want[len(want) - 1000 : len(want) - 500] = b"Z" * 500
        assert f.read(ino, len(want) - 2000, 2000)[0] == want[-2000:]
    f.setattr(ino, SetAttr(size=len(want) - 3), ROOT)
    del want[-3:]
    f.commit()
    assert f.writebehind is not None and f.writebehind.idle
    f.close()
    g = fsmod.FileSystem(dev)
    assert g.read(ino, 0, len(want) + 10)[0] == want
    g.close()
    assert fsck.check(dev).clean
    dev.close()
