"""Device health of a DiskArray -- status, Events, the Degraded condition -- computed without I/O.

The controller keeps the array's redundancy (mirror sets, device states, rebuild, scrub, error
counters; docs/controller.md, "Redundancy") and answers it at ``GET /v1/array``
(``arrayapi.ArrayAPI.array``, fields in docs/control-api.md, "Array").
``diskarray/handlers.refresh_figures`` reads it every status interval while the array is Ready
and calls ``assess`` with the DiskArray's status as last written; it patches the fields it gets
back (only those that changed: ``status.redundancy``, ``status.devices`` and
``status.conditions`` for ``Degraded``) and posts the Events. Events come from transitions
between that status and the new answer only -- a device failed, started or finished
rebuilding, blocks were lost, checksum errors were found -- so a steady array costs no patch
and no Event, and a restarted operator (the status persists) posts nothing again.
``datametrics.array_health`` publishes the same answer as gauges.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from nasblade_operator import conditions, naming

OK = "ok"
FAILED = "failed"
REBUILDING = "rebuilding"


@dataclasses.dataclass(frozen=True)
class Event:
    """One Event to post on the DiskArray (``events.normal`` / ``events.warning``)."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclasses.dataclass(frozen=True)
class Assessment:
    """What ``assess`` found: the status fields to patch (empty: patch nothing) and the Events."""

    patch: dict[str, Any]
    events: list[Event]


def redundancy(array: Mapping[str, Any]) -> dict[str, Any]:
    """``status.redundancy``: the array-wide figures of the controller's answer."""
    out: dict[str, Any] = {
        "protection": str(array.get("protection", "none")),
        "copies": int(array.get("copies", 1)),
        "survives": int(array.get("survives", 0)),
        "state": str(array.get("state", OK)),
        "rebuild": [{"device": int(r["device"]), "done": int(r["done"]), "total": int(r["total"])}
                    for r in array.get("rebuild") or []],
        "lostBlocks": int(array.get("lostBlocks", 0)),
        "repairedBlocks": int(array.get("repairedBlocks", 0)),
        "checksumErrors": int(array.get("checksumErrors", 0)),
        "parityMismatches": int(array.get("parityMismatches", 0)),
    }
    last = (array.get("scrub") or {}).get("last")
    if last:
        out["lastScrub"] = {"started": str(last.get("started", "")), "finished": str(last.get("finished", "")),
                            "bytes": int(last.get("bytes", 0)), "repaired": int(last.get("repaired", 0)),
                            "lost": int(last.get("lost", 0)),
                            "parityMismatches": int(last.get("parityMismatches", 0))}
    return out


def devices(array: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``status.devices``: one compact entry per device, by index."""
    out: list[dict[str, Any]] = []
    for d in sorted(array.get("devices") or [], key=lambda d: int(d["index"])):
        entry: dict[str, Any] = {
            "index": int(d["index"]), "state": str(d.get("state", OK)), "reason": str(d.get("reason") or ""),
            "readErrors": int(d.get("readErrors", 0)), "writeErrors": int(d.get("writeErrors", 0)),
            "checksumErrors": int(d.get("checksumErrors", 0)), "repaired": int(d.get("repaired", 0)),
        }
        if entry["state"] == REBUILDING:
            entry["rebuilt"] = int(d.get("rebuilt") or 0)
        out.append(entry)
    return out


def mirror_sets(array: Mapping[str, Any]) -> list[list[int]]:
    """Device indexes of each mirror set (the controller's virtual devices); one set per device
    when the answer does not say."""
    sets = [[int(i) for i in v.get("devices", [])] for v in array.get("virtualDevices") or []]
    if sets:
        return sets
    return [[int(d["index"])] for d in array.get("devices") or []]


def _set_of(sets: Sequence[Sequence[int]], index: int) -> tuple[int, Sequence[int]]:
    for n, members in enumerate(sets):
        if index in members:
            return n, members
    return -1, [index]


def _risk(array: Mapping[str, Any], index: int, states: Mapping[int, str]) -> str:
    """What losing ``index`` means for its mirror set, now."""
    n, members = _set_of(mirror_sets(array), index)
    healthy = [m for m in members if states.get(m) == OK]
    if not healthy:
        return f"no device of mirror set {n} holds all of its data: reads of it may fail"
    if len(healthy) == 1:
        return (f"data is at risk: device {healthy[0]} holds the only good copy of mirror set {n} "
                f"until device {index} is replaced and rebuilt")
    return f"mirror set {n} survives {len(healthy) - 1} more device failure(s)"


def _replace_hint(index: int, *, name: str, namespace: str) -> str:
    controller = naming.controller_name(name)
    return (f"replace device {index}: kubectl -n {namespace} annotate diskarray {name} "
            f"{naming.A_REPLACE_DEVICE}={index} (a new device file on its volume, rebuilt online); if the volume "
            f"itself is lost: kubectl -n {namespace} delete pvc dev-{index}-{controller}-0 --wait=false, "
            f"then kubectl -n {namespace} delete pod {controller}-0 (the blades wait for it); the new, blank PVC "
            "is rebuilt online from the other copies")


def degraded(array: Mapping[str, Any], *, name: str, namespace: str) -> tuple[conditions.Status, str, str]:
    """The ``Degraded`` condition (status, reason, message): True while a device is failed or
    rebuilding, naming each and what to do."""
    devs = devices(array)
    states = {d["index"]: d["state"] for d in devs}
    failed = [d for d in devs if d["state"] == FAILED]
    rebuilding = [d for d in devs if d["state"] == REBUILDING]
    if not failed and not rebuilding:
        return "False", "AllDevicesOk", f"all {len(devs)} devices ok (protection {array.get('protection', 'none')})"
    parts = [f"device {d['index']} failed ({d['reason'] or 'no reason given'}): {_risk(array, d['index'], states)}; "
             + _replace_hint(d["index"], name=name, namespace=namespace) for d in failed]
    parts += [f"device {d['index']} is rebuilding ({d['reason'] or 'replaced'}): progress in status.redundancy.rebuild"
              for d in rebuilding]
    return "True", "DeviceFailed" if failed else "Rebuilding", ". ".join(parts)


def transitions(array: Mapping[str, Any], *, old_devices: Sequence[Mapping[str, Any]],
                old_redundancy: Mapping[str, Any]) -> list[Event]:
    """The Events between the status as last written and the controller's answer.

    A device not in the old status counts as having been ok, and a counter not in it as 0: the
    first answer seen reports a device that is already failed, once.
    """
    events: list[Event] = []
    new = devices(array)
    states = {d["index"]: d["state"] for d in new}
    before = {int(d["index"]): d for d in old_devices if "index" in d}
    for d in new:
        i, state, was = d["index"], d["state"], str(before.get(d["index"], {}).get("state", OK))
        if state == was:
            continue
        if state == FAILED:
            events.append(Event("Warning", "DeviceFailed", f"device {i} failed: {d['reason'] or 'no reason given'}; "
                                                           f"{_risk(array, i, states)}"))
        elif state == REBUILDING:
            events.append(Event("Normal", "DeviceRebuilding",
                                f"device {i} is being rebuilt from the other copies ({d['reason'] or 'replaced'})"))
        elif state == OK:
            events.append(Event("Normal", "DeviceRebuilt", f"device {i} rebuilt: it holds a full copy again"))
    red = redundancy(array)
    lost = red["lostBlocks"] - int(old_redundancy.get("lostBlocks", 0))
    if lost > 0:
        events.append(Event("Warning", "DataLost",
                            f"{lost} block(s) lost: no copy held them correctly ({red['lostBlocks']} in all); reads "
                            "of them fail with EIO: restore the files that use them from a backup"))
    errors = red["checksumErrors"] - int(old_redundancy.get("checksumErrors", 0))
    if errors > 0:
        grew = [d["index"] for d in new
                if d["checksumErrors"] > int(before.get(d["index"], {}).get("checksumErrors", 0))]
        repaired = max(0, red["repairedBlocks"] - int(old_redundancy.get("repairedBlocks", 0)))
        where = f" on device(s) {', '.join(map(str, grew))}" if grew else ""
        events.append(Event("Warning", "ChecksumErrors",
                            f"{errors} checksum error(s){where} ({red['checksumErrors']} in all); "
                            f"{repaired} block(s) repaired from the other copies"))
    return events


def assess(array: Mapping[str, Any], *, name: str, namespace: str, status: Mapping[str, Any], generation: int,
           now: datetime.datetime | None = None) -> Assessment:
    """The status patch and Events for the controller's answer ``array`` (``GET /v1/array``),
    given the DiskArray's ``status`` as last written."""
    old_red = dict(status.get("redundancy") or {})
    old_devs = list(status.get("devices") or [])
    patch: dict[str, Any] = {}
    red = redundancy(array)
    if red != old_red:
        patch["redundancy"] = {**{k: None for k in old_red if k not in red}, **red}  # merge patch: drop vanished keys
    devs = devices(array)
    if devs != old_devs:
        patch["devices"] = devs
    cond_status, reason, message = degraded(array, name=name, namespace=namespace)
    old_conds = list(status.get("conditions") or [])
    conds = conditions.set_condition(old_conds, type=conditions.DEGRADED, status=cond_status, reason=reason,
                                     message=message, generation=generation, now=now)
    was = conditions.get_condition(old_conds, conditions.DEGRADED)
    if was is None or {k: was.get(k) for k in ("status", "reason", "message", "observedGeneration")} != {
            "status": cond_status, "reason": reason, "message": message, "observedGeneration": generation}:
        patch["conditions"] = conds
    return Assessment(patch=patch, events=transitions(array, old_devices=old_devs, old_redundancy=old_red))


def replace_refusal(asked: str, array: Mapping[str, Any]) -> str | None:
    """Why the ``nasblade.io/replace-device`` annotation's value ``asked`` cannot be carried out
    against the controller's answer ``array``, or ``None`` when device ``asked`` is failed and
    may be replaced (the controller still has the last word: a 409 when no copy is left)."""
    states = {int(d["index"]): str(d.get("state", OK)) for d in array.get("devices") or []}
    try:
        index = int(asked)
    except ValueError:
        return f"{asked!r} is not a device index: annotate {naming.A_REPLACE_DEVICE} with one of {sorted(states)}"
    if index not in states:
        return f"there is no device {index}: the array has devices {sorted(states)}"
    if states[index] != FAILED:
        return (f"device {index} is {states[index]}, not failed: only a failed device is replaced "
                "(the controller marks a device failed after I/O errors)")
    return None
