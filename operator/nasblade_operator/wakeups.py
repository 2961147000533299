"""Wake-ups for the ClusterGroup daemons, shared by the two resources' index functions.

Each ClusterGroup daemon (``clustergroup/handlers.py``) registers an ``asyncio.Event`` here
and sleeps on it; the pod index (a blade pod changed) and the DiskArray index (its array
changed: version, file systems, Ready) set it. Waking from the index functions, which kopf
calls on every watch event anyway, costs no extra handler invocation or log line per event.
The index functions are ``async`` on purpose: kopf runs sync handlers in worker threads, and
``asyncio.Event.set`` must be called from the loop the daemons wait on.
"""

from __future__ import annotations

import asyncio

_events: dict[tuple[str, str], asyncio.Event] = {}
_array_of: dict[tuple[str, str], str] = {}
_groups_of: dict[tuple[str, str], set[str]] = {}  # (namespace, array) -> its groups' names


def register(namespace: str, group: str, *, array: str) -> asyncio.Event:
    """The Event the daemon of ``group`` waits on."""
    key = (namespace, group)
    _array_of[key] = array
    _groups_of.setdefault((namespace, array), set()).add(group)
    return _events.setdefault(key, asyncio.Event())


def unregister(namespace: str, group: str) -> None:
    _events.pop((namespace, group), None)
    array = _array_of.pop((namespace, group), None)
    if array is not None:
        groups = _groups_of.get((namespace, array), set())
        groups.discard(group)
        if not groups:
            _groups_of.pop((namespace, array), None)


def wake_group(namespace: str, group: str) -> None:
    ev = _events.get((namespace, group))
    if ev is not None:
        ev.set()


def wake_groups_of(namespace: str, array: str) -> None:
    for group in _groups_of.get((namespace, array), ()):
        wake_group(namespace, group)
