"""The operator's runtime state: one object, made at start-up, handed to every handler.

``handlers.configure`` (the ``@kopf.on.startup`` handler) creates an ``OperatorState`` and
puts it in kopf's ``memo``; kopf passes ``memo`` to every handler, index function, timer and
daemon, and ``of(memo)`` gets the state back. ``handlers.shutdown`` closes it. Nothing of it
lives at module level, so an operator restarted in the same process (the tier-1 tests run
several) starts empty, and a test that needs a piece of it makes its own object.

What is in it: the one HTTP session holder for controllers and blades (``sessions``, used
by ``arrayapi`` and ``bladeapi``), the Kubernetes client (``kube``), the arrays' control tokens,
per-key locks that drop their key once free (``KeyedLocks``), the daemons' wake-ups
(``wakeups``) and the small per-object tables of the DiskArray and ClusterGroup handlers.
Every per-object table is keyed by the object and emptied by that object's delete handler
(``forget_array``, ``forget_group``) or daemon exit, so none grows with every object ever seen.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import shutil
import time
from collections.abc import AsyncIterator, Hashable
from pathlib import Path
from typing import Any

from nasblade_operator import arrayapi, kube, naming, nbdtls, sessions, wakeups

#: seconds between re-reads of an array's CA bundle for the HTTPS trust (a rotated CA is
#: trusted by then at the latest; this process's own rotations force it at once)
TRUST_REFRESH = 300.0


class KeyedLocks:
    """One ``asyncio.Lock`` per key while someone holds or waits for it; the key is dropped
    when the last user leaves, so the table holds only the keys in use."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._users: collections.Counter[Hashable] = collections.Counter()

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key]
                del self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)


@dataclasses.dataclass
class OperatorState:
    """Everything the operator keeps in memory between handler calls (none of it is the
    source of truth: the API server and the controllers are)."""

    kube: kube.Kube
    http: sessions.Sessions = dataclasses.field(default_factory=sessions.Sessions)
    #: (namespace, DiskArray) -> its control token (read from or written to its Secret once).
    tokens: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: (namespace, DiskArray): portion claims on one array, one at a time in this process.
    claim_locks: KeyedLocks = dataclasses.field(default_factory=KeyedLocks)
    #: (NBD endpoint, LU): one writer per LU (formatting, program seeding).
    lu_locks: KeyedLocks = dataclasses.field(default_factory=KeyedLocks)
    wakeups: wakeups.Wakeups = dataclasses.field(default_factory=wakeups.Wakeups)
    #: DiskArray uid -> the generation whose child objects this process has ensured.
    ensured: dict[str, int] = dataclasses.field(default_factory=dict)
    #: (namespace, DiskArray) -> the part of it its ClusterGroups act on, as last indexed.
    group_views: dict[tuple[str, str], tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    #: (namespace, DiskArray) -> set when its controller pod becomes Ready (a reconcile waits on it).
    controller_waits: dict[tuple[str, str], asyncio.Event] = dataclasses.field(default_factory=dict)
    #: (namespace, DiskArray) -> a private directory holding its NBD admin certificate.
    admin_dirs: dict[tuple[str, str], Path] = dataclasses.field(default_factory=dict)
    #: (namespace, ClusterGroup) -> the portion its status showed at the last event.
    portions_seen: dict[tuple[str, str], int] = dataclasses.field(default_factory=dict)

    #: (namespace, DiskArray) -> the operator's token for its blades' APIs (``operator_token``)
    operator_tokens: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    #: (namespace, DiskArray) -> monotonic time of its next certificate check
    cert_checks: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)
    #: (namespace, DiskArray) -> when its CA bundle was last loaded into ``http``'s trust
    trusted: dict[tuple[str, str], float] = dataclasses.field(default_factory=dict)

    async def trust(self, namespace: str, array: str, *, force: bool = False) -> None:
        """Trust ``array``'s CAs for HTTPS (its CA Secret read the first time, again every
        ``TRUST_REFRESH`` seconds or when ``force``d: a CA rotation adds a CA); nothing while
        the Secret does not exist yet (calls then fail verification and are retried)."""
        key = (namespace, array)
        last = self.trusted.get(key)
        if not force and last is not None and time.monotonic() - last < TRUST_REFRESH:
            return
        bundle = await nbdtls.trust_bundle(self.kube, array=array, namespace=namespace)
        if bundle is not None:
            self.http.trust(bundle)
            self.trusted[key] = time.monotonic()

    async def token(self, namespace: str, array: str) -> str:
        """An array's control token, read from its Secret the first time; ``ArrayUnavailable``
        while the Secret does not exist yet (the DiskArray's reconcile makes it). The array's
        CAs are trusted for HTTPS from then on (``trust``)."""
        await self.trust(namespace, array)
        token = self.tokens.get((namespace, array))
        if token is None:
            secret = await self.kube.get("Secret", naming.token_secret_name(array), namespace=namespace)
            if secret is None:
                raise arrayapi.ArrayUnavailable(f"the token Secret of DiskArray {array} does not exist yet")
            token = base64.b64decode(secret["data"]["token"]).decode()
            self.tokens[(namespace, array)] = token
        return token

    async def operator_token(self, namespace: str, array: str) -> str:
        """The operator's credential for ``array``'s blades' management APIs (the
        ``operator-token`` key of its token Secret; the blades hold only its SHA-256), read once;
        ``ArrayUnavailable`` while the Secret or the key does not exist yet."""
        key = (namespace, array)
        token = self.operator_tokens.get(key)
        if token is None:
            secret = await self.kube.get("Secret", naming.token_secret_name(array), namespace=namespace)
            value = ((secret or {}).get("data") or {}).get("operator-token")
            if not value:
                raise arrayapi.ArrayUnavailable(f"the token Secret of DiskArray {array} has no operator-token yet")
            token = self.operator_tokens[key] = base64.b64decode(value).decode()
        return token

    async def admin_token(self, namespace: str, array: str) -> str | None:
        """An array's admin token (the ``admin-token`` key of its token Secret), read each time
        it is needed (rarely: a device replacement); ``None`` when the Secret has no such key
        (made by an older operator)."""
        secret = await self.kube.get("Secret", naming.token_secret_name(array), namespace=namespace)
        value = ((secret or {}).get("data") or {}).get("admin-token")
        return base64.b64decode(value).decode() if value else None

    def forget_array(self, namespace: str, array: str, *, uid: str) -> None:
        """Drop what is kept about a deleted DiskArray."""
        self.tokens.pop((namespace, array), None)
        self.operator_tokens.pop((namespace, array), None)
        self.trusted.pop((namespace, array), None)
        self.cert_checks.pop((namespace, array), None)
        self.ensured.pop(uid, None)
        self.group_views.pop((namespace, array), None)
        self.controller_waits.pop((namespace, array), None)
        gone = self.admin_dirs.pop((namespace, array), None)
        if gone is not None:
            shutil.rmtree(gone, ignore_errors=True)

    def forget_group(self, namespace: str, group: str) -> None:
        """Drop what is kept about a deleted ClusterGroup (its daemon unregisters its wake-up)."""
        self.portions_seen.pop((namespace, group), None)

    async def close(self) -> None:
        await self.http.close()


def of(memo: Any) -> OperatorState:
    """The state ``handlers.configure`` put in kopf's ``memo``."""
    st = memo.state
    assert isinstance(st, OperatorState), "handlers.configure (the startup handler) has not run"
    return st
