"""The sans-I/O core of cluster groups: liveness, takeover planning, check-takeover, backup
triggers and the merge of two group records.

Nothing here touches a device, a socket or the clock: callers pass ``now`` (monotonic seconds)
and what they read from the portion (``nasblade.procinfo.BladeStatus`` slots and the
``GroupRecord``); the functions return decisions. ``nasblade.cluster.member.ClusterMember``
(inside the block processor) feeds it on every heartbeat tick and carries the decisions out;
the unit tests in ``tests/cluster/test_core.py`` drive it directly.

Rules (see docs/cluster-groups.md):

- **Liveness** is judged on the heartbeat *counter* as seen by the observer's own monotonic
  clock, never on the writer's wall clock: a blade is alive while its counter changed (went up,
  or started again after a restart) less than ``failure_timeout`` ago. A blade first seen is
  given the full timeout. A slot whose state is ``stopped`` (clean shutdown) or ``failed`` (its
  block processor gave the blade up: ``BlockProcessor.fail``) is dead at once.
  A slot read from the *other* area (the backup area, or the portion while running on the
  backup) is evidence of life only when it is newer than every slot seen from that blade
  (writer's heartbeat time; both copies come from the same writer's clock): the other area
  holds point-in-time copies whose older counters would otherwise look like a change and keep
  a dead blade alive for ever.
  Silence is counted only while the observer looks: between two of its looks at most half the
  failure timeout counts (``Liveness.gap``). When its own reads stalled -- the controller
  restarting, the observer paused -- the peers' heartbeats stalled with them, and a peer is not
  declared dead for a silence nobody could have seen end.
- **Takeover planning**: a file system whose recorded owner is dead goes to the surviving
  member chosen deterministically: fewest file systems (counting the ones planned in this same
  round, file systems taken in name order), then the lowest member index. A file system with no
  owner goes to its home blade if that blade is alive, else to the same choice. Every member
  runs the same rule on the same inputs, so they agree without talking; the controller's
  reservation epochs settle any race (the later, higher epoch wins and fences the other).
- **Backups** (claims 17-19): ``decide_backup`` maps (due?, load below threshold?, overdue?)
  through ``BACKUP_TABLE`` to start / start throttled / defer / wait.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nasblade.procinfo.portion import BladeStatus, GroupRecord, Ownership

QUEUE_DEPTH_FULL = 8.0
"""A mean controller queue depth at which the controller counts as fully loaded (load 1.0)."""

BACKUP_HISTORY_KEEP = 32
"""Backup records kept in the group record (oldest dropped first)."""


# -- liveness --------------------------------------------------------------------------------


@dataclass
class _Seen:
    counter: int
    changed: float
    state: str
    heartbeat_time: float = 0.0


DEAD_STATES = frozenset({"stopped", "failed"})
"""Slot states that mean "dead now", whatever the heartbeat's age."""


@dataclass
class Liveness:
    """Tracks members' heartbeat counters as observed at monotonic times."""

    timeout: float
    _seen: dict[str, _Seen] = field(default_factory=dict)

    def observe(self, blade: str, *, counter: int, state: str, now: float,
                heartbeat_time: float = 0.0, only_if_newer: bool = False) -> None:
        """Record ``blade``'s heartbeat as read at ``now``. ``only_if_newer``: the slot comes from
        the other area and counts only when its ``heartbeat_time`` is newer than any seen."""
        seen = self._seen.get(blade)
        if only_if_newer and seen is not None and heartbeat_time <= seen.heartbeat_time:
            return
        if seen is None or counter != seen.counter:  # a restarted file processor counts from 1 again
            self._seen[blade] = _Seen(counter, now, state, max(heartbeat_time, 0.0 if seen is None
                                                                 else seen.heartbeat_time))
        else:
            seen.state = state
            seen.heartbeat_time = max(seen.heartbeat_time, heartbeat_time)

    def observe_slot(self, status: BladeStatus | None, *, now: float, only_if_newer: bool = False) -> None:
        if status is not None:
            self.observe(status.blade, counter=status.heartbeat_counter, state=status.state, now=now,
                         heartbeat_time=status.heartbeat_time, only_if_newer=only_if_newer)

    def gap(self, lost: float, *, now: float) -> None:
        """The observer could not look for ``lost`` seconds (up to ``now``): nobody's silence
        counts over them (every member's last change moves ``lost`` later, never past ``now``)."""
        for seen in self._seen.values():
            seen.changed = min(seen.changed + lost, max(seen.changed, now))

    def age(self, blade: str, *, now: float) -> float | None:
        """Seconds since ``blade``'s counter last changed (``None``: never seen)."""
        seen = self._seen.get(blade)
        return None if seen is None else now - seen.changed

    def state(self, blade: str) -> str | None:
        seen = self._seen.get(blade)
        return None if seen is None else seen.state

    def alive(self, blade: str, *, now: float) -> bool:
        seen = self._seen.get(blade)
        if seen is None or seen.state in DEAD_STATES:
            return False
        return now - seen.changed < self.timeout

    def forget(self, blade: str) -> None:
        self._seen.pop(blade, None)


# -- takeover planning -----------------------------------------------------------------------


@dataclass(frozen=True)
class FsPolicy:
    """One file system of the group: its name, its LU and its home (default) blade."""

    name: str
    lu: str
    home: str


@dataclass(frozen=True)
class Takeover:
    """A planned takeover: ``blade`` should take ``fs`` (``reason`` says why)."""

    fs: str
    blade: str
    reason: str
    previous: str | None


def choose_survivor(candidates: Iterable[str], *, members: Sequence[str], owned: Mapping[str, int]) -> str | None:
    """The least-loaded candidate (fewest file systems), then the lowest member index."""
    pool = [c for c in candidates if c in members]
    if not pool:
        return None
    return min(pool, key=lambda b: (owned.get(b, 0), members.index(b)))


def plan_takeovers(
    *,
    members: Sequence[str],
    file_systems: Sequence[FsPolicy],
    ownership: Mapping[str, Ownership],
    alive: set[str],
) -> list[Takeover]:
    """Every takeover the group needs now, whoever should do it (see the module docstring)."""
    owned: dict[str, int] = {m: 0 for m in members}
    for holder in ownership.values():
        if holder.blade in alive:
            owned[holder.blade] = owned.get(holder.blade, 0) + 1
    out: list[Takeover] = []
    for fs in sorted(file_systems, key=lambda f: f.name):
        own = ownership.get(fs.name)
        if own is not None and own.blade in alive:
            continue
        if own is None and fs.home in alive:
            survivor: str | None = fs.home
            reason = "unowned; its home blade is alive"
        else:
            survivor = choose_survivor((m for m in members if m in alive), members=members, owned=owned)
            reason = "unowned; its home blade is not alive" if own is None else f"owner {own.blade} is silent"
        if survivor is None:
            continue
        owned[survivor] = owned.get(survivor, 0) + 1
        out.append(Takeover(fs=fs.name, blade=survivor, reason=reason, previous=None if own is None else own.blade))
    return out


@dataclass(frozen=True)
class CheckResult:
    fs: str
    possible: bool
    owner: str | None
    epoch: int | None
    reasons: tuple[str, ...]
    mode: str
    """``none`` (already ours or impossible), ``takeover`` (owner silent) or ``graceful``
    (owner alive: it is asked to release first)."""

    def to_json(self) -> dict[str, Any]:
        return {"fileSystem": self.fs, "possible": self.possible, "owner": self.owner, "epoch": self.epoch,
                "mode": self.mode, "reasons": list(self.reasons)}


def check_takeover(
    *,
    me: str,
    fs: FsPolicy,
    ownership: Mapping[str, Ownership],
    alive: set[str],
    blockers: Sequence[str] = (),
) -> CheckResult:
    """Could ``me`` take ``fs`` over now? ``blockers`` are run-time reasons found by the caller
    (controller unreachable, LU missing, processor information unreadable)."""
    own = ownership.get(fs.name)
    reasons = list(blockers)
    if me not in alive:
        reasons.append(f"{me} is not alive: its file processor's heartbeat is not fresh")
    if own is not None and own.blade == me:
        reasons.append(f"{me} already owns {fs.name} (epoch {own.epoch})")
    mode = "none"
    if not reasons:
        mode = "graceful" if own is not None and own.blade in alive else "takeover"
    return CheckResult(fs=fs.name, possible=not reasons, owner=None if own is None else own.blade,
                       epoch=None if own is None else own.epoch, reasons=tuple(reasons), mode=mode)


# -- group records across two areas -----------------------------------------------------------


def merge_groups(a: GroupRecord, b: GroupRecord) -> GroupRecord:
    """Union of two group records: per file system the ownership with the higher epoch, the
    backup records of both (by id, newest ``BACKUP_HISTORY_KEEP``). Used when the blades switch
    between the portion and its backup area so no ownership or backup record is lost."""
    ownership = dict(a.ownership)
    for fs, own in b.ownership.items():
        if fs not in ownership or own.epoch > ownership[fs].epoch:
            ownership[fs] = own
    by_id: dict[str, dict[str, Any]] = {}
    for rec in [*a.backups, *b.backups]:
        key = str(rec["id"]) if rec.get("id") else json.dumps(rec, sort_keys=True)
        by_id[key] = rec
    backups = sorted(by_id.values(), key=lambda r: (float(r.get("start") or r.get("time") or 0.0), str(r.get("id"))))
    return GroupRecord(ownership=ownership, backups=backups[-BACKUP_HISTORY_KEEP:],
                       generation=max(a.generation, b.generation))


def same_group(a: GroupRecord, b: GroupRecord) -> bool:
    return a.to_json() == b.to_json()


# -- backup triggers ---------------------------------------------------------------------------


class BackupAction(enum.Enum):
    WAIT = "wait"
    START = "start"
    START_THROTTLED = "start-throttled"
    DEFER = "defer"


@dataclass(frozen=True)
class BackupPolicy:
    interval: float
    load_threshold: float
    max_age: float
    throttle_rate: int = 8 << 20
    """bytes/s for a copy started while the load is unknown or at the maximum age."""


# (due, load below threshold (None = unknown), overdue) -> action
BACKUP_TABLE: dict[tuple[bool, bool | None, bool], BackupAction] = {
    (False, True, False): BackupAction.WAIT,
    (False, False, False): BackupAction.WAIT,
    (False, None, False): BackupAction.WAIT,
    (True, True, False): BackupAction.START,
    (True, True, True): BackupAction.START,
    (True, False, False): BackupAction.DEFER,
    (True, False, True): BackupAction.START_THROTTLED,
    (True, None, False): BackupAction.START_THROTTLED,
    (True, None, True): BackupAction.START_THROTTLED,
}


def load_ratio(load: Mapping[str, Any]) -> float | None:
    """The controller's load as one figure in 0..1: the larger of the dirty-cache ratio and the
    mean queue depth over ``QUEUE_DEPTH_FULL``; ``None`` when the figures are missing."""
    if not load or "queueDepth" not in load:
        return None
    qd = float(load.get("queueDepth") or 0.0)
    dirty = float(load.get("dirtyRatio") or 0.0)
    return max(0.0, min(1.0, max(dirty, qd / QUEUE_DEPTH_FULL)))


def decide_backup(*, policy: BackupPolicy, now: float, last_success: float | None,
                  first_due: float, load: float | None) -> tuple[BackupAction, str]:
    """Should the interval/load-aware scheduler start a backup now?

    ``last_success`` is the monotonic time of the last successful backup (``None``: none since
    start-up, in which case the first one is due at ``first_due``). The maximum age counts
    from the last success (or from ``first_due``).
    """
    since = first_due if last_success is None else last_success + policy.interval
    due = now >= since
    base = first_due if last_success is None else last_success
    overdue = now - base >= policy.max_age
    below = None if load is None else load < policy.load_threshold
    action = BACKUP_TABLE[(due, below, overdue and due)]
    if action is BackupAction.WAIT:
        return action, f"next backup in {since - now:.1f}s"
    if action is BackupAction.DEFER:
        return action, f"controller load {load:.2f} is at or above the threshold {policy.load_threshold:.2f}"
    if action is BackupAction.START_THROTTLED:
        why = "load unknown" if load is None else f"maximum age {policy.max_age:.0f}s reached at load {load:.2f}"
        return action, why
    return action, "due" if load is None else f"due; load {load:.2f} below {policy.load_threshold:.2f}"
