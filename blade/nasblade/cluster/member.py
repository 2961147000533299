"""``ClusterMember``: one blade's part in its cluster group, running inside its block processor.

It sits next to ``nasblade.blockproc.core.BlockProcessor`` (same event loop) and uses what the
block processor already has: the processor-information ``PortionStore`` (``bp.portion``), the
controller's control API (``bp.control``), the NBD pools it serves to its file processor
(``bp.add_lu``) and the controller load it polls (``bp.load``). Decisions come from the
sans-I/O core ``nasblade.cluster.core``; this module reads the portion, calls the controller
and tells the file processor what to serve.

Every ``heartbeatInterval`` a tick:

1. reads the group record and the members' slots from the *active area* (the portion, or its
   backup area after an area failover) and updates liveness from the heartbeat counters;
   this blade's own liveness is its file processor's last status (claim 2);
2. drops every file system another blade has fenced it off (a higher epoch in the group
   record, or the controller's reservation no longer ours);
3. re-takes the file systems the group record says are ours (restart), and carries out the
   takeovers ``core.plan_takeovers`` assigns to this blade;
4. in backup mode, re-forms the portion (lowest live member) or switches back to it.

A takeover from a silent owner first asks the chassis, when the cluster configuration names
one (``nasblade.standalone.chassis``), to power the silent blade off, so an owner that is only
paused frees the address before it is bound (power fencing). Then: reserve the LU at the
controller with a new, higher epoch (from that instant the controller refuses the old owner's
writes: the data guarantee, chassis or not), open the LU with that epoch, record
``(blade, epoch)`` in the group record, and hand the file system to the file processor (it
mounts, which recovers the file system, with a new write verifier, and binds the file
system's address).

The block processor tells its file processor what to serve through the file processor's
control socket (``nasblade.bladeapi.client.FPControlClient``: ``POST``/``DELETE
/v1/filesystems``, served by ``nasblade.bladeapi.agent``). A file processor that dies while
serving ends its lifeline, and the block processor gives the blade up at once
(``BlockProcessor.fail``: its slot says ``failed``, so the peers take over at their next look).
Backups are copy-engine jobs (portion → backup area) started on demand, at the interval and
according to the controller load; each is recorded in the group record.
``nasblade.cluster.api`` exposes all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from nasblade.blockproc.core import BlockProcessor, controller_cas
from nasblade.blockproc.syncdev import PoolDevice
from nasblade.blockproc.upstream import UpstreamPool
from nasblade.cluster import core
from nasblade.cluster.config import ClusterConfig
from nasblade.cluster.config import load as load_config
from nasblade.nbd import proto
from nasblade.procinfo.portion import (
    HEADER_REGION,
    BladeStatus,
    GroupRecord,
    Ownership,
    PortionError,
    PortionStore,
    portion_offset,
)

log = logging.getLogger(__name__)

AREA_PROBE_INTERVAL = 0.5
REGISTER_EVERY = 5.0
"""Seconds between re-registrations with the controller (``ClusterMember._register``)."""
COPY_TIMEOUT = 120.0


__all__ = ["ClusterError", "ClusterMember", "load_config"]


class ClusterError(RuntimeError):
    """A cluster operation cannot be done; ``status`` is the HTTP status the API answers."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class ClusterMember:
    def __init__(self, bp: BlockProcessor, cfg: ClusterConfig, *, api_token: str | None = None) -> None:
        self.bp = bp
        self.cfg = cfg
        self.me = bp.settings.blade
        if self.me not in cfg.members:
            raise ValueError(f"blade {self.me} is not a member of cluster group {cfg.group}")
        self.api_token = api_token
        self.api_url: str | None = None
        self.liveness = core.Liveness(timeout=cfg.failure_timeout)
        self.active_area = "primary"
        self.primary: PortionStore | None = None
        self.backup_area: PortionStore | None = None
        self._backup_pool: UpstreamPool | None = None
        self.group = GroupRecord()
        self.slots: dict[str, BladeStatus] = {}
        self.serving: dict[str, int] = {}
        self.released: dict[str, str | None] = {}
        """File systems this blade gave up and must not take back by itself, each with the blade
        it was released for (a graceful move), or ``None`` (released on request, for nobody)."""
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()
        self.takeovers: deque[dict[str, Any]] = deque(maxlen=64)
        self._powered_off: dict[str, float] = {}
        self.area_events: deque[dict[str, Any]] = deque(maxlen=64)
        self.switched_at = 0.0
        self._last_probe = 0.0
        self._last_look: float | None = None
        self._registered_at = 0.0
        """Monotonic time the last tick finished reading the group (``tick``'s gap rule)."""
        self.backup_running = False
        self.last_backup_ok: float | None = None
        self.deferrals = 0
        self.deferred_since: float | None = None
        self.max_deferred_age = 0.0
        """The oldest the group's last backup was when the scheduler deferred one (stays below
        the policy's ``maxAge``: load never defers a backup past the maximum age)."""
        self.scheduler: dict[str, Any] = {"action": "wait", "reason": "starting"}
        self.started = time.monotonic()
        self.ticks = 0
        self.tick_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- start / stop ---------------------------------------------------------------------------

    async def start(self, *, api_url: str | None = None) -> None:
        if self.bp.portion is None or self.bp.control is None:
            raise ValueError("cluster groups need the processor-information LU and the controller API")
        self.primary = self.bp.portion
        self.api_url = api_url
        s = self.bp.settings
        pool = UpstreamPool(export=self.cfg.backup_lu, host=s.controller_host, port=s.controller_port,
                            unix=s.controller_unix, connections=1, retry_for=5.0)
        await pool.start()
        self._backup_pool = pool
        offset = portion_offset(self.cfg.group_index, self.cfg.portion_size)
        self.backup_area = PortionStore(PoolDevice(pool, asyncio.get_running_loop()), offset=offset,
                                        size=self.cfg.portion_size,
                                        cas=controller_cas(self.bp.control, self.cfg.backup_lu))
        if not await asyncio.to_thread(self.backup_area.is_formatted):
            with contextlib.suppress(ClusterError, OSError):
                await self.backup(trigger="initial")
        await self._register()
        self._tasks.append(asyncio.create_task(self._run_ticks()))
        self._tasks.append(asyncio.create_task(self._run_scheduler()))

    async def _register(self) -> None:
        """Register this blade (and its management API, which peers ask for a graceful release)
        in the controller's client registry. The registry is soft state: a restarted controller
        starts with an empty one, so blades register again every ``REGISTER_EVERY`` seconds
        (idempotent; the first registration time is kept)."""
        attrs = {"api": self.api_url, "cluster": self.cfg.group, "slot": self.bp.settings.slot}
        await self._control("register_client", self.me, group=self.cfg.group, role="blade", attrs=attrs)
        self._registered_at = time.monotonic()

    async def close(self) -> None:
        # let a tick that is reading the portion finish: its I/O runs in a thread through the
        # block processor's pools, and a thread left waiting on a closed pool would hold up exit
        self._stopping.set()
        if self._tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), 2 * self.cfg.heartbeat_interval + 5.0)
        tasks = [*self._tasks, *self._pending.values()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._backup_pool is not None:
            await self._backup_pool.close()

    async def _control(self, method: str, *args: Any, **kwargs: Any) -> Any:
        assert self.bp.control is not None
        return await asyncio.to_thread(getattr(self.bp.control, method), *args, **kwargs)

    @property
    def store(self) -> PortionStore:
        store = self.primary if self.active_area == "primary" else self.backup_area
        assert store is not None
        return store

    # -- the tick ------------------------------------------------------------------------------

    async def _run_ticks(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
                self.tick_error = None
                if time.monotonic() - self._registered_at > REGISTER_EVERY:
                    try:
                        await self._register()
                    except Exception as exc:  # the controller is away: try again in a second
                        self._registered_at = time.monotonic() - REGISTER_EVERY + 1.0
                        log.info("%s: registering with the controller: %s", self.me, exc)
            except (OSError, PortionError, ClusterError, ValueError, KeyError) as exc:
                self.tick_error = str(exc)
                log.warning("cluster tick: %s", exc)
            await asyncio.sleep(self.cfg.heartbeat_interval)

    def _read(self, store: PortionStore) -> tuple[GroupRecord, dict[str, BladeStatus]]:
        group = store.read_group()
        slots = {}
        for i, m in enumerate(self.cfg.members):
            if m != self.me and i < store.slot_count:
                st = store.read_slot(i)
                if st is not None and st.blade == m:
                    slots[m] = st
        return group, slots

    def alive(self, now: float | None = None) -> set[str]:
        now = time.monotonic() if now is None else now
        return {m for m in self.cfg.members if self.liveness.alive(m, now=now)}

    async def tick(self) -> None:
        self.ticks += 1
        if self.bp.failed is not None:
            await self._failed_tick(time.monotonic())
            return
        try:
            group, slots = await asyncio.to_thread(self._read, self.store)
        except (OSError, PortionError) as exc:
            await self._area_failed(f"reading the {self.active_area} area failed: {exc}")
            return
        now = time.monotonic()
        lost = 0.0 if self._last_look is None else now - self._last_look - self.cfg.failure_timeout / 2
        if lost > 0:
            # this blade could not look for a while (its read stalled while the controller
            # restarted, or it was paused): silence over that time does not count (Liveness.gap)
            log.warning("%s: no look at the group for %.2fs; %.2fs of it not counted as anyone's silence",
                        self.me, now - (self._last_look or now), lost)
            self.liveness.gap(lost, now=now)
        self._last_look = now
        own = self.bp.last_status
        if own is not None:
            self.liveness.observe(self.me, counter=own.heartbeat_counter, state=own.state, now=now)
        for st in slots.values():
            self.liveness.observe_slot(st, now=now)
        await self._check_other_area(now)
        self.group, self.slots = group, slots
        # a released file system that another blade has taken since is no longer held back;
        # nor is one whose taker died before it recorded the file system as its own: the
        # record still names this blade, so it takes it back (below)
        self.released = {fs: taker for fs, taker in self.released.items()
                         if (rec := group.ownership.get(fs)) is not None and rec.blade == self.me
                         and (taker is None or self.liveness.alive(taker, now=now))}
        self._adopt_startup_ownership()
        await self._enforce_fencing()
        if self.active_area == "backup":
            await self._maybe_switch_back()
        alive = self.alive(now)
        if self.me not in alive:
            return
        # what the group record says is ours: serve it again (restart), unless released, or
        # unless another blade holds the reservation now (it fenced us and is still taking over)
        for fs, own_rec in sorted(self.group.ownership.items()):
            fsc = self.cfg.fs(fs)
            if own_rec.blade == self.me and fs not in self.serving and fs not in self.released and fsc \
                    and fs not in self._pending:
                holder = await self._reservation_holder(fsc.policy.lu)
                if holder in (None, self.me):
                    self._start_takeover(fs, reason="recorded owner (restart)")
                elif holder != "?" and holder not in alive:
                    # it was being handed to a blade that died before recording it: take it
                    # back with a new epoch (fencing that blade), as from any silent owner
                    self._start_takeover(fs, reason=f"recorded owner; {holder}, which it was released to, is silent")
        in_grace = now - self.started < self.cfg.failure_timeout
        for t in core.plan_takeovers(members=self.cfg.members, file_systems=self.cfg.policies,
                                     ownership=self.group.ownership, alive=alive):
            if t.blade != self.me or t.fs in self.serving or t.fs in self.released:
                continue
            fsc = self.cfg.fs(t.fs)
            # just started: an owner not seen yet may only be late to show; one this blade saw
            # go silent, or fail, is dead by its own observation
            seen = t.previous is not None and self.liveness.age(t.previous, now=now) is not None
            if in_grace and not seen and not (t.previous is None and fsc is not None and fsc.policy.home == self.me):
                continue
            self._start_takeover(t.fs, reason=t.reason)
        await self._reassert()

    async def _failed_tick(self, now: float) -> None:
        """A failed blade (``BlockProcessor.fail``) serves nothing and takes nothing: it drops
        what it served (its reservation stays until a survivor takes it with a higher epoch),
        and after two failure timeouts -- its peers or the operator have taken over by then --
        it exits so that its supervisor (the container runtime, ``nasblade up``) restarts it
        as a standby. A blade with no survivor re-takes its file systems after that restart."""
        for fs in list(self.serving):
            if fs not in self._pending:
                await self._drop(fs, graceful=False)
                self.takeovers.append({"fileSystem": fs, "event": "failed", "blade": self.me,
                                       "reason": self.bp.failed, "time": time.time()})
        if now - self.bp.failed_at > 2 * self.cfg.failure_timeout and not self.bp.exit_requested.is_set():
            log.error("%s: failed %.1fs ago (%s); exiting to be restarted", self.me,
                      now - self.bp.failed_at, self.bp.failed)
            self.bp.exit_requested.set()

    async def _reservation_holder(self, lu: str) -> str | None:
        """Who holds ``lu``'s reservation at the controller: a blade, ``None`` (nobody), or
        ``"?"`` when the controller cannot say (unreachable, refusing: do not act on a guess)."""
        try:
            res = await self._control("get_reservation", lu)
        except Exception:
            return "?"
        holder = res.get("holder")
        return None if holder is None else str(holder)

    def _adopt_startup_ownership(self) -> None:
        """LUs the block processor reserved at start (``--own``) count as served."""
        for f in self.cfg.file_systems:
            lu = f.policy.lu
            if f.policy.name not in self.serving and lu in self.bp.epochs and f.policy.name not in self._pending:
                rec = self.group.ownership.get(f.policy.name)
                if rec is None or rec.epoch <= self.bp.epochs[lu]:
                    self.serving[f.policy.name] = self.bp.epochs[lu]

    def _start_takeover(self, fs: str, *, reason: str) -> None:
        task = self._pending.get(fs)
        if task is not None and not task.done():
            return

        async def run() -> None:
            try:
                await self.take_over(fs, reason=reason)
            except Exception as exc:  # controller refusals included: logged, retried next tick
                log.warning("%s: takeover of %s failed: %s", self.me, fs, exc)
            finally:
                self._pending.pop(fs, None)

        self._pending[fs] = asyncio.get_running_loop().create_task(run())

    async def _check_other_area(self, now: float) -> None:
        """A peer that looks silent in the active area may be writing the other one (a switch in
        progress): read it there too before anyone declares it dead."""
        suspects = [m for m in self.cfg.members if m != self.me
                    and (self.liveness.age(m, now=now) or 0.0) > self.cfg.failure_timeout / 2]
        other = self.backup_area if self.active_area == "primary" else self.primary
        if not suspects or other is None:
            return
        try:
            _group, slots = await asyncio.to_thread(self._read, other)
        except (OSError, PortionError):
            return
        for m in suspects:  # point-in-time copies there are older: only a newer slot counts
            self.liveness.observe_slot(slots.get(m), now=now, only_if_newer=True)

    async def _enforce_fencing(self) -> None:
        for fs in list(self.serving):
            if fs in self._pending:
                continue
            epoch = self.serving[fs]
            rec = self.group.ownership.get(fs)
            fsc = self.cfg.fs(fs)
            assert fsc is not None
            why = None
            if rec is not None and rec.blade != self.me and rec.epoch > epoch:
                why = f"{rec.blade} took it over with epoch {rec.epoch}"
            else:
                try:
                    res = await self._control("get_reservation", fsc.policy.lu)
                except OSError:
                    res = None
                except Exception as exc:  # ControlAPIError: the controller answered; judge by it
                    res = {"holder": None, "epoch": None, "error": str(exc)}
                if res is not None and (res.get("holder") != self.me or res.get("epoch") != epoch):
                    why = f"the controller's reservation is now {res.get('holder')}/{res.get('epoch')}"
            if why is not None:
                log.warning("%s: fenced off %s (%s)", self.me, fs, why)
                await self._drop(fs, graceful=False)
                self.takeovers.append({"fileSystem": fs, "event": "fenced", "blade": self.me, "epoch": epoch,
                                       "reason": why, "time": time.time()})

    async def _reassert(self) -> None:
        """Record again what this blade serves when the group record says otherwise with an
        epoch that is not newer (e.g. a record merged from the other area after a switch).
        Updates themselves are not lost: ``PortionStore.update_group`` is a compare-and-swap."""
        stale = [fs for fs, e in self.serving.items()
                 if fs not in self._pending and self.group.ownership.get(fs) != Ownership(blade=self.me, epoch=e)
                 and (self.group.ownership.get(fs) is None or self.group.ownership[fs].epoch <= e)]
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

        await self._update_group(change)

    # -- ownership changes -----------------------------------------------------------------------

    async def _update_group(self, change: Callable[[GroupRecord], None]) -> GroupRecord:
        """Read-modify-write the group record in the active area (switching area on failure)."""
        for _attempt in range(2):
            store = self.store

            def rmw(store: PortionStore = store) -> GroupRecord:
                return store.update_group(change)

            try:
                async with self.bp._slot_lock:
                    self.group = await asyncio.to_thread(rmw)
                return self.group
            except (OSError, PortionError) as exc:
                await self._area_failed(f"writing the group record to the {self.active_area} area failed: {exc}")
        raise ClusterError("the group record cannot be written in either area", status=503)

    async def take_over(self, fs: str, *, reason: str, graceful: bool = False,
                        timeout: float = 60.0) -> dict[str, Any]:
        """Take ``fs`` over: new reservation epoch (fences the old owner), the file processor
        mounts (recovers) and binds the address, ownership recorded. Uses the block processor's
        ``take_over_fs``; retries while the address is still held by the previous owner."""
        fsc = self.cfg.fs(fs)
        if fsc is None or fs not in self.bp.settings.fs_specs:
            raise ClusterError(f"{fs} is not a file system of cluster group {self.cfg.group}", status=404)
        async with self._lock:
            t0 = time.monotonic()
            previous = self.group.ownership.get(fs)
            released_by_owner = False
            if graceful and previous is not None and previous.blade != self.me and previous.blade in self.alive():
                await self._ask_release(previous.blade, fs)
                released_by_owner = True
            elif previous is not None and previous.blade != self.me and previous.blade not in self.alive():
                await self._power_off(previous.blade, fs)
            attempts, last_error = 0, ""
            while True:
                attempts += 1
                try:
                    result = await self.bp.take_over_fs(fs)
                    break
                except Exception as exc:  # controller / file processor refusals: retry, then report
                    last_error = str(exc)
                    rec = self.group.ownership.get(fs)
                    if time.monotonic() - t0 > timeout or (
                            rec is not None and rec.blade != self.me and previous is not None
                            and rec.epoch > previous.epoch and rec.blade in self.alive()):
                        raise ClusterError(f"takeover of {fs} failed after {attempts} attempts: {last_error}") from exc
                    await asyncio.sleep(0.05)
            epoch = int(result["epoch"])
            self.serving[fs] = epoch
            self.released.pop(fs, None)
            # the block processor recorded (me, epoch) in the active area; keep our view current
            self.group.ownership[fs] = Ownership(blade=self.me, epoch=epoch)
            record: dict[str, Any] = {
                "fileSystem": fs, "event": "takeover", "blade": self.me, "epoch": epoch, "reason": reason,
                "previous": None if previous is None else {"blade": previous.blade, "epoch": previous.epoch},
                "ownerReleased": released_by_owner, "time": time.time(), "attempts": attempts,
                "seconds": time.monotonic() - t0, "endpoints": result.get("endpoints", {}),
            }
            self.takeovers.append(record)
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
        from nasblade.standalone.chassis import ChassisClient, ChassisError

        why = f"{blade} is silent; {self.me} takes over {fs}"
        try:
            res = await asyncio.to_thread(ChassisClient(self.cfg.chassis).power_off, blade,
                                          requested_by=self.me, reason=why)
        except (OSError, ChassisError, ValueError) as exc:
            log.warning("%s: the chassis did not power %s off (%s); relying on epoch fencing", self.me, blade, exc)
            return
        self._powered_off[blade] = now
        log.warning("%s: chassis powered %s off (pids %s) before taking over %s", self.me, blade, res.get("killed"), fs)
        self.takeovers.append({"fileSystem": fs, "event": "power-off", "blade": blade, "requestedBy": self.me,
                               "killed": res.get("killed", []), "reason": why, "time": time.time()})

    async def _drop(self, fs: str, *, graceful: bool) -> None:
        """Stop serving ``fs`` without touching the reservation (it may be another blade's now):
        the file processor unmounts (its last commit is refused if we were fenced), then the
        NBD pool goes (flushed first when we still hold the LU)."""
        from nasblade.bladeapi.client import FPControlClient

        fsc = self.cfg.fs(fs)
        assert fsc is not None
        self.serving.pop(fs, None)
        self.bp.handed.pop(fs, None)
        fp_unix = self.bp.settings.fp_unix
        if fp_unix is not None:
            try:
                await asyncio.to_thread(FPControlClient(fp_unix, timeout=30.0).remove, fs)
            except Exception as exc:  # dead file processor, or it already let go: nothing to undo
                log.info("%s: file processor did not unmount %s: %s", self.me, fs, exc)
        pool = self.bp.exports.pools.pop(fsc.policy.lu, None)
        self.bp.epochs.pop(fsc.policy.lu, None)
        if pool is not None:
            if graceful:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.request(proto.Cmd.FLUSH, 0, 0), 10.0)
            await pool.close()

    async def release(self, fs: str, *, taker: str | None = None) -> dict[str, Any]:
        """Give ``fs`` up cleanly (commit, unmount, flush); the group record still names this
        blade, so no peer takes it by itself: it stays unserved until a blade is told to take it
        over (give-back, operator). This blade does not take it back by itself either -- unless
        it was released for ``taker`` (a graceful move) and ``taker`` dies before it records the
        file system as its own (``tick``)."""
        if fs not in self.serving:
            raise ClusterError(f"{self.me} does not serve {fs}", status=404)
        if taker is not None and taker not in self.cfg.members:
            raise ClusterError(f"{taker} is not a member of cluster group {self.cfg.group}", status=400)
        async with self._lock:
            epoch = self.serving[fs]
            self.released[fs] = taker
            await self._drop(fs, graceful=True)
        rec = {"fileSystem": fs, "event": "release", "blade": self.me, "epoch": epoch, "time": time.time()}
        self.takeovers.append(rec)
        return rec

    async def _ask_release(self, owner: str, fs: str) -> None:
        client = await self._control("get_client", owner)
        url = (client.get("attrs") or {}).get("api")
        if not url or not self.api_token:
            raise ClusterError(f"{owner} is alive but its management API is unknown; cannot ask it to release {fs}")
        status, body = await asyncio.to_thread(_post, url, f"/v1/cluster/filesystems/{fs}/release", self.api_token,
                                               {"for": self.me})
        if status not in (200, 404):
            raise ClusterError(f"{owner} refused to release {fs}: HTTP {status} {body}")

    async def manual_takeover(self, fs: str, *, force: bool) -> dict[str, Any]:
        # judge on the group record as it is now, not as of the last tick (a blade that was
        # paused may not have had a tick since it resumed)
        with contextlib.suppress(OSError, PortionError):
            self.group = await asyncio.to_thread(self.store.read_group)
        check = self.check(fs)
        if not check.possible:
            raise ClusterError(f"takeover of {fs} is not possible: {'; '.join(check.reasons)}")
        return await self.take_over(fs, reason="requested (force)" if force else "requested",
                                    graceful=not force)

    async def giveback(self) -> list[dict[str, Any]]:
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
        if self.tick_error:
            blockers.append(f"last cluster tick failed: {self.tick_error}")
        if self.bp.load_error:
            blockers.append(f"the controller is not answering: {self.bp.load_error}")
        return core.check_takeover(me=self.me, fs=fsc.policy, ownership=self.group.ownership,
                                   alive=self.alive(), blockers=blockers)

    async def check_all(self) -> list[dict[str, Any]]:
        out = []
        for f in self.cfg.file_systems:
            res = self.check(f.policy.name).to_json()
            try:
                lu = await self._control("get_lu", f.policy.lu)
                res["reservation"] = lu.get("reservation")
            except Exception as exc:  # the controller's answer is part of the report
                res["possible"] = False
                res["reasons"].append(f"LU {f.policy.lu} is not reachable at the controller: {exc}")
            out.append(res)
        return out

    # -- area failover (claims 5, 11, 20) ----------------------------------------------------

    async def _area_failed(self, why: str) -> None:
        if self.active_area == "backup":
            log.error("%s: backup area failing too: %s", self.me, why)
            raise ClusterError(why, status=503)
        assert self.backup_area is not None
        backup = self.backup_area
        cached, own = self.group, self.bp.last_status
        slot = self.bp.settings.slot

        def switch() -> None:
            if not backup.is_formatted():
                backup.format(group=self.cfg.group, index=self.cfg.group_index)
            backup.update_group(_absorb(cached))
            if own is not None:
                backup.write_slot(slot, own)

        await asyncio.to_thread(switch)
        self.active_area = "backup"
        self.bp.portion = backup
        self.bp.active_area = "backup"
        self.switched_at = time.time()
        self.area_events.append({"event": "switch", "to": "backup", "reason": why, "time": self.switched_at})
        log.warning("%s: processor information now on the backup area: %s", self.me, why)

    def _leader(self) -> str | None:
        alive = self.alive()
        return next((m for m in self.cfg.members if m in alive), None)

    async def _maybe_switch_back(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_probe < AREA_PROBE_INTERVAL:
            return
        self._last_probe = now
        assert self.primary is not None and self.backup_area is not None
        primary = self.primary
        try:
            await asyncio.to_thread(primary.read_region, HEADER_REGION)
        except (OSError, PortionError):
            return
        if self._leader() == self.me or force:
            await self.reform()
            return
        try:
            group, slots = await asyncio.to_thread(self._read, primary)
        except (OSError, PortionError):
            return
        if any(r.get("kind") == "restore" and r.get("result") == "succeeded"
               and float(r.get("end") or 0.0) >= self.switched_at for r in group.backups):
            await self._switch_to_primary("the portion was re-formed")
            return
        # the leader runs on the portion already (it was restarted after the portion came
        # back, so it never switched): its slot there is newer than its slot here. Both
        # heartbeat times come from the leader's own clock, so comparing them is sound.
        leader = self._leader()
        there, here = slots.get(leader or ""), self.slots.get(leader or "")
        if there is not None and there.active_area == "primary" \
                and (here is None or there.heartbeat_time > here.heartbeat_time):
            await self._switch_to_primary(f"{leader}, the group's leader, runs on the portion")

    async def reform(self) -> dict[str, Any]:
        """Copy the backup area into the (newly formed) portion and switch back to it."""
        if self.active_area != "backup":
            raise ClusterError("the group is running on its portion already")
        rec = await self._copy(kind="restore", trigger="reform", group=self.cfg.group,
                               index=self.cfg.group_index, source=self.cfg.backup_lu, target=self.cfg.procinfo_lu,
                               rate=0, load=None, deferrals=0)
        if rec["result"] == "succeeded":
            await self._switch_to_primary("re-formed from the backup area", restore=rec)
        return rec

    async def _switch_to_primary(self, why: str, *, restore: dict[str, Any] | None = None) -> None:
        assert self.primary is not None and self.backup_area is not None
        primary, backup = self.primary, self.backup_area
        own, slot = self.bp.last_status, self.bp.settings.slot

        def switch() -> None:
            primary.open(group=self.cfg.group, index=self.cfg.group_index)
            other = backup.read_group()
            if restore is not None:
                other = core.merge_groups(other, GroupRecord(backups=[restore]))
            primary.update_group(_absorb(other))
            if own is not None:
                primary.write_slot(slot, own)

        try:
            await asyncio.to_thread(switch)
        except (OSError, PortionError) as exc:
            log.warning("%s: switching back to the portion failed: %s", self.me, exc)
            return
        self.active_area = "primary"
        self.bp.portion = primary
        self.bp.active_area = "primary"
        self.area_events.append({"event": "switch", "to": "primary", "reason": why, "time": time.time()})
        log.info("%s: processor information back on the portion: %s", self.me, why)

    # -- backups (claims 4, 8, 9, 13, 15-19) ---------------------------------------------------

    async def _copy(self, *, kind: str, trigger: str, group: str, index: int, source: str, target: str,
                    rate: int, load: float | None, deferrals: int) -> dict[str, Any]:
        offset = portion_offset(index, self.cfg.portion_size)
        rec: dict[str, Any] = {
            "id": uuid.uuid4().hex[:12], "kind": kind, "trigger": trigger, "portion": group, "portionIndex": index,
            "source": f"{source}@{offset}", "target": f"{target}@{offset}", "requestedBy": self.me,
            "start": time.time(), "end": None, "bytes": 0, "result": None, "error": None,
            "loadAtStart": load, "deferrals": deferrals, "rateLimit": rate, "jobId": None,
        }
        try:
            job = await self._control("create_copy_job", source, target, self.cfg.portion_size,
                                      source_offset=offset, target_offset=offset, rate_limit=rate)
            rec["jobId"] = job["id"]
            job = await self._control("wait_copy_job", job["id"], timeout=COPY_TIMEOUT)
            rec["result"] = str(job["state"])
            rec["bytes"] = int(job.get("bytesDone") or 0)
            rec["error"] = job.get("error")
        except Exception as exc:  # any controller error ends up in the record, not a traceback
            rec["result"] = "failed"
            rec["error"] = str(exc)
        rec["end"] = time.time()
        return rec

    async def backup(self, *, trigger: str, cross_group: list[str] | None = None, rate: int = 0,
                     load: float | None = None, deferrals: int = 0) -> list[dict[str, Any]]:
        """Copy this group's portion (and the ``cross_group`` portions, claim 9) into their backup
        areas as point-in-time copies; record each in this group's record (claim 13)."""
        targets = [(self.cfg.group, self.cfg.group_index)]
        known = {c.group: c.index for c in self.cfg.cross_group}
        for g in cross_group or []:
            if g not in known:
                raise ClusterError(f"{g} is not a cross-group backup target of {self.cfg.group}"
                                   f" (configured: {', '.join(known) or 'none'})", status=400)
            targets.append((g, known[g]))
        if self.backup_running:
            raise ClusterError("a backup is already running on this blade")
        self.backup_running = True
        try:
            records = []
            for group, index in targets:
                records.append(await self._copy(kind="backup", trigger=trigger, group=group, index=index,
                                                source=self.cfg.procinfo_lu, target=self.cfg.backup_lu,
                                                rate=rate, load=load, deferrals=deferrals))
            if any(r["portion"] == self.cfg.group and r["result"] == "succeeded" for r in records):
                self.last_backup_ok = time.monotonic()
            if trigger != "initial":

                def add(g: GroupRecord) -> None:
                    g.backups = [*g.backups, *records][-core.BACKUP_HISTORY_KEEP :]

                with contextlib.suppress(ClusterError):
                    await self._update_group(add)
            return records
        finally:
            self.backup_running = False

    async def _run_scheduler(self) -> None:
        policy = self.cfg.backup
        first_due = time.monotonic() + policy.interval
        while True:
            await asyncio.sleep(min(1.0, max(0.05, policy.interval / 4)))
            try:
                await self._schedule_once(policy, first_due)
            except (ClusterError, OSError) as exc:
                self.scheduler = {"action": "error", "reason": str(exc)}

    async def _schedule_once(self, policy: core.BackupPolicy, first_due: float) -> None:
        if self._leader() != self.me or self.backup_running or self.active_area != "primary":
            self.scheduler = {"action": "wait", "reason": "not the group's backup leader" if self._leader() != self.me
                              else "busy or running on the backup area"}
            return
        load = core.load_ratio(self.bp.load)
        now = time.monotonic()
        last = self._last_success(now)
        action, why = core.decide_backup(policy=policy, now=now, last_success=last, first_due=first_due, load=load)
        if action is core.BackupAction.DEFER:
            self.max_deferred_age = max(self.max_deferred_age, now - (first_due if last is None else last))
        self.scheduler = {"action": action.value, "reason": why, "load": load, "deferrals": self.deferrals,
                          "maxDeferredAge": self.max_deferred_age}
        if action is core.BackupAction.DEFER:
            if self.deferred_since is None:
                self.deferred_since = now
            self.deferrals += 1
            return
        if action is core.BackupAction.WAIT:
            return
        trigger = "interval"
        if action is core.BackupAction.START_THROTTLED and load is not None:
            trigger = "max-age"
        elif self.deferrals:
            trigger = "load"
        rate = policy.throttle_rate if action is core.BackupAction.START_THROTTLED else 0
        deferrals, self.deferrals, self.deferred_since = self.deferrals, 0, None
        cross = [c.group for c in self.cfg.cross_group]
        records = await self.backup(trigger=trigger, cross_group=cross, rate=rate, load=load, deferrals=deferrals)
        if not any(r["result"] == "succeeded" for r in records):
            # try again at the next interval, not in a tight loop
            self.last_backup_ok = now

    def _last_success(self, now: float) -> float | None:
        """Monotonic time of the group's last successful backup of its own portion: this blade's,
        or any blade's recorded in the group record (the backup leader may have changed)."""
        best = self.last_backup_ok
        wall = time.time()
        for r in self.group.backups:
            if r.get("kind", "backup") == "backup" and r.get("portion") == self.cfg.group \
                    and r.get("result") == "succeeded" and r.get("end"):
                t = now - (wall - float(r["end"]))
                best = t if best is None else max(best, t)
        return best

    def history(self) -> list[dict[str, Any]]:
        return list(self.group.backups)

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        alive = self.alive(now)
        members = []
        for i, m in enumerate(self.cfg.members):
            age = self.liveness.age(m, now=now)
            st = self.bp.last_status if m == self.me else self.slots.get(m)
            members.append({"blade": m, "slot": i, "alive": m in alive, "heartbeatAge": age,
                            "heartbeatCounter": None if st is None else st.heartbeat_counter,
                            "fileSystems": [] if st is None else list(st.file_systems)})
        return {
            "group": self.cfg.group, "blade": self.me, "activeArea": self.active_area,
            "members": members,
            "ownership": {fs: {"blade": o.blade, "epoch": o.epoch} for fs, o in sorted(self.group.ownership.items())},
            "serving": dict(sorted(self.serving.items())), "released": sorted(self.released),
            "pendingTakeovers": sorted(self._pending), "leader": self._leader(),
            "takeovers": list(self.takeovers), "areaEvents": list(self.area_events),
            "backup": {"running": self.backup_running, "scheduler": self.scheduler,
                       "lastSuccessAgo": None if self.last_backup_ok is None else now - self.last_backup_ok,
                       "policy": self.cfg.to_json()["backup"]},
            "ticks": self.ticks, "tickError": self.tick_error,
        }


def _absorb(other: GroupRecord) -> Callable[[GroupRecord], None]:
    """A group-record change that merges ``other`` in (``core.merge_groups``)."""

    def change(group: GroupRecord) -> None:
        merged = core.merge_groups(group, other)
        group.ownership, group.backups = merged.ownership, merged.backups

    return change


def _post(url: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=60.0)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request("POST", path, body=data, headers={"Authorization": f"Bearer {token}",
                                                       "Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    return resp.status, decoded
