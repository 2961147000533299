"""The ClusterGroup status a pass writes, built without I/O from what the pass saw and did.

``daemon.py`` gathers the inputs (the plan from ``plan.py``, owners after the actor's moves,
the blade pods from the pod index, what the probe heard from the blades, the backups record
from ``backups.py``, the status as last written) into a ``StatusInputs`` and calls ``build``;
it then patches only ``changed(old, new)``, sets the blade gauges from ``blade_counts`` and
posts the ``Upgraded`` Event. Conditions follow the Kubernetes conventions (``conditions.py``):
``Ready`` (NFS served by Running blades), ``Degraded``, ``Progressing``, ``BackedUp``.
Unit-tested in tests/operator/test_status.py like ``plan.py`` is in test_plan.py.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from nasblade_operator import conditions, naming
from nasblade_operator.clustergroup import plan as planner
from nasblade_operator.clustergroup import spec as cg_spec

#: Blade states counted in the ``nasblade_operator_blades`` gauge.
STATES: tuple[planner.BladeState, ...] = ("Pending", "Running", "Suspect", "Failed", "Upgrading")
#: ``status.failovers`` keeps this many records.
FAILOVER_HISTORY = 20


@dataclasses.dataclass(frozen=True)
class StatusInputs:
    """Everything ``build`` reads."""

    group: str
    spec: cg_spec.ClusterGroupSpec
    plan: planner.Plan
    old: Mapping[str, Any]  # the status as last written (over the body's)
    generation: int
    now: datetime.datetime
    owners: Mapping[str, str]  # file system -> owner after this pass's moves
    file_systems: Sequence[str]  # the group's file systems, in spec order
    pods: Sequence[Mapping[str, Any]]  # the ``blade_pods`` index entries (name, index, version, ready)
    version: str  # the software version the DiskArray asks for
    array_ready: bool
    heartbeats: Mapping[str, float] = dataclasses.field(default_factory=dict)  # blade -> age at the last probe
    serving: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict)  # blade -> what it reported
    active_area: str = "portion"
    pins: Mapping[str, str] = dataclasses.field(default_factory=dict)
    failovers: Sequence[Mapping[str, Any]] = ()  # this pass's moves
    backups: Mapping[str, Any] | None = None  # a new status.backups (None: unchanged)
    move_request: Mapping[str, Any] | None = None  # a new status.lastMoveRequest (None: unchanged)


def build(i: StatusInputs) -> dict[str, Any]:
    """The status fields a pass owns (``changed`` picks the ones to patch)."""
    count = i.spec.blades.count
    blades = _blades(i)
    running = sum(1 for b in blades if b["state"] == "Running" and b["index"] < count)
    new: dict[str, Any] = {
        "observedGeneration": i.generation,
        "conditions": _conditions(i, blades=blades, running=running),
        "bladesReady": f"{running}/{count}",
        "blades": blades,
        "fileSystems": [
            {"name": fs, "blade": i.owners[fs], "homeBlade": planner.home_of(i.group, i.file_systems, fs, count),
             "service": naming.nfs_service_name(i.spec.disk_array, fs), **({"pinnedTo": i.pins[fs]} if fs in i.pins else {}),
             # what the owner said at its last probe (a file system just handed to it: not yet)
             **({"served": fs in i.serving[i.owners[fs]]} if i.owners[fs] in i.serving else {})}
            for fs in i.file_systems
        ],
        "activeArea": i.active_area,
        "rollout": {"targetVersion": i.version, "step": "upgrading one blade at a time"} if i.plan.rolling else None,
    }
    if i.failovers:
        new["failovers"] = [*i.old.get("failovers", []), *i.failovers][-FAILOVER_HISTORY:]
    if i.backups is not None:
        new["backups"] = dict(i.backups)
    if i.move_request is not None:
        new["lastMoveRequest"] = dict(i.move_request)
    return new


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``new`` that differ from ``old`` (a None for a field ``old`` lacks is no change)."""
    return {k: v for k, v in new.items() if old.get(k) != v and not (v is None and k not in old)}


def blade_counts(blades: Sequence[Mapping[str, Any]]) -> dict[planner.BladeState, int]:
    """Blades per state, for the ``nasblade_operator_blades`` gauge."""
    return {s: sum(1 for b in blades if b["state"] == s) for s in STATES}


def _blades(i: StatusInputs) -> list[dict[str, Any]]:
    by_index = {int(s["index"]): s for s in i.pods}
    blades: list[dict[str, Any]] = []
    for index in sorted(set(range(i.spec.blades.count)) | set(by_index)):
        blade = planner.blade_name(i.group, index)
        s = by_index.get(index)
        age = i.heartbeats.get(blade) if s is not None and s["ready"] else None
        blades.append({
            "name": blade, "index": index, "state": i.plan.states.get(blade, "Pending"),
            "fileSystems": sorted(fs for fs, o in i.owners.items() if o == blade),
            "softwareVersion": s["version"] if s else "",
            **({"heartbeatAgeSeconds": planner.heartbeat_bucket(age)} if age is not None else {}),
        })
    return blades


def _conditions(i: StatusInputs, *, blades: Sequence[Mapping[str, Any]], running: int) -> list[conditions.Condition]:
    count, gen, now = i.spec.blades.count, i.generation, i.now
    states = i.plan.states
    unserved = [fs for fs, o in i.owners.items() if states.get(o) != "Running"]
    # Ready means NFS is served: an owner that reported what it serves must list the file system
    starting = [fs for fs, o in i.owners.items() if fs not in unserved and o in i.serving and fs not in i.serving[o]]
    bad = [b["name"] for b in blades if b["state"] in ("Failed", "Suspect")]
    cond = list(i.old.get("conditions", []))
    if not i.array_ready:
        cond = conditions.set_condition(cond, type=conditions.READY, status="False", reason="DiskArrayNotReady",
                                        message=f"DiskArray {i.spec.disk_array} is not Ready yet", generation=gen, now=now)
    elif running == count and not unserved and starting:
        cond = conditions.set_condition(
            cond, type=conditions.READY, status="False", reason="FileSystemsStarting", generation=gen, now=now,
            message="not served yet: " + ", ".join(f"{fs} (on {i.owners[fs]})" for fs in starting))
    elif running == count and not unserved:
        cond = conditions.set_condition(cond, type=conditions.READY, status="True", reason="AllBladesRunning",
                                        message=f"{running} blades running, {len(i.file_systems)} file systems served",
                                        generation=gen, now=now)
    else:
        message = f"{running}/{count} blades running" + (f"; not served: {', '.join(unserved)}" if unserved else "")
        cond = conditions.set_condition(cond, type=conditions.READY, status="False",
                                        reason="FileSystemsUnserved" if unserved else "BladesNotReady",
                                        message=message, generation=gen, now=now)
    if i.plan.stranded:
        cond = conditions.set_condition(cond, type=conditions.DEGRADED, status="True", reason="NoSurvivor",
                                        message=f"no running blade can take {', '.join(i.plan.stranded)}",
                                        generation=gen, now=now)
    elif bad:
        cond = conditions.set_condition(cond, type=conditions.DEGRADED, status="True", reason="BladeFailed",
                                        message=f"blades not running: {', '.join(bad)}", generation=gen, now=now)
    else:
        cond = conditions.set_condition(cond, type=conditions.DEGRADED, status="False", reason="AllBladesRunning",
                                        message="", generation=gen, now=now)
    rolling = i.plan.rolling
    progressing = rolling or any(b["state"] in ("Pending", "Upgrading") for b in blades)
    cond = conditions.set_condition(cond, type=conditions.PROGRESSING, status="True" if progressing else "False",
                                    reason="RollingOut" if rolling else ("BladesStarting" if progressing else "Stable"),
                                    message=f"rolling out software {i.version}" if rolling else "", generation=gen, now=now)
    b = i.backups if i.backups is not None else i.old.get("backups", {})
    last = (b.get("history") or [{}])[-1]
    last_ok = conditions.parse_time(b.get("lastSuccessful"))
    fresh = last_ok is not None and (now - last_ok).total_seconds() < i.spec.backup.max_age
    ok = fresh and last.get("result") == "Succeeded"
    return conditions.set_condition(
        cond, type=conditions.BACKED_UP, status="True" if ok else "False",
        reason="Succeeded" if ok else (last.get("result") or "NeverBackedUp"),
        message=str(last.get("message", "")), generation=gen, now=now,
    )
