"""Copy a directory tree inside one file system: the point-in-time copies behind the snapshots
and clones of directory volumes (the CSI driver's ``directory`` layout; the file processor,
``nasblade.fileproc.server``, calls it).

``copy_tree`` works through the public ``FileSystem`` operations, as root, and returns when
the whole copy is made. The file processor runs it on its event-loop thread between NFS
requests, so no client changes the tree while it is copied: the copy is the tree at one
instant, and it becomes durable with the group commit that follows. The price is that the file
system answers nothing else while a copy runs (docs/csi.md gives the rate).

Kept: the type, mode, owner, group, access and modification times of every inode; symlink
targets; device numbers; hard links inside the tree (one new inode, as many names);
holes (a 64 KiB run of zeros is not written, so a sparse file stays sparse). Not kept: change
times and inode numbers (the copy is new inodes). The copy counts against the quota of the tree
it is made in, if any; a copy that fails (``ENOSPC``, ``EDQUOT``) is removed before the error
is raised, so there is never half a copy.
"""

from __future__ import annotations

import errno

from nasblade.fs.fs import ROOT, SPECIAL, FileSystem, FsError, FType, SetAttr

CHUNK = 1 << 20
"""Bytes read per call."""
HOLE = 64 << 10
"""A run of this many zero bytes (aligned) is left a hole instead of written."""
_ZEROS = bytes(HOLE)


def copy_tree(fs: FileSystem, src: int, dst_dir: int, name: bytes) -> int:
    """Copy directory ``src`` and everything under it to a new entry ``name`` of directory
    ``dst_dir`` (which must not be inside ``src``); returns the new directory's inode.
    ``EEXIST`` if ``name`` exists, ``ENOTDIR`` if ``src`` is not a directory, ``EINVAL`` if
    ``dst_dir`` lies inside ``src``."""
    if fs.getattr(src).type != FType.DIR:
        raise FsError(errno.ENOTDIR)
    d = dst_dir
    while True:  # walk up from the destination: copying a tree into itself never ends
        if d == src:
            raise FsError(errno.EINVAL, "the destination is inside the tree copied")
        parent = fs.getattr(d).parent
        if parent in (0, d):
            break
        d = parent
    top = fs.mkdir(dst_dir, name, ROOT, mode=0o700)
    try:
        _copy(fs, src, top)
    except BaseException:
        fs.remove_tree(dst_dir, name)
        raise
    return top


def _copy(fs: FileSystem, src_top: int, dst_top: int) -> None:
    copied: dict[int, int] = {}  # source inode -> its copy (hard links name it again)
    dirs = [(src_top, dst_top)]
    finished: list[tuple[int, int]] = []
    while dirs:
        src_dir, dst_dir = dirs.pop()
        finished.append((src_dir, dst_dir))
        for entry in list(fs.iter_dir(src_dir)):
            a = fs.getattr(entry.ino)
            if a.type != FType.DIR and entry.ino in copied:
                fs.link(copied[entry.ino], dst_dir, entry.name, ROOT)
                continue
            if a.type == FType.DIR:
                new = fs.mkdir(dst_dir, entry.name, ROOT, mode=0o700)
                dirs.append((entry.ino, new))
                continue  # its attributes once its entries are in (they change its mtime)
            if a.type == FType.REG:
                new, _ = fs.create(dst_dir, entry.name, ROOT, mode=0o600, guarded=True)
                _copy_data(fs, entry.ino, new, a.size)
            elif a.type == FType.LNK:
                new = fs.symlink(dst_dir, entry.name, fs.readlink(entry.ino), ROOT, mode=a.mode & 0o7777)
            elif a.type in SPECIAL:
                new = fs.mknod(dst_dir, entry.name, a.type, ROOT, mode=a.mode & 0o7777, rdev=a.rdev)
            else:  # pragma: no cover - every FType is handled above
                raise FsError(errno.EINVAL, f"cannot copy an inode of type {a.type}")
            copied[entry.ino] = new
            _copy_attrs(fs, entry.ino, new)
    for src_dir, dst_dir in reversed(finished):  # children before parents
        _copy_attrs(fs, src_dir, dst_dir)


def _copy_data(fs: FileSystem, src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        data, eof, _ = fs.read(src, offset, CHUNK)
        if not data:
            break
        view = memoryview(data)
        for at in range(0, len(view), HOLE):
            piece = view[at:at + HOLE]
            if piece != _ZEROS[:len(piece)]:
                fs.write(dst, offset + at, piece)
        offset += len(data)
        if eof:
            break
    fs.setattr(dst, SetAttr(size=size), ROOT)  # a hole at the end, or nothing written at all


def _copy_attrs(fs: FileSystem, src: int, dst: int) -> None:
    a = fs.getattr(src)
    mode = None if a.type == FType.LNK else a.mode & 0o7777
    fs.setattr(dst, SetAttr(mode=mode, uid=a.uid, gid=a.gid, atime=a.atime, mtime=a.mtime), ROOT)
