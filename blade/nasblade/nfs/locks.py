"""The byte-range lock table behind NLM (sans-I/O): POSIX lock semantics per file, and the grace period.

``nasblade.nfs.nlm`` (the NLM v4 program) owns one ``LockTable`` per served file system and
asks it every question; nothing here does I/O or reads a clock (callers pass ``now``).

Semantics (POSIX ``fcntl`` locks, which is what the Linux client maps both ``fcntl`` and
``flock`` onto over NLM):

- A lock is ``(owner, exclusive, start, end)`` on one file; ``end`` is exclusive and ``EOF``
  (2**64) means "to the end of the file and beyond" (NLM's length 0).
- The owner is ``(host, svid, oh)``: the client's caller name, its process id, and its opaque
  owner handle. Locks of one owner never conflict with each other; a new lock of an owner
  replaces whatever that owner held in the range (a shared range inside an exclusive one
  splits it into three), and adjacent or overlapping ranges of one owner and one type merge.
- Two locks of different owners conflict when their ranges overlap and at least one is
  exclusive.
- An unlock removes the owner's locks in the range, splitting a lock that sticks out of it.
- Blocked requests wait in a FIFO per file (``Waiter``); after an unlock, ``wake`` grants every
  waiter that no longer conflicts, in order, and returns them so the shell can send the
  GRANTED callback (and ``unlock`` them again if the client does not take the lock).
- ``free_host`` drops everything a host holds or waits for (FREE_ALL, or SM_NOTIFY when the
  client rebooted).

``ShareTable`` holds DOS share reservations (NLM ``SHARE``/``UNSHARE``, the open modes of PC
clients): an owner opens a file for some access (read, write, both) and denies some to everyone
else; a new share conflicts when its access is denied by another owner's share, or it denies
what another owner's share has. One owner's new share replaces its previous one on that file.

``Grace`` is the grace period after a start or takeover: new locks are refused
(NLM4_DENIED_GRACE_PERIOD) and only reclaims are granted, so the clients that held locks before
get them back before anyone else can take them; it ends early once every client told to
reclaim has done so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Iterable, Iterator

EOF = 1 << 64
"""The end of a lock that runs to the end of the file (NLM length 0)."""


@dataclasses.dataclass(frozen=True)
class Owner:
    host: bytes
    svid: int
    oh: bytes


@dataclasses.dataclass(frozen=True)
class Lock:
    owner: Owner
    exclusive: bool
    start: int
    end: int

    def overlaps(self, start: int, end: int) -> bool:
        return self.start < end and start < self.end

    def conflicts(self, owner: Owner, exclusive: bool, start: int, end: int) -> bool:
        return self.owner != owner and (self.exclusive or exclusive) and self.overlaps(start, end)

    @property
    def length(self) -> int:
        """The NLM length (0: to the end of the file)."""
        return 0 if self.end >= EOF else self.end - self.start


@dataclasses.dataclass(frozen=True)
class Waiter:
    """A blocked LOCK request; ``cookie`` and ``alock`` are what the GRANTED callback sends back.

    ``msg_transport`` is the transport (``"tcp"``/``"udp"``) of a request made with the
    asynchronous ``LOCK_MSG``: its grant goes out as ``GRANTED_MSG`` over that transport; empty
    for a synchronous ``LOCK`` (the ``GRANTED`` callback)."""

    owner: Owner
    exclusive: bool
    start: int
    end: int
    client: str
    cookie: bytes = b""
    alock: object = None
    msg_transport: str = ""


def span(offset: int, length: int) -> tuple[int, int]:
    """NLM ``(l_offset, l_len)`` as ``(start, end)``; a length of 0 or past 2**64 runs to ``EOF``."""
    if length == 0 or offset + length >= EOF:
        return offset, EOF
    return offset, offset + length


class LockTable:
    """Locks and waiters of one file system, keyed by a file key (see the module docstring)."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, list[Lock]] = {}
        self._waiters: dict[Hashable, list[Waiter]] = {}

    # -- questions --------------------------------------------------------------------------

    def locks(self, key: Hashable) -> list[Lock]:
        return sorted(self._locks.get(key, []), key=lambda lk: (lk.start, lk.owner.svid))

    def waiters(self, key: Hashable) -> list[Waiter]:
        return list(self._waiters.get(key, []))

    def files(self) -> Iterator[Hashable]:
        return iter(list(self._locks))

    def hosts(self) -> set[bytes]:
        """Hosts holding at least one lock."""
        return {lk.owner.host for locks in self._locks.values() for lk in locks}

    def busy_hosts(self) -> set[bytes]:
        """Hosts holding a lock or waiting for one."""
        return self.hosts() | {w.owner.host for queue in self._waiters.values() for w in queue}

    def count(self) -> int:
        return sum(len(v) for v in self._locks.values())

    def conflict(self, key: Hashable, owner: Owner, exclusive: bool, start: int, end: int) -> Lock | None:
        """The first lock of another owner that stops this request, or ``None``."""
        for lk in self._locks.get(key, []):
            if lk.conflicts(owner, exclusive, start, end):
                return lk
        return None

    # -- changes ----------------------------------------------------------------------------

    def lock(self, key: Hashable, owner: Owner, exclusive: bool, start: int, end: int) -> Lock | None:
        """Take the lock if nothing conflicts (returns ``None``); else return the conflicting lock."""
        if not start < end:
            raise ValueError(f"empty lock range [{start}, {end})")
        other = self.conflict(key, owner, exclusive, start, end)
        if other is not None:
            return other
        kept = self._cut(self._locks.get(key, []), owner, start, end)
        new = Lock(owner, exclusive, start, end)
        merged: list[Lock] = []
        for lk in kept:
            if lk.owner == owner and lk.exclusive == exclusive and lk.start <= new.end and new.start <= lk.end:
                new = Lock(owner, exclusive, min(lk.start, new.start), max(lk.end, new.end))
            else:
                merged.append(lk)
        merged.append(new)
        self._locks[key] = merged
        return None

    def unlock(self, key: Hashable, owner: Owner, start: int, end: int) -> bool:
        """Release the owner's locks in ``[start, end)``; ``True`` if anything was released."""
        locks = self._locks.get(key)
        if not locks:
            return False
        kept = self._cut(locks, owner, start, end)
        if kept == locks:
            return False
        if kept:
            self._locks[key] = kept
        else:
            del self._locks[key]
        return True

    @staticmethod
    def _cut(locks: list[Lock], owner: Owner, start: int, end: int) -> list[Lock]:
        """``locks`` without the owner's part of ``[start, end)`` (locks sticking out are split)."""
        out: list[Lock] = []
        for lk in locks:
            if lk.owner != owner or not lk.overlaps(start, end):
                out.append(lk)
                continue
            if lk.start < start:
                out.append(dataclasses.replace(lk, end=start))
            if end < lk.end:
                out.append(dataclasses.replace(lk, start=end))
        return out

    def block(self, key: Hashable, waiter: Waiter) -> None:
        """Queue a blocked request (a repeated request replaces its earlier copy)."""
        queue = self._waiters.setdefault(key, [])
        queue[:] = [w for w in queue if not _same_request(w, waiter)]
        queue.append(waiter)

    def cancel(self, key: Hashable, owner: Owner, exclusive: bool, start: int, end: int) -> bool:
        """Drop a queued request (CANCEL); ``True`` if there was one."""
        queue = self._waiters.get(key, [])
        left = [w for w in queue if not (w.owner == owner and w.exclusive == exclusive
                                         and (w.start, w.end) == (start, end))]
        if len(left) == len(queue):
            return False
        if left:
            self._waiters[key] = left
        else:
            self._waiters.pop(key, None)
        return True

    def wake(self, key: Hashable) -> list[Waiter]:
        """Grant, in queue order, every waiter on ``key`` that no longer conflicts."""
        queue = self._waiters.get(key, [])
        granted: list[Waiter] = []
        left: list[Waiter] = []
        for w in queue:
            if self.lock(key, w.owner, w.exclusive, w.start, w.end) is None:
                granted.append(w)
            else:
                left.append(w)
        if left:
            self._waiters[key] = left
        else:
            self._waiters.pop(key, None)
        return granted

    def free_host(self, host: bytes) -> list[Hashable]:
        """Drop every lock and waiter of ``host``; returns the files that changed."""
        changed: list[Hashable] = []
        for key in list(self._locks):
            kept = [lk for lk in self._locks[key] if lk.owner.host != host]
            if len(kept) != len(self._locks[key]):
                changed.append(key)
                if kept:
                    self._locks[key] = kept
                else:
                    del self._locks[key]
        for key in list(self._waiters):
            kept_w = [w for w in self._waiters[key] if w.owner.host != host]
            if kept_w:
                self._waiters[key] = kept_w
            else:
                del self._waiters[key]
        return changed


def _same_request(a: Waiter, b: Waiter) -> bool:
    return (a.owner, a.exclusive, a.start, a.end) == (b.owner, b.exclusive, b.start, b.end)


@dataclasses.dataclass
@dataclasses.dataclass(frozen=True)
class Share:
    """A share reservation: ``access`` and ``deny`` are bit sets, 1 = read, 2 = write."""

    owner: Owner
    access: int
    deny: int


class ShareTable:
    """DOS share reservations per file (see the module docstring)."""

    def __init__(self) -> None:
        self._shares: dict[Hashable, list[Share]] = {}

    def shares(self, key: Hashable) -> list[Share]:
        return list(self._shares.get(key, ()))

    def share(self, key: Hashable, share: Share) -> Share | None:
        """Take ``share`` on ``key``; the conflicting share of another owner (nothing taken), or
        ``None`` when it is taken."""
        current = self._shares.get(key, [])
        for other in current:
            if other.owner != share.owner and (share.access & other.deny or other.access & share.deny):
                return other
        self._shares[key] = [s for s in current if s.owner != share.owner] + [share]
        return None

    def unshare(self, key: Hashable, owner: Owner) -> bool:
        current = self._shares.get(key, [])
        kept = [s for s in current if s.owner != owner]
        if kept:
            self._shares[key] = kept
        else:
            self._shares.pop(key, None)
        return len(kept) != len(current)

    def free_host(self, host: bytes) -> None:
        for key in list(self._shares):
            kept = [s for s in self._shares[key] if s.owner.host != host]
            if kept:
                self._shares[key] = kept
            else:
                del self._shares[key]


class Grace:
    """The grace period: until ``until`` (a monotonic time) only reclaims get locks.

    ``start`` may name the hosts told to reclaim (the monitored list, a superset of the hosts
    that held locks: ``nasblade.nfs.nsm``). The period then ends early, once every one of them
    has reclaimed something (``reclaimed``) and no reclaim came for ``settle`` seconds: a
    client's lock manager reclaims all its locks in one pass, one after the other, so by then
    every lock the previous owner granted is back with its holder. Without names it lasts its
    full length. The full length is for the client that comes back late: its reconnects back
    off (3, 6, 12 s...) after the owner it knew went away, and a reclaim after the period is
    an ordinary request that another client's lock may already beat.
    """

    def __init__(self, *, settle: float = 5.0) -> None:
        self.until = 0.0
        self.settle = settle
        self.awaiting: set[str] = set()
        self.expected = 0
        self.last_reclaim: float | None = None

    def start(self, now: float, seconds: float, *, hosts: Iterable[str] = ()) -> None:
        self.until = now + seconds
        self.awaiting = set(hosts)
        self.expected = len(self.awaiting)
        self.last_reclaim = None

    def reclaimed(self, host: str, now: float) -> None:
        """A reclaim from ``host`` (granted or not: the host is back)."""
        if self.active(now):
            self.awaiting.discard(host)
            self.last_reclaim = now

    def end(self) -> None:
        self.until = 0.0

    def active(self, now: float) -> bool:
        if now >= self.until:
            return False
        if (self.expected and not self.awaiting and self.last_reclaim is not None
                and now - self.last_reclaim >= self.settle):
            self.until = now  # everyone is back
            return False
        return True

    def remaining(self, now: float) -> float:
        return max(0.0, self.until - now) if self.active(now) else 0.0
