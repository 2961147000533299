"""Wake-ups for the ClusterGroup daemons, set by the two resources' index functions.

Each ClusterGroup daemon (``clustergroup/daemon.py``) registers an ``asyncio.Event`` in the
operator's ``Wakeups`` (``state.OperatorState.wakeups``) and sleeps on it; the pod and Service
indexes and the group index (``clustergroup/indexes.py``: a blade pod, an NFS Service or a
request annotation changed) and the DiskArray index (``diskarray/handlers.py``: its array
changed in a way a group acts on) set it. Waking from the index functions, which kopf calls on
every watch event anyway, costs no extra handler invocation or log line per event. The index
functions are ``async`` on purpose: kopf runs sync handlers in worker threads, and
``asyncio.Event.set`` must be called from the loop the daemons wait on. A daemon unregisters
when it exits, so the tables hold only running daemons.
"""

from __future__ import annotations

import asyncio


class Wakeups:
    """(namespace, group) -> the Event its daemon waits on, and which groups each array has."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, str], asyncio.Event] = {}
        self._array_of: dict[tuple[str, str], str] = {}
        self._groups_of: dict[tuple[str, str], set[str]] = {}  # (namespace, array) -> its groups' names

    def register(self, namespace: str, group: str, *, array: str) -> asyncio.Event:
        """The Event the daemon of ``group`` waits on."""
        key = (namespace, group)
        self._array_of[key] = array
        self._groups_of.setdefault((namespace, array), set()).add(group)
        return self._events.setdefault(key, asyncio.Event())

    def unregister(self, namespace: str, group: str) -> None:
        self._events.pop((namespace, group), None)
        array = self._array_of.pop((namespace, group), None)
        if array is not None:
            groups = self._groups_of.get((namespace, array), set())
            groups.discard(group)
            if not groups:
                self._groups_of.pop((namespace, array), None)

    def wake_group(self, namespace: str, group: str) -> None:
        ev = self._events.get((namespace, group))
        if ev is not None:
            ev.set()

    def wake_groups_of(self, namespace: str, array: str) -> None:
        for group in self._groups_of.get((namespace, array), ()):
            self.wake_group(namespace, group)
