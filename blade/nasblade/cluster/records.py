"""Typed records of the cluster member: what it did to file systems (``OwnershipEvent``:
takeover, release, fenced, failed, power-off), the copies it made (``BackupRecord``), what its
backup scheduler last decided (``SchedulerState``), and its error (``ClusterError``).

The member's parts (``nasblade.cluster.takeover``, ``areas``, ``backups``) build and keep these;
they become JSON only at the edges, with ``to_json``: the blade API (``nasblade.cluster.api``)
and the group record (a ``BackupRecord`` appended to ``GroupRecord.backups``, which is JSON in
the processor-information portion). ``to_json`` names each field in camelCase (``file_system``
→ ``fileSystem``, ``owner_released`` → ``ownerReleased``) and adds the event's kind as ``event``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nasblade.procinfo.portion import Ownership


class ClusterError(RuntimeError):
    """A cluster operation cannot be done; ``status`` is the HTTP status the API answers."""

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def _value(v: Any) -> Any:
    if isinstance(v, Ownership):
        return {"blade": v.blade, "epoch": v.epoch}
    if isinstance(v, tuple):
        return [_value(x) for x in v]
    return v


def to_json(record: Any) -> dict[str, Any]:
    """A record as the blade API and the group record show it (camelCase keys; an event's kind as ``event``)."""
    out = {_camel(f.name): _value(getattr(record, f.name)) for f in dataclasses.fields(record)}
    kind = getattr(record, "EVENT", None)
    if kind is not None:
        out["event"] = kind
    return out


@dataclass(frozen=True)
class TakenOver:
    EVENT: ClassVar[str] = "takeover"
    file_system: str
    blade: str
    epoch: int
    reason: str
    previous: Ownership | None
    owner_released: bool
    time: float
    attempts: int
    seconds: float
    endpoints: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Released:
    EVENT: ClassVar[str] = "release"
    file_system: str
    blade: str
    epoch: int
    time: float


@dataclass(frozen=True)
class Fenced:
    """This blade found ``file_system`` taken from it (a newer epoch) and stopped serving it."""

    EVENT: ClassVar[str] = "fenced"
    file_system: str
    blade: str
    epoch: int
    reason: str
    time: float


@dataclass(frozen=True)
class Failed:
    """This blade failed (``BlockProcessor.fail``) and dropped ``file_system``."""

    EVENT: ClassVar[str] = "failed"
    file_system: str
    blade: str
    reason: str | None
    time: float


@dataclass(frozen=True)
class PoweredOff:
    """The chassis cut silent ``blade``'s power before this blade took ``file_system`` over."""

    EVENT: ClassVar[str] = "power-off"
    file_system: str
    blade: str
    requested_by: str
    killed: tuple[int, ...]
    reason: str
    time: float


OwnershipEvent = TakenOver | Released | Fenced | Failed | PoweredOff


@dataclass(frozen=True)
class AreaSwitch:
    """The processor information moved to area ``to`` (``primary``: the portion, or ``backup``)."""

    EVENT: ClassVar[str] = "switch"
    to: str
    reason: str
    time: float


@dataclass(frozen=True)
class BackupRecord:
    """One copy-engine copy of a portion (``kind`` ``backup``: portion → backup area;
    ``restore``: backup area → portion), as recorded in the group record (claim 13)."""

    id: str
    kind: str
    trigger: str
    portion: str
    portion_index: int
    source: str
    target: str
    requested_by: str
    start: float
    end: float
    bytes: int
    result: str
    error: str | None
    load_at_start: float | None
    deferrals: int
    rate_limit: int
    job_id: str | None

    @property
    def succeeded(self) -> bool:
        return self.result == "succeeded"


@dataclass(frozen=True)
class SchedulerFigures:
    load: float | None
    deferrals: int
    max_deferred_age: float


@dataclass(frozen=True)
class SchedulerState:
    """What the backup scheduler last decided (``core.decide_backup``), and on which figures."""

    action: str
    reason: str
    figures: SchedulerFigures | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action, "reason": self.reason}
        if self.figures is not None:
            out.update(to_json(self.figures))
        return out
