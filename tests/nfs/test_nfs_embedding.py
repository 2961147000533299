"""The embeddable ``FileProcessor`` (used by the blade and the standalone array): file
systems added and removed at run time, each with its own listeners, and the write verifier
regenerated on demand; plus the configuration parser's error messages."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest
from nasblade import eventloop
from nasblade.blockdev import FileBlockDevice
from nasblade.fileproc import config
from nasblade.fileproc.server import FileProcessor
from nasblade.fs import fs as fsmod
from nasblade.nfs import types as t
from nasblade.nfs.exports import Export
from nasblade.rpc import xdr
from nfs_rpcclient import RawClient

pytestmark = pytest.mark.component


def make_fs(path: Path) -> str:
    dev = FileBlockDevice(path, size=64 << 20)
    fsmod.mkfs(dev)
    dev.close()
    return str(path)


def spec(name: str, device: str) -> config.FsSpec:
    exp = Export.build(f"/{name}", ["127.0.0.0/8"], root_squash=False)
    return config.FsSpec(name, device, (exp,), config.Listen("127.0.0.1", 0, 0, None))


def write_unstable(port: int, export: bytes, name: bytes) -> bytes:
    c = RawClient("127.0.0.1", port)
    try:
        stat, ok = c.mnt(export)
        assert stat == 0
        root = bytes(ok.fhandle)  # type: ignore[attr-defined]
        args = t.CreateArgs(t.DirOpArgs(root, name), (t.CreateMode.UNCHECKED, t.Sattr()))
        stat, cr = c.nfs(8, t.CREATE_ARGS, args, t.CREATE_RES)  # type: ignore[misc]
        assert stat == 0
        w = t.WriteArgs(bytes(cr.obj), 0, 3, t.StableHow.UNSTABLE, memoryview(b"abc"))
        stat, wr = c.nfs(7, t.WRITE_ARGS, w, t.WRITE_RES)  # type: ignore[misc]
        assert stat == 0
        return bytes(wr.verf)
    finally:
        c.close()


def test_add_remove_and_verifier(tmp_path: Path) -> None:
    a, b = make_fs(tmp_path / "a.img"), make_fs(tmp_path / "b.img")

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2)
        ea = await fp.add_filesystem(spec("a", a))
        eb = await fp.add_filesystem(spec("b", b))
        pa, pb = int(ea["nfs"].rsplit(":", 1)[1]), int(eb["nfs"].rsplit(":", 1)[1])
        assert pa != pb and "portmap" not in ea
        with pytest.raises(ValueError):
            await fp.add_filesystem(spec("a", a))
        va = await asyncio.to_thread(write_unstable, pa, b"/a", b"f")
        # Each listener serves only its own file system.
        c = RawClient("127.0.0.1", pa)
        assert (await asyncio.to_thread(c.mnt, b"/b"))[0] == t.MountStat.NOENT
        c.close()
        assert fp.status()["a"]["writeVerifier"] == va.hex()
        new = fp.regenerate_verifier("a")
        assert new != va
        assert await asyncio.to_thread(write_unstable, pa, b"/a", b"g") == new
        await fp.remove_filesystem("a")
        with pytest.raises(OSError):
            await asyncio.to_thread(RawClient, "127.0.0.1", pa)
        assert (await asyncio.to_thread(write_unstable, pb, b"/b", b"f")).hex() == fp.status()["b"]["writeVerifier"]
        # Re-adding mounts it again (recovery) with a fresh verifier; the data is there.
        ea2 = await fp.add_filesystem(spec("a", a))
        assert fp.status()["a"]["writeVerifier"] not in (va.hex(), new.hex())
        pa2 = int(ea2["nfs"].rsplit(":", 1)[1])
        await asyncio.to_thread(write_unstable, pa2, b"/a", b"h")
        await fp.close()

    asyncio.run(scenario())
    dev = FileBlockDevice(a)
    f = fsmod.FileSystem(dev)
    for name in (b"f", b"g", b"h"):
        ino = f.lookup(fsmod.ROOT_INO, name, fsmod.ROOT)
        assert f.read(ino, 0, 10)[0] == b"abc"
    f.close()
    dev.close()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"fileSystems": [{"device": "x", "exports": []}]}, "fileSystems[0].fsName"),
        ({"fileSystems": [{"fsName": "a", "exports": [{"path": "/a", "clients": ["10.0.0.0/8"]}]}]}, "fileSystems[0].device"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a"}]}]}, "fileSystems[0].exports[0].clients"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a", "clients": ["nope"]}]}]}, "fileSystems[0].exports[0]"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a", "clients": ["1.2.3.4"], "access": "rx"}]}]}, "fileSystems[0].exports[0]"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a", "clients": ["1.2.3.4"], "rootSquash": "yes"}]}]}, "fileSystems[0].exports[0].rootSquash"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a", "clients": ["1.2.3.4"]}], "listen": {"nfsPort": 70000}}]}, "fileSystems[0].listen.nfsPort"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a", "clients": ["1.2.3.4"]}], "listen": {"advertise": {"nfsPort": 2049, "mountPort": 20048}}}]}, "fileSystems[0].listen.advertise.portmapPort"),
        ({"fileSystems": [{"fsName": "a", "device": "d", "exports": [{"path": "/a", "clients": ["1.2.3.4"]}], "listen": {"advertise": {"nfsPort": 2049, "mountPort": 20048, "portmapPort": 111, "x": 1}}}]}, "fileSystems[0].listen.advertise"),
    ],
)
def test_config_errors_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(config.ConfigError) as e:
        config.parse(raw)
    assert str(e.value).startswith(field), str(e.value)


def test_file_systems_behind_a_port_mapping_advertise_the_mapped_ports(tmp_path: Path) -> None:
    """Two file systems of one blade pod on their own ports of one address (a Kubernetes
    Service maps 2049/20048/111 onto each): each portmapper answers the mapped ports; a served
    one moves to new ports in place (``set_listen``)."""
    a, b = make_fs(tmp_path / "a.img"), make_fs(tmp_path / "b.img")
    seen = (2049, 20048, 111)
    NLM_PROGRAM = 100021

    def behind_service(name: str, device: str) -> config.FsSpec:
        exp = Export.build(f"/{name}", ["127.0.0.0/8"], root_squash=False)
        return config.FsSpec(name, device, (exp,), config.Listen("127.0.0.1", 0, 0, 0, advertise=seen))

    def getport(port: int, prog: int, prot: int) -> int:
        c = RawClient("127.0.0.1", port)
        try:
            vers = {t.NFS_PROGRAM: 3, t.MOUNT_PROGRAM: 3, t.PMAP_PROGRAM: 2, NLM_PROGRAM: 4}[prog]
            r = c.call(t.PMAP_PROGRAM, 2, 3, t.MAPPING.encode(t.Mapping(prog, vers, prot, 0)))
            return int(xdr.UInt.unpack(r.body))
        finally:
            c.close()

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2)
        try:
            ea = await fp.add_filesystem(behind_service("a", a))
            eb = await fp.add_filesystem(behind_service("b", b))
            assert len({ea["nfs"], eb["nfs"], ea["portmap"], eb["portmap"]}) == 4  # one address, own ports
            for e in (ea, eb):
                pm = int(e["portmap"].rsplit(":", 1)[1])
                assert await asyncio.to_thread(getport, pm, t.NFS_PROGRAM, t.IPPROTO_TCP) == 2049
                assert await asyncio.to_thread(getport, pm, t.MOUNT_PROGRAM, t.IPPROTO_TCP) == 20048
                assert await asyncio.to_thread(getport, pm, t.PMAP_PROGRAM, t.IPPROTO_UDP) == 111
                assert await asyncio.to_thread(getport, pm, NLM_PROGRAM, t.IPPROTO_TCP) == 2049  # on the NFS port
            # and each is served on its own bound port
            nb = int(eb["nfs"].rsplit(":", 1)[1])
            await asyncio.to_thread(write_unstable, nb, b"/b", b"f")
            verifier = fp.status()["b"]["writeVerifier"]
            # a new advertisement alone: the same listeners, the portmapper answers the new ports
            pm_b = int(eb["portmap"].rsplit(":", 1)[1])
            again = await fp.set_listen("b", config.Listen("127.0.0.1", nb, int(eb["mount"].rsplit(":", 1)[1]), pm_b,
                                                           advertise=(3049, 30048, 1111)))
            assert again == eb
            assert await asyncio.to_thread(getport, pm_b, t.NFS_PROGRAM, t.IPPROTO_TCP) == 3049
            # new ports: new listeners in place; a connection accepted before stays served, the
            # old port is closed, nothing is remounted
            kept = await asyncio.to_thread(RawClient, "127.0.0.1", nb)
            assert (await asyncio.to_thread(kept.call, t.NFS_PROGRAM, 3, 0)).stat == 0  # accepted
            moved = await fp.set_listen("b", config.Listen("127.0.0.1", 0, 0, 0, advertise=seen))
            new_nfs = int(moved["nfs"].rsplit(":", 1)[1])
            assert new_nfs != nb
            assert (await asyncio.to_thread(kept.call, t.NFS_PROGRAM, 3, 0)).stat == 0
            kept.close()
            with pytest.raises(OSError):
                await asyncio.to_thread(RawClient, "127.0.0.1", nb)
            assert await asyncio.to_thread(write_unstable, new_nfs, b"/b", b"g") == bytes.fromhex(verifier)
        finally:
            await fp.close()

    asyncio.run(scenario())


def test_config_defaults_are_secure() -> None:
    (s,) = config.parse({"fsName": "a", "device": "nbd://h:1/a", "exports": [{"path": "/a", "clients": ["10.0.0.0/8"]}]})
    (exp,) = s.exports
    assert exp.root_squash and not exp.all_squash and not exp.readonly and (exp.anonuid, exp.anongid) == (65534, 65534)
    assert exp.allows("10.1.2.3") and not exp.allows("11.0.0.1") and exp.allows("::ffff:10.0.0.1")


class _Breakable(FileBlockDevice):
    """A device whose writes fail with EIO once ``broken`` is set (a controller that stays away
    longer than the block processor retries)."""

    broken = False

    def pwrite(self, offset: int, data: bytes | memoryview, *, fua: bool = False) -> None:
        if _Breakable.broken:
            raise OSError(5, "Input/output error")
        super().pwrite(offset, data, fua=fua)


def test_a_failed_commit_stops_serving_and_leaves_the_status(tmp_path: Path) -> None:
    """A file system whose commit failed is not kept half-alive: its listener closes (so its
    address is free for whoever takes it over) and it leaves ``status()`` (so the block processor
    sees that what it handed over is no longer served, and gives the blade up). It used to stay
    listed, aborting every request, and no one took it over."""
    a, b = make_fs(tmp_path / "a.img"), make_fs(tmp_path / "b.img")
    _Breakable.broken = False

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2, readahead=False, writebehind=False,
                           open_device=lambda path: _Breakable(Path(path)))
        ea = await fp.add_filesystem(spec("a", a))
        eb = await fp.add_filesystem(spec("b", b))
        pa, pb = int(ea["nfs"].rsplit(":", 1)[1]), int(eb["nfs"].rsplit(":", 1)[1])
        await asyncio.to_thread(write_unstable, pa, b"/a", b"f")
        _Breakable.broken = True
        for _ in range(50):  # the commit timer (0.2 s) finds the dirty file system
            if "a" not in fp.status():
                break
            await asyncio.sleep(0.1)
        assert set(fp.status()) == {"b"}
        with pytest.raises(OSError):
            await asyncio.to_thread(RawClient, "127.0.0.1", pa)
        _Breakable.broken = False
        assert "a" not in fp.status()
        await asyncio.to_thread(write_unstable, pb, b"/b", b"g")
        await fp.close()

    asyncio.run(scenario())


def test_a_connection_accepted_as_the_file_system_leaves_is_closed_not_served(tmp_path: Path) -> None:
    """On the daemons' loop (uvloop) a connection's ``connection_made`` runs a loop iteration
    after it was accepted; a release (``remove_filesystem``) in between must not leave that
    connection attached to the file system it just unmounted: the client must see it closed
    (and reconnect to whoever serves the file system now), never a silent connection (a hard
    mount waits on it forever) or a reply from here. The release starts 0, 1 and 2 loop
    iterations after the connection is in the listener's backlog (1 is the window)."""
    a = make_fs(tmp_path / "a.img")
    # xid, CALL, RPC v2, NFS v3 NULL, AUTH_NONE credential and verifier
    body = struct.pack(">10I", 0x1234, 0, 2, 100003, 3, 0, 0, 0, 0, 0)

    async def scenario(yields: int) -> bytes | str:
        fp = FileProcessor(commit_interval=0.2)
        ea = await fp.add_filesystem(spec("a", a))
        port = int(ea["nfs"].rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port))  # in the listener's backlog now
        for _ in range(yields):
            await asyncio.sleep(0)
        await fp.remove_filesystem("a")
        await asyncio.sleep(0.2)
        sock.settimeout(5)
        try:
            sock.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)
            got: bytes | str = sock.recv(4096)
        except ConnectionError as exc:
            got = type(exc).__name__
        except TimeoutError:
            got = "no answer within 5 s"
        finally:
            sock.close()
            await fp.close()
        return got

    for yields in range(3):
        got = eventloop.run(scenario(yields))
        assert got in (b"", "ConnectionResetError"), f"{yields} yields: still open after the release: {got!r}"
