"""The cluster member's takeover: which file systems this blade serves, and taking them over,
giving them up and being fenced off them.

Every tick (``nasblade.cluster.member``) this part

1. drops every file system another blade has fenced this one off (``enforce_fencing``: a higher
   epoch in the group record, or the controller's reservation no longer ours);
2. re-takes the file systems the group record says are ours (restart) -- not one released on
   request (``absorb_releases``: the operator is moving it through the block processor's
   API) until nobody took it for two failure timeouts --, and carries out the
   takeovers ``core.plan_takeovers`` assigns to this blade (``act``), then records again what
   it serves where the record says otherwise with an epoch that is not newer (``reassert``).

A takeover from a silent owner first asks the chassis, when the cluster configuration names
one (``nasblade.bladeapi.chassis``), to power the silent blade off, so an owner that is only
paused frees the address before it is bound (power fencing). Then the block processor
(``BlockProcessor.take_over_fs``) reserves the LU at the controller with a new, higher epoch
(from that instant the controller refuses the old owner's writes: the data guarantee, chassis
or not), opens the LU with that epoch, records ``(blade, epoch)`` in the group record and hands
the file system to the file processor (it mounts, which recovers the file system, with a new
write verifier, and binds the file system's address). A takeover from a live owner (graceful:
requested, give-back) asks the owner to release first (``BladeClient.release_fs``). A failed
blade (``BlockProcessor.fail``) serves nothing and takes nothing (``failed_tick``). Each of
these is an ``OwnershipEvent`` in ``events`` (``nasblade.cluster.records``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from nasblade.bladeapi.chassis import ChassisClient, ChassisError
from nasblade.bladeapi.client import BladeAPIError, BladeClient
from nasblade.blockproc.core import BlockProcessor
from nasblade.cluster import core
from nasblade.cluster.areas import Areas
from nasblade.cluster.config import ClusterConfig
from nasblade.cluster.liveness import GroupView
from nasblade.cluster.records import (
    ClusterError,
    Failed,
    Fenced,
    OwnershipEvent,
    PoweredOff,
    Released,
    TakenOver,
)
from nasblade.controller.asyncclient import AsyncControlClient, Reservation
from nasblade.procinfo.portion import GroupRecord, Ownership, PortionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TakeoverCheck:
    """``check``'s verdict on one file system, with the controller's reservation of its LU
    (``unreachable``: why the controller could not be asked; the takeover is not possible then)."""

    result: core.CheckResult
    lu: str
    reservation: dict[str, Any] | None
    unreachable: str | None = None


class Takeovers:
    def __init__(self, bp: BlockProcessor, control: AsyncControlClient, cfg: ClusterConfig, view: GroupView,
                 areas: Areas, *, api_token: str | None) -> None:
        self.bp = bp
        self.control = control
        self.cfg = cfg
        self.view = view
        self.areas = areas
        self.me = view.me
        self.api_token = api_token
        self.serving: dict[str, int] = {}
        """File system → the epoch this blade serves it with."""
        self.released: dict[str, str | None] = {}
        """File systems this blade gave up and must not take back by itself, each with the blade
        it was released for (a graceful move), or ``None`` (released on request, for nobody)."""
        self.pending: dict[str, asyncio.Task[None]] = {}
        self.gone: set[str] = set()
        """File systems ``forget`` dropped: no takeover of them may start or go on, whoever
        asked (a tick, the operator's move), until the group lists them again (``restore``)."""
        self.events: deque[OwnershipEvent] = deque(maxlen=64)
        self.started = time.monotonic()
        self._lock = asyncio.Lock()
        self._powered_off: dict[str, float] = {}
        self._on_request: dict[str, float] = {}
        """Released file systems that were released on request (``absorb_releases``), and when."""

    async def close(self) -> None:
        tasks = list(self.pending.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # -- each tick -----------------------------------------------------------------------------

    async def failed_tick(self, now: float) -> None:
        """A failed blade (``BlockProcessor.fail``) serves nothing and takes nothing: it drops
        what it served (its reservation stays until a survivor takes it with a higher epoch),
        and after two failure timeouts -- its peers or the operator have taken over by then --
        it exits so that its supervisor (the container runtime, ``nasblade up``) restarts it
        as a standby. A blade with no survivor re-takes its file systems after that restart."""
        for fs in list(self.serving):
            if fs not in self.pending:
                await self._drop(fs, graceful=False)
                self.events.append(Failed(file_system=fs, blade=self.me, reason=self.bp.failed, time=time.time()))
        if now - self.bp.failed_at > 2 * self.cfg.failure_timeout and not self.bp.exit_requested.is_set():
            log.error("%s: failed %.1fs ago (%s); exiting to be restarted", self.me,
                      now - self.bp.failed_at, self.bp.failed)
            self.bp.exit_requested.set()

    def forget_released(self, now: float) -> None:
        """A released file system that another blade has taken since is no longer held back;
        nor is one whose taker died before it recorded the file system as its own: the record
        still names this blade, so it takes it back (``act``); nor one released on request
        (``absorb_releases``) that nobody took in two failure timeouts."""
        self.released = {fs: taker for fs, taker in self.released.items() if self._held_back(fs, taker, now)}
        self._on_request = {fs: at for fs, at in self._on_request.items() if fs in self.released}

    def _held_back(self, fs: str, taker: str | None, now: float) -> bool:
        """Whether released ``fs`` stays released (``forget_released``)."""
        rec = self.view.group.ownership.get(fs)
        at = self._on_request.get(fs)
        if at is not None and now - at > 2 * self.cfg.failure_timeout and (rec is None or rec.blade == self.me):
            # the operator's move stopped half-way (it died between the release and the
            # takeover): nobody took it for two failure timeouts, so it is served again
            log.warning("%s: %s was released on request %.0fs ago and nobody took it; taking it back",
                        self.me, fs, now - at)
            return False
        ours = rec.blade == self.me if rec is not None else at is not None
        return ours and (taker is None or self.view.liveness.alive(taker, now=now))

    def absorb_releases(self) -> None:
        """File systems the block processor released on request count as released for nobody:
        the operator moves a file system through the block processor's management API
        (``BlockProcessor.release_fs``, then ``take_over_fs`` on the taker), not through this
        member. Until the taker records itself, the group record names this blade or nobody
        (``release_fs`` clears it), and this blade must not take the file system back by itself,
        as its recorded owner or as its home: that takeover's newer epoch would fence the taker
        the operator just pointed the clients at."""
        while self.bp.released_on_request:
            fs = self.bp.released_on_request.pop()
            epoch = self.serving.pop(fs, None)
            if fs in self.gone:
                continue
            self.released.setdefault(fs, None)
            self._on_request[fs] = time.monotonic()
            if epoch is not None:
                log.info("%s: released %s on request (epoch %d)", self.me, fs, epoch)
                self.events.append(Released(file_system=fs, blade=self.me, epoch=epoch, time=time.time()))

    def adopt_startup_ownership(self) -> None:
        """File systems the block processor serves without this member having taken them --
        reserved at start (``--own``), or taken over through its own API (the operator's
        moves) -- count as served: their LU held and handed to the file processor. A
        reservation alone (a takeover that failed after reserving) is not serving."""
        self.absorb_releases()
        for f in self.cfg.file_systems:
            lu = f.policy.lu
            if f.policy.name not in self.serving and lu in self.bp.epochs and f.policy.name in self.bp.handed \
                    and f.policy.name not in self.pending:
                rec = self.view.group.ownership.get(f.policy.name)
                if rec is None or rec.epoch <= self.bp.epochs[lu]:
                    self.serving[f.policy.name] = self.bp.epochs[lu]
                    self.released.pop(f.policy.name, None)

    async def enforce_fencing(self) -> None:
        self.absorb_releases()  # a release on request is not a fencing
        for fs in list(self.serving):
            if fs in self.pending:
                continue
            epoch = self.serving[fs]
            rec = self.view.group.ownership.get(fs)
            fsc = self.cfg.fs(fs)
            assert fsc is not None
            why = None
            if rec is not None and rec.blade != self.me and rec.epoch > epoch:
                why = f"{rec.blade} took it over with epoch {rec.epoch}"
            else:
                res: Reservation | None
                try:
                    res = await self.control.get_reservation(fsc.policy.lu)
                except OSError:
                    res = None
                except Exception:  # ControlAPIError: the controller answered; judge by it
                    res = Reservation(holder=None, epoch=None)
                if res is not None and (res.holder != self.me or res.epoch != epoch):
                    why = f"the controller's reservation is now {res.holder}/{res.epoch}"
            if why is not None:
                log.warning("%s: fenced off %s (%s)", self.me, fs, why)
                await self._drop(fs, graceful=False)
                self.events.append(Fenced(file_system=fs, blade=self.me, epoch=epoch, reason=why, time=time.time()))

    async def act(self, now: float) -> None:
        """Serve what the group record says is ours, take over what the plan assigns to this
        blade, record what it serves (a live blade only)."""
        alive = self.view.alive(now)
        if self.me not in alive:
            return
        self.absorb_releases()
        # what the group record says is ours: serve it again (restart), unless released, or
        # unless another blade holds the reservation now (it fenced us and is still taking over)
        for fs, own_rec in sorted(self.view.group.ownership.items()):
            fsc = self.cfg.fs(fs)
            if own_rec.blade == self.me and fs not in self.serving and fs not in self.released and fsc \
                    and fs not in self.pending:
                holder = await self._reservation_holder(fsc.policy.lu)
                if holder in (None, self.me):
                    self._start_takeover(fs, reason="recorded owner (restart)")
                elif holder != "?" and holder not in alive:
                    # it was being handed to a blade that died before recording it: take it
                    # back with a new epoch (fencing that blade), as from any silent owner
                    self._start_takeover(fs, reason=f"recorded owner; {holder}, which it was released to, is silent")
        in_grace = now - self.started < self.cfg.failure_timeout
        for t in core.plan_takeovers(members=self.cfg.members, file_systems=self.cfg.policies,
                                     ownership=self.view.group.ownership, alive=alive):
            if t.blade != self.me or t.fs in self.serving or t.fs in self.released:
                continue
            fsc = self.cfg.fs(t.fs)
            # just started: an owner not seen yet may only be late to show; one this blade saw
            # go silent, or fail, is dead by its own observation
            seen = t.previous is not None and self.view.liveness.age(t.previous, now=now) is not None
            if in_grace and not seen and not (t.previous is None and fsc is not None and fsc.policy.home == self.me):
                continue
            self._start_takeover(t.fs, reason=t.reason)
        await self._reassert()

    async def _reservation_holder(self, lu: str) -> str | None:
        """Who holds ``lu``'s reservation at the controller: a blade, ``None`` (nobody), or
        ``"?"`` when the controller cannot say (unreachable, refusing: do not act on a guess)."""
        try:
            res = await self.control.get_reservation(lu)
        except Exception:  # unreachable or refusing: "?"
            return "?"
        return res.holder

    def _start_takeover(self, fs: str, *, reason: str) -> None:
        task = self.pending.get(fs)
        if task is not None and not task.done():
            return

        async def run() -> None:
            try:
                await self.take_over(fs, reason=reason, automatic=True)
            except Exception as exc:  # controller refusals included: logged, retried next tick
                log.warning("%s: takeover of %s failed: %s", self.me, fs, exc)
            finally:
                self.pending.pop(fs, None)

        self.pending[fs] = asyncio.get_running_loop().create_task(run())

    async def _reassert(self) -> None:
        """Record again what this blade serves when the group record says otherwise with an
        epoch that is not newer (e.g. a record merged from the other area after a switch).
        Updates themselves are not lost: ``PortionStore.update_group`` is a compare-and-swap."""
        ownership = self.view.group.ownership
        stale = [fs for fs, e in self.serving.items()
                 if fs not in self.pending and ownership.get(fs) != Ownership(blade=self.me, epoch=e)
                 and (ownership.get(fs) is None or ownership[fs].epoch <= e)]
        if not stale:
            return
        mine = {fs: self.serving[fs] for fs in stale}

        def change(g: GroupRecord) -> None:
            # applied to the record as it is at the write: never over a newer epoch (a paused
            # blade resuming here must not undo the takeover that fenced it)
            for fs, epoch in mine.items():
                cur = g.ownership.get(fs)
                if cur is None or cur.epoch <= epoch:
                    g.ownership[fs] = Ownership(blade=self.me, epoch=epoch)

        await self.areas.update_group(change)

    # -- ownership changes -----------------------------------------------------------------------

    async def take_over(self, fs: str, *, reason: str, graceful: bool = False, automatic: bool = False,
                        timeout: float = 60.0) -> TakenOver:
        """Take ``fs`` over: new reservation epoch (fences the old owner), the file processor
        mounts (recovers) and binds the address, ownership recorded. Uses the block processor's
        ``take_over_fs``; retries (for up to ``timeout`` seconds) while the controller refuses
        (e.g. a new file system's LU not yet open to the group) or the address is still held
        by the previous owner.

        Each attempt holds the blade's takeover lock, the waits between attempts do not: one
        file system being retried does not hold up the others' takeovers, nor a release or a
        ``forget``; and a file system that left the group meanwhile (``forget``) is not tried
        again, nor, by a takeover this blade started by itself (``automatic``), one released
        meanwhile (``absorb_releases``: the operator is moving it)."""
        if self.cfg.fs(fs) is None or fs not in self.bp.settings.fs_specs:
            raise ClusterError(f"{fs} is not a file system of cluster group {self.cfg.group}", status=404)
        t0 = time.monotonic()
        attempts, last_error = 0, ""
        previous: Ownership | None = None
        released_by_owner = prepared = False
        while True:
            async with self._lock:
                if fs in self.gone or self.cfg.fs(fs) is None or fs not in self.bp.settings.fs_specs:
                    raise ClusterError(f"takeover of {fs} stopped after {attempts} attempts: it left cluster group "
                                       f"{self.cfg.group}", status=404)
                self.absorb_releases()
                if automatic and fs in self.released:
                    raise ClusterError(f"takeover of {fs} stopped after {attempts} attempts: it was released on "
                                       "request meanwhile", status=409)
                if automatic and prepared and await self._taken_meanwhile(fs, previous):
                    raise ClusterError(f"takeover of {fs} stopped after {attempts} attempts: "
                                       f"{self.view.group.ownership[fs].blade} took it over meanwhile", status=409)
                if not prepared:
                    prepared = True
                    previous = self.view.group.ownership.get(fs)
                    if graceful and previous is not None and previous.blade != self.me \
                            and previous.blade in self.view.alive():
                        await self._ask_release(previous.blade, fs)
                        released_by_owner = True
                    elif previous is not None and previous.blade != self.me \
                            and previous.blade not in self.view.alive():
                        await self._power_off(previous.blade, fs)
                attempts += 1
                try:
                    result = await self.bp.take_over_fs(fs)
                except Exception as exc:  # controller / file processor refusals: retry, then report
                    last_error = str(exc)
                    rec = self.view.group.ownership.get(fs)
                    if time.monotonic() - t0 > timeout or (
                            rec is not None and rec.blade != self.me and previous is not None
                            and rec.epoch > previous.epoch and rec.blade in self.view.alive()):
                        raise ClusterError(f"takeover of {fs} failed after {attempts} attempts: {last_error}") from exc
                else:
                    return self._took_over(fs, result, reason=reason, previous=previous,
                                           released_by_owner=released_by_owner, attempts=attempts, t0=t0)
            # every 50 ms for the first second (the old owner letting go of the address), then
            # slower, to once a second: each attempt is a new reservation epoch
            await asyncio.sleep(0.05 if attempts < 20 else min(1.0, 0.05 * 1.2 ** (attempts - 20)))

    async def _taken_meanwhile(self, fs: str, previous: Ownership | None) -> bool:
        """Whether another blade recorded ``fs`` as its own, with a newer epoch than this
        takeover started from, since then (the group record read afresh). A takeover this blade
        started by itself stops then, rather than fence the blade that just took over: e.g. a
        restarted owner reclaiming, while its attempts are refused, a file system that was given
        to its peer meanwhile. The next tick judges again from the new record."""
        try:
            self.view.group = await asyncio.to_thread(self.areas.store.read_group)
        except (OSError, PortionError):
            return False  # cannot tell: the attempt goes on (epochs still fence)
        rec = self.view.group.ownership.get(fs)
        return rec is not None and rec.blade != self.me and (previous is None or rec.epoch > previous.epoch)

    def _took_over(self, fs: str, result: dict[str, Any], *, reason: str, previous: Ownership | None,
                   released_by_owner: bool, attempts: int, t0: float) -> TakenOver:
        epoch = int(result["epoch"])
        self.serving[fs] = epoch
        self.released.pop(fs, None)
        # the block processor recorded (me, epoch) in the active area; keep our view current
        self.view.group.ownership[fs] = Ownership(blade=self.me, epoch=epoch)
        record = TakenOver(file_system=fs, blade=self.me, epoch=epoch, reason=reason, previous=previous,
                           owner_released=released_by_owner, time=time.time(), attempts=attempts,
                           seconds=time.monotonic() - t0, endpoints=dict(result.get("endpoints", {})))
        self.events.append(record)
        log.info("%s took over %s (epoch %d, %d attempts): %s", self.me, fs, epoch, attempts, reason)
        return record

    async def _power_off(self, blade: str, fs: str) -> None:
        """Power fencing: have the chassis cut the silent ``blade``'s power (its processes are
        reaped when this returns) before its address is bound. Without a chassis, or when the
        chassis cannot be reached, the takeover goes on: the epoch fences the blade anyway, and
        the address is bound as soon as the blade lets go of it."""
        if self.cfg.chassis is None or blade not in self.cfg.members:
            return
        now = time.monotonic()
        if now - self._powered_off.get(blade, -1e9) < 2 * self.cfg.failure_timeout:
            return  # one power cycle per failure, not one per file system
        why = f"{blade} is silent; {self.me} takes over {fs}"
        try:
            res = await asyncio.to_thread(ChassisClient(self.cfg.chassis).power_off, blade,
                                          requested_by=self.me, reason=why)
        except (OSError, ChassisError, ValueError) as exc:
            log.warning("%s: the chassis did not power %s off (%s); relying on epoch fencing", self.me, blade, exc)
            return
        self._powered_off[blade] = now
        killed = tuple(int(p) for p in res.get("killed", []))
        log.warning("%s: chassis powered %s off (pids %s) before taking over %s", self.me, blade, list(killed), fs)
        self.events.append(PoweredOff(file_system=fs, blade=blade, requested_by=self.me, killed=killed, reason=why,
                                      time=time.time()))

    async def _drop(self, fs: str, *, graceful: bool) -> None:
        """Stop serving ``fs`` (``BlockProcessor.drop_fs``: the reservation is left alone)."""
        fsc = self.cfg.fs(fs)
        assert fsc is not None
        self.serving.pop(fs, None)
        await self.bp.drop_fs(fs, fsc.policy.lu, flush=graceful)

    async def release(self, fs: str, *, taker: str | None = None) -> Released:
        """Give ``fs`` up cleanly (commit, unmount, flush); the group record still names this
        blade, so no peer takes it by itself: it stays unserved until a blade is told to take it
        over (give-back, operator). This blade does not take it back by itself either -- unless
        it was released for ``taker`` (a graceful move) and ``taker`` dies before it records the
        file system as its own (``forget_released``, ``act``)."""
        if fs not in self.serving:
            raise ClusterError(f"{self.me} does not serve {fs}", status=404)
        if taker is not None and taker not in self.cfg.members:
            raise ClusterError(f"{taker} is not a member of cluster group {self.cfg.group}", status=400)
        async with self._lock:
            epoch = self.serving[fs]
            self.released[fs] = taker
            self._on_request.pop(fs, None)
            await self._drop(fs, graceful=True)
        rec = Released(file_system=fs, blade=self.me, epoch=epoch, time=time.time())
        self.events.append(rec)
        return rec

    async def forget(self, fs: str) -> None:
        """``fs`` left the group (``ClusterMember.reconfigure``): stop serving it and drop its
        reservation and its ownership record (``BlockProcessor.release_fs``), so that its LU
        is free for whoever deletes or reuses it. A takeover of it still being retried is
        stopped (it waits between attempts: none is running while the lock is held), and a
        reservation an attempt left is dropped too, so a file system removed while its
        takeover was refused does not keep its LU reserved."""
        async with self._lock:
            self.gone.add(fs)
            task = self.pending.pop(fs, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()
            self.serving.pop(fs, None)
            self.released.pop(fs, None)
            if fs in self.bp.settings.fs_specs:
                await self.bp.release_fs(fs)
            self.view.group.ownership.pop(fs, None)

    def restore(self, fs: str) -> None:
        """``fs`` is a file system of the group again (``ClusterMember.reconfigure``)."""
        self.gone.discard(fs)

    async def _ask_release(self, owner: str, fs: str) -> None:
        """Ask the live ``owner`` to release ``fs`` for this blade (its management API, found in
        the controller's client registry)."""
        client = await self.control.get_client(owner)
        url = (client.get("attrs") or {}).get("api")
        if not url or not self.api_token:
            raise ClusterError(f"{owner} is alive but its management API is unknown; cannot ask it to release {fs}")
        try:
            await asyncio.to_thread(BladeClient(url, self.api_token, timeout=60.0).release_fs, fs, taker=self.me)
        except BladeAPIError as exc:
            if exc.status != 404:
                raise ClusterError(f"{owner} refused to release {fs}: {exc}") from exc

    async def manual_takeover(self, fs: str, *, force: bool) -> TakenOver:
        # judge on the group record as it is now, not as of the last tick (a blade that was
        # paused may not have had a tick since it resumed)
        with contextlib.suppress(OSError, PortionError):
            self.view.group = await asyncio.to_thread(self.areas.store.read_group)
        check = self.check(fs)
        if not check.possible:
            raise ClusterError(f"takeover of {fs} is not possible: {'; '.join(check.reasons)}")
        return await self.take_over(fs, reason="requested (force)" if force else "requested", graceful=not force)

    async def giveback(self) -> list[TakenOver]:
        """Take back every file system whose home is this blade (the owner releases it first)."""
        out = []
        for f in self.cfg.file_systems:
            if f.policy.home == self.me and f.policy.name not in self.serving:
                out.append(await self.manual_takeover(f.policy.name, force=False))
        return out

    def check(self, fs: str) -> core.CheckResult:
        fsc = self.cfg.fs(fs)
        if fsc is None:
            return core.CheckResult(fs=fs, possible=False, owner=None, epoch=None, mode="none",
                                    reasons=(f"{fs} is not a file system of cluster group {self.cfg.group}",))
        blockers = []
        if self.view.tick_error:
            blockers.append(f"last cluster tick failed: {self.view.tick_error}")
        if self.bp.load_error:
            blockers.append(f"the controller is not answering: {self.bp.load_error}")
        if self.bp.settings.lifeline_unix is not None and not self.bp.lifeline.alive:
            # a replaced pod's block processor answers before its file processor runs: asking
            # the owner to release now would leave the file system unserved (nobody to mount it)
            blockers.append("this blade's file processor is not running yet")
        return core.check_takeover(me=self.me, fs=fsc.policy, ownership=self.view.group.ownership,
                                   alive=self.view.alive(), blockers=blockers)

    async def check_all(self) -> list[TakeoverCheck]:
        out = []
        for f in self.cfg.file_systems:
            res = self.check(f.policy.name)
            try:
                lu = await self.control.get_lu(f.policy.lu)
            except Exception as exc:  # the controller's answer is part of the report
                out.append(TakeoverCheck(result=res, lu=f.policy.lu, reservation=None, unreachable=str(exc)))
                continue
            out.append(TakeoverCheck(result=res, lu=f.policy.lu, reservation=lu.get("reservation")))
        return out
