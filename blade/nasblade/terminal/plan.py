"""Decisions the terminal takes from a snapshot: pure functions, no I/O.

- ``check_takeover`` is the dry run of ``takeover FS --to BLADE``: whether the move is possible
  now, and every reason why not (one line each), from the snapshot the source read.
- ``diff_events`` turns two successive snapshots into the events ``watch`` / ``events
  --follow`` show: blade state changes, file systems moving (takeover, failover, giveback),
  backups starting and ending, software versions changing, processor-info area switches.

``commands`` calls both; tests drive them with hand-made snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nasblade.terminal.errors import UsageError
from nasblade.terminal.model import Blade, Event, FileSystem, Group, Snapshot


def find_fs(snap: Snapshot, name: str) -> FileSystem:
    for fs in snap["fileSystems"]:
        if fs["name"] == name:
            return fs
    known = ", ".join(f["name"] for f in snap["fileSystems"]) or "none"
    raise UsageError(f"no file system {name!r} (known: {known})")


def find_group(snap: Snapshot, name: str) -> Group:
    for g in snap["groups"]:
        if g["name"] == name:
            return g
    known = ", ".join(g["name"] for g in snap["groups"]) or "none"
    raise UsageError(f"no cluster group {name!r} (known: {known})")


def all_blades(snap: Snapshot) -> list[Blade]:
    return [b for g in snap["groups"] for b in g["blades"]]


def find_blade(snap: Snapshot, name: str) -> Blade:
    for b in all_blades(snap):
        if b["name"] == name:
            return b
    known = ", ".join(b["name"] for b in all_blades(snap)) or "none"
    raise UsageError(f"no blade {name!r} (known: {known})")


@dataclass
class TakeoverCheck:
    fileSystem: str
    to: str
    current: str | None
    possible: bool
    reasons: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"fileSystem": self.fileSystem, "to": self.to, "from": self.current,
                "possible": self.possible, "reasons": list(self.reasons), "steps": list(self.steps)}


def check_takeover(snap: Snapshot, fs_name: str, *, to: str) -> TakeoverCheck:
    """Can ``to`` take over ``fs_name`` now? Unknown names raise ``UsageError``."""
    fs = find_fs(snap, fs_name)
    target = find_blade(snap, to)
    reasons: list[str] = []
    if target["group"] != fs["group"]:
        reasons.append(f"{to} is in cluster group {target['group']}, {fs_name} belongs to {fs['group']}")
    if fs["blade"] == to:
        reasons.append(f"{to} already serves {fs_name}")
    if target["state"] != "ok":
        why = f" ({target['reason']})" if target["reason"] else ""
        reasons.append(f"{to} is {target['state']}{why}")
    group = next((g for g in snap["groups"] if g["name"] == fs["group"]), None)
    if group is not None and group["activeArea"] not in (None, "portion"):
        reasons.append(f"cluster group {fs['group']} runs from its {group['activeArea']} area; ownership changes wait until the portion is back")
    steps: list[str] = []
    current = fs["blade"]
    owner = next((b for b in all_blades(snap) if b["name"] == current), None) if current else None
    if owner is not None and owner["state"] == "ok" and current != to:
        steps.append(f"{current} releases {fs_name} (unmount, flush, drop the reservation of {fs['lu']})")
    elif owner is not None and current != to:
        steps.append(f"{current} is {owner['state']}: it is fenced by the new reservation epoch")
    steps.append(f"{to} reserves {fs['lu']} with a new epoch, recovers and exports {fs_name}")
    return TakeoverCheck(fileSystem=fs_name, to=to, current=current, possible=not reasons,
                         reasons=reasons, steps=steps)


def home_blade(snap: Snapshot, fs_name: str) -> str:
    fs = find_fs(snap, fs_name)
    if not fs["homeBlade"]:
        raise UsageError(f"{fs_name} has no home blade recorded; use takeover {fs_name} --to BLADE")
    return fs["homeBlade"]


def _event(snap: Snapshot, *, kind: str, obj: str, message: str) -> Event:
    return {"time": snap["time"], "kind": kind, "object": obj, "message": message}


def diff_events(prev: Snapshot, cur: Snapshot) -> list[Event]:
    """What changed between two snapshots, oldest first."""
    out: list[Event] = []
    before = {b["name"]: b for b in all_blades(prev)}
    for b in all_blades(cur):
        old = before.get(b["name"])
        if old is None:
            out.append(_event(cur, kind="BladeAdded", obj=b["name"], message=f"blade {b['name']} joined {b['group']} ({b['state']})"))
            continue
        if old["state"] != b["state"]:
            why = f": {b['reason']}" if b["reason"] else ""
            out.append(_event(cur, kind="BladeState", obj=b["name"], message=f"{old['state']} -> {b['state']}{why}"))
        if old["softwareVersion"] != b["softwareVersion"]:
            out.append(_event(cur, kind="Software", obj=b["name"], message=f"software {old['softwareVersion']} -> {b['softwareVersion']}"))
        if old["activeArea"] != b["activeArea"]:
            out.append(_event(cur, kind="ActiveArea", obj=b["name"], message=f"processor information from {old['activeArea']} -> {b['activeArea']}"))
    for name in before.keys() - {b["name"] for b in all_blades(cur)}:
        out.append(_event(cur, kind="BladeRemoved", obj=name, message=f"blade {name} is gone"))
    owners = {f["name"]: f for f in prev["fileSystems"]}
    for fs in cur["fileSystems"]:
        old_fs = owners.get(fs["name"])
        if old_fs is None or old_fs["blade"] == fs["blade"]:
            continue
        kind = "GiveBack" if fs["blade"] is not None and fs["blade"] == fs["homeBlade"] else "Takeover"
        if fs["blade"] is None:
            kind = "Released"
        out.append(_event(cur, kind=kind, obj=fs["name"],
                          message=f"{fs['name']}: {old_fs['blade'] or '-'} -> {fs['blade'] or '-'} (epoch {fs['epoch']})"))
    seen = {(b["id"], b["group"]): b for b in prev["backups"]}
    for bk in cur["backups"]:
        old_bk = seen.get((bk["id"], bk["group"]))
        if old_bk is None:
            out.append(_event(cur, kind="Backup", obj=bk["group"], message=f"backup {bk['source']} -> {bk['target']} {bk['state']}"))
        elif old_bk["state"] != bk["state"]:
            err = f": {bk['error']}" if bk["error"] else ""
            out.append(_event(cur, kind="Backup", obj=bk["group"], message=f"backup {bk['source']} -> {bk['target']} {bk['state']}{err}"))
    groups = {g["name"]: g for g in prev["groups"]}
    for g in cur["groups"]:
        og = groups.get(g["name"])
        if og is not None and og["rollout"] != g["rollout"] and g["rollout"]:
            r = g["rollout"]
            out.append(_event(cur, kind="Rollout", obj=g["name"],
                              message=f"rollout to {r.get('targetVersion')}: {r.get('blade') or ''} {r.get('step') or ''}".strip()))
    return out
