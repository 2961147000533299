"""``FileProcessor``: the asyncio shell around the RPC core and the file systems it serves.

Each served file system gets an ``Endpoint``: its own ``Volume`` (mounted ``FileSystem`` plus
exports), its own ``Dispatcher`` with the NFS v3, MOUNT v3, NLM v4, NSM v1 and portmapper v2
programs, and its own TCP listeners (NFS, MOUNT, portmapper: any of them answers any of the
programs; the portmapper gives the NFS port for NLM and NSM), so a file system can move between
blades together with its address. Beside each TCP listener a UDP endpoint on the same address
and port number serves the same dispatcher but NFS itself (TCP-only, RFC 1813 allows it:
``nasblade.nfs.nfs3``): MOUNT, NLM, NSM and the portmapper, which maps them over UDP too (a
client's ``sm-notify`` asks it over UDP where NSM is, then sends SM_NOTIFY over UDP). No new
configuration: the UDP ports are the TCP ones, opened and closed with them.

Over UDP (``_Datagrams``) one datagram is one call message (no record marking, RFC 5531 §11),
answered to the datagram's source address; a datagram that is not a call is dropped, one with
bad arguments gets GARBAGE_ARGS; the same checks, allow-lists (the source address is the
client), duplicate request cache (retransmission is how UDP clients recover a lost reply) and
call statistics apply as over TCP. A reply longer than ``MAX_DATAGRAM_REPLY`` is not sent cut
short: the client gets SYSTEM_ERR instead (only MOUNT EXPORT and DUMP lists can grow so; the
client can ask over TCP). The embedding code (the
``file-processor`` role in ``nasblade.fileproc.main``, the blade, the standalone array) calls
``add_filesystem`` / ``remove_filesystem`` at run time, ``set_exports`` / ``set_listen`` to
change a served file system in place, and ``regenerate_verifier`` on takeover.

Per connection, ``RecordReader`` reassembles records and the dispatcher answers them
synchronously (file-system calls run on the event-loop thread; the block device is a
synchronous ``BlockDevice``). Replies that must be stable (``Outcome.needs_commit``) are held
back; a commit is scheduled with ``call_soon`` so every request already read from any
connection joins the same group commit, and the held replies go out after it returns. A timer
commits leftover unstable changes every ``commit_interval`` seconds. If a commit fails
(device error, fenced writer), the held replies are never sent: their connections are
aborted and the endpoint stops serving, so nothing is acknowledged that is not durable: its
listeners close and it leaves ``status()``, so its block processor sees a file system it handed
over and that is no longer served, and gives the blade up for a peer to take over.

Locking: mounting a file system reads the NSM record kept in it (``nasblade.nfs.nsm``), moves
the state number on and stores it; if clients held locks under the previous owner (a restart
or a takeover), the grace period (at most ``grace_period`` seconds, over once every listed client
has reclaimed) starts and each client's statd gets SM_NOTIFY (retried until the grace period
ends) so its lock manager reclaims. When the lock
table grants a queued request, the client's lock manager gets the GRANTED callback
(``nasblade.fileproc.callbacks``); a callback the client does not accept releases the lock. A
request made with the asynchronous ``LOCK_MSG`` is told with the one-way ``GRANTED_MSG`` over
the transport it came over instead, and the client's ``GRANTED_RES`` keeps or releases it
(``nasblade.nfs.nlm``); the results of ``*_MSG`` calls go out as one-way ``*_RES`` calls
(``Endpoint.send_result``), after the group commit when the reply had to wait for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import socket
import struct
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Protocol, TypeVar, cast

from nasblade import blockdev, devices, latency
from nasblade.fileproc import callbacks
from nasblade.fileproc.config import FsSpec, Listen
from nasblade.fs import datacache, dirvolumes, treecopy
from nasblade.fs import fs as fsmod
from nasblade.nfs import mount, nfs3, nlm, nsm, portmap
from nasblade.nfs.exports import Export
from nasblade.nfs.locks import Grace, Waiter
from nasblade.nfs.volume import Volume
from nasblade.rpc import message, record, xdr
from nasblade.rpc.dispatch import Buffers, Call, Dispatcher

log = logging.getLogger(__name__)
T = TypeVar("T")
_HDR = struct.Struct(">I")
MAX_TXN_OPS = 4096
GRACE_PERIOD = 90.0
"""Longest grace period after a start or takeover, in which only lock reclaims are granted: it
ends as soon as every client told to reclaim has (``locks.Grace``), and lasts this long only
for a client that does not come back (knfsd's grace period; docs/file-system.md)."""
GRACE_SETTLE = 5.0
"""Seconds without a reclaim, once every listed client has reclaimed, that end the grace period."""
MAX_DATAGRAM_REPLY = 8800
"""Longest reply sent over UDP: ``UDPMSGSIZE``, what a libtirpc or glibc client reads of a
datagram reply (rpcbind and mountd do not send longer ones either). A longer reply gets
SYSTEM_ERR instead of arriving cut short."""


class _Replies(Protocol):
    """Where a call's reply goes: a TCP connection (``_Conn``) or a datagram's sender (``_Sender``)."""

    peer: str
    kind: str

    def send(self, buffers: Buffers) -> None: ...

    def abort(self) -> None: ...


class _Conn(asyncio.Protocol):
    kind = "tcp"

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.reader = record.RecordReader(max_record=(1 << 20) + 64 * 1024)
        self.transport: asyncio.Transport | None = None
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        if self.ep.closed or self.ep.failed:
            # accepted just before the listener closed (asyncio makes the protocol a loop
            # iteration after the accept): nothing may be served from here any more, so the
            # client reconnects and reaches whoever serves the file system now
            transport.abort()
            return
        self.ep.conns.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            records = self.reader.feed(data)
        except record.RecordError as exc:
            log.warning("closing connection from %s: %s", self.peer, exc)
            self.abort()
            return
        for rec in records:
            if self.transport is None or self.transport.is_closing():
                return
            self.ep.handle(self, rec)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ep.conns.discard(self)
        self.transport = None

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def send(self, buffers: Buffers) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = sum(len(b) for b in buffers)
        self.transport.writelines([_HDR.pack(record.LAST_FRAGMENT | n), *buffers])

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Datagrams(asyncio.DatagramProtocol):
    """The UDP endpoint on one port of a file system: each datagram is one call (see the module
    docstring); the reply goes back to its source address."""

    def __init__(self, ep: Endpoint) -> None:
        self.ep = ep
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.ep.handle(_Sender(self.transport, addr), data)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP endpoint of %s: %s", self.ep.spec.name, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class _Sender:
    """The sender of one datagram, as the reply's destination."""

    kind = "udp"

    def __init__(self, transport: asyncio.DatagramTransport, addr: tuple[str | Any, ...]) -> None:
        self.transport = transport
        self.addr = addr
        self.peer = str(addr[0])

    def send(self, buffers: Buffers) -> None:
        if self.transport.is_closing():
            return
        data = b"".join(buffers)
        if len(data) > MAX_DATAGRAM_REPLY:
            head = message.peek_xid(data)
            assert head is not None
            log.info("reply of %d bytes to %s does not fit a datagram: SYSTEM_ERR", len(data), self.peer)
            data = message.accepted_error(head[0], message.AcceptStat.SYSTEM_ERR)
        self.transport.sendto(data, self.addr)

    def abort(self) -> None:
        """Nothing to close: the reply is dropped (the client retransmits or gives up)."""


@dataclasses.dataclass
class Endpoint:
    """One served file system: volume, dispatcher, listeners and the group-commit queue."""

    spec: FsSpec
    volume: Volume
    device: blockdev.BlockDevice
    dispatcher: Dispatcher
    portmap: portmap.Portmap
    commit_interval: float
    servers: list[asyncio.Server] = dataclasses.field(default_factory=list)
    datagrams: list[asyncio.DatagramTransport] = dataclasses.field(default_factory=list)
    """The UDP endpoints beside ``servers``, closed with them."""
    conns: set[_Conn] = dataclasses.field(default_factory=set)
    pending: list[tuple[_Replies, Buffers]] = dataclasses.field(default_factory=list)
    after_commit: list[Callable[[], None]] = dataclasses.field(default_factory=list)
    """What waits for the next group commit besides replies (``*_RES`` calls to clients)."""
    addresses: dict[str, str] = dataclasses.field(default_factory=dict)
    bound: tuple[int, int, int] = (0, 0, 0)
    """The NFS, MOUNT and portmapper ports listened on (0: no portmapper)."""
    failed: bool = False
    closed: bool = False
    """Set first thing by ``remove_filesystem``: a connection that arrives after it is aborted."""
    nlm: nlm.Nlm | None = None
    callback_portmap_port: int = 111
    tasks: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    on_failed: Callable[[], None] | None = None
    """Called once when a commit fails: the file processor stops serving this file system."""
    paused: bool = False
    """A point-in-time copy (``FileProcessor._paused``) runs on a worker thread: requests are
    held in ``held`` and nothing on the loop touches the file system."""
    held: list[tuple[_Replies, bytes]] = dataclasses.field(default_factory=list)
    exclusive: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)
    """Held by a copy, and by what must not run beside one (control changes, the unmount)."""
    _scheduled: bool = False
    _timer: asyncio.TimerHandle | None = None

    @property
    def fs(self) -> fsmod.FileSystem:
        return self.volume.fs

    def handle(self, conn: _Replies, rec: bytes | memoryview) -> None:
        if self.failed or self.closed:
            conn.abort()
            return
        if self.paused:
            self.held.append((conn, bytes(rec)))
            return
        outcome = self.dispatcher.handle(rec, conn.peer, transport=conn.kind)
        if outcome is None:
            return
        if outcome.needs_commit and self.fs.dirty:
            self.pending.append((conn, outcome.buffers))
            self._schedule()
        else:
            conn.send(outcome.buffers)
            if self.fs.ops_since_commit >= MAX_TXN_OPS:
                self._schedule()

    # -- locking: storing the monitored list, GRANTED and SM_NOTIFY callbacks ---------------

    def monitor_changed(self, call: Call | None) -> None:
        """Store the NSM record; the reply to ``call`` waits for the commit that makes it durable."""
        assert self.nlm is not None
        self.fs.set_note(nsm.NOTE_KEY, self.nlm.monitor.dumps())
        if call is not None:
            call.needs_commit = True
        else:
            self._schedule()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def lock_granted(self, key: Hashable, waiters: list[Waiter]) -> None:
        for w in waiters:
            self.spawn(self._send_granted_msg(key, w) if w.msg_transport else self._send_granted(key, w))

    def send_result(self, call: Call, proc: int, args: bytes) -> None:
        """The result of a ``*_MSG`` call, as the one-way ``proc`` to the caller's lock manager
        over the call's transport; after the commit its reply waits for, if there is one."""

        def send() -> None:
            self.spawn(self._send_oneway(call.client, call.transport, proc, args))

        if call.needs_commit and self.fs.dirty:
            self.after_commit.append(send)
            self._schedule()
        else:
            send()

    async def _send_oneway(self, client: str, transport: str, proc: int, args: bytes) -> None:
        try:
            await callbacks.send(client, nlm.NLM_PROG, nlm.NLM_V4, proc, args, transport=transport,
                                 portmap_port=self.callback_portmap_port)
        except callbacks.CallbackError as exc:
            log.info("NLM procedure %d to %s over %s failed: %s", proc, client, transport, exc)

    async def _send_granted_msg(self, key: Hashable, w: Waiter) -> None:
        """``GRANTED_MSG`` for a request made with ``LOCK_MSG``: the client's ``GRANTED_RES``
        decides (``Nlm.granted_res``); if it cannot even be sent, the lock is released."""
        assert self.nlm is not None and isinstance(w.alock, nlm.Alock)
        cookie = self.nlm.msg_offer(key, w)
        args = nlm.TEST_ARGS.encode(nlm.TestArgs(cookie, w.exclusive, w.alock))
        try:
            await callbacks.send(w.client, nlm.NLM_PROG, nlm.NLM_V4, nlm.PROC_GRANTED_MSG, args,
                                 transport=w.msg_transport, portmap_port=self.callback_portmap_port)
        except callbacks.CallbackError as exc:
            log.info("GRANTED_MSG to %s failed: %s", w.client, exc)
            if not self.failed:
                self.nlm.msg_offers.pop(cookie, None)
                self.nlm.release(key, w)

    async def _send_granted(self, key: Hashable, w: Waiter) -> None:
        assert self.nlm is not None and isinstance(w.alock, nlm.Alock)
        args = nlm.TEST_ARGS.encode(nlm.TestArgs(w.cookie, w.exclusive, w.alock))
        try:
            dec = await callbacks.call(w.client, nlm.NLM_PROG, nlm.NLM_V4, nlm.PROC_GRANTED, args,
                                       portmap_port=self.callback_portmap_port)
            taken = nlm.RES.unpack(dec).stat == nlm.Stat.GRANTED
        except (callbacks.CallbackError, xdr.XdrError) as exc:
            log.info("GRANTED callback to %s failed: %s", w.client, exc)
            taken = False
        if self.failed:
            return
        if taken:
            self.nlm.confirm(key, w)
        else:
            self.nlm.release(key, w)

    async def notify_clients(self, clients: dict[str, str], state: int, within: float) -> None:
        """SM_NOTIFY every client that held locks under the previous owner (retried for ``within`` s)."""
        args = nsm.STAT_CHGE.encode(nsm.StatChge(self.spec.listen.host.encode(), state))
        await asyncio.gather(*(self._notify_one(name, addr, args, within) for name, addr in clients.items()))

    async def _notify_one(self, name: str, addr: str, args: bytes, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        delay = 0.25
        while True:
            try:
                await callbacks.call(addr, nsm.SM_PROG, nsm.SM_VERS, nsm.PROC_NOTIFY, args,
                                     portmap_port=self.callback_portmap_port, timeout=3.0)
            except callbacks.CallbackError as exc:
                if loop.time() + delay >= deadline:
                    log.warning("%s: SM_NOTIFY to %s at %s failed: %s", self.spec.name, name, addr, exc)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 4.0)
            else:
                log.info("%s: SM_NOTIFY sent to %s at %s", self.spec.name, name, addr)
                return

    async def watch_grace(self, grace: Grace) -> None:
        """Wait for the grace period to end (early, when every client is back), then
        ``grace_over``."""
        t0 = time.monotonic()
        while grace.active(time.monotonic()):
            await asyncio.sleep(min(0.5, grace.remaining(time.monotonic())))
        missing = sorted(grace.awaiting)
        log.info("%s: grace period over after %.1f s; %d of %d clients reclaimed%s", self.spec.name,
                 time.monotonic() - t0, grace.expected - len(missing), grace.expected,
                 f" (not {', '.join(missing)})" if missing else "")
        self.grace_over()

    def grace_over(self) -> None:
        """After the grace period: hosts that reclaimed nothing leave the monitored list."""
        if self.paused:  # a copy's thread has the file system: store the list after it
            asyncio.get_running_loop().call_later(0.5, self.grace_over)
            return
        if self.nlm is not None and not self.failed and self.nlm.forget_idle_hosts():
            self.monitor_changed(None)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.commit_now)

    def commit_now(self) -> None:
        """Run the group commit and release the replies that waited for it (not while a copy
        runs on its worker thread: then the resume commits)."""
        self._scheduled = False
        if self.paused:
            return
        pending, self.pending = self.pending, []
        waiting, self.after_commit = self.after_commit, []
        try:
            self.fs.commit()
        except Exception:
            log.exception("commit failed on %s: stopping service of this file system", self.spec.name)
            first = not self.failed
            self.failed = True
            for conn, _ in pending:
                conn.abort()
            if first and self.on_failed is not None:
                self.on_failed()
            return
        for conn, buffers in pending:
            conn.send(buffers)
        for then in waiting:
            then()

    def start_timer(self) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if not self.failed and not self.paused and self.fs.dirty and not self._scheduled:
                self.commit_now()
            self._timer = loop.call_later(self.commit_interval, tick)

        self._timer = loop.call_later(self.commit_interval, tick)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


DEFAULT_READ_CACHE = 128 << 20
"""Bytes of file data each served file system keeps in memory (``nasblade.fs.datacache``)."""


class FileProcessor:
    """Serves file systems over NFSv3; embeddable (see the module docstring)."""

    def __init__(
        self,
        *,
        commit_interval: float = 1.0,
        open_device: Callable[[str], blockdev.BlockDevice] = devices.open_device,
        readahead: bool = True,
        writebehind: bool = True,
        grace_period: float = GRACE_PERIOD,
        grace_settle: float = GRACE_SETTLE,
        callback_portmap_port: int = 111,
        read_cache: int = DEFAULT_READ_CACHE,
    ) -> None:
        self.commit_interval = commit_interval
        self.read_cache = read_cache
        #: one read-cache budget for every file system served here (``nasblade.fs.datacache``)
        self.read_budget = datacache.Budget(read_cache)
        self.grace_period = grace_period
        self.grace_settle = grace_settle
        self.callback_portmap_port = callback_portmap_port
        self.readahead = readahead
        self.writebehind = writebehind
        self.open_device = open_device
        self.endpoints: dict[str, Endpoint] = {}
        self._dropping: set[asyncio.Task[None]] = set()

    async def add_filesystem(self, spec: FsSpec) -> dict[str, str]:
        """Open the device, mount (recovering the file system) and start the listeners.

        Returns the endpoint addresses ``{"nfs", "mount", "portmap"}`` as ``host:port``.
        """
        if spec.name in self.endpoints:
            raise ValueError(f"file system {spec.name!r} is already served")

        def mount_it() -> tuple[blockdev.BlockDevice, Volume, nsm.Monitor, dict[str, str]]:
            dev = self.open_device(spec.device)
            ra = wb = None
            try:
                # Extra connections: read-ahead and write-behind run in their own threads.
                ra = self.open_device(spec.device) if self.readahead else None
                wb = self.open_device(spec.device) if self.writebehind else None
                fsys = fsmod.FileSystem(dev, readahead=ra, writebehind=wb, cache_budget=self.read_budget)
                vol = Volume.open(spec.name, fsys, list(spec.exports))
                # a new incarnation for the clients' status monitors (nasblade.nfs.nsm)
                monitor = nsm.Monitor.loads(fsys.note(nsm.NOTE_KEY))
                reclaimers = monitor.restarted()
                if not fsys.readonly:
                    fsys.set_note(nsm.NOTE_KEY, monitor.dumps())
                    fsys.commit()
                return dev, vol, monitor, reclaimers
            except BaseException:
                for d in (dev, ra, wb):
                    if d is not None:
                        d.close()
                raise

        dev, vol, monitor, reclaimers = await asyncio.to_thread(mount_it)
        volumes = {vol.fs.fsid: vol}
        disp = Dispatcher()
        pmap = portmap.Portmap()
        ep = Endpoint(spec, vol, dev, disp, pmap, self.commit_interval,
                      callback_portmap_port=self.callback_portmap_port)
        grace = Grace(settle=self.grace_settle)
        if reclaimers:
            grace.start(time.monotonic(), self.grace_period, hosts=reclaimers)
        ep.nlm = nlm.Nlm(volumes, monitor=monitor, grace=grace, changed=ep.monitor_changed, granted=ep.lock_granted,
                         send_result=ep.send_result)
        disp.register(nfs3.Nfs3(volumes).program())
        disp.register(mount.Mount(volumes).program())
        disp.register(pmap.program())
        disp.register(ep.nlm.program())
        disp.register(nsm.Nsm(monitor, changed=ep.monitor_changed, on_reboot=ep.nlm.free_host).program())
        try:
            await self._listen(ep)
        except BaseException:
            await asyncio.to_thread(self._unmount, ep)
            raise
        ep.start_timer()
        ep.on_failed = lambda: self._drop_failed(spec.name, ep)
        self.endpoints[spec.name] = ep
        if reclaimers:
            log.info("%s: grace period of up to %.0f s for %d clients' lock reclaims (NSM state %d)",
                     spec.name, self.grace_period, len(reclaimers), monitor.state)
            ep.spawn(ep.notify_clients(reclaimers, monitor.state, self.grace_period))
            ep.spawn(ep.watch_grace(grace))
        log.info("serving %s from %s at %s", spec.name, spec.device, ep.addresses)
        return dict(ep.addresses)

    async def _listen(self, ep: Endpoint) -> None:
        loop = asyncio.get_running_loop()
        lst = ep.spec.listen

        async def serve(port: int) -> int:
            """A TCP listener and a UDP endpoint on one port number (for port 0: a free TCP port
            whose number is free over UDP too)."""
            for attempt in range(1, 9):
                srv = await loop.create_server(lambda: _Conn(ep), lst.host, port, reuse_address=True)
                bound = int(srv.sockets[0].getsockname()[1])
                try:
                    dgram, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(ep), local_addr=(lst.host, bound))
                except OSError:
                    srv.close()
                    if port or attempt == 8:
                        raise
                    continue
                ep.servers.append(srv)
                ep.datagrams.append(dgram)
                return bound
            raise AssertionError("unreachable")

        nfs_port = await serve(lst.nfs_port)
        if lst.mount_port and lst.mount_port == lst.nfs_port:
            mount_port = nfs_port
        else:
            mount_port = await serve(lst.mount_port)
        pm_port = 0
        if lst.portmap_port is not None:
            pm_port = await serve(lst.portmap_port)
        ep.bound = (nfs_port, mount_port, pm_port)
        self._advertise(ep)
        ep.addresses = {"nfs": f"{lst.host}:{nfs_port}", "mount": f"{lst.host}:{mount_port}"}
        if lst.portmap_port is not None:
            ep.addresses["portmap"] = f"{lst.host}:{pm_port}"

    @staticmethod
    def _advertise(ep: Endpoint) -> None:
        """The portmapper answers the ports the clients reach: a Service's, when it maps them
        (``listen.advertise``), else the bound ones."""
        nfs_port, mount_port, pm_port = ep.spec.listen.advertise or ep.bound
        ep.portmap.set_ports(nfs=nfs_port, mount=mount_port, portmap=pm_port,
                             also=((nlm.NLM_PROG, nlm.NLM_V4), (nsm.SM_PROG, nsm.SM_VERS)))

    @staticmethod
    def _unmount(ep: Endpoint) -> None:
        try:
            if ep.failed:
                ep.fs.abort()
            else:
                ep.fs.close()
        finally:
            ep.device.close()

    def _drop_failed(self, name: str, ep: Endpoint) -> None:
        """A file system whose commit failed is no longer served: its listeners close (its
        address is free for the blade that takes it over) and it leaves ``status()``, so the
        block processor, which watches what it handed over, gives the blade up
        (``nasblade.blockproc.core``) instead of keeping a file system nobody answers for."""
        if self.endpoints.get(name) is not ep:
            return
        task = asyncio.get_running_loop().create_task(self.remove_filesystem(name))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def set_exports(self, name: str, exports: tuple[Export, ...]) -> None:
        """Change the exports of the served file system ``name`` in place (no remount, the
        write verifier stays): ``Volume.set_exports``."""
        ep = self.endpoints[name]
        async with ep.exclusive:  # not beside a copy: the exports' paths are looked up
            await asyncio.to_thread(ep.volume.set_exports, list(exports))
        ep.spec = dataclasses.replace(ep.spec, exports=exports)
        log.info("%s: exports now %s", name, ", ".join(
            f"{e.path} to {','.join(map(str, e.clients))} ({'ro' if e.readonly else 'rw'})" for e in exports))

    async def set_listen(self, name: str, listen: Listen) -> dict[str, str]:
        """Move the served file system ``name`` to new listeners (address, ports, advertised
        ports) in place: no remount, the write verifier and the lock state stay, and the
        connections already accepted keep being served. The old listeners close first (a new
        one may reuse a port of theirs); if the new ones cannot be opened, the old ones are
        opened again and the error raised. Returns the new endpoint addresses."""
        ep = self.endpoints[name]
        if listen == ep.spec.listen:
            return dict(ep.addresses)
        old = ep.spec
        if dataclasses.replace(listen, advertise=None) == dataclasses.replace(old.listen, advertise=None):
            ep.spec = dataclasses.replace(old, listen=listen)  # only what the portmapper answers
            self._advertise(ep)
            return dict(ep.addresses)
        self._close_listeners(ep)
        ep.spec = dataclasses.replace(old, listen=listen)
        try:
            await self._listen(ep)
        except BaseException:
            self._close_listeners(ep)
            ep.spec = old
            await self._listen(ep)
            raise
        log.info("%s: now listening at %s", name, ep.addresses)
        return dict(ep.addresses)

    @staticmethod
    def _close_listeners(ep: Endpoint) -> None:
        for srv in ep.servers:
            srv.close()
        for dgram in ep.datagrams:
            dgram.close()
        ep.servers.clear()
        ep.datagrams.clear()

    async def remove_filesystem(self, name: str) -> None:
        """Stop exporting ``name``: close listeners and connections, commit, unmount."""
        ep = self.endpoints.pop(name)
        ep.closed = True
        ep.stop_timer()
        for task in list(ep.tasks):
            task.cancel()
        for srv in ep.servers:
            srv.close()
        for dgram in ep.datagrams:
            dgram.close()
        for conn in list(ep.conns):
            conn.abort()
        for srv in ep.servers:
            with contextlib.suppress(Exception):
                await srv.wait_closed()
        ep.after_commit.clear()  # no more calls to clients from a file system no longer served
        async with ep.exclusive:  # a copy under way finishes first (its thread uses the file system)
            try:
                if ep.pending and not ep.failed:
                    ep.commit_now()
            finally:  # a lost device raises on the commit: the file system is unmounted all the same
                await asyncio.to_thread(self._unmount, ep)

    # -- directory volumes: top-level directories with a quota (the CSI driver's "directory" layout)

    def _served(self, name: str) -> Endpoint:
        ep = self.endpoints.get(name)
        if ep is None:
            raise KeyError(f"{name} is not served here")
        if ep.failed:
            raise OSError(errno.EIO, f"{name} stopped serving after a failed commit")
        if ep.paused:
            raise OSError(errno.EBUSY, f"{name}: a snapshot or clone copy runs; call again")
        return ep

    async def _paused(self, ep: Endpoint, name: str, work: Callable[[], T]) -> T:
        """Run ``work`` (a point-in-time copy inside ``ep``'s file system) on a worker thread
        while the endpoint holds every request it receives, then commit and answer them in
        order. No client changes the file system while the copy is made, so it is the tree at
        one instant, and the loop stays free meanwhile: heartbeats, other file systems and the
        control API go on (a copy on the loop thread would stop the heartbeat, and the peer
        would take the blade over). The caller holds ``ep.exclusive``."""
        if ep.pending or ep.fs.dirty:
            self._commit(ep, name)  # what was answered before the copy is durable before it
        ep.paused = True
        try:
            result = await asyncio.to_thread(work)
        finally:
            ep.paused = False
            if not ep.closed and not ep.failed:
                self._commit(ep, name)
            held, ep.held = ep.held, []
            for conn, rec in held:
                ep.handle(conn, rec)
        return result

    @staticmethod
    def _directory_json(dirname: str, quota: fsmod.Quota | None) -> dict[str, Any]:
        return {"name": dirname, "quotaBytes": quota.limit_bytes if quota else None,
                "usedBytes": quota.used_bytes if quota else None, "files": quota.files if quota else None}

    @staticmethod
    def _commit(ep: Endpoint, name: str) -> None:
        """The group commit now; ``OSError`` when it failed (the endpoint then stops serving)."""
        ep.commit_now()
        if ep.failed:
            raise OSError(errno.EIO, f"{name}: the commit failed")

    def directories(self, name: str) -> list[dict[str, Any]]:
        """The directory volumes of ``name``: its top-level directories that are quota roots."""
        fs = self._served(name).fs
        quotas = {q.root: q for q in fs.quotas()}
        return [self._directory_json(e.name.decode(errors="replace"), quotas[e.ino])
                for e in fs.iter_dir(fsmod.ROOT_INO) if e.ino in quotas]

    def space(self, name: str) -> dict[str, int]:
        """The space of the shared file system ``name`` behind its directory volumes: its size
        and free bytes (FSSTAT of the root) and the sum of the quotas it has promised (quotas
        may promise more than the file system holds; what can be written is ``freeBytes``)."""
        fs = self._served(name).fs
        st = fs.fsstat()
        return {"totalBytes": st.total_bytes, "freeBytes": st.free_bytes,
                "quotaBytes": sum(q.limit_bytes for q in fs.quotas())}

    async def set_directory(self, name: str, dirname: str, *, quota_bytes: int, mode: int = 0o777,
                            source: tuple[str, str] | None = None) -> dict[str, Any]:
        """Make ``/dirname`` of ``name`` a directory volume holding at most ``quota_bytes``
        (made if missing, with ``mode``, owned by root; the quota set or changed), durable before
        it returns. Idempotent: a second call with another size resizes the volume.

        ``source`` fills a volume that does not exist yet: ``("snapshot", S)`` from snapshot
        ``S``, ``("directory", D)`` from volume ``D`` (a clone): a copy of it as it is at this
        moment (``nasblade.fs.treecopy``, made while requests wait: ``_paused``), then the quota
        is set over what was copied (a limit below it is kept; growth then fails with EDQUOT).
        ``FileNotFoundError`` when the source does not exist."""
        dirvolumes.check_name(dirname)
        if quota_bytes < 0:
            raise ValueError(f"quota {quota_bytes}: expected a byte count >= 0")
        ep = self._served(name)
        async with ep.exclusive:
            ep = self._served(name)
            fs = ep.fs
            try:
                ino = fs.lookup(fsmod.ROOT_INO, dirname.encode(), fsmod.ROOT)
            except fsmod.FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                if source is None:
                    ino = fs.mkdir(fsmod.ROOT_INO, dirname.encode(), fsmod.ROOT, mode=mode)
                else:
                    src = self._source(fs, *source)
                    started = time.monotonic()
                    ino = await self._paused(ep, name, lambda: treecopy.copy_tree(
                        fs, src, fsmod.ROOT_INO, dirname.encode()))
                    log.info("%s: /%s filled from %s %s in %.2f s", name, dirname, source[0], source[1],
                             time.monotonic() - started)
            fs.set_quota(ino, quota_bytes)
            self._commit(ep, name)
            log.info("%s: directory volume /%s holds at most %d bytes", name, dirname, quota_bytes)
            return self._directory_json(dirname, fs.quota_of(ino))

    @staticmethod
    def _source(fs: fsmod.FileSystem, kind: str, source: str) -> int:
        dirvolumes.check_name(source)
        if kind not in ("snapshot", "directory"):
            raise ValueError(f"source {kind!r}: expected snapshot or directory")
        try:
            parent = fs.lookup(fsmod.ROOT_INO, dirvolumes.SNAPSHOTS.encode(), fsmod.ROOT) if kind == "snapshot" \
                else fsmod.ROOT_INO
            return fs.lookup(parent, source.encode(), fsmod.ROOT)
        except fsmod.FsError as exc:
            if exc.errno == errno.ENOENT:
                raise FileNotFoundError(errno.ENOENT, f"no {kind} {source}") from None
            raise

    def snapshots(self, name: str) -> list[str]:
        """The snapshots of ``name``'s directory volumes, by name."""
        fs = self._served(name).fs
        try:
            area = fs.lookup(fsmod.ROOT_INO, dirvolumes.SNAPSHOTS.encode(), fsmod.ROOT)
        except fsmod.FsError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise
        return sorted(e.name.decode(errors="replace") for e in fs.iter_dir(area))

    async def snapshot_directory(self, name: str, dirname: str, snapname: str) -> dict[str, Any]:
        """Snapshot directory volume ``/dirname`` of ``name`` as ``snapname``: a copy of the tree
        at this moment (made while requests wait: ``_paused``) in ``SNAPSHOTS``, durable before
        it returns. Idempotent: a snapshot that exists is left as it is (``created`` False).
        ``FileNotFoundError`` when the volume does not exist."""
        dirvolumes.check_name(snapname)
        ep = self._served(name)
        async with ep.exclusive:
            ep = self._served(name)
            fs = ep.fs
            src = self._source(fs, "directory", dirname)
            try:
                area = fs.lookup(fsmod.ROOT_INO, dirvolumes.SNAPSHOTS.encode(), fsmod.ROOT)
            except fsmod.FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                area = fs.mkdir(fsmod.ROOT_INO, dirvolumes.SNAPSHOTS.encode(), fsmod.ROOT, mode=0o700)
            try:
                fs.lookup(area, snapname.encode(), fsmod.ROOT)
                return {"name": snapname, "directory": dirname, "created": False}
            except fsmod.FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
            started = time.monotonic()
            await self._paused(ep, name, lambda: treecopy.copy_tree(fs, src, area, snapname.encode()))
            log.info("%s: snapshot %s of directory volume /%s made in %.2f s", name, snapname, dirname,
                     time.monotonic() - started)
            return {"name": snapname, "directory": dirname, "created": True}

    async def remove_snapshot(self, name: str, snapname: str) -> bool:
        """Delete snapshot ``snapname`` of ``name``, durable before it returns; False when there
        was none."""
        dirvolumes.check_name(snapname)
        ep = self._served(name)
        async with ep.exclusive:
            ep = self._served(name)
            try:
                area = ep.fs.lookup(fsmod.ROOT_INO, dirvolumes.SNAPSHOTS.encode(), fsmod.ROOT)
                ep.fs.remove_tree(area, snapname.encode())
            except fsmod.FsError as exc:
                if exc.errno == errno.ENOENT:
                    return False
                raise
            self._commit(ep, name)
        log.info("%s: snapshot %s deleted", name, snapname)
        return True

    async def remove_directory(self, name: str, dirname: str) -> bool:
        """Delete ``/dirname`` of ``name`` and everything in it (its quota with it), durable before
        it returns; False when there was no such directory. Exports of it are not touched: their
        handles go stale, and the embedding code drops them from the spec first."""
        dirvolumes.check_name(dirname)
        ep = self._served(name)
        async with ep.exclusive:
            ep = self._served(name)
            try:
                ep.fs.lookup(fsmod.ROOT_INO, dirname.encode(), fsmod.ROOT)
            except fsmod.FsError as exc:
                if exc.errno == errno.ENOENT:
                    return False
                raise
            ep.fs.remove_tree(fsmod.ROOT_INO, dirname.encode())
            self._commit(ep, name)
        log.info("%s: directory volume /%s deleted", name, dirname)
        return True

    def regenerate_verifier(self, name: str) -> bytes:
        """Give ``name`` a new write verifier (clients resend uncommitted writes)."""
        ep = self.endpoints[name]
        ep.commit_now()
        return ep.volume.regenerate_verifier()

    def status(self) -> dict[str, Any]:
        return {
            name: {
                "endpoints": dict(ep.addresses),
                "device": ep.spec.device,
                "writeVerifier": ep.volume.write_verifier.hex(),
                "exports": [e.path for e in ep.spec.exports],
                "failed": ep.failed,
                "commits": ep.fs.commits,
                "readCache": {"capacityBytes": ep.fs.cache.capacity_bytes, "usedBytes": ep.fs.cache.used_bytes,
                              "hits": ep.fs.cache.hits, "misses": ep.fs.cache.misses},
            }
            for name, ep in self.endpoints.items()
        }

    def call_stats(self) -> dict[str, Any]:
        """The RPC calls each served file system's dispatcher executed (``Dispatcher.stats``), its
        client connections and its capacity (``sizeBytes``, ``freeBytes``, ``files``), as JSON for the block processor's metrics (``GET /v1/calls`` of
        the control socket, ``nasblade.fileproc.agent``). ``buckets`` per call: cumulative counts
        at each bound of ``latencyBuckets`` (seconds), +Inf last."""
        out: dict[str, Any] = {}
        for name, ep in sorted(self.endpoints.items()):
            calls = []
            for (program, procedure), f in sorted(ep.dispatcher.stats.calls.items()):
                calls.append({"program": program, "procedure": procedure, "count": f.count,
                              "seconds": f.seconds, "buckets": f.cumulative()})
            out[name] = {"clients": len(ep.conns), "calls": calls}
            if not ep.failed and not ep.paused:  # a copy's thread has the file system
                try:
                    st = ep.volume.fs.fsstat()  # what NFS FSSTAT answers, read on this loop as it is
                except Exception as exc:  # a figure left out, never a failed scrape
                    log.info("%s: no capacity figures for the metrics: %s", name, exc)
                else:
                    out[name].update(sizeBytes=st.total_bytes, freeBytes=st.free_bytes,
                                     files=st.total_files - st.free_files)
        return {"latencyBuckets": list(latency.BUCKETS), "fileSystems": out}

    async def close(self) -> None:
        for name in list(self.endpoints):
            await self.remove_filesystem(name)
