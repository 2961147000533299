"""Parse and validate a ClusterGroup ``spec`` into a frozen ``ClusterGroupSpec``.

Input: the ``spec`` mapping (defaults applied by the API server from crds/clustergroup.yaml).
Output: typed records for ``builders`` and ``plan``, or ``validation.InvalidSpec`` with every
wrong field by path. Cross-resource checks (does the DiskArray exist, is a portion free) are
the handlers' job, since they need the API.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from nasblade_operator import podspec, validation

Policy = Literal["Automatic", "Manual"]


@dataclasses.dataclass(frozen=True)
class Blades:
    count: int
    resources: Mapping[str, Any]
    placement: podspec.Placement = podspec.DEFAULT_PLACEMENT
    #: a PodDisruptionBudget keeps all but one blade of the group up through voluntary evictions
    disruption_budget: bool = True


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    interval: float
    failure_timeout: float


@dataclasses.dataclass(frozen=True)
class Failover:
    policy: Policy
    give_back: Policy


@dataclasses.dataclass(frozen=True)
class Backup:
    interval: float
    load_threshold: int
    max_age: float
    targets: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ClusterGroupSpec:
    disk_array: str
    blades: Blades
    heartbeat: Heartbeat
    failover: Failover
    backup: Backup


def parse(spec: Mapping[str, Any], *, name: str = "") -> ClusterGroupSpec:
    """Parse ``spec`` of the ClusterGroup ``name``; raise ``validation.InvalidSpec``."""
    c = validation.Collector()
    ref = validation.section(spec, "diskArrayRef")
    array = str(ref.get("name") or "")
    if not array:
        c.add("spec.diskArrayRef.name", "names the DiskArray whose controller the blades use; it is required")

    b = validation.section(spec, "blades")
    count = c.integer("spec.blades.count", b.get("count", 2), low=1, high=16)
    resources = b.get("resources") or {}
    placement = podspec.parse_placement(c, "spec.blades", b, spread=True)
    pdb = b.get("disruptionBudget", True)
    if not isinstance(pdb, bool):
        c.add("spec.blades.disruptionBudget", "must be true or false")
        pdb = True

    h = validation.section(spec, "heartbeat")
    interval = c.duration("spec.heartbeat.interval", h.get("interval", "200ms"))
    timeout = c.duration("spec.heartbeat.failureTimeout", h.get("failureTimeout", "3s"))
    if interval and timeout and timeout < 3 * interval:
        c.add("spec.heartbeat.failureTimeout", "must be at least three heartbeat intervals")

    f = validation.section(spec, "failover")
    policy = c.choice("spec.failover.policy", f.get("policy", "Automatic"), ("Automatic", "Manual"))
    give_back = c.choice("spec.failover.giveBack", f.get("giveBack", "Automatic"), ("Automatic", "Manual"))

    k = validation.section(spec, "backup")
    b_interval = c.duration("spec.backup.interval", k.get("interval", "1h"))
    if b_interval and b_interval < 10:
        c.add("spec.backup.interval", "must be at least 10s")
    threshold = c.integer("spec.backup.loadThreshold", k.get("loadThreshold", 70), low=0, high=100)
    max_age = c.duration("spec.backup.maxAge", k.get("maxAge", "6h"))
    if b_interval and max_age and max_age < b_interval:
        c.add("spec.backup.maxAge", "must be at least spec.backup.interval")
    targets_in = k.get("targets") or []
    targets: list[str] = []
    for i, t in enumerate(targets_in if isinstance(targets_in, list) else []):
        if not isinstance(t, str) or not t:
            c.add(f"spec.backup.targets[{i}]", "must be the name of another ClusterGroup")
        elif t == name:
            c.add(f"spec.backup.targets[{i}]", "is this group itself; its own portion is always backed up")
        elif t in targets:
            c.add(f"spec.backup.targets[{i}]", f"{t!r} is listed twice")
        else:
            targets.append(t)
    c.check()
    return ClusterGroupSpec(
        disk_array=array,
        blades=Blades(count=count, resources=dict(resources) if isinstance(resources, Mapping) else {},
                      placement=placement, disruption_budget=pdb),
        heartbeat=Heartbeat(interval=interval, failure_timeout=timeout),
        failover=Failover(
            policy="Manual" if policy == "Manual" else "Automatic",
            give_back="Manual" if give_back == "Manual" else "Automatic",
        ),
        backup=Backup(interval=b_interval, load_threshold=threshold, max_age=max_age, targets=tuple(targets)),
    )
