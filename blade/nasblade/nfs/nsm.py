"""NSM, the network status monitor (program 100024 v1, X/Open XNFS ch. 11): wire types, the
monitored-host record that survives a takeover, and the server's NSM program (sans-I/O).

How it fits: the lock manager (``nasblade.nfs.nlm``) adds every host it grants a lock to the
``Monitor`` (the server's list of hosts that must be told when the server restarts), and drops
hosts that hold nothing any more. The record ``{"state": N, "clients": {name: address}}`` is kept
in the file system's own metadata (``FileSystem.note`` key ``nsm``), written in the same group
commit as the NLM reply that changed it, so whichever blade mounts the file system next (a
restart of the file processor, or the peer after a takeover) reads the same list.
``nasblade.fileproc.server`` does the rest: on mount it calls ``Monitor.restarted`` (the state
number goes up by two, staying odd), starts the grace period when the list is not empty, and
sends SM_NOTIFY (``NOTIFY`` with our name and new state) to each listed host's statd, found
through that host's portmapper. The clients' statd tells their lock manager, which reclaims its
locks during the grace period.

The program answers:

- ``STAT``: ``stat_succ`` and our state number.
- ``MON`` / ``UNMON`` / ``UNMON_ALL``: add or remove ``mon_name`` (from the caller's address)
  in the same monitored list; there is no local lock manager to call back, so ``my_id`` is
  accepted and not used.
- ``NOTIFY``: a client rebooted: its locks and waiters are dropped (``on_reboot``), and it
  leaves the list.
- ``SIMU_CRASH`` is not offered (PROC_UNAVAIL).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeAlias

from nasblade.rpc import xdr
from nasblade.rpc.dispatch import Call, Procedure, Program

SM_PROG = 100024
SM_VERS = 1
SM_MAXSTRLEN = 1024
STAT_SUCC = 0
STAT_FAIL = 1
PROC_NOTIFY = 6
NOTE_KEY = "nsm"


NAME = xdr.String(SM_MAXSTRLEN)
Name: TypeAlias = Annotated[bytes, NAME]


@dataclasses.dataclass
class SmName:
    mon_name: Name


@dataclasses.dataclass
class MyId:
    my_name: Name
    my_prog: xdr.I32
    my_vers: xdr.I32
    my_proc: xdr.I32


@dataclasses.dataclass
class MonId:
    mon_name: Name
    my_id: MyId


@dataclasses.dataclass
class Mon:
    mon_id: MonId
    priv: Annotated[bytes, xdr.FixedOpaque(16)]


@dataclasses.dataclass
class StatChge:
    mon_name: Name
    state: xdr.I32


@dataclasses.dataclass
class SmStatRes:
    res_stat: Annotated[int, xdr.Enum([STAT_SUCC, STAT_FAIL])]
    state: xdr.I32


SM_NAME = xdr.struct(SmName)
MY_ID = xdr.struct(MyId)
MON_ID = xdr.struct(MonId)
MON = xdr.struct(Mon)
STAT_CHGE = xdr.struct(StatChge)
SM_STAT_RES = xdr.struct(SmStatRes)
SM_STAT = xdr.Int


def _text(name: bytes) -> str:
    return name.decode("latin-1")


@dataclasses.dataclass
class Monitor:
    """The monitored hosts and our state number (see the module docstring)."""

    state: int = 1
    clients: dict[str, str] = dataclasses.field(default_factory=dict)

    def dumps(self) -> str:
        return json.dumps({"state": self.state, "clients": self.clients}, sort_keys=True)

    @classmethod
    def loads(cls, text: str | None) -> Monitor:
        if not text:
            return cls()
        try:
            raw: Any = json.loads(text)
        except ValueError:
            return cls()  # unreadable: nobody to notify, no grace period (better than no mount)
        state = raw.get("state", 1) if isinstance(raw, dict) else 1
        clients = raw.get("clients", {}) if isinstance(raw, dict) else {}
        if not isinstance(state, int) or not isinstance(clients, dict):
            return cls()
        return cls(state, {str(k): str(v) for k, v in clients.items()})

    def restarted(self) -> dict[str, str]:
        """A new incarnation: the state number moves to the next odd value; returns the hosts
        to notify (the list is kept: they stay monitored until they reclaim or give up)."""
        self.state = (self.state + 2) | 1
        if self.state > 0x7FFFFFFF:
            self.state = 1
        return dict(self.clients)

    def add(self, name: bytes, address: str) -> bool:
        key = _text(name)
        if self.clients.get(key) == address:
            return False
        self.clients[key] = address
        return True

    def remove(self, name: bytes) -> bool:
        return self.clients.pop(_text(name), None) is not None

    def keep_only(self, names: set[bytes]) -> bool:
        keep = {_text(n) for n in names}
        drop = [k for k in self.clients if k not in keep]
        for k in drop:
            del self.clients[k]
        return bool(drop)


class Nsm:
    """The NSM v1 program over a ``Monitor``.

    ``changed`` is called (with the call) after the monitored list changed, so the shell can
    store it; ``on_reboot(name)`` when a monitored host says it rebooted.
    """

    def __init__(self, monitor: Monitor, *, changed: Callable[[Call], None],
                 on_reboot: Callable[[bytes], None]) -> None:
        self.monitor = monitor
        self.changed = changed
        self.on_reboot = on_reboot

    def null(self, call: Call, args: None) -> None:
        return None

    def stat(self, call: Call, args: SmName) -> SmStatRes:
        return SmStatRes(STAT_SUCC, self.monitor.state)

    def mon(self, call: Call, args: Mon) -> SmStatRes:
        if self.monitor.add(args.mon_id.mon_name, call.client):
            self.changed(call)
        return SmStatRes(STAT_SUCC, self.monitor.state)

    def unmon(self, call: Call, args: MonId) -> int:
        if self.monitor.remove(args.mon_name):
            self.changed(call)
        return self.monitor.state

    def unmon_all(self, call: Call, args: MyId) -> int:
        if self.monitor.clients:
            self.monitor.clients.clear()
            self.changed(call)
        return self.monitor.state

    def notify(self, call: Call, args: StatChge) -> None:
        self.on_reboot(args.mon_name)
        if self.monitor.remove(args.mon_name):
            self.changed(call)

    def program(self) -> Program:
        P = Procedure
        procs = {
            0: P("SM_NULL", xdr.Void, xdr.Void, self.null),
            1: P("SM_STAT", SM_NAME, SM_STAT_RES, self.stat),
            2: P("SM_MON", MON, SM_STAT_RES, self.mon, cached=True),
            3: P("SM_UNMON", MON_ID, SM_STAT, self.unmon, cached=True),
            4: P("SM_UNMON_ALL", MY_ID, SM_STAT, self.unmon_all, cached=True),
            6: P("SM_NOTIFY", STAT_CHGE, xdr.Void, self.notify, cached=True),
        }
        return Program(SM_PROG, {SM_VERS: procs}, name="nsm")
