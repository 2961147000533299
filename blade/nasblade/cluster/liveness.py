"""``GroupView``: what one blade knows of its cluster group -- the group record and its peers'
slots as last read from the active processor-information area, and who is alive.

The cluster member (``nasblade.cluster.member``) reads the area every tick and hands the result
here; liveness comes from the heartbeat counters (``nasblade.cluster.core.Liveness``), this
blade's own from its file processor's last status (claim 2). A blade that could not look for a
while (its read stalled while the controller restarted, or it was paused) does not count that
time as anyone's silence (``look``). The takeover (``nasblade.cluster.takeover``), the area
failover (``nasblade.cluster.areas``) and the backup scheduler (``nasblade.cluster.backups``)
all decide on this one view.
"""

from __future__ import annotations

import logging
import time

from nasblade.cluster import core
from nasblade.cluster.config import ClusterConfig
from nasblade.procinfo.portion import BladeStatus, GroupRecord, PortionStore

log = logging.getLogger(__name__)


class GroupView:
    def __init__(self, cfg: ClusterConfig, me: str) -> None:
        self.cfg = cfg
        self.me = me
        self.liveness = core.Liveness(timeout=cfg.failure_timeout)
        self.group = GroupRecord()
        self.slots: dict[str, BladeStatus] = {}
        self.tick_error: str | None = None
        """Why the last tick failed (``None``: it did not); a reason not to take anything over."""
        self._last_look: float | None = None
        """Monotonic time the last tick finished reading the group (``look``'s gap rule)."""

    def read(self, store: PortionStore) -> tuple[GroupRecord, dict[str, BladeStatus]]:
        """The group record and the peers' slots in ``store`` (blocking: run in a thread)."""
        group = store.read_group()
        slots = {}
        for i, m in enumerate(self.cfg.members):
            if m != self.me and i < store.slot_count:
                st = store.read_slot(i)
                if st is not None and st.blade == m:
                    slots[m] = st
        return group, slots

    def look(self, slots: dict[str, BladeStatus], own: BladeStatus | None, now: float) -> None:
        """Count the heartbeats just read (``slots``, and this blade's ``own`` last status)."""
        lost = 0.0 if self._last_look is None else now - self._last_look - self.cfg.failure_timeout / 2
        if lost > 0:
            # this blade could not look for a while (its read stalled while the controller
            # restarted, or it was paused): silence over that time does not count (Liveness.gap)
            log.warning("%s: no look at the group for %.2fs; %.2fs of it not counted as anyone's silence",
                        self.me, now - (self._last_look or now), lost)
            self.liveness.gap(lost, now=now)
        self._last_look = now
        if own is not None:
            self.liveness.observe(self.me, counter=own.heartbeat_counter, state=own.state, now=now)
        for st in slots.values():
            self.liveness.observe_slot(st, now=now)

    def suspects(self, now: float) -> list[str]:
        """Peers silent for half the failure timeout: read them in the other area too."""
        return [m for m in self.cfg.members if m != self.me
                and (self.liveness.age(m, now=now) or 0.0) > self.cfg.failure_timeout / 2]

    def alive(self, now: float | None = None) -> set[str]:
        now = time.monotonic() if now is None else now
        return {m for m in self.cfg.members if self.liveness.alive(m, now=now)}

    def leader(self) -> str | None:
        """The group's leader: its first live member (re-forms the portion, runs the backups)."""
        alive = self.alive()
        return next((m for m in self.cfg.members if m in alive), None)
