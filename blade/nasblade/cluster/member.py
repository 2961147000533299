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
import os
import time
from pathlib import Path
from typing import Any

from nasblade.bladeapi.client import BladeAPIError
from nasblade.blockproc.core import LISTEN_KEYS, BlockProcessor
from nasblade.cluster import config as config_file
from nasblade.cluster.areas import Areas
from nasblade.cluster.backups import Backups
from nasblade.cluster.config import ClusterConfig
from nasblade.cluster.liveness import GroupView
from nasblade.cluster.records import ClusterError
from nasblade.cluster.takeover import Takeovers
from nasblade.controller.asyncclient import AsyncControlClient
from nasblade.fileproc.agent import fs_spec
from nasblade.procinfo.portion import PortionError

log = logging.getLogger(__name__)

REGISTER_EVERY = 5.0
"""Seconds between re-registrations with the controller (``ClusterMember._register``)."""


class ClusterMember:
    def __init__(self, bp: BlockProcessor, control: AsyncControlClient, cfg: ClusterConfig, *,
                 api_token: str | None = None, config_path: str | None = None) -> None:
        self.bp = bp
        self.config_path = config_path
        """The ``--cluster-config`` file, rewritten by ``reconfigure`` where it is writable."""
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
        try:  # a restarted container: the configuration (the pod's annotation) is newer than its flags
            for name, spec in _specs(cfg, bp).items():
                bp.define_fs(name, spec)
        except ClusterError as exc:
            raise ValueError(f"cluster config: {exc}") from exc
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

    # -- the group's file systems, changed while the blade runs ----------------------------------

    async def reconfigure(self, new: ClusterConfig) -> dict[str, Any]:
        """Take the group's new list of file systems without a restart (``PUT
        /v1/cluster/config``: the operator sends it to every blade when the DiskArray's file
        systems of this group change, and puts the same JSON in the pod's annotation, which is
        what a restarted container reads; ``nasblade up``'s configuration file is rewritten,
        ``_save``).

        A new file system needs its ``serve`` section (address, ports, exports); its home blade
        takes it at its next tick, since nobody owns it yet (``core.plan_takeovers``). New
        exports of a file system this blade serves apply at once (the file processor swaps
        them in place, ``BlockProcessor.apply_exports``), and so do a new address or new ports
        (new listeners, the accepted connections kept: ``BlockProcessor.apply_listen``). A file
        system no longer listed is released first if this blade serves it
        (commit, unmount, flush, reservation and ownership record dropped: its LU is free), then
        forgotten. Everything else in the configuration (members, timing, the portion) is fixed
        for the blade's life: a change there is refused (409), to be applied by a restart.
        Returns what changed."""
        now, then = new.to_json(), self.cfg.to_json()
        differ = sorted(k for k in now.keys() | then.keys() if k != "fileSystems" and now.get(k) != then.get(k))
        if differ:
            raise ClusterError(f"only fileSystems change while a blade runs; {', '.join(differ)} differ:"
                               " restart the blade to apply that", status=409)
        old = {f.policy.name: f for f in self.cfg.file_systems}
        wanted = {f.policy.name: f for f in new.file_systems}
        specs = _specs(new, self.bp)
        for name, f in wanted.items():
            if name not in specs:
                raise ClusterError(f"fileSystems {name}: no serve section (address, ports, exports) and no"
                                   " --fs-spec: this blade could not serve it", status=400)
            was = old.get(name)
            if was is not None and was.policy.lu != f.policy.lu and name in self.takeovers.serving:
                raise ClusterError(f"{name} is served from LU {was.policy.lu}: release it before moving it to"
                                   f" {f.policy.lu}", status=409)
        removed = sorted(n for n in old if n not in wanted)
        for name in removed:  # served here, being taken over, or neither: nothing of it is kept
            serving = name in self.takeovers.serving or name in self.takeovers.pending
            await self.takeovers.forget(name)
            if serving:
                log.info("%s: released %s: no longer a file system of group %s", self.me, name, self.cfg.group)
        try:
            for name in removed:
                self.bp.forget_fs(name)
            for name, spec in specs.items():
                self.bp.define_fs(name, spec)
                self.takeovers.restore(name)
        except ValueError as exc:
            raise ClusterError(str(exc), status=409) from exc
        changed = sorted(n for n, f in wanted.items() if n in old and f != old[n])
        exports: list[str] = []
        moved: list[str] = []
        for name in changed:  # what this blade serves: new exports and listeners at once, in place
            if name not in self.takeovers.serving:
                continue
            before, after = old[name].serve, wanted[name].serve
            if before.get("exports") != after.get("exports"):
                try:
                    if await self.bp.apply_exports(name):
                        exports.append(name)
                except BladeAPIError as exc:
                    raise ClusterError(f"the file processor kept the old exports of {name}: {exc}") from exc
            if any(before.get(k) != after.get(k) for k in LISTEN_KEYS):
                try:
                    if await self.bp.apply_listen(name):
                        moved.append(name)
                except BladeAPIError as exc:
                    raise ClusterError(f"the file processor kept the old listeners of {name}: {exc}") from exc
        self.cfg = self.view.cfg = self.areas.cfg = self.backups.cfg = self.takeovers.cfg = new
        self._save(new)
        added = sorted(set(wanted) - set(old))
        if added or removed or changed:
            log.info("%s: group %s file systems now %s (added %s, removed %s, changed %s)", self.me,
                     new.group, sorted(wanted), added, removed, changed)
        return {"fileSystems": sorted(wanted), "added": added, "removed": removed, "changed": changed,
                "exportsApplied": exports, "listenApplied": moved}

    def _save(self, cfg: ClusterConfig) -> None:
        """Keep the new configuration for a restart: ``nasblade up``'s file is rewritten in place
        (atomically; the group's blades write the same JSON). On Kubernetes the file is the
        pod's annotation, read-only here: the operator patches the annotation instead."""
        if self.config_path is None:
            return
        path = Path(self.config_path)
        if not os.access(path.parent, os.W_OK) or not os.access(path, os.W_OK):
            return
        try:
            config_file.save(cfg, path, writer=self.me)
        except OSError as exc:
            log.warning("%s: the new cluster configuration is in use but not saved to %s: %s", self.me, path, exc)

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


def _specs(cfg: ClusterConfig, bp: BlockProcessor) -> dict[str, dict[str, Any]]:
    """Each file system's block-processor spec: the configuration's ``serve`` section when it
    has one (the operator's), else the spec the blade was started with (``--fs-spec``, which
    is what ``nasblade up`` gives). A ``serve`` section the file processor would refuse raises
    ``ClusterError`` (400), before anything changed."""
    out: dict[str, dict[str, Any]] = {}
    for f in cfg.file_systems:
        name = f.policy.name
        if f.serve:
            try:
                fs_spec({"name": name, "device": f"nbd+unix:///{f.policy.lu}?socket=/dev/null", **f.serve})
            except (ValueError, KeyError, TypeError) as exc:
                raise ClusterError(f"fileSystems {name}.serve: {exc}", status=400) from exc
            out[name] = {**f.serve, "lu": f.policy.lu}
        elif name in bp.settings.fs_specs:
            out[name] = {**bp.settings.fs_specs[name], "lu": f.policy.lu}
    return out
