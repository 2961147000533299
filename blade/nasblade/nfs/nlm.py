"""NLM v4, the network lock manager (program 100021 v4, X/Open XNFS ch. 10 and RFC 1813's
nlm4 types): wire types and the program, sans-I/O over ``nasblade.nfs.locks``.

How it fits: ``nasblade.fileproc.server`` registers one ``Nlm`` per served file system with the
same dispatcher as NFS and MOUNT (so NLM answers on the file system's NFS port, over TCP and
UDP, and the portmapper maps 100021 v4 TCP and UDP there). The lock table is in memory; what survives a restart or
takeover is the list of clients (``nasblade.nfs.nsm.Monitor``), which are told to reclaim their
locks during the grace period.

Procedures served:

- ``NULL``; ``TEST`` (``NLM4_DENIED`` with the holder, or ``NLM4_GRANTED``); ``LOCK``
  (``NLM4_GRANTED``; ``NLM4_DENIED`` for a non-blocking request that conflicts; a blocking one
  is queued and answered ``NLM4_BLOCKED``, and the shell sends the client's lock manager the
  ``GRANTED`` callback when the lock was taken for it; the Linux client also polls again every
  30 s); ``CANCEL`` (drops a queued request); ``UNLOCK``; ``FREE_ALL`` (a client's locks).
- During the grace period ``TEST`` and ``LOCK`` answer ``NLM4_DENIED_GRACE_PERIOD`` unless the
  request is a reclaim; a reclaim after the grace period is an ordinary request. The period
  ends early once every monitored host has reclaimed (``locks.Grace``).
- A handle that is not a live file of this file system: ``NLM4_STALE_FH``; a client outside the
  export's allow-list: ``NLM4_DENIED``; a LOCK on a read-only export: ``NLM4_ROFS``.
- ``SHARE``/``UNSHARE`` (DOS share reservations, ``locks.ShareTable``) and ``NM_LOCK`` (a
  non-blocking lock for a client without a status monitor): the PC clients' procedures; their
  hosts are not monitored (they run no statd to be told), and a ``SHARE`` during the grace
  period is refused unless it is a reclaim.
- The asynchronous procedures (X/Open XNFS: procedures 6 to 15): ``TEST_MSG``, ``LOCK_MSG``,
  ``CANCEL_MSG`` and ``UNLOCK_MSG`` take the arguments of their synchronous forms and do the same
  thing under the same rules (grace period, STALE_FH, ROFS, allow-list); the call gets a void
  reply at once (as Linux's lockd answers), and the result goes back as a one-way call to the
  client's lock manager: ``TEST_RES`` (``nlm4_testres``) or ``LOCK_RES``/``CANCEL_RES``/
  ``UNLOCK_RES`` (``nlm4_res``), with the call's cookie, over the transport the ``_MSG`` came
  over (``send_result``; the shell, ``nasblade.fileproc.server``, finds the client's NLM through
  its portmapper and sends it; a result whose lock changed the monitored list waits for the
  commit that stores it, like a synchronous reply). A replayed ``_MSG`` (duplicate request
  cache) gets its void reply again, not a second result. A ``LOCK_MSG`` that queues answers
  ``LOCK_RES(NLM4_BLOCKED)``, and when the lock is taken for it the client gets ``GRANTED_MSG``
  (one-way, our own cookie) instead of ``GRANTED``; its ``GRANTED_RES`` with that cookie
  confirms the lock (``NLM4_GRANTED``) or gives it up (anything else), as a refused ``GRANTED``
  does; no ``GRANTED_RES`` at all leaves the lock with the client.
- ``TEST_RES``, ``LOCK_RES``, ``CANCEL_RES``, ``UNLOCK_RES`` and ``GRANTED_MSG`` sent to the
  server (client-side procedures: the server makes no asynchronous calls that would be
  answered so) get a void reply and are ignored.
- Not offered (PROC_UNAVAIL): ``GRANTED`` (a client-side procedure).

A granted lock adds its host to the monitored list; if that changed the list, the reply waits
for the group commit that stores it (``call.needs_commit``), so a client never holds a lock the
next owner would not ask it to reclaim.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import itertools
import os
import time
from collections.abc import Callable, Hashable
from typing import Annotated, TypeAlias

from nasblade.nfs import handles
from nasblade.nfs.locks import EOF, Grace, Lock, LockTable, Owner, Share, ShareTable, Waiter, span
from nasblade.nfs.nsm import Monitor
from nasblade.nfs.volume import Volume
from nasblade.rpc import xdr
from nasblade.rpc.dispatch import Call, Procedure, Program

NLM_PROG = 100021
NLM_V4 = 4
LM_MAXSTRLEN = 1024
MAXNETOBJ_SZ = 1024
PROC_GRANTED = 5
PROC_GRANTED_MSG = 10
PROC_TEST_RES = 11
PROC_LOCK_RES = 12
PROC_CANCEL_RES = 13
PROC_UNLOCK_RES = 14
MAX_MSG_OFFERS = 4096
"""Outstanding ``GRANTED_MSG`` cookies remembered for their ``GRANTED_RES`` (the oldest go first)."""


NETOBJ = xdr.Opaque(MAXNETOBJ_SZ)
Netobj: TypeAlias = Annotated[bytes, NETOBJ]
CallerName: TypeAlias = Annotated[bytes, xdr.String(LM_MAXSTRLEN)]


class Stat(enum.IntEnum):
    GRANTED = 0
    DENIED = 1
    DENIED_NOLOCKS = 2
    BLOCKED = 3
    DENIED_GRACE_PERIOD = 4
    DEADLCK = 5
    ROFS = 6
    STALE_FH = 7
    FBIG = 8
    FAILED = 9


@dataclasses.dataclass
class Holder:
    exclusive: bool
    svid: xdr.I32
    oh: Netobj
    l_offset: xdr.U64
    l_len: xdr.U64


@dataclasses.dataclass
class Alock:
    caller_name: CallerName
    fh: Netobj
    oh: Netobj
    svid: xdr.I32
    l_offset: xdr.U64
    l_len: xdr.U64


@dataclasses.dataclass
class LockArgs:
    cookie: Netobj
    block: bool
    exclusive: bool
    alock: Alock
    reclaim: bool
    state: xdr.I32


@dataclasses.dataclass
class CancArgs:
    cookie: Netobj
    block: bool
    exclusive: bool
    alock: Alock


@dataclasses.dataclass
class TestArgs:
    cookie: Netobj
    exclusive: bool
    alock: Alock


@dataclasses.dataclass
class UnlockArgs:
    cookie: Netobj
    alock: Alock


STATS = xdr.Enum([int(s) for s in Stat])


@dataclasses.dataclass
class Res:
    cookie: Netobj
    stat: Annotated[int, STATS]


TEST_RPLY = xdr.Union({Stat.DENIED: xdr.struct(Holder)}, default=xdr.Void)


@dataclasses.dataclass
class TestRes:
    cookie: Netobj
    test_stat: Annotated[tuple[int, Holder | None], TEST_RPLY]


class ShareMode(enum.IntEnum):
    """``fsh4_mode``: what the share denies others (deny none, read, write, read and write)."""

    DN = 0
    DR = 1
    DW = 2
    DRW = 3


class ShareAccess(enum.IntEnum):
    """``fsh4_access``: what the share opens the file for."""

    NONE = 0
    R = 1
    W = 2
    RW = 3


@dataclasses.dataclass
class NlmShare:
    caller_name: CallerName
    fh: Netobj
    oh: Netobj
    mode: Annotated[int, xdr.Enum([int(m) for m in ShareMode])]
    access: Annotated[int, xdr.Enum([int(a) for a in ShareAccess])]


@dataclasses.dataclass
class ShareArgs:
    cookie: Netobj
    share: NlmShare
    reclaim: bool


@dataclasses.dataclass
class ShareRes:
    cookie: Netobj
    stat: Annotated[int, STATS]
    sequence: xdr.I32


@dataclasses.dataclass
class NotifyArgs:
    name: CallerName
    state: xdr.I32


HOLDER = xdr.struct(Holder)
ALOCK = xdr.struct(Alock)
LOCK_ARGS = xdr.struct(LockArgs)
CANC_ARGS = xdr.struct(CancArgs)
TEST_ARGS = xdr.struct(TestArgs)
UNLOCK_ARGS = xdr.struct(UnlockArgs)
RES = xdr.struct(Res)
TEST_RES = xdr.struct(TestRes)
NOTIFY_ARGS = xdr.struct(NotifyArgs)
SHARE_ARGS = xdr.struct(ShareArgs)
SHARE_RES = xdr.struct(ShareRes)

FileKey = tuple[int, int]


class _Refused(Exception):
    def __init__(self, stat: Stat) -> None:
        self.stat = stat


def holder(lk: Lock) -> Holder:
    return Holder(lk.exclusive, lk.owner.svid, lk.owner.oh, lk.start, lk.length)


def owner_of(a: Alock) -> Owner:
    return Owner(a.caller_name, a.svid, a.oh)


class Nlm:
    """The NLM v4 program for the volumes of one listener (see the module docstring).

    ``changed(call)`` is called when the monitored list changed (the shell stores it);
    ``granted(key, waiters)`` when queued requests were granted (the shell sends GRANTED, or
    GRANTED_MSG with a cookie from ``msg_offer`` to a waiter that asked with ``LOCK_MSG``);
    ``send_result(call, procedure, args)`` when a ``*_MSG`` call's result must be sent to the
    caller as the one-way call ``procedure`` (``TEST_RES``...) with the encoded ``args``.
    """

    def __init__(self, volumes: dict[int, Volume], *, monitor: Monitor | None = None,
                 grace: Grace | None = None, clock: Callable[[], float] = time.monotonic,
                 changed: Callable[[Call], None] | None = None,
                 granted: Callable[[Hashable, list[Waiter]], None] | None = None,
                 send_result: Callable[[Call, int, bytes], None] | None = None) -> None:
        self.volumes = volumes
        self.table = LockTable()
        self.shares = ShareTable()
        self.monitor = monitor if monitor is not None else Monitor()
        self.grace = grace if grace is not None else Grace()
        self.clock = clock
        self.changed = changed or (lambda call: None)
        self.granted = granted or (lambda key, waiters: None)
        self.send_result = send_result or (lambda call, proc, args: None)
        self.offered: set[tuple[Hashable, Owner, bool, int, int]] = set()
        """Locks taken for queued requests whose GRANTED callback the client has not answered."""
        self.msg_offers: collections.OrderedDict[bytes, tuple[Hashable, Waiter]] = collections.OrderedDict()
        """``GRANTED_MSG`` cookie → the offer it made, until the client's ``GRANTED_RES``."""
        self._cookies = itertools.count(int.from_bytes(os.urandom(4), "big") << 16)

    # -- helpers ----------------------------------------------------------------------------

    def _file(self, call: Call, fh: bytes, *, write: bool = False) -> FileKey:
        fsid = handles.peek_fsid(fh)
        vol = self.volumes.get(fsid) if fsid is not None else None
        if vol is None:
            raise _Refused(Stat.STALE_FH)
        h = handles.decode(fh, vol.fs.secret)
        if h is None:
            raise _Refused(Stat.STALE_FH)
        export = vol.exports.get(h.export_id)
        if export is None or vol.fs.generation(h.ino) != h.gen:
            raise _Refused(Stat.STALE_FH)
        if not export.allows(call.client):
            raise _Refused(Stat.DENIED)
        if write and export.readonly:
            raise _Refused(Stat.ROFS)
        return (h.fsid, h.ino)

    def in_grace(self) -> bool:
        return self.grace.active(self.clock())

    def _wake(self, key: Hashable) -> None:
        woken = self.table.wake(key)
        for w in woken:
            self.offered.add((key, w.owner, w.exclusive, w.start, w.end))
        if woken:
            self.granted(key, woken)

    def _monitor(self, call: Call, host: bytes) -> None:
        if self.monitor.add(host, call.client):
            self.changed(call)

    def forget_idle_hosts(self, call: Call | None = None) -> bool:
        """Outside the grace period, drop monitored hosts that hold and wait for nothing."""
        if self.in_grace():
            return False
        if self.monitor.keep_only(self.table.busy_hosts()):
            if call is not None:
                self.changed(call)
            return True
        return False

    def confirm(self, key: Hashable, waiter: Waiter) -> None:
        """The client took the lock the GRANTED callback offered."""
        self.offered.discard((key, waiter.owner, waiter.exclusive, waiter.start, waiter.end))

    def release(self, key: Hashable, waiter: Waiter) -> None:
        """The client did not take a lock offered by callback (and has not asked for it again
        since): give it up."""
        offer = (key, waiter.owner, waiter.exclusive, waiter.start, waiter.end)
        if offer not in self.offered:
            return
        self.offered.discard(offer)
        if self.table.unlock(key, waiter.owner, waiter.start, waiter.end):
            self._wake(key)

    def msg_offer(self, key: Hashable, waiter: Waiter) -> bytes:
        """A new cookie for the ``GRANTED_MSG`` that offers ``waiter`` its lock; the client's
        ``GRANTED_RES`` names it (``granted_res``)."""
        cookie = (next(self._cookies) & (1 << 64) - 1).to_bytes(8, "big")
        self.msg_offers[cookie] = (key, waiter)
        while len(self.msg_offers) > MAX_MSG_OFFERS:
            self.msg_offers.popitem(last=False)
        return cookie

    def free_host(self, host: bytes) -> None:
        self.shares.free_host(host)
        for cookie, (_, w) in list(self.msg_offers.items()):
            if w.owner.host == host:
                del self.msg_offers[cookie]
        for key in self.table.free_host(host):
            self._wake(key)

    # -- procedures -------------------------------------------------------------------------

    def null(self, call: Call, args: None) -> None:
        return None

    def test(self, call: Call, args: TestArgs) -> TestRes:
        try:
            key = self._file(call, args.alock.fh)
        except _Refused as r:
            return TestRes(args.cookie, (r.stat, None))
        if self.in_grace():
            return TestRes(args.cookie, (Stat.DENIED_GRACE_PERIOD, None))
        start, end = span(args.alock.l_offset, args.alock.l_len)
        other = self.table.conflict(key, owner_of(args.alock), args.exclusive, start, end)
        if other is None:
            return TestRes(args.cookie, (Stat.GRANTED, None))
        return TestRes(args.cookie, (Stat.DENIED, holder(other)))

    def _lockable(self, call: Call, args: LockArgs) -> tuple[FileKey, int, int] | Res:
        """What ``LOCK`` and ``NM_LOCK`` check first: the handle, the grace period, the range;
        ``(file, start, end)`` or the refusal."""
        a = args.alock
        if args.reclaim:
            self.grace.reclaimed(a.caller_name.decode("latin-1"), self.clock())  # the monitor's key
        try:
            key = self._file(call, a.fh, write=args.exclusive)
        except _Refused as r:
            return Res(args.cookie, r.stat)
        if self.in_grace() and not args.reclaim:
            return Res(args.cookie, Stat.DENIED_GRACE_PERIOD)
        start, end = span(a.l_offset, a.l_len)
        if start >= EOF:
            return Res(args.cookie, Stat.FBIG)
        return key, start, end

    def lock(self, call: Call, args: LockArgs) -> Res:
        return self._lock(call, args, by_msg=False)

    def _lock(self, call: Call, args: LockArgs, *, by_msg: bool) -> Res:
        a = args.alock
        checked = self._lockable(call, args)
        if isinstance(checked, Res):
            return checked
        key, start, end = checked
        owner = owner_of(a)
        if self.table.lock(key, owner, args.exclusive, start, end) is None:
            self.table.cancel(key, owner, args.exclusive, start, end)  # a poll of a queued request
            self.offered.discard((key, owner, args.exclusive, start, end))
            self._monitor(call, a.caller_name)
            return Res(args.cookie, Stat.GRANTED)
        if not args.block:
            return Res(args.cookie, Stat.DENIED)
        self.table.block(key, Waiter(owner, args.exclusive, start, end, call.client, args.cookie, a,
                                     msg_transport=call.transport if by_msg else ""))
        self._monitor(call, a.caller_name)
        return Res(args.cookie, Stat.BLOCKED)

    def cancel(self, call: Call, args: CancArgs) -> Res:
        try:
            key = self._file(call, args.alock.fh)
        except _Refused as r:
            return Res(args.cookie, r.stat)
        start, end = span(args.alock.l_offset, args.alock.l_len)
        found = self.table.cancel(key, owner_of(args.alock), args.exclusive, start, end)
        return Res(args.cookie, Stat.GRANTED if found else Stat.DENIED)

    def unlock(self, call: Call, args: UnlockArgs) -> Res:
        try:
            key = self._file(call, args.alock.fh)
        except _Refused as r:
            return Res(args.cookie, r.stat)
        start, end = span(args.alock.l_offset, args.alock.l_len)
        owner = owner_of(args.alock)
        if self.table.unlock(key, owner, start, end):
            self._wake(key)
            if (not self.in_grace() and owner.host not in self.table.busy_hosts()
                    and self.monitor.remove(owner.host)):
                self.changed(call)  # nothing left to reclaim after a restart
        return Res(args.cookie, Stat.GRANTED)

    def nm_lock(self, call: Call, args: LockArgs) -> Res:
        """``NM_LOCK``: a lock for a client that runs no status monitor (nothing to notify after
        a restart, so its host is not monitored); it never blocks (X/Open: ``block`` must be
        false, a blocked request could never be granted by callback)."""
        checked = self._lockable(call, args)
        if isinstance(checked, Res):
            return checked
        key, start, end = checked
        if self.table.lock(key, owner_of(args.alock), args.exclusive, start, end) is None:
            return Res(args.cookie, Stat.GRANTED)
        return Res(args.cookie, Stat.DENIED)

    def share(self, call: Call, args: ShareArgs) -> ShareRes:
        """``SHARE``: a DOS share reservation (``locks.ShareTable``); like ``NM_LOCK`` it is for
        PC clients, whose hosts are not monitored."""
        s = args.share
        try:
            key = self._file(call, s.fh, write=bool(s.access & ShareAccess.W))
        except _Refused as r:
            return ShareRes(args.cookie, r.stat, 0)
        if self.in_grace() and not args.reclaim:
            return ShareRes(args.cookie, Stat.DENIED_GRACE_PERIOD, 0)
        taken = self.shares.share(key, Share(Owner(s.caller_name, 0, s.oh), s.access, s.mode))
        return ShareRes(args.cookie, Stat.GRANTED if taken is None else Stat.DENIED, 0)

    def unshare(self, call: Call, args: ShareArgs) -> ShareRes:
        s = args.share
        try:
            key = self._file(call, s.fh)
        except _Refused as r:
            return ShareRes(args.cookie, r.stat, 0)
        self.shares.unshare(key, Owner(s.caller_name, 0, s.oh))
        return ShareRes(args.cookie, Stat.GRANTED, 0)

    def free_all(self, call: Call, args: NotifyArgs) -> None:
        self.free_host(args.name)
        if self.monitor.remove(args.name):
            self.changed(call)

    # -- the asynchronous procedures (see the module docstring) ------------------------------

    def test_msg(self, call: Call, args: TestArgs) -> None:
        self.send_result(call, PROC_TEST_RES, TEST_RES.encode(self.test(call, args)))

    def lock_msg(self, call: Call, args: LockArgs) -> None:
        self.send_result(call, PROC_LOCK_RES, RES.encode(self._lock(call, args, by_msg=True)))

    def cancel_msg(self, call: Call, args: CancArgs) -> None:
        self.send_result(call, PROC_CANCEL_RES, RES.encode(self.cancel(call, args)))

    def unlock_msg(self, call: Call, args: UnlockArgs) -> None:
        self.send_result(call, PROC_UNLOCK_RES, RES.encode(self.unlock(call, args)))

    def granted_res(self, call: Call, args: Res) -> None:
        """The client's answer to our ``GRANTED_MSG``: keep the lock or give it up. Only the
        host the offer went to can answer it."""
        offer = self.msg_offers.get(args.cookie)
        if offer is None or offer[1].client != call.client:
            return
        del self.msg_offers[args.cookie]
        key, waiter = offer
        if args.stat == Stat.GRANTED:
            self.confirm(key, waiter)
        else:
            self.release(key, waiter)

    def ignored(self, call: Call, args: object) -> None:
        """A client-side procedure sent to the server: accepted, nothing to do."""
        return None

    def program(self) -> Program:
        P = Procedure
        procs = {
            0: P("NLM4_NULL", xdr.Void, xdr.Void, self.null),
            1: P("NLM4_TEST", TEST_ARGS, TEST_RES, self.test),
            2: P("NLM4_LOCK", LOCK_ARGS, RES, self.lock, cached=True),
            3: P("NLM4_CANCEL", CANC_ARGS, RES, self.cancel, cached=True),
            4: P("NLM4_UNLOCK", UNLOCK_ARGS, RES, self.unlock, cached=True),
            6: P("NLM4_TEST_MSG", TEST_ARGS, xdr.Void, self.test_msg),
            7: P("NLM4_LOCK_MSG", LOCK_ARGS, xdr.Void, self.lock_msg, cached=True),
            8: P("NLM4_CANCEL_MSG", CANC_ARGS, xdr.Void, self.cancel_msg, cached=True),
            9: P("NLM4_UNLOCK_MSG", UNLOCK_ARGS, xdr.Void, self.unlock_msg, cached=True),
            10: P("NLM4_GRANTED_MSG", TEST_ARGS, xdr.Void, self.ignored),
            11: P("NLM4_TEST_RES", TEST_RES, xdr.Void, self.ignored),
            12: P("NLM4_LOCK_RES", RES, xdr.Void, self.ignored),
            13: P("NLM4_CANCEL_RES", RES, xdr.Void, self.ignored),
            14: P("NLM4_UNLOCK_RES", RES, xdr.Void, self.ignored),
            15: P("NLM4_GRANTED_RES", RES, xdr.Void, self.granted_res, cached=True),
            20: P("NLM4_SHARE", SHARE_ARGS, SHARE_RES, self.share, cached=True),
            21: P("NLM4_UNSHARE", SHARE_ARGS, SHARE_RES, self.unshare, cached=True),
            22: P("NLM4_NM_LOCK", LOCK_ARGS, RES, self.nm_lock, cached=True),
            23: P("NLM4_FREE_ALL", NOTIFY_ARGS, xdr.Void, self.free_all, cached=True),
        }
        return Program(NLM_PROG, {NLM_V4: procs}, name="nlm")
