"""Component tests with NFS clients written by others: libnfs's nfs-cp / nfs-cat / nfs-ls and
its Python binding, against a real file processor on an LU of a real controller."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import libnfs
import pytest
from nfs_harness import FileProcessor

pytestmark = pytest.mark.component


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, capture_output=True, timeout=120, check=check)


def ctx(fp: FileProcessor, export: str, **params: object) -> libnfs.NFS:
    return libnfs.NFS(fp.url(export, **params))


def test_copy_in_and_out_byte_exact(served: FileProcessor, tmp_path: Path) -> None:
    cases = {"empty": b"", "one": b"\x01", "odd": os.urandom(4097), "big": os.urandom(5 << 20)}
    for name, data in cases.items():
        src = tmp_path / name
        src.write_bytes(data)
        run("nfs-cp", str(src), served.url("/admin", f"cp-{name}"))
    for name, data in cases.items():
        out = run("nfs-cat", served.url("/admin", f"cp-{name}")).stdout
        assert out == data, name
        dst = tmp_path / f"{name}.back"
        run("nfs-cp", served.url("/admin", f"cp-{name}"), str(dst))
        assert dst.read_bytes() == data
    listing = run("nfs-ls", served.url("/admin")).stdout.decode()
    for name, data in cases.items():
        line = next(ln for ln in listing.splitlines() if ln.endswith(f" cp-{name}"))
        assert f" {len(data)} " in f" {line} "


def test_python_binding_write_read_and_stat(served: FileProcessor) -> None:
    nfs = ctx(served, "/admin")
    data = bytearray(os.urandom(3 << 20))
    f = nfs.open("/py.bin", "wb")
    f.write(data)
    f.close()
    assert nfs.stat("/py.bin")["size"] == len(data)
    g = nfs.open("/py.bin", "rb")
    assert g.read() == data
    g.close()


def test_large_directory_listing(served: FileProcessor) -> None:
    nfs = ctx(served, "/admin")
    assert nfs.mkdir("/many") == 0
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(1500)}
    for n in names:
        nfs.open(f"/many/{n}", "wb").close()
    assert set(nfs.listdir("/many")) - {".", ".."} == names
    listing = run("nfs-ls", served.url("/admin", "many")).stdout.decode().splitlines()
    assert {ln.rsplit(" ", 1)[1] for ln in listing} - {".", ".."} == names


def test_rename_across_directories_hard_links_and_symlinks(served: FileProcessor) -> None:
    nfs = ctx(served, "/admin")
    raw = nfs._nfs
    assert nfs.mkdir("/ra") == 0 and nfs.mkdir("/rb") == 0
    f = nfs.open("/ra/file", "wb")
    f.write(bytearray(b"payload"))
    f.close()
    assert libnfs.nfs_rename(raw, "/ra/file", "/rb/moved") == 0
    with pytest.raises(IOError):
        nfs.stat("/ra/file")
    assert nfs.open("/rb/moved", "rb").read() == b"payload"
    assert libnfs.nfs_link(raw, "/rb/moved", "/ra/hard") == 0
    assert nfs.stat("/ra/hard")["nlink"] == 2
    assert nfs.stat("/ra/hard")["ino"] == nfs.stat("/rb/moved")["ino"]
    assert libnfs.nfs_symlink(raw, "../rb/moved", "/ra/sym") == 0
    buf = bytearray(256)
    assert libnfs.nfs_readlink(raw, "/ra/sym", buf, len(buf)) == 0
    assert bytes(buf).rstrip(b"\0") == b"../rb/moved"
    assert nfs.unlink("/rb/moved") == 0
    assert nfs.stat("/ra/hard")["nlink"] == 1
    assert libnfs.nfs_rename(raw, "/ra", "/rb/nested") == 0
    assert nfs.open("/rb/nested/hard", "rb").read() == b"payload"
    assert libnfs.nfs_rmdir(raw, "/rb") == -errno.ENOTEMPTY


def test_permissions_uid_1000_and_root_squash(served: FileProcessor) -> None:
    admin = ctx(served, "/admin")
    assert admin.mkdir("/perm") == 0
    raw = admin._nfs
    assert libnfs.nfs_chmod(raw, "/perm", 0o777) == 0
    f = admin.open("/perm/rootfile", "wb")
    f.write(bytearray(b"root data"))
    f.close()
    assert libnfs.nfs_chmod(raw, "/perm/rootfile", 0o644) == 0
    assert admin.stat("/perm/rootfile")["uid"] == 0
    # uid 1000 can read but not write a 0644 root file, and cannot chmod it.
    user = ctx(served, "/x", uid=1000, gid=1000)
    assert user.open("/perm/rootfile", "rb").read() == b"root data"
    with pytest.raises(ValueError, match="Permission denied"):
        user.open("/perm/rootfile", "r+b")
    assert libnfs.nfs_chmod(user._nfs, "/perm/rootfile", 0o666) == -errno.EPERM
    # uid 1000 creates its own file, owned by 1000.
    g = user.open("/perm/userfile", "wb")
    g.write(bytearray(b"u"))
    g.close()
    assert admin.stat("/perm/userfile")["uid"] == 1000
    # Root through the squashing export is nobody: cannot write root's file, creates as 65534.
    squashed = ctx(served, "/x", uid=0, gid=0)
    with pytest.raises(ValueError, match="Permission denied"):
        squashed.open("/perm/rootfile", "r+b")
    h = squashed.open("/perm/byroot", "wb")
    h.close()
    st = admin.stat("/perm/byroot")
    assert (st["uid"], st["gid"]) == (65534, 65534)


def test_read_only_export_refuses_writes(served: FileProcessor, tmp_path: Path) -> None:
    admin = ctx(served, "/admin")
    f = admin.open("/ro-visible", "wb")
    f.write(bytearray(b"visible"))
    f.close()
    assert run("nfs-cat", served.url("/ro", "ro-visible")).stdout == b"visible"
    src = tmp_path / "src"
    src.write_bytes(b"nope")
    assert run("nfs-cp", str(src), served.url("/ro", "new-file"), check=False).returncode != 0
    ro = ctx(served, "/ro")
    assert libnfs.nfs_unlink(ro._nfs, "/ro-visible") == -errno.EROFS
    assert libnfs.nfs_mkdir(ro._nfs, "/newdir") == -errno.EROFS
    with pytest.raises(IOError):
        admin.stat("/new-file")


def test_client_outside_the_allow_list_is_refused(served: FileProcessor) -> None:
    proc = run("nfs-ls", served.url("/only2"), check=False)
    assert proc.returncode != 0
    nctx = libnfs.nfs_init_context()
    url = libnfs.nfs_parse_url_dir(nctx, served.url("/only2"))
    assert libnfs.nfs_mount(nctx, url.server, url.path) == -errno.EACCES
    # The same export mounts from an allowed source address, through the same server.
    allowed = libnfs.nfs_init_context()
    url2 = libnfs.nfs_parse_url_dir(allowed, served.url("/admin"))
    assert libnfs.nfs_mount(allowed, url2.server, url2.path) == 0
