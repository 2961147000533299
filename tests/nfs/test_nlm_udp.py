"""The file processor over UDP, and NLM's asynchronous ``*_MSG`` / ``*_RES`` procedures.

Against the embeddable ``FileProcessor`` over real sockets (clients told apart by source address,
127.0.0.2, 127.0.0.3, ...):

- ``test_udp_endpoints``: the portmapper over UDP maps MOUNT, NLM, NSM and itself over UDP and
  nothing for NFS over UDP (an NFS call over UDP is PROG_UNAVAIL); DUMP over UDP and TCP lists the
  UDP mappings; MOUNT over UDP with the export allow-list; a MOUNT EXPORT reply too long for a
  datagram is refused (SYSTEM_ERR) over UDP and whole over TCP; NLM locks over UDP conflict with
  locks taken over TCP; a garbage datagram is dropped and GARBAGE_ARGS answered, and the endpoint
  keeps serving; a retransmitted datagram gets the cached reply and is not executed again;
  SM_NOTIFY over UDP frees the rebooted client's locks; the UDP port is closed with the TCP
  listeners.
- ``test_msg_procedures`` (over UDP and over TCP): a fake client host (``MsgClient``: a
  portmapper and an NLM service on one port number, TCP and UDP) sends TEST_MSG, LOCK_MSG,
  CANCEL_MSG and UNLOCK_MSG and receives TEST_RES, LOCK_RES, CANCEL_RES and UNLOCK_RES with the
  results and cookies over the same transport; a queued LOCK_MSG is granted with GRANTED_MSG;
  GRANTED_RES with DENIED releases that lock, with GRANTED keeps it.
- ``test_rpcinfo_over_udp``: rpcbind's ``rpcinfo -T udp`` finds NLM v4, NSM v1, MOUNT v3 and the
  portmapper ready and waiting on the UDP ports, and no NFS v3 there.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nasblade.fileproc import config
from nasblade.fileproc.server import FileProcessor
from nasblade.nfs import nlm, nsm
from nasblade.nfs import types as t
from nasblade.nfs.exports import Export
from nasblade.rpc import message, record, xdr
from nasblade.rpc.dispatch import Call, Dispatcher, Procedure, Program
from nfs_harness import one_file_fs
from nfs_rpcclient import RawClient, UdpClient

pytestmark = pytest.mark.component
EXPORT = Export.build("/l", ["127.0.0.0/8"], root_squash=False)
ONLY2 = Export.build("/only2", ["127.0.0.2/32"], root_squash=False)
MANY = Export.build("/many", [f"10.{i // 256}.{i % 256}.0/24" for i in range(1000)])
XIDS = itertools.count(70000)
UDP, TCP = "udp", "tcp"
SUCCESS = message.AcceptStat.SUCCESS


def make_fs(path: Path) -> tuple[str, bytes, bytes]:
    """A file system with one file; the device and the file's handles through ``/l`` and ``/only2``."""
    device, (fh, fh2) = one_file_fs(path, EXPORT, ONLY2)
    return device, fh, fh2


def spec(device: str, *exports: Export) -> config.FsSpec:
    return config.FsSpec("l", device, exports or (EXPORT,), config.Listen("127.0.0.1", 0, 0, 0))


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


@dataclasses.dataclass
class Peer:
    """One client host (``name`` from ``source``) calling the server over UDP or TCP."""

    name: bytes
    source: str
    port: int
    transport: str

    def raw(self, prog: int, vers: int, proc: int, args: bytes = b"", xid: int | None = None) -> message.Reply:
        xid = next(XIDS) if xid is None else xid
        if self.transport == UDP:
            u = UdpClient("127.0.0.1", self.port, source=self.source)
            try:
                return u.call(prog, vers, proc, args, xid=xid)
            finally:
                u.close()
        c = RawClient("127.0.0.1", self.port, source=self.source)
        try:
            return c.call(prog, vers, proc, args, xid=xid)
        finally:
            c.close()

    def call(self, proc: int, args_type: xdr.Type[Any], args: Any, res_type: xdr.Type[Any]) -> Any:
        rep = self.raw(nlm.NLM_PROG, nlm.NLM_V4, proc, args_type.encode(args))
        assert rep.reply_stat == message.MSG_ACCEPTED and rep.stat == SUCCESS, rep
        return res_type.unpack(rep.body)

    def alock(self, fh: bytes, off: int = 0, length: int = 0, svid: int = 1) -> nlm.Alock:
        return nlm.Alock(self.name, fh, b"%d@%s" % (svid, self.name), svid, off, length)

    def lock_args(self, fh: bytes, cookie: bytes = b"c", *, block: bool = False, **kw: Any) -> nlm.LockArgs:
        return nlm.LockArgs(cookie, block, True, self.alock(fh, **kw), False, 1)

    def lock(self, fh: bytes, **kw: Any) -> int:
        res: nlm.Res = self.call(2, nlm.LOCK_ARGS, self.lock_args(fh, **kw), nlm.RES)
        return res.stat

    def test(self, fh: bytes, **kw: Any) -> tuple[int, nlm.Holder | None]:
        res: nlm.TestRes = self.call(1, nlm.TEST_ARGS, nlm.TestArgs(b"t", True, self.alock(fh, **kw)), nlm.TEST_RES)
        return res.test_stat

    def unlock(self, fh: bytes, **kw: Any) -> int:
        res: nlm.Res = self.call(4, nlm.UNLOCK_ARGS, nlm.UnlockArgs(b"u", self.alock(fh, **kw)), nlm.RES)
        return res.stat

    def msg(self, proc: int, args_type: xdr.Type[Any], args: Any) -> None:
        """An asynchronous ``*_MSG`` call: its reply is void, the result comes back as a call."""
        rep = self.raw(nlm.NLM_PROG, nlm.NLM_V4, proc, args_type.encode(args))
        assert rep.reply_stat == message.MSG_ACCEPTED and rep.stat == SUCCESS, rep
        rep.body.done()


async def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def run(fn: Any, *args: Any, **kw: Any) -> Any:
    return asyncio.to_thread(fn, *args, **kw)


def getport(c: RawClient | UdpClient, prog: int, vers: int, prot: int) -> int:
    rep = c.call(t.PMAP_PROGRAM, t.PMAP_V2, 3, t.MAPPING.encode(t.Mapping(prog, vers, prot, 0)))
    return int(xdr.UInt.unpack(rep.body))


def test_udp_endpoints(tmp_path: Path) -> None:
    device, fh, fh2 = make_fs(tmp_path / "u.img")

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2, grace_period=0.0)
        eps = await fp.add_filesystem(spec(device, EXPORT, ONLY2, MANY))
        nfs_port, mount_port, pm_port = (port_of(eps[k]) for k in ("nfs", "mount", "portmap"))
        assert len({nfs_port, mount_port, pm_port}) == 3

        # the portmapper over UDP: MOUNT, NLM, NSM and itself over UDP, no NFS over UDP
        pm = UdpClient("127.0.0.1", pm_port)
        udp, tcp = t.IPPROTO_UDP, t.IPPROTO_TCP
        assert await run(getport, pm, nlm.NLM_PROG, nlm.NLM_V4, udp) == nfs_port
        assert await run(getport, pm, nsm.SM_PROG, nsm.SM_VERS, udp) == nfs_port
        assert await run(getport, pm, t.MOUNT_PROGRAM, t.MOUNT_V3, udp) == mount_port
        assert await run(getport, pm, t.PMAP_PROGRAM, t.PMAP_V2, udp) == pm_port
        assert await run(getport, pm, t.NFS_PROGRAM, t.NFS_V3, udp) == 0
        assert await run(getport, pm, t.NFS_PROGRAM, t.NFS_V3, tcp) == nfs_port
        want_udp = {(nlm.NLM_PROG, nlm.NLM_V4, nfs_port), (nsm.SM_PROG, nsm.SM_VERS, nfs_port),
                    (t.MOUNT_PROGRAM, t.MOUNT_V3, mount_port), (t.PMAP_PROGRAM, t.PMAP_V2, pm_port)}
        ptcp = RawClient("127.0.0.1", pm_port)
        for c in (pm, ptcp):
            maps = t.PMAPLIST.unpack((await run(c.call, t.PMAP_PROGRAM, t.PMAP_V2, 4)).body)
            assert {(m.prog, m.vers, m.port) for m in maps if m.prot == udp} == want_udp
            assert (t.NFS_PROGRAM, t.NFS_V3, nfs_port) in {(m.prog, m.vers, m.port) for m in maps if m.prot == tcp}
        ptcp.close()
        # NFS itself is TCP-only
        rep = await run(UdpClient("127.0.0.1", nfs_port).call, t.NFS_PROGRAM, t.NFS_V3, 0)
        assert rep.reply_stat == message.MSG_ACCEPTED and rep.stat == message.AcceptStat.PROG_UNAVAIL

        # MOUNT over UDP, with the export's allow-list; EXPORT is too long for a datagram
        m2, m3 = UdpClient("127.0.0.1", mount_port, source="127.0.0.2"), UdpClient("127.0.0.1", mount_port,
                                                                                   source="127.0.0.3")
        for c, path, stat in ((m2, b"/only2", t.MountStat.OK), (m3, b"/only2", t.MountStat.ACCES),
                              (m3, b"/l", t.MountStat.OK)):
            rep = await run(c.call, t.MOUNT_PROGRAM, t.MOUNT_V3, 1, t.DIRPATH.encode(path))
            assert t.MOUNT_RES.unpack(rep.body)[0] == stat
        rep = await run(m2.call, t.MOUNT_PROGRAM, t.MOUNT_V3, 5)
        assert rep.stat == message.AcceptStat.SYSTEM_ERR
        rep = await run(RawClient("127.0.0.1", mount_port).call, t.MOUNT_PROGRAM, t.MOUNT_V3, 5)
        assert {bytes(e.ex_dir): len(e.ex_groups) for e in t.EXPORTS.unpack(rep.body)}[b"/many"] == 1000
        rep = await run(m2.call, t.MOUNT_PROGRAM, t.MOUNT_V3, 0)
        assert rep.stat == SUCCESS  # still serving

        # NLM over UDP conflicts with NLM over TCP
        a_tcp = Peer(b"alpha", "127.0.0.2", nfs_port, TCP)
        a, b, c3 = (Peer(n, s, nfs_port, UDP) for n, s in ((b"alpha", "127.0.0.2"), (b"beta", "127.0.0.3"),
                                                           (b"gamma", "127.0.0.4")))
        assert await run(a_tcp.lock, fh, off=0, length=100) == nlm.Stat.GRANTED
        assert await run(b.lock, fh, off=50, length=10) == nlm.Stat.DENIED
        stat, holder = await run(b.test, fh, off=99, length=1)
        assert stat == nlm.Stat.DENIED and holder == nlm.Holder(True, 1, b"1@alpha", 0, 100)
        assert await run(a.unlock, fh, off=0, length=100) == nlm.Stat.GRANTED
        assert await run(b.lock, fh, off=50, length=10) == nlm.Stat.GRANTED
        assert await run(a_tcp.lock, fh, off=55, length=1) == nlm.Stat.DENIED
        assert await run(a.test, fh, off=0, length=50) == (nlm.Stat.GRANTED, None)
        # the allow-list: 127.0.0.3 may not use /only2, 127.0.0.2 may; a stale handle
        assert await run(b.lock, fh2, off=1000, length=1) == nlm.Stat.DENIED
        assert await run(a.lock, fh2, off=1000, length=1) == nlm.Stat.GRANTED
        assert await run(a.lock, b"x" * 46) == nlm.Stat.STALE_FH

        # garbage: an undecodable datagram is dropped, bad arguments get GARBAGE_ARGS
        g = UdpClient("127.0.0.1", nfs_port, source="127.0.0.4", timeout=0.5)
        await run(g.send, b"\x00\x01\x02")
        await run(g.send, b"\0\0\0\x09" + b"\0\0\0\0" * 3)  # a call header cut short
        with pytest.raises(TimeoutError):
            await run(g.recv)
        rep = await run(g.call, nlm.NLM_PROG, nlm.NLM_V4, 2, b"\0\0\0\x05ab")
        assert rep.stat == message.AcceptStat.GARBAGE_ARGS
        rep = await run(g.call, nlm.NLM_PROG, nlm.NLM_V4, 0)
        assert rep.stat == SUCCESS
        g.close()

        # a retransmitted LOCK gets its first reply and does not take the lock again
        lock = message.encode_call(xid=424242, prog=nlm.NLM_PROG, vers=nlm.NLM_V4, proc=2,
                                   args=nlm.LOCK_ARGS.encode(c3.lock_args(fh, off=300, length=10)))
        u4 = UdpClient("127.0.0.1", nfs_port, source="127.0.0.4")
        await run(u4.send, lock)
        first = await run(u4.recv, 424242)
        assert nlm.RES.unpack(message.decode_reply(first).body).stat == nlm.Stat.GRANTED
        assert await run(c3.unlock, fh, off=300, length=10) == nlm.Stat.GRANTED
        await run(u4.send, lock)
        assert await run(u4.recv, 424242) == first
        assert await run(a.lock, fh, off=300, length=10) == nlm.Stat.GRANTED
        u4.close()

        # SM_NOTIFY over UDP: beta rebooted, its locks go
        rep = await run(Peer(b"gamma", "127.0.0.4", nfs_port, UDP).raw, nsm.SM_PROG, nsm.SM_VERS, 6,
                        nsm.STAT_CHGE.encode(nsm.StatChge(b"beta", 7)))
        assert rep.stat == SUCCESS
        assert await run(a.lock, fh, off=50, length=10) == nlm.Stat.GRANTED

        # UDP calls are counted with the others (the blade's metrics)
        calls = {(c["program"], c["procedure"]): c["count"] for c in fp.call_stats()["fileSystems"]["l"]["calls"]}
        assert calls[("nlm", "NLM4_TEST")] == 2 and calls[("nsm", "SM_NOTIFY")] == 1
        assert calls[("portmap", "GETPORT")] == 6 and calls[("mount", "EXPORT")] == 2

        # the UDP ports close with the TCP listeners
        await fp.close()
        for port in (nfs_port, mount_port, pm_port):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", port))
            s.close()
        for cl in (pm, m2, m3):
            cl.close()

    asyncio.run(scenario())


class MsgClient:
    """A client host's portmapper and NLM service on one port number, over TCP and UDP: what a
    lock manager that uses the asynchronous procedures receives (``received``: ``(transport,
    procedure, decoded arguments)``)."""

    RES_TYPES: dict[int, xdr.Type[Any]] = {10: nlm.TEST_ARGS, 11: nlm.TEST_RES, 12: nlm.RES, 13: nlm.RES,
                                           14: nlm.RES, 15: nlm.RES}

    def __init__(self) -> None:
        self.received: list[tuple[str, int, Any]] = []
        self.port = 0
        self.transport = ""
        procs = {p: Procedure(f"P{p}", ty, xdr.Void, self._recorder(p)) for p, ty in self.RES_TYPES.items()}
        self.disps = {}
        for tr in (TCP, UDP):
            d = Dispatcher()
            d.register(Program(t.PMAP_PROGRAM, {t.PMAP_V2: {3: Procedure("GETPORT", t.MAPPING, xdr.UInt,
                                                                         self.getport)}}))
            d.register(Program(nlm.NLM_PROG, {nlm.NLM_V4: procs}))
            self.disps[tr] = d

    def _recorder(self, proc: int) -> Any:
        def record_it(call: Call, args: Any) -> None:
            self.received.append((self.transport, proc, args))
        return record_it

    def getport(self, call: Call, m: t.Mapping) -> int:
        return self.port

    def handle(self, transport: str, rec: bytes) -> bytes | None:
        self.transport = transport
        out = self.disps[transport].handle(rec, "127.0.0.1")
        return None if out is None else b"".join(bytes(b) for b in out.buffers)

    def of(self, proc: int) -> list[Any]:
        return [args for _, p, args in self.received if p == proc]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rr = record.RecordReader(max_record=1 << 20)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for rec in rr.feed(data):
                    reply = self.handle(TCP, bytes(rec))
                    if reply is not None:
                        writer.write((record.LAST_FRAGMENT | len(reply)).to_bytes(4, "big") + reply)
        writer.close()


class _MsgDatagrams(asyncio.DatagramProtocol):
    def __init__(self, mc: MsgClient) -> None:
        self.mc = mc
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.mc.handle(UDP, data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@contextlib.asynccontextmanager
async def msg_client() -> AsyncIterator[MsgClient]:
    mc = MsgClient()
    loop = asyncio.get_running_loop()
    for _ in range(20):  # one port number free for both TCP and UDP
        server = await asyncio.start_server(mc.serve, "0.0.0.0", 0)
        mc.port = server.sockets[0].getsockname()[1]
        try:
            dgram, _ = await loop.create_datagram_endpoint(lambda: _MsgDatagrams(mc), local_addr=("0.0.0.0", mc.port))
            break
        except OSError:
            server.close()
    else:
        raise RuntimeError("no port free for TCP and UDP")
    try:
        yield mc
    finally:
        server.close()
        dgram.close()


@pytest.mark.parametrize("transport", [UDP, TCP])
def test_msg_procedures(tmp_path: Path, transport: str) -> None:
    device, fh, _ = make_fs(tmp_path / "m.img")

    async def scenario() -> None:
        async with msg_client() as mc:
            fp = FileProcessor(commit_interval=0.2, grace_period=0.0, callback_portmap_port=mc.port)
            eps = await fp.add_filesystem(spec(device))
            port = port_of(eps["nfs"])
            a, b, c = (Peer(n, s, port, transport) for n, s in ((b"alpha", "127.0.0.2"), (b"beta", "127.0.0.3"),
                                                                 (b"gamma", "127.0.0.4")))
            sync_a = Peer(b"alpha", "127.0.0.2", port, TCP)
            R = nlm.Stat

            async def result(proc: int, n: int) -> Any:
                await wait_until(lambda: len(mc.of(proc)) >= n)
                return mc.of(proc)[n - 1]

            # LOCK_MSG → LOCK_RES with the cookie and the result, over the same transport
            await run(a.msg, 7, nlm.LOCK_ARGS, a.lock_args(fh, b"m1", off=0, length=100))
            assert await result(12, 1) == nlm.Res(b"m1", R.GRANTED)
            assert {tr for tr, _, _ in mc.received} == {transport}
            # TEST_MSG → TEST_RES naming the holder
            await run(b.msg, 6, nlm.TEST_ARGS, nlm.TestArgs(b"t1", True, b.alock(fh, 50, 10)))
            assert await result(11, 1) == nlm.TestRes(b"t1", (R.DENIED, nlm.Holder(True, 1, b"1@alpha", 0, 100)))
            # non-blocking conflict: DENIED; blocking: BLOCKED, then GRANTED_MSG when alpha unlocks
            await run(b.msg, 7, nlm.LOCK_ARGS, b.lock_args(fh, b"m2", off=50, length=10))
            assert await result(12, 2) == nlm.Res(b"m2", R.DENIED)
            await run(b.msg, 7, nlm.LOCK_ARGS, b.lock_args(fh, b"m3", block=True, off=50, length=10))
            assert await result(12, 3) == nlm.Res(b"m3", R.BLOCKED)
            await run(a.msg, 9, nlm.UNLOCK_ARGS, nlm.UnlockArgs(b"u1", a.alock(fh, 0, 100)))
            assert await result(14, 1) == nlm.Res(b"u1", R.GRANTED)
            granted: nlm.TestArgs = await result(10, 1)
            assert granted.exclusive and granted.alock == b.alock(fh, 50, 10)
            assert await run(sync_a.test, fh, off=55, length=1) == (R.DENIED, nlm.Holder(True, 1, b"1@beta", 50, 10))
            assert mc.of(5) == []  # no synchronous GRANTED
            # only the host the offer went to can answer it
            await run(c.msg, 15, nlm.RES, nlm.Res(granted.cookie, R.DENIED))
            assert await run(sync_a.lock, fh, off=50, length=10) == R.DENIED
            # GRANTED_RES with DENIED: the lock goes; another client can take it
            await run(b.msg, 15, nlm.RES, nlm.Res(granted.cookie, R.DENIED))
            await wait_until(lambda: fp.endpoints["l"].nlm is not None and not fp.endpoints["l"].nlm.offered)
            assert await run(sync_a.lock, fh, off=50, length=10) == R.GRANTED

            # CANCEL_MSG: a queued request is dropped (GRANTED), then there is none (DENIED)
            await run(c.msg, 7, nlm.LOCK_ARGS, c.lock_args(fh, b"m4", block=True, off=0, length=60))
            assert await result(12, 4) == nlm.Res(b"m4", R.BLOCKED)
            canc = nlm.CancArgs(b"k1", True, True, c.alock(fh, 0, 60))
            await run(c.msg, 8, nlm.CANC_ARGS, canc)
            assert await result(13, 1) == nlm.Res(b"k1", R.GRANTED)
            await run(c.msg, 8, nlm.CANC_ARGS, dataclasses.replace(canc, cookie=b"k2"))
            assert await result(13, 2) == nlm.Res(b"k2", R.DENIED)

            # GRANTED_RES with GRANTED: the client keeps the lock
            await run(c.msg, 7, nlm.LOCK_ARGS, c.lock_args(fh, b"m5", block=True, off=0, length=60))
            assert await result(12, 5) == nlm.Res(b"m5", R.BLOCKED)
            assert await run(sync_a.unlock, fh, off=50, length=10) == R.GRANTED
            granted = await result(10, 2)
            assert granted.alock == c.alock(fh, 0, 60)
            await run(c.msg, 15, nlm.RES, nlm.Res(granted.cookie, R.GRANTED))
            await wait_until(lambda: fp.endpoints["l"].nlm is not None and not fp.endpoints["l"].nlm.offered)
            assert await run(sync_a.lock, fh, off=10, length=1) == R.DENIED

            # the same refusals as the synchronous forms; results sent to the server are accepted
            await run(a.msg, 7, nlm.LOCK_ARGS, a.lock_args(b"x" * 46, b"m6"))
            assert await result(12, 6) == nlm.Res(b"m6", R.STALE_FH)
            n = len(mc.received)
            for proc, ty, args in ((11, nlm.TEST_RES, nlm.TestRes(b"x", (R.GRANTED, None))),
                                   (12, nlm.RES, nlm.Res(b"x", R.GRANTED)), (13, nlm.RES, nlm.Res(b"x", R.DENIED)),
                                   (14, nlm.RES, nlm.Res(b"x", R.GRANTED)), (15, nlm.RES, nlm.Res(b"?", R.DENIED)),
                                   (10, nlm.TEST_ARGS, nlm.TestArgs(b"x", True, a.alock(fh)))):
                await run(a.msg, proc, ty, args)
            await asyncio.sleep(0.2)
            assert len(mc.received) == n
            await fp.close()

    asyncio.run(scenario())


@pytest.mark.skipif(shutil.which("rpcinfo") is None, reason="rpcinfo (Debian package rpcbind) is not installed")
def test_rpcinfo_over_udp(tmp_path: Path) -> None:
    device, _, _ = make_fs(tmp_path / "r.img")

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2, grace_period=0.0)
        eps = await fp.add_filesystem(spec(device))
        nfs_port, mount_port, pm_port = (port_of(eps[k]) for k in ("nfs", "mount", "portmap"))

        def rpcinfo(port: int, prog: int, vers: int) -> subprocess.CompletedProcess[str]:
            # -a: the universal address h1.h2.h3.h4.p1.p2 (rpcinfo's -n is not used for -u: it
            # asks the rpcbind on port 111 first)
            uaddr = f"127.0.0.1.{port >> 8}.{port & 255}"
            return subprocess.run(["rpcinfo", "-a", uaddr, "-T", "udp", str(prog), str(vers)],
                                  capture_output=True, text=True, timeout=30)

        for port, prog, vers in ((nfs_port, nlm.NLM_PROG, 4), (nfs_port, nsm.SM_PROG, 1),
                                 (mount_port, t.MOUNT_PROGRAM, 3), (pm_port, t.PMAP_PROGRAM, 2)):
            out = await run(rpcinfo, port, prog, vers)
            assert out.returncode == 0 and f"program {prog} version {vers} ready and waiting" in out.stdout, out
        out = await run(rpcinfo, nfs_port, t.NFS_PROGRAM, 3)
        assert out.returncode != 0 and "ready and waiting" not in out.stdout, out
        await fp.close()

    asyncio.run(scenario())
