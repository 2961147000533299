"""The cluster member's area failover (claims 5, 11, 20): which area holds the group's
processor information, the portion (``primary``) or its copy in the backup LU (``backup``).

A read or write of the group record that fails in the portion switches the blade to the
backup area (``failed``): formatted if it never was, the group record as this blade last saw
it merged in, its own slot written there. While on the backup area the blade probes the
portion (``maybe_switch_back``); once it answers, the group's leader re-forms it from the
backup area (``reform``: a copy-engine restore, ``nasblade.cluster.backups.copy_portion``) and
switches back; the other members follow when the group record there shows that restore, or
when the leader's slot there is newer than in the backup area. ``update_group`` is the one way
the member writes the group record: in the active area, switching area on failure. The block
processor is told where its slot now lives with ``BlockProcessor.use_area``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from nasblade.blockproc.core import BlockProcessor
from nasblade.cluster import core
from nasblade.cluster.backups import copy_portion
from nasblade.cluster.config import ClusterConfig
from nasblade.cluster.liveness import GroupView
from nasblade.cluster.records import AreaSwitch, BackupRecord, ClusterError, to_json
from nasblade.controller.asyncclient import AsyncControlClient
from nasblade.procinfo.portion import (
    HEADER_REGION,
    GroupRecord,
    PortionError,
    PortionStore,
    portion_offset,
)

log = logging.getLogger(__name__)

AREA_PROBE_INTERVAL = 0.5
"""Seconds between looks at the portion while the group runs on the backup area."""


class Areas:
    def __init__(self, bp: BlockProcessor, control: AsyncControlClient, cfg: ClusterConfig, view: GroupView) -> None:
        self.bp = bp
        self.control = control
        self.cfg = cfg
        self.view = view
        self.active = "primary"
        self.primary: PortionStore | None = None
        self.backup: PortionStore | None = None
        self.events: deque[AreaSwitch] = deque(maxlen=64)
        self.switched_at = 0.0
        """Wall time of the last switch to the backup area."""
        self._last_probe = 0.0

    async def start(self) -> bool:
        """Open both areas; ``True`` when the backup area is formatted already."""
        if self.bp.portion is None:
            raise ValueError("cluster groups need the processor-information LU")
        self.primary = self.bp.portion
        self.backup = await self.bp.open_area(self.cfg.backup_lu, size=self.cfg.portion_size,
                                              offset=portion_offset(self.cfg.group_index, self.cfg.portion_size))
        return await asyncio.to_thread(self.backup.is_formatted)

    @property
    def store(self) -> PortionStore:
        """The active area."""
        store = self.primary if self.active == "primary" else self.backup
        assert store is not None
        return store

    @property
    def other(self) -> PortionStore | None:
        """The area that is not active."""
        return self.backup if self.active == "primary" else self.primary

    async def update_group(self, change: Callable[[GroupRecord], None]) -> GroupRecord:
        """Read-modify-write the group record in the active area (switching area on failure).
        Updates are not lost: ``PortionStore.update_group`` is a compare-and-swap."""
        for _attempt in range(2):
            try:
                self.view.group = await self.bp.update_group(change, self.store)
                return self.view.group
            except (OSError, PortionError) as exc:
                await self.failed(f"writing the group record to the {self.active} area failed: {exc}")
        raise ClusterError("the group record cannot be written in either area", status=503)

    async def failed(self, why: str) -> None:
        """The active area failed: go on in the backup area (an error when that is the one failing)."""
        if self.active == "backup":
            log.error("%s: backup area failing too: %s", self.view.me, why)
            raise ClusterError(why, status=503)
        assert self.backup is not None
        backup = self.backup
        cached, own = self.view.group, self.bp.last_status
        slot = self.bp.settings.slot

        def switch() -> None:
            if not backup.is_formatted():
                backup.format(group=self.cfg.group, index=self.cfg.group_index)
            backup.update_group(_absorb(cached))
            if own is not None:
                backup.write_slot(slot, own)

        await asyncio.to_thread(switch)
        self.active = "backup"
        self.bp.use_area(backup, "backup")
        self.switched_at = time.time()
        self.events.append(AreaSwitch(to="backup", reason=why, time=self.switched_at))
        log.warning("%s: processor information now on the backup area: %s", self.view.me, why)

    async def maybe_switch_back(self) -> None:
        """On the backup area: switch back to the portion once it answers (see the module doc)."""
        now = time.monotonic()
        if now - self._last_probe < AREA_PROBE_INTERVAL:
            return
        self._last_probe = now
        assert self.primary is not None and self.backup is not None
        primary = self.primary
        try:
            await asyncio.to_thread(primary.read_region, HEADER_REGION)
        except (OSError, PortionError):
            return
        if self.view.leader() == self.view.me:
            await self.reform()
            return
        try:
            group, slots = await asyncio.to_thread(self.view.read, primary)
        except (OSError, PortionError):
            return
        if any(r.get("kind") == "restore" and r.get("result") == "succeeded"
               and float(r.get("end") or 0.0) >= self.switched_at for r in group.backups):
            await self._switch_to_primary("the portion was re-formed")
            return
        # the leader runs on the portion already (it was restarted after the portion came
        # back, so it never switched): its slot there is newer than its slot here. Both
        # heartbeat times come from the leader's own clock, so comparing them is sound.
        leader = self.view.leader()
        there, here = slots.get(leader or ""), self.view.slots.get(leader or "")
        if there is not None and there.active_area == "primary" \
                and (here is None or there.heartbeat_time > here.heartbeat_time):
            await self._switch_to_primary(f"{leader}, the group's leader, runs on the portion")

    async def reform(self) -> BackupRecord:
        """Copy the backup area into the (newly formed) portion and switch back to it."""
        if self.active != "backup":
            raise ClusterError("the group is running on its portion already")
        rec = await copy_portion(self.control, self.cfg, self.view.me, kind="restore", trigger="reform",
                                 group=self.cfg.group, index=self.cfg.group_index, source=self.cfg.backup_lu,
                                 target=self.cfg.procinfo_lu, rate=0, load=None, deferrals=0)
        if rec.succeeded:
            await self._switch_to_primary("re-formed from the backup area", restore=rec)
        return rec

    async def _switch_to_primary(self, why: str, *, restore: BackupRecord | None = None) -> None:
        assert self.primary is not None and self.backup is not None
        primary, backup = self.primary, self.backup
        own, slot = self.bp.last_status, self.bp.settings.slot

        def switch() -> None:
            primary.open(group=self.cfg.group, index=self.cfg.group_index)
            other = backup.read_group()
            if restore is not None:
                other = core.merge_groups(other, GroupRecord(backups=[to_json(restore)]))
            primary.update_group(_absorb(other))
            if own is not None:
                primary.write_slot(slot, own)

        try:
            await asyncio.to_thread(switch)
        except (OSError, PortionError) as exc:
            log.warning("%s: switching back to the portion failed: %s", self.view.me, exc)
            return
        self.active = "primary"
        self.bp.use_area(primary, "primary")
        self.events.append(AreaSwitch(to="primary", reason=why, time=time.time()))
        log.info("%s: processor information back on the portion: %s", self.view.me, why)


def _absorb(other: GroupRecord) -> Callable[[GroupRecord], None]:
    """A group-record change that merges ``other`` in (``core.merge_groups``)."""

    def change(group: GroupRecord) -> None:
        merged = core.merge_groups(group, other)
        group.ownership, group.backups = merged.ownership, merged.backups

    return change
