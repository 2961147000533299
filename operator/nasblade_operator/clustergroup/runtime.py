"""What one ClusterGroup daemon remembers between its passes.

``daemon.py`` creates a ``Runtime`` when the group's daemon starts and drops it when the
daemon exits (the group was deleted, or the operator stops), so it holds only what this
daemon has seen. The probe (``daemon.py``) fills in what the blades report, the actor
(``actor.py``) records the pods it replaces, ``backups.py`` its deadlines, and the status
writer (``daemon.py`` with ``status.py``) the status last written. None of it is the source of
truth: the group's status and the pods are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

T = TypeVar("T")


@dataclasses.dataclass
class Runtime:
    """One group's memory between passes."""

    first_bad: dict[str, float] = dataclasses.field(default_factory=dict)  # blade -> monotonic time it stopped Running
    seen_ready: set[str] = dataclasses.field(default_factory=set)  # blades seen Running (a missing one has failed)
    next_backup_check: float = 0.0  # monotonic time before which no interval backup is tried
    replacing: set[str] = dataclasses.field(default_factory=set)  # blades whose failed pod was deleted
    failed: set[str] = dataclasses.field(default_factory=set)  # blades that declared themselves failed
    serving: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # blade -> what it said it serves
    known: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # blade -> file systems it says it may serve
    status: dict[str, Any] | None = None  # the status this daemon last wrote (the body may lag behind)
    heartbeats: dict[str, float] = dataclasses.field(default_factory=dict)  # blade -> heartbeat age at the last probe
    active_area: str = "portion"  # what the blades reported at the last probe
    next_probe: float = 0.0  # monotonic time of the next heartbeat probe
    next_cert_check: float = 0.0  # monotonic time of the next check of the blades' certificates
    deferred: bool = False  # an interval backup is being deferred for load (one Event per deferral)
    rolling: bool = False  # the last status written said a rollout was under way
    specs: dict[str, tuple[int, Any]] = dataclasses.field(default_factory=dict)  # key -> (generation, parsed)

    def parsed(self, key: str, generation: int, parse: Callable[[], T]) -> T:
        """``parse()``'s result, computed once per ``generation`` of the object named ``key``
        (0, an unknown generation, is never cached)."""
        hit = self.specs.get(key)
        if hit is not None and generation and hit[0] == generation:
            return cast(T, hit[1])
        value = parse()
        self.specs[key] = (generation, value)
        return value

    def status_over(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The group's status as this daemon last wrote it, over what the (possibly stale) body says."""
        return {**body.get("status", {}), **(self.status or {})}

    def wrote(self, changed: Mapping[str, Any]) -> None:
        """Remember status fields just patched."""
        self.status = {**(self.status or {}), **changed}
