"""``ClusterMember``: one blade's part in its cluster group, running inside its block processor.

It sits next to ``nasblade.blockproc.core.BlockProcessor`` (same event loop; the role's entry
``nasblade.cluster.role`` composes the two) and is the composition of the member's parts, each
a module of its own:

- ``nasblade.cluster.liveness.GroupView``: the group record, the peers' slots and liveness;
- ``nasblade.cluster.takeover.Takeovers``: what this blade serves; fencing, takeover, release,
  give-back, check-takeover, power fencing through the chassis;
- ``nasblade.cluster.areas.Areas``: the area failover (portion or backup area);
- ``nasblade.cluster.backups.Backups``: backups on demand and the backup scheduler.

Decisions come from the sans-I/O core ``nasblade.cluster.core``; the parts use the block
processor only through its public interface (``take_over_fs``, ``drop_fs``, ``update_group``,
``open_area``, ``use_area``) and the controller through ``AsyncControlClient``. This module
runs the tick and the registration. Every ``heartbeatInterval`` a tick:

1. reads the group record and the members' slots from the *active area* (the portion, or its
   backup area after an area failover) and updates liveness from the heartbeat counters;
   this blade's own liveness is its file processor's last status (claim 2); a peer that looks
   silent is looked for in the other area too (a switch in progress);
2. drops every file system another blade has fenced it off (``Takeovers.enforce_fencing``);
3. in backup mode, re-forms the portion (lowest live member) or switches back to it
   (``Areas.maybe_switch_back``);
4. re-takes the file systems the group record says are ours (restart), and carries out the
   takeovers ``core.plan_takeovers`` assigns to this blade (``Takeovers.act``).

A file processor that dies while serving ends its lifeline, and the block processor gives the
blade up at once (``BlockProcessor.fail``: its slot says ``failed``, so the peers take over at
their next look); the member's tick then only drops what it served (``Takeovers.failed_tick``).
``nasblade.cluster.api`` exposes all of it on the blade management API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nasblade.blockproc.core import BlockProcessor
from nasblade.cluster.areas import Areas
from nasblade.cluster.backups import Backups
from nasblade.cluster.config import ClusterConfig
from nasblade.cluster.liveness import GroupView
from nasblade.cluster.records import ClusterError
from nasblade.cluster.takeover import Takeovers
from nasblade.controller.asyncclient import AsyncControlClient
from nasblade.procinfo.portion import PortionError

log = logging.getLogger(__name__)

REGISTER_EVERY = 5.0
"""Seconds between re-registrations with the controller (``ClusterMember._register``)."""


class ClusterMember:
    def __init__(self, bp: BlockProcessor, control: AsyncControlClient, cfg: ClusterConfig, *,
                 api_token: str | None = None) -> None:
        self.bp = bp
        self.control = control
        self.cfg = cfg
        self.me = bp.settings.blade
        if self.me not in cfg.members:
            raise ValueError(f"blade {self.me} is not a member of cluster group {cfg.group}")
        self.view = GroupView(cfg, self.me)
        self.areas = Areas(bp, control, cfg, self.view)
        self.backups = Backups(bp, control, cfg, self.view, active_area=lambda: self.areas.active,
                               update_group=self.areas.update_group)
        self.takeovers = Takeovers(bp, control, cfg, self.view, self.areas, api_token=api_token)
        self.api_url: str | None = None
        self.ticks = 0
        self._registered_at = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    # -- start / stop ---------------------------------------------------------------------------

    async def start(self, *, api_url: str | None = None) -> None:
        self.api_url = api_url
        if not await self.areas.start():
            with contextlib.suppress(ClusterError, OSError):
                await self.backups.backup(trigger="initial")
        await self._register()
        self._tasks.append(asyncio.create_task(self._run_ticks()))
        self._tasks.append(asyncio.create_task(self.backups.run()))

    async def _register(self) -> None:
        """Register this blade (and its management API, which peers ask for a graceful release)
        in the controller's client registry. The registry is soft state: a restarted controller
        starts with an empty one, so blades register again every ``REGISTER_EVERY`` seconds
        (idempotent; the first registration time is kept)."""
        attrs = {"api": self.api_url, "cluster": self.cfg.group, "slot": self.bp.settings.slot}
        await self.control.register_client(self.me, group=self.cfg.group, role="blade", attrs=attrs)
        self._registered_at = time.monotonic()

    async def close(self) -> None:
        # let a tick that is reading the portion finish: its I/O runs in a thread through the
        # block processor's pools, and a thread left waiting on a closed pool would hold up exit
        self._stopping.set()
        if self._tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._tasks[0]), 2 * self.cfg.heartbeat_interval + 5.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.takeovers.close()

    # -- the tick ------------------------------------------------------------------------------

    async def _run_ticks(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.tick()
                self.view.tick_error = None
                if time.monotonic() - self._registered_at > REGISTER_EVERY:
                    try:
                        await self._register()
                    except Exception as exc:  # the controller is away: try again in a second
                        self._registered_at = time.monotonic() - REGISTER_EVERY + 1.0
                        log.info("%s: registering with the controller: %s", self.me, exc)
            except (OSError, PortionError, ClusterError, ValueError, KeyError) as exc:
                self.view.tick_error = str(exc)
                log.warning("cluster tick: %s", exc)
            await asyncio.sleep(self.cfg.heartbeat_interval)

    async def tick(self) -> None:
        self.ticks += 1
        if self.bp.failed is not None:
            await self.takeovers.failed_tick(time.monotonic())
            return
        try:
            group, slots = await asyncio.to_thread(self.view.read, self.areas.store)
        except (OSError, PortionError) as exc:
            await self.areas.failed(f"reading the {self.areas.active} area failed: {exc}")
            return
        now = time.monotonic()
        self.view.look(slots, self.bp.last_status, now)
        await self._check_other_area(now)
        self.view.group, self.view.slots = group, slots
        self.takeovers.forget_released(now)
        self.takeovers.adopt_startup_ownership()
        await self.takeovers.enforce_fencing()
        if self.areas.active == "backup":
            await self.areas.maybe_switch_back()
        await self.takeovers.act(now)

    async def _check_other_area(self, now: float) -> None:
        """A peer that looks silent in the active area may be writing the other one (a switch in
        progress): read it there too before anyone declares it dead."""
        suspects = self.view.suspects(now)
        other = self.areas.other
        if not suspects or other is None:
            return
        try:
            _group, slots = await asyncio.to_thread(self.view.read, other)
        except (OSError, PortionError):
            return
        for m in suspects:  # point-in-time copies there are older: only a newer slot counts
            self.view.liveness.observe_slot(slots.get(m), now=now, only_if_newer=True)
