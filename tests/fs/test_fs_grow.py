"""``nasblade.fs.grow``: a file system grows offline into its grown device (the CSI driver's
volume expansion) and keeps its files; growing twice, or again after a crash, adds nothing."""

from __future__ import annotations

from pathlib import Path

from nasblade.blockdev import FileBlockDevice
from nasblade.fs import fs as fsmod
from nasblade.fs import fsck, layout
from nasblade.fs.grow import grow

ROOT = fsmod.Cred(0, 0)


def test_grow_adds_the_new_blocks_and_keeps_the_files(tmp_path: Path) -> None:
    path = tmp_path / "lu.img"
    dev = FileBlockDevice(path, size=64 << 20)
    fsmod.mkfs(dev)
    f = fsmod.FileSystem(dev)
    before = f.fsstat()
    root = fsmod.ROOT_INO
    ino, _ = f.create(root, b"kept", ROOT)
    f.write(ino, 0, b"x" * 100_000)
    f.close()
    dev.close()

    dev = FileBlockDevice(path, size=256 << 20)  # the LU grew
    sb = grow(dev)
    assert sb.data_blocks == (dev.size - sb.data_off) // layout.BLOCK
    assert grow(dev) == sb  # nothing more to add
    f = fsmod.FileSystem(dev)
    after = f.fsstat()
    assert after.total_bytes - before.total_bytes == 192 << 20
    assert after.free_bytes > before.free_bytes + (190 << 20)
    assert f.read(f.lookup(root, b"kept", ROOT), 0, 100_000)[0] == b"x" * 100_000
    f.close()
    rep = fsck.check(dev)
    assert rep.clean, rep.problems
    dev.close()


def test_grow_finishes_after_a_crash_before_the_superblock(tmp_path: Path) -> None:
    path = tmp_path / "lu.img"
    dev = FileBlockDevice(path, size=64 << 20)
    old = fsmod.mkfs(dev)
    dev.close()
    dev = FileBlockDevice(path, size=128 << 20)
    grow(dev)
    dev.pwrite(0, old.pack(), fua=True)  # the superblock write was lost
    sb = grow(dev)
    assert sb.data_blocks == (dev.size - sb.data_off) // layout.BLOCK
    rep = fsck.check(dev)
    assert rep.clean, rep.problems
    dev.close()
