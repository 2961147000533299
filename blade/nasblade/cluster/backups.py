"""The cluster member's processor-information backups (claims 4, 8, 9, 13, 15-19).

A backup is a copy-engine job at the controller (``copy_portion``): the group's portion of the
processor-information LU copied, as a point-in-time copy, to the same offset of the backup LU;
with ``cross_group``, other groups' portions too (claim 9). Each copy is a ``BackupRecord``
appended to the group record (claim 13). ``Backups`` starts them on demand (the blade API),
and, on the group's leader (``GroupView.leader``) while the group runs on its portion, on its
own (``run``): at the policy's interval, deferred while the controller is loaded, throttled
once the last backup reaches the policy's maximum age (``nasblade.cluster.core.decide_backup``).
The area failover (``nasblade.cluster.areas``) uses ``copy_portion`` the other way round to
re-form the portion from the backup area.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

from nasblade.blockproc.core import BlockProcessor
from nasblade.cluster import core
from nasblade.cluster.config import ClusterConfig
from nasblade.cluster.liveness import GroupView
from nasblade.cluster.records import (
    BackupRecord,
    ClusterError,
    SchedulerFigures,
    SchedulerState,
    to_json,
)
from nasblade.controller.asyncclient import AsyncControlClient
from nasblade.procinfo.portion import GroupRecord, portion_offset

COPY_TIMEOUT = 120.0

UpdateGroup = Callable[[Callable[[GroupRecord], None]], Awaitable[GroupRecord]]


async def copy_portion(control: AsyncControlClient, cfg: ClusterConfig, me: str, *, kind: str, trigger: str,
                       group: str, index: int, source: str, target: str, rate: int, load: float | None,
                       deferrals: int) -> BackupRecord:
    """Copy portion ``index`` (of ``group``) from LU ``source`` to LU ``target`` through the
    controller's copy engine; any controller error ends up in the record, not a traceback."""
    offset = portion_offset(index, cfg.portion_size)
    start = time.time()
    job_id: str | None = None
    try:
        job = await control.copy(source, target, cfg.portion_size, source_offset=offset, target_offset=offset,
                                 rate_limit=rate)
        job_id = job.id
        job = await control.wait_copy(job.id, timeout=COPY_TIMEOUT)
        result, nbytes, error = job.state, job.bytes_done, job.error
    except Exception as exc:  # the controller's refusal or absence is the record's result
        result, nbytes, error = "failed", 0, str(exc)
    return BackupRecord(id=uuid.uuid4().hex[:12], kind=kind, trigger=trigger, portion=group, portion_index=index,
                        source=f"{source}@{offset}", target=f"{target}@{offset}", requested_by=me, start=start,
                        end=time.time(), bytes=nbytes, result=result, error=error, load_at_start=load,
                        deferrals=deferrals, rate_limit=rate, job_id=job_id)


class Backups:
    """Backups of this blade's group: on demand (``backup``) and scheduled (``run``)."""

    def __init__(self, bp: BlockProcessor, control: AsyncControlClient, cfg: ClusterConfig, view: GroupView, *,
                 active_area: Callable[[], str], update_group: UpdateGroup) -> None:
        self.bp = bp
        self.control = control
        self.cfg = cfg
        self.view = view
        self._active_area = active_area
        self._update_group = update_group
        self.running = False
        self.last_ok: float | None = None
        """Monotonic time of this blade's last successful backup of its group's portion."""
        self.deferrals = 0
        self.max_deferred_age = 0.0
        """The oldest the group's last backup was when the scheduler deferred one (stays below
        the policy's ``maxAge``: load never defers a backup past the maximum age)."""
        self.scheduler = SchedulerState(action="wait", reason="starting")

    async def backup(self, *, trigger: str, cross_group: list[str] | None = None, rate: int = 0,
                     load: float | None = None, deferrals: int = 0) -> list[BackupRecord]:
        """Copy this group's portion (and the ``cross_group`` portions, claim 9) into their backup
        areas as point-in-time copies; record each in this group's record (claim 13)."""
        targets = [(self.cfg.group, self.cfg.group_index)]
        known = {c.group: c.index for c in self.cfg.cross_group}
        for g in cross_group or []:
            if g not in known:
                raise ClusterError(f"{g} is not a cross-group backup target of {self.cfg.group}"
                                   f" (configured: {', '.join(known) or 'none'})", status=400)
            targets.append((g, known[g]))
        if self.running:
            raise ClusterError("a backup is already running on this blade")
        self.running = True
        try:
            records = []
            for group, index in targets:
                records.append(await copy_portion(self.control, self.cfg, self.view.me, kind="backup",
                                                  trigger=trigger, group=group, index=index,
                                                  source=self.cfg.procinfo_lu, target=self.cfg.backup_lu,
                                                  rate=rate, load=load, deferrals=deferrals))
            if any(r.portion == self.cfg.group and r.succeeded for r in records):
                self.last_ok = time.monotonic()
            if trigger != "initial":
                stored = [to_json(r) for r in records]

                def add(g: GroupRecord) -> None:
                    g.backups = [*g.backups, *stored][-core.BACKUP_HISTORY_KEEP :]

                with contextlib.suppress(ClusterError):
                    await self._update_group(add)
            return records
        finally:
            self.running = False

    async def run(self) -> None:
        """The scheduler: decide a few times per interval until cancelled."""
        policy = self.cfg.backup
        first_due = time.monotonic() + policy.interval
        while True:
            await asyncio.sleep(min(1.0, max(0.05, policy.interval / 4)))
            try:
                await self.schedule_once(policy, first_due)
            except (ClusterError, OSError) as exc:
                self.scheduler = SchedulerState(action="error", reason=str(exc))

    async def schedule_once(self, policy: core.BackupPolicy, first_due: float) -> None:
        leader = self.view.leader()
        if leader != self.view.me or self.running or self._active_area() != "primary":
            self.scheduler = SchedulerState(action="wait", reason="not the group's backup leader"
                                            if leader != self.view.me else "busy or running on the backup area")
            return
        load = core.load_ratio(self.bp.load)
        now = time.monotonic()
        last = self.last_success(now)
        action, why = core.decide_backup(policy=policy, now=now, last_success=last, first_due=first_due, load=load)
        if action is core.BackupAction.DEFER:
            self.max_deferred_age = max(self.max_deferred_age, now - (first_due if last is None else last))
        self.scheduler = SchedulerState(action=action.value, reason=why, figures=SchedulerFigures(
            load=load, deferrals=self.deferrals, max_deferred_age=self.max_deferred_age))
        if action is core.BackupAction.DEFER:
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
        deferrals, self.deferrals = self.deferrals, 0
        cross = [c.group for c in self.cfg.cross_group]
        records = await self.backup(trigger=trigger, cross_group=cross, rate=rate, load=load, deferrals=deferrals)
        if not any(r.succeeded for r in records):
            # try again at the next interval, not in a tight loop
            self.last_ok = now

    def last_success(self, now: float) -> float | None:
        """Monotonic time of the group's last successful backup of its own portion: this blade's,
        or any blade's recorded in the group record (the backup leader may have changed)."""
        best = self.last_ok
        wall = time.time()
        for r in self.view.group.backups:
            if r.get("kind", "backup") == "backup" and r.get("portion") == self.cfg.group \
                    and r.get("result") == "succeeded" and r.get("end"):
                t = now - (wall - float(r["end"]))
                best = t if best is None else max(best, t)
        return best
