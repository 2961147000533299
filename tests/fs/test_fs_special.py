"""Special files (FIFOs, sockets, character and block devices) and CREATE on an existing name,
at the ``nasblade.fs`` level: type and rdev kept in the inode, through remount and fsck; the
operations that work on them and the ones that must not; fsck's checks of their rows."""

from __future__ import annotations

import errno
import gzip
from pathlib import Path

import pytest
from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck
from nasblade.fs.fs import ROOT, ROOT_INO, Cred, FsError, FType, SetAttr

USER = Cred(1000, 1000)
# A file system made by ``mkfs`` of commit 9a23875 (before special files were supported), 48 MiB:
# /dir (0755) with /dir/small (0644, b"inline data\n"), /big (0600, 16 KiB of bytes(range(256))
# repeated, in extents), /link -> dir/small and /fifo (0644), then closed (checkpointed).
FORMAT1_IMAGE = Path(__file__).parent / "data" / "fs-format1-9a23875.img.gz"

SPECIALS = [
    (b"fifo", FType.FIFO, 0),
    (b"sock", FType.SOCK, 0),
    (b"null", FType.CHR, fsmod.makedev(1, 3)),
    (b"sda", FType.BLK, fsmod.makedev(8, 0)),
    (b"wide", FType.CHR, fsmod.makedev(0xFFFFFFFF, 0xFFFFFFFE)),  # every bit of specdata3
]


def test_special_files_keep_type_rdev_and_mode_across_remount(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    inos = {}
    for name, ftype, rdev in SPECIALS:
        inos[name] = f.mknod(ROOT_INO, name, ftype, ROOT, mode=0o640, rdev=rdev)
    f.close()
    f = fsmod.FileSystem(device)
    for name, ftype, rdev in SPECIALS:
        ino = f.lookup(ROOT_INO, name, ROOT)
        assert ino == inos[name]
        a = f.getattr(ino)
        assert (a.type, a.rdev, a.mode, a.size, a.used, a.nlink) == (ftype, rdev, 0o640, 0, 0, 1)
    wide = f.getattr(inos[b"wide"]).rdev
    assert (fsmod.major(wide), fsmod.minor(wide)) == (0xFFFFFFFF, 0xFFFFFFFE)
    f.close()
    rep = fsck.check(device)
    assert rep.clean, rep.problems
    assert rep.special == len(SPECIALS)


def test_special_files_link_rename_setattr_remove_and_refuse_data(fsys: fsmod.FileSystem) -> None:
    w = fsys.mkdir(ROOT_INO, b"w", ROOT, mode=0o777)
    dev = fsys.mknod(ROOT_INO, b"tty", FType.CHR, ROOT, mode=0o620, rdev=fsmod.makedev(4, 1))
    fifo = fsys.mknod(w, b"pipe", FType.FIFO, USER, mode=0o600)
    fsys.link(dev, w, b"tty-link", ROOT)
    assert fsys.getattr(dev).nlink == 2
    fsys.rename(ROOT_INO, b"tty", w, b"tty0", ROOT)
    fsys.setattr(dev, SetAttr(mode=0o600, uid=5, gid=5, mtime=123), ROOT)
    a = fsys.getattr(dev)
    assert (a.mode, a.uid, a.gid, a.mtime, a.rdev) == (0o600, 5, 5, 123, fsmod.makedev(4, 1))
    # No data: the server never opens a special file.
    for ino in (dev, fifo):
        with pytest.raises(FsError) as e:
            fsys.read(ino, 0, 10)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(FsError) as e:
            fsys.write(ino, 0, b"x")
        assert e.value.errno == errno.EINVAL
        with pytest.raises(FsError) as e:
            fsys.setattr(ino, SetAttr(size=0), ROOT)
        assert e.value.errno == errno.EINVAL
    # A FIFO belongs to its creator and is removed like any file.
    assert fsys.getattr(fifo).uid == USER.uid
    fsys.remove(w, b"tty0", ROOT)
    assert fsys.getattr(dev).nlink == 1
    fsys.remove(w, b"tty-link", ROOT)
    fsys.remove(w, b"pipe", USER)
    with pytest.raises(FsError) as e:
        fsys.getattr(dev)
    assert e.value.errno == errno.ESTALE


def test_mknod_rules(fsys: fsmod.FileSystem) -> None:
    def code(fn: object, *args: object, **kw: object) -> int:
        with pytest.raises(FsError) as e:
            fn(*args, **kw)  # type: ignore[operator]
        return e.value.errno

    # Device nodes need root; FIFOs and sockets do not.
    w = fsys.mkdir(ROOT_INO, b"w", ROOT, mode=0o777)
    assert code(fsys.mknod, w, b"d", FType.BLK, USER, mode=0o600, rdev=1) == errno.EPERM
    fsys.mknod(w, b"s", FType.SOCK, USER, mode=0o755)
    assert code(fsys.mknod, w, b"s", FType.FIFO, USER, mode=0o600) == errno.EEXIST
    # Only special types, and an rdev only on device nodes.
    assert code(fsys.mknod, ROOT_INO, b"r", FType.REG, ROOT, mode=0o600) == errno.EINVAL
    assert code(fsys.mknod, ROOT_INO, b"r", FType.DIR, ROOT, mode=0o600) == errno.EINVAL
    assert code(fsys.mknod, ROOT_INO, b"r", FType.FIFO, ROOT, mode=0o600, rdev=7) == errno.EINVAL
    assert code(fsmod.makedev, 1 << 32, 0) == errno.EINVAL
    # A directory without write permission refuses new names.
    d = fsys.mkdir(ROOT_INO, b"ro", ROOT, mode=0o755)
    assert code(fsys.mknod, d, b"f", FType.FIFO, USER, mode=0o600) == errno.EACCES


def test_create_of_an_existing_name_by_mode(fsys: fsmod.FileSystem) -> None:
    d = fsys.mkdir(ROOT_INO, b"d", ROOT, mode=0o777)
    ino, created = fsys.create(d, b"f", USER, mode=0o600)
    assert created
    # UNCHECKED: the existing regular file is returned unchanged (mode not re-applied here).
    assert fsys.create(d, b"f", USER, mode=0o666) == (ino, False)
    assert fsys.getattr(ino).mode == 0o600
    # GUARDED and EXCLUSIVE with another verifier: EEXIST. Non-regular names: EEXIST.
    for kw in ({"guarded": True}, {"exclusive": b"verf0001"}):
        with pytest.raises(FsError) as e:
            fsys.create(d, b"f", USER, **kw)  # type: ignore[arg-type]
        assert e.value.errno == errno.EEXIST
    fsys.mknod(d, b"p", FType.FIFO, USER, mode=0o600)
    fsys.mkdir(d, b"sub", USER)
    for name in (b"p", b"sub"):
        with pytest.raises(FsError) as e:
            fsys.create(d, name, USER)
        assert e.value.errno == errno.EEXIST
    # As open(O_CREAT) and knfsd: an existing name needs only search permission on the
    # directory (the client races another one that created it), a new name needs write.
    fsys.setattr(d, SetAttr(mode=0o555), ROOT)
    assert fsys.create(d, b"f", USER) == (ino, False)
    with pytest.raises(FsError) as e:
        fsys.create(d, b"new", USER)
    assert e.value.errno == errno.EACCES
    with pytest.raises(FsError) as e:
        fsys.create(d, b"f", USER, guarded=True)
    assert e.value.errno == errno.EEXIST
    fsys.setattr(d, SetAttr(mode=0o666), ROOT)
    with pytest.raises(FsError) as e:
        fsys.create(d, b"f", USER)
    assert e.value.errno == errno.EACCES


def test_fsck_checks_special_file_rows(device: FileBlockDevice) -> None:
    f = fsmod.FileSystem(device)
    fifo = f.mknod(ROOT_INO, b"fifo", FType.FIFO, ROOT, mode=0o600)
    blk = f.mknod(ROOT_INO, b"blk", FType.BLK, ROOT, mode=0o600, rdev=fsmod.makedev(8, 1))
    f.commit()
    with f.db:
        f.db.execute("UPDATE inode SET rdev=5 WHERE ino=?", (fifo,))
        f.db.execute("UPDATE inode SET size=10 WHERE ino=?", (blk,))
    rep = fsck.check_mounted(f)
    f.close()
    assert any(f"inode {fifo} of type 7 has rdev 5" in p for p in rep.problems), rep.problems
    assert any(f"special file {blk} has size 10" in p for p in rep.problems), rep.problems
    f = fsmod.FileSystem(device)
    with f.db:
        f.db.execute("UPDATE inode SET rdev=0, type=9 WHERE ino=?", (fifo,))
        f.db.execute("UPDATE inode SET size=0 WHERE ino=?", (blk,))
    rep = fsck.check_mounted(f)
    f.db.close()
    assert rep.problems == [f"inode {fifo} has unknown type 9"]


def test_a_file_system_made_before_special_files_opens_and_takes_them(tmp_path: Path) -> None:
    img = tmp_path / "old.img"
    img.write_bytes(gzip.decompress(FORMAT1_IMAGE.read_bytes()))
    dev = FileBlockDevice(img)
    try:
        assert fsck.check(dev).clean
        f = fsmod.FileSystem(dev)
        d = f.lookup(ROOT_INO, b"dir", ROOT)
        small = f.lookup(d, b"small", ROOT)
        assert f.read(small, 0, 100)[0] == b"inline data\n"
        big = f.lookup(ROOT_INO, b"big", ROOT)
        assert f.read(big, 0, 1 << 20)[0] == bytes(range(256)) * 64
        assert f.readlink(f.lookup(ROOT_INO, b"link", ROOT)) == b"dir/small"
        old_fifo = f.getattr(f.lookup(ROOT_INO, b"fifo", ROOT))
        assert (old_fifo.type, old_fifo.rdev, old_fifo.mode) == (FType.FIFO, 0, 0o644)
        chr_ino = f.mknod(d, b"null", FType.CHR, ROOT, mode=0o666, rdev=fsmod.makedev(1, 3))
        f.mknod(d, b"sda", FType.BLK, ROOT, mode=0o660, rdev=fsmod.makedev(8, 0))
        f.close()
        f = fsmod.FileSystem(dev)
        a = f.getattr(chr_ino)
        assert (a.type, fsmod.major(a.rdev), fsmod.minor(a.rdev)) == (FType.CHR, 1, 3)
        f.close()
        rep = fsck.check(dev)
        assert rep.clean, rep.problems
        assert rep.special == 3
    finally:
        dev.close()
