"""Differential test: a seeded random sequence of file operations is applied through NFS
(libnfs Python binding, against the file processor) and to a local temporary directory
(the kernel's file system). Every operation must have the same outcome (success or the same
errno, and the same data for reads) and the final trees must be equal."""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libnfs
import pytest
from nfs_harness import Controller, FileProcessor, export

pytestmark = pytest.mark.component

OPS = 2500


class Nfs:
    def __init__(self, url: str) -> None:
        self.h = libnfs.NFS(url)
        self.c = self.h._nfs

    def _is_dir(self, p: str) -> bool:
        st = self.stat(p)
        return isinstance(st, tuple) and st[0] == 0o040000

    def write(self, p: str, off: int, data: bytes) -> Any:
        if self._is_dir(p):
            return errno.EISDIR  # libnfs opens directories; the kernel refuses O_WRONLY
        try:
            f = self.h.open(p, "r+b")
        except (OSError, ValueError) as e:
            return _err(e)
        n = libnfs.nfs_pwrite(self.c, f._nfsfh, off, len(data), bytearray(data)) if data else 0
        f.close()
        return "ok" if n >= 0 else -n

    def create(self, p: str, data: bytes) -> Any:
        if self._is_dir(p):
            return errno.EISDIR
        try:
            f = self.h.open(p, "wb")
        except (OSError, ValueError) as e:
            return _err(e)
        f.write(bytearray(data))
        f.close()
        return "ok"

    def read(self, p: str) -> Any:
        if self._is_dir(p):
            return errno.EISDIR
        try:
            f = self.h.open(p, "rb")
        except (OSError, ValueError) as e:
            return _err(e)
        size = self.stat(p)[1]
        buf = bytearray(size + 1)
        n = libnfs.nfs_pread(self.c, f._nfsfh, 0, len(buf), buf)
        f.close()
        return bytes(buf[:n]) if n >= 0 else -n

    def call(self, fn: Callable[..., int], *args: Any) -> Any:
        rc = fn(self.c, *args)
        return "ok" if rc == 0 else -rc

    def stat(self, p: str) -> Any:
        st = libnfs.nfs_stat_64()
        rc = libnfs.nfs_lstat64(self.c, p, st)
        if rc != 0:
            return -rc
        return (st.nfs_mode & 0o170000, st.nfs_size if st.nfs_mode & 0o170000 != 0o040000 else 0, st.nfs_nlink)

    def readlink(self, p: str) -> Any:
        buf = bytearray(1024)
        rc = libnfs.nfs_readlink(self.c, p, buf, len(buf))
        return bytes(buf).rstrip(b"\0") if rc == 0 else -rc

    def listdir(self, p: str) -> Any:
        st = self.stat(p)
        if not isinstance(st, tuple):
            return st
        if st[0] != 0o040000:
            return errno.ENOTDIR  # the binding's listdir crashes on a non-directory
        try:
            return sorted(n for n in self.h.listdir(p) if n not in (".", ".."))
        except (OSError, ValueError) as e:
            return _err(e)


def _err(e: Exception) -> Any:
    if isinstance(e, OSError) and e.errno:
        return e.errno
    text = str(e)
    for code in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EEXIST):
        if os.strerror(code) in text:
            return code
    return text


class Local:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _p(self, p: str) -> str:
        return str(self.root) + p

    def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            r = fn(*args)
            return "ok" if r is None else r
        except OSError as e:
            return e.errno

    def write(self, p: str, off: int, data: bytes) -> Any:
        def go() -> None:
            fd = os.open(self._p(p), os.O_WRONLY)
            try:
                os.pwrite(fd, data, off)
            finally:
                os.close(fd)

        return self._run(go)

    def create(self, p: str, data: bytes) -> Any:
        def go() -> None:
            with open(self._p(p), "wb") as f:
                f.write(data)

        return self._run(go)

    def read(self, p: str) -> Any:
        return self._run(lambda: Path(self._p(p)).read_bytes())

    def stat(self, p: str) -> Any:
        def go() -> Any:
            st = os.lstat(self._p(p))
            fmt = st.st_mode & 0o170000
            return (fmt, st.st_size if fmt != 0o040000 else 0, st.st_nlink)

        return self._run(go)

    def readlink(self, p: str) -> Any:
        return self._run(lambda: os.readlink(self._p(p)).encode())

    def listdir(self, p: str) -> Any:
        return self._run(lambda: sorted(os.listdir(self._p(p))))


def normalise(op: str, r: Any) -> Any:
    # Directory nlink and sizes differ between file systems by design; compare type only.
    if op == "stat" and isinstance(r, tuple) and r[0] == 0o040000:
        return (r[0],)
    # Which of ENOENT / ENOTDIR a bad path gives depends on the order the *client* resolves
    # the two paths of a rename/link in; the server's own decisions are compared exactly.
    if r == errno.ENOTDIR and op in ("rename", "link"):
        return errno.ENOENT
    return r


def test_random_operations_match_a_local_file_system(
    controller: Controller, fp_factory: Callable[..., FileProcessor], tmp_path: Path
) -> None:
    fp = fp_factory(controller.new_lu(512 << 20), [export("/admin", rootSquash=False)])
    nfs = Nfs(fp.url("/admin"))
    local_root = tmp_path / "local"
    local_root.mkdir()
    loc = Local(local_root)
    rng = random.Random(20261125)
    names = ["a", "b", "c", "d", "e"]

    def path() -> str:
        depth = rng.choice([1, 1, 2, 2, 3])
        return "/" + "/".join(rng.choice(names) for _ in range(depth))

    history: list[str] = []
    for i in range(OPS):
        op = rng.choice(
            ["create", "create", "write", "write", "read", "read", "mkdir", "mkdir", "rmdir", "unlink",
             "rename", "rename", "link", "symlink", "readlink", "truncate", "stat", "stat", "listdir"]
        )
        p, q = path(), path()
        data = os.urandom(rng.choice([0, 1, 100, 4095, 4096, 4097, 70000, 200000]))
        off = rng.choice([0, 1, 4096, 5000, 100000, 1 << 20])
        size = rng.choice([0, 1, 4096, 10000, 300000])
        if op in ("create", "write", "read", "truncate", "listdir", "link") and os.path.islink(loc._p(p)):
            continue  # would follow a symlink: client-side behaviour
        if op == "create":
            a, b = nfs.create(p, data), loc.create(p, data)
        elif op == "write":
            a, b = nfs.write(p, off, data), loc.write(p, off, data)
        elif op == "read":
            a, b = nfs.read(p), loc.read(p)
        elif op == "mkdir":
            a, b = nfs.call(libnfs.nfs_mkdir, p), loc._run(os.mkdir, loc._p(p))
        elif op == "rmdir":
            a, b = nfs.call(libnfs.nfs_rmdir, p), loc._run(os.rmdir, loc._p(p))
        elif op == "unlink":
            a, b = nfs.call(libnfs.nfs_unlink, p), loc._run(os.unlink, loc._p(p))
        elif op == "rename":
            a, b = nfs.call(libnfs.nfs_rename, p, q), loc._run(os.rename, loc._p(p), loc._p(q))
        elif op == "link":
            a, b = nfs.call(libnfs.nfs_link, p, q), loc._run(os.link, loc._p(p), loc._p(q))
        elif op == "symlink":
            # Dangling targets only: following links is the client's business, not the server's.
            target = rng.choice(["nowhere", "../nowhere", "/x/nowhere", "no/where"])
            a, b = nfs.call(libnfs.nfs_symlink, target, p), loc._run(os.symlink, target, loc._p(p))
        elif op == "readlink":
            a, b = nfs.readlink(p), loc.readlink(p)
        elif op == "truncate":
            a, b = nfs.call(libnfs.nfs_truncate, p, size), loc._run(os.truncate, loc._p(p), size)
        elif op == "stat":
            a, b = nfs.stat(p), loc.stat(p)
        else:
            a, b = nfs.listdir(p), loc.listdir(p)
        a, b = normalise(op, a), normalise(op, b)
        history.append(f"#{i} {op} {p} {q} len={len(data)} off={off} size={size}: nfs={str(a)[:50]} local={str(b)[:50]}")
        assert a == b, "first difference at the last of these operations:\n" + "\n".join(history[-25:])

    def walk(side: Any, d: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        entries = side.listdir(d or "/")
        for n in entries:
            p = f"{d}/{n}"
            st = normalise("stat", side.stat(p))
            out[p] = st
            if st[0] == 0o040000:
                out.update(walk(side, p))
            elif st[0] == 0o120000:
                out[p + "@"] = side.readlink(p)
            else:
                out[p + "#"] = side.read(p)
        return out

    assert walk(nfs, "") == walk(loc, "")
