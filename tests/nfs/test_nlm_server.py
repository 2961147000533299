"""NLM v4 and NSM v1 as the embeddable ``FileProcessor`` serves them, over TCP, with a fake client
lock manager and status monitor (``FakeClient``: a portmapper, NLM ``GRANTED`` and NSM ``NOTIFY``
on one port, recording what the server calls back).

Clients are told apart by their source address (127.0.0.2, 127.0.0.3, ...). Covered: the
portmapper maps NLM and NSM to the NFS port; conflicts between hosts and TEST's holder; stale and
malformed handles; garbage arguments (GARBAGE_ARGS, the server keeps serving); a blocked request
granted by the GRANTED callback when the holder unlocks; FREE_ALL; and a restart: the monitored
list comes back from the file system, the grace period refuses new locks and admits reclaims,
and every client that held a lock gets SM_NOTIFY with the new state number.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
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
from nfs_rpcclient import RawClient

pytestmark = pytest.mark.component
EXPORT = Export.build("/l", ["127.0.0.0/8"], root_squash=False)
XIDS = itertools.count(5000)  # a new XID per call: the duplicate request cache keys on it


def make_fs(path: Path) -> tuple[str, bytes]:
    """A file system with one file ``f``; returns the device path and the file's handle."""
    device, (fh,) = one_file_fs(path, EXPORT)
    return device, fh


def spec(device: str) -> config.FsSpec:
    return config.FsSpec("l", device, (EXPORT,), config.Listen("127.0.0.1", 0, 0, None))


class FakeClient:
    """A client host's portmapper + lock manager + status monitor on one port."""

    def __init__(self) -> None:
        self.granted: list[nlm.TestArgs] = []
        self.notified: list[nsm.StatChge] = []
        self.accept_grants = True
        self.port = 0
        disp = Dispatcher()
        disp.register(Program(t.PMAP_PROGRAM, {t.PMAP_V2: {3: Procedure("GETPORT", t.MAPPING, xdr.UInt, self.getport)}}))
        disp.register(Program(nlm.NLM_PROG, {nlm.NLM_V4: {5: Procedure("GRANTED", nlm.TEST_ARGS, nlm.RES, self.grant)}}))
        disp.register(Program(nsm.SM_PROG, {nsm.SM_VERS: {6: Procedure("NOTIFY", nsm.STAT_CHGE, xdr.Void, self.notify)}}))
        self.disp = disp

    def getport(self, call: Call, m: Any) -> int:
        return self.port

    def grant(self, call: Call, args: nlm.TestArgs) -> nlm.Res:
        self.granted.append(args)
        return nlm.Res(args.cookie, nlm.Stat.GRANTED if self.accept_grants else nlm.Stat.DENIED)

    def notify(self, call: Call, args: nsm.StatChge) -> None:
        self.notified.append(args)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rr = record.RecordReader(max_record=1 << 20)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for rec in rr.feed(data):
                    out = self.disp.handle(rec, "127.0.0.1")
                    if out is not None:
                        n = sum(len(b) for b in out.buffers)
                        writer.write((record.LAST_FRAGMENT | n).to_bytes(4, "big") + b"".join(bytes(b) for b in out.buffers))
        writer.close()


@contextlib.asynccontextmanager
async def fake_client() -> AsyncIterator[FakeClient]:
    fc = FakeClient()
    server = await asyncio.start_server(fc.serve, "0.0.0.0", 0)
    fc.port = server.sockets[0].getsockname()[1]
    try:
        yield fc
    finally:
        server.close()


@dataclasses.dataclass
class Host:
    """One client host (source address) talking NLM to the server."""

    name: bytes
    source: str
    port: int

    def call(self, proc: int, args_type: xdr.Type[Any], args: Any, res_type: xdr.Type[Any]) -> Any:
        c = RawClient("127.0.0.1", self.port, source=self.source)
        try:
            rep = c.call(nlm.NLM_PROG, nlm.NLM_V4, proc, args_type.encode(args), xid=next(XIDS))
            assert rep.reply_stat == message.MSG_ACCEPTED and rep.stat == 0, rep
            return res_type.unpack(rep.body)
        finally:
            c.close()

    def alock(self, fh: bytes, svid: int = 1, off: int = 0, length: int = 0) -> nlm.Alock:
        return nlm.Alock(self.name, fh, b"%d@%s" % (svid, self.name), svid, off, length)

    def lock(self, fh: bytes, *, excl: bool = True, block: bool = False, reclaim: bool = False, **kw: Any) -> int:
        args = nlm.LockArgs(b"c-" + self.name, block, excl, self.alock(fh, **kw), reclaim, 1)
        res: nlm.Res = self.call(2, nlm.LOCK_ARGS, args, nlm.RES)
        assert res.cookie == b"c-" + self.name
        return res.stat

    def test(self, fh: bytes, *, excl: bool = True, **kw: Any) -> tuple[int, nlm.Holder | None]:
        res: nlm.TestRes = self.call(1, nlm.TEST_ARGS, nlm.TestArgs(b"t", excl, self.alock(fh, **kw)), nlm.TEST_RES)
        return res.test_stat

    def share(self, fh: bytes, *, access: int, deny: int, proc: int = 20, reclaim: bool = False) -> int:
        args = nlm.ShareArgs(b"s-" + self.name, nlm.NlmShare(self.name, fh, b"o@" + self.name, deny, access), reclaim)
        res: nlm.ShareRes = self.call(proc, nlm.SHARE_ARGS, args, nlm.SHARE_RES)
        assert res.cookie == b"s-" + self.name
        return res.stat

    def nm_lock(self, fh: bytes, *, excl: bool = True, **kw: Any) -> int:
        args = nlm.LockArgs(b"n-" + self.name, False, excl, self.alock(fh, **kw), False, 0)
        res: nlm.Res = self.call(22, nlm.LOCK_ARGS, args, nlm.RES)
        return res.stat

    def unlock(self, fh: bytes, **kw: Any) -> int:
        res: nlm.Res = self.call(4, nlm.UNLOCK_ARGS, nlm.UnlockArgs(b"u", self.alock(fh, **kw)), nlm.RES)
        return res.stat


def three_hosts(eps: dict[str, str]) -> tuple[Host, Host, Host]:
    """Clients alpha, beta and gamma (each its own source address) of the endpoint ``eps``."""
    port = int(eps["nfs"].rsplit(":", 1)[1])
    a, b, c = (Host(n, s, port) for n, s in ((b"alpha", "127.0.0.2"), (b"beta", "127.0.0.3"), (b"gamma", "127.0.0.4")))
    return a, b, c


def run(fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn`` (a blocking client call) in a thread, so the server's loop keeps serving."""
    return asyncio.to_thread(fn, *args, **kw)


async def wait_until(cond: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_locks_conflicts_callbacks_and_reclaim_after_restart(tmp_path: Path) -> None:
    device, fh = make_fs(tmp_path / "l.img")

    async def scenario() -> None:
        async with fake_client() as fc:
            fp = FileProcessor(commit_interval=0.2, grace_period=2.0, callback_portmap_port=fc.port)
            eps = await fp.add_filesystem(spec(device))
            a, b, c = three_hosts(eps)

            # the portmapper sends NLM and NSM clients to the NFS port
            port = a.port
            pm = RawClient("127.0.0.1", port)
            for prog, vers in ((nlm.NLM_PROG, nlm.NLM_V4), (nsm.SM_PROG, nsm.SM_VERS)):
                rep = await run(pm.call, t.PMAP_PROGRAM, t.PMAP_V2, 3,
                                t.MAPPING.encode(t.Mapping(prog, vers, t.IPPROTO_TCP, 0)))
                assert xdr.UInt.unpack(rep.body) == port
            # garbage: GARBAGE_ARGS, and the same connection keeps serving
            rep = await run(pm.call, nlm.NLM_PROG, nlm.NLM_V4, 2, b"\0\0\0\x05ab")
            assert rep.stat == message.AcceptStat.GARBAGE_ARGS
            rep = await run(pm.call, nlm.NLM_PROG, nlm.NLM_V4, 0)
            assert rep.stat == message.AcceptStat.SUCCESS
            rep = await run(pm.call, nlm.NLM_PROG, nlm.NLM_V4, 5)  # GRANTED is the client's procedure
            assert rep.stat == message.AcceptStat.PROC_UNAVAIL
            pm.close()

            # conflicts between hosts; TEST names the holder
            assert await run(a.lock, fh, off=0, length=100) == nlm.Stat.GRANTED
            assert await run(b.lock, fh, off=50, length=10) == nlm.Stat.DENIED
            assert await run(b.lock, fh, excl=False, off=100, length=10) == nlm.Stat.GRANTED
            stat, holder = await run(b.test, fh, off=99, length=2)
            assert stat == nlm.Stat.DENIED and holder == nlm.Holder(True, 1, b"1@alpha", 0, 100)
            assert await run(a.test, fh, off=0, length=100) == (nlm.Stat.GRANTED, None)
            # a handle that is not ours, or was forged
            assert await run(a.lock, b"x" * 46) == nlm.Stat.STALE_FH
            assert await run(a.lock, fh[:-1] + bytes([fh[-1] ^ 1])) == nlm.Stat.STALE_FH

            # a blocked request is granted by callback when the holder unlocks
            assert await run(c.lock, fh, block=True, off=0, length=10) == nlm.Stat.BLOCKED
            assert await run(a.unlock, fh, off=0, length=100) == nlm.Stat.GRANTED
            await wait_until(lambda: fc.granted)
            [g] = fc.granted
            assert g.cookie == b"c-gamma" and g.alock.caller_name == b"gamma" and g.exclusive
            stat, holder = await run(a.test, fh, off=5, length=1)
            assert stat == nlm.Stat.DENIED and holder is not None and holder.oh == b"1@gamma"
            # a GRANTED the client refuses gives the lock up again
            fc.accept_grants = False
            assert await run(a.lock, fh, block=True, off=0, length=1) == nlm.Stat.BLOCKED
            assert await run(c.unlock, fh, off=0, length=10) == nlm.Stat.GRANTED
            await wait_until(lambda: len(fc.granted) == 2)
            nlm_a = fp.endpoints["l"].nlm
            assert nlm_a is not None
            await wait_until(lambda: not nlm_a.offered)
            assert await run(c.test, fh, off=0, length=1) == (nlm.Stat.GRANTED, None)
            fc.accept_grants = True

            # FREE_ALL drops a host's locks
            assert await run(a.lock, fh, off=1000, length=0) == nlm.Stat.GRANTED
            await run(b.call, 23, nlm.NOTIFY_ARGS, nlm.NotifyArgs(b"alpha", 3), xdr.Void)
            assert await run(c.lock, fh, off=2000, length=5) == nlm.Stat.GRANTED

            # restart: beta (shared 100..110) and gamma (2000..2005) hold locks
            ep = fp.endpoints["l"]
            assert ep.nlm is not None
            assert set(ep.nlm.monitor.clients) == {"beta", "gamma"}
            old_state = ep.nlm.monitor.state
            await fp.remove_filesystem("l")
            fc.notified.clear()
            eps = await fp.add_filesystem(spec(device))
            port = int(eps["nfs"].rsplit(":", 1)[1])
            a, b, c = (dataclasses.replace(h, port=port) for h in (a, b, c))
            await wait_until(lambda: len(fc.notified) == 2)
            assert {n.state for n in fc.notified} == {old_state + 2}
            assert {n.mon_name for n in fc.notified} == {b"127.0.0.1"}
            # grace: new locks refused, reclaims granted
            assert await run(a.lock, fh, off=2000, length=5) == nlm.Stat.DENIED_GRACE_PERIOD
            assert (await run(a.test, fh, off=0, length=1))[0] == nlm.Stat.DENIED_GRACE_PERIOD
            assert await run(c.lock, fh, reclaim=True, off=2000, length=5) == nlm.Stat.GRANTED
            await asyncio.sleep(2.1)
            assert await run(a.lock, fh, off=2000, length=5) == nlm.Stat.DENIED  # gamma reclaimed it
            assert await run(a.lock, fh, off=100, length=10) == nlm.Stat.GRANTED  # beta did not
            await asyncio.sleep(0.1)
            ep = fp.endpoints["l"]
            assert ep.nlm is not None and set(ep.nlm.monitor.clients) == {"alpha", "gamma"}
            await fp.close()

    asyncio.run(scenario())


def test_grace_period_ends_when_every_monitored_client_has_reclaimed(tmp_path: Path) -> None:
    """A restart with a 60 s grace period: once both monitored clients reclaimed and the settle
    time passed, new locks are served again (the conflicting one refused: it was reclaimed);
    with one client missing the grace period goes on."""
    device, fh = make_fs(tmp_path / "g.img")

    async def scenario() -> None:
        async with fake_client() as fc:
            fp = FileProcessor(commit_interval=0.2, grace_period=60.0, grace_settle=0.5,
                               callback_portmap_port=fc.port)
            eps = await fp.add_filesystem(spec(device))
            a, b, c = three_hosts(eps)

            assert await run(b.lock, fh, off=0, length=10) == nlm.Stat.GRANTED
            assert await run(b.lock, fh, off=50, length=10) == nlm.Stat.GRANTED
            assert await run(c.lock, fh, off=100, length=10) == nlm.Stat.GRANTED

            async def restart() -> list[Host]:
                await fp.remove_filesystem("l")
                eps = await fp.add_filesystem(spec(device))
                p = int(eps["nfs"].rsplit(":", 1)[1])
                return [dataclasses.replace(h, port=p) for h in (a, b, c)]

            # beta comes back, gamma does not: still in grace after the settle time
            a, b, c = await restart()
            for off in (0, 50):
                assert await run(b.lock, fh, reclaim=True, off=off, length=10) == nlm.Stat.GRANTED
            await asyncio.sleep(1.0)
            assert await run(a.lock, fh, off=200, length=5) == nlm.Stat.DENIED_GRACE_PERIOD

            # both come back (beta's monitored entry stays: it holds its locks)
            a, b, c = await restart()
            t0 = time.monotonic()
            for off in (0, 50):
                assert await run(b.lock, fh, reclaim=True, off=off, length=10) == nlm.Stat.GRANTED
            assert await run(c.lock, fh, reclaim=True, off=100, length=10) == nlm.Stat.GRANTED
            assert await run(a.lock, fh, off=200, length=5) == nlm.Stat.DENIED_GRACE_PERIOD
            await wait_until(lambda: fp.endpoints["l"].nlm is not None and not fp.endpoints["l"].nlm.in_grace())
            assert time.monotonic() - t0 < 10.0  # over long before the 60 s
            assert await run(a.lock, fh, off=200, length=5) == nlm.Stat.GRANTED
            assert await run(a.lock, fh, off=55, length=1) == nlm.Stat.DENIED  # beta's, reclaimed
            assert await run(a.lock, fh, off=105, length=1) == nlm.Stat.DENIED  # gamma's, reclaimed
            await fp.close()

    asyncio.run(scenario())


def test_sm_notify_from_a_rebooted_client_frees_its_locks(tmp_path: Path) -> None:
    device, fh = make_fs(tmp_path / "l.img")

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2, grace_period=1.0)
        eps = await fp.add_filesystem(spec(device))
        port = int(eps["nfs"].rsplit(":", 1)[1])
        a, b = Host(b"alpha", "127.0.0.2", port), Host(b"beta", "127.0.0.3", port)
        assert await asyncio.to_thread(a.lock, fh) == nlm.Stat.GRANTED
        assert await asyncio.to_thread(b.lock, fh) == nlm.Stat.DENIED
        c = RawClient("127.0.0.1", port, source="127.0.0.2")
        rep = await asyncio.to_thread(c.call, nsm.SM_PROG, nsm.SM_VERS, 1, nsm.SM_NAME.encode(nsm.SmName(b"x")))
        res = nsm.SM_STAT_RES.unpack(rep.body)
        assert res.res_stat == nsm.STAT_SUCC and res.state % 2 == 1
        rep = await asyncio.to_thread(c.call, nsm.SM_PROG, nsm.SM_VERS, 6,
                                      nsm.STAT_CHGE.encode(nsm.StatChge(b"alpha", 5)))
        assert rep.stat == message.AcceptStat.SUCCESS
        c.close()
        assert await asyncio.to_thread(b.lock, fh) == nlm.Stat.GRANTED
        await fp.close()

    asyncio.run(scenario())


def test_share_reservations_and_unmonitored_locks(tmp_path: Path) -> None:
    """SHARE / UNSHARE (DOS share modes) and NM_LOCK, the PC clients' procedures: a share that
    denies writing keeps another host from opening for writing but not for reading; UNSHARE and
    FREE_ALL release; NM_LOCK conflicts like LOCK but monitors nobody."""
    device, fh = make_fs(tmp_path / "s.img")
    R, W, RW = nlm.ShareAccess.R, nlm.ShareAccess.W, nlm.ShareAccess.RW
    DN, DW = nlm.ShareMode.DN, nlm.ShareMode.DW

    async def scenario() -> None:
        fp = FileProcessor(commit_interval=0.2, grace_period=0.0)
        eps = await fp.add_filesystem(spec(device))
        port = int(eps["nfs"].rsplit(":", 1)[1])
        a, b = Host(b"alpha", "127.0.0.2", port), Host(b"beta", "127.0.0.3", port)

        def run(fn: Any, *args: Any, **kw: Any) -> Any:
            return asyncio.to_thread(fn, *args, **kw)

        assert await run(a.share, fh, access=RW, deny=DW) == nlm.Stat.GRANTED
        assert await run(b.share, fh, access=W, deny=DN) == nlm.Stat.DENIED  # alpha denies writing
        assert await run(b.share, fh, access=R, deny=DN) == nlm.Stat.GRANTED
        assert await run(a.share, fh, access=R, deny=DW) == nlm.Stat.GRANTED  # an owner replaces its own
        assert await run(b.share, fh, access=R, deny=DW) == nlm.Stat.GRANTED
        assert await run(a.share, fh, access=W, deny=DN) == nlm.Stat.DENIED  # now beta denies writing
        assert await run(b.share, fh, access=R, deny=DN, proc=21) == nlm.Stat.GRANTED  # UNSHARE
        assert await run(a.share, fh, access=RW, deny=DN) == nlm.Stat.GRANTED
        assert await run(a.share, b"x" * 46, access=R, deny=DN) == nlm.Stat.STALE_FH
        # FREE_ALL drops a host's shares too
        assert await run(b.share, fh, access=W, deny=DN) == nlm.Stat.GRANTED
        await run(b.call, 23, nlm.NOTIFY_ARGS, nlm.NotifyArgs(b"beta", 3), xdr.Void)
        assert await run(a.share, fh, access=R, deny=DW) == nlm.Stat.GRANTED
        # NM_LOCK: the same conflicts as LOCK, never blocks, monitors nobody
        assert await run(a.nm_lock, fh, off=0, length=10) == nlm.Stat.GRANTED
        assert await run(b.nm_lock, fh, off=5, length=1) == nlm.Stat.DENIED
        assert await run(b.lock, fh, off=5, length=1) == nlm.Stat.DENIED
        ep = fp.endpoints["l"]
        assert ep.nlm is not None and ep.nlm.monitor.clients == {}
        await fp.close()

    asyncio.run(scenario())
