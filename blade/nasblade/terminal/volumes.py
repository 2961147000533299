"""The CSI volumes of a standalone array, put together from what the array reports (pure).

``standalone.StandaloneSource.volumes`` reads, and hands here: the driver's catalog
(``nasblade.csicatalog``: CSI names, layouts, states, snapshot sources), the controller's LU
listing (``GET /v1/lus``: the LUs of file-system volumes, ``pv-…`` or ``fs-pv-…``, and of their
snapshots, ``sn-…``, read-only once their copy is done), the snapshot's file systems (group,
serving blade) and, for each file system a blade serves, its directory listing
(``GET /v1/filesystems/{fs}/directories``: the directory volumes' quotas and usage, the file
system's space) and its snapshots (``…/snapshots``). ``volumes`` returns the ``model.Volume``
list ``nasblade volumes`` prints; only names the driver gives (``nasblade.lunames.csi_volume_id``,
``csi_snapshot_id``) count, so a file system or a directory that is not a volume is left out.
``kube.KubeSource.volumes`` builds the same records from PersistentVolumes instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from nasblade import lunames
from nasblade.terminal.model import FileSystem, Volume, VolumeSnapshot


def nanoseconds_iso(ns: Any) -> str | None:
    """A catalog time (nanoseconds since the epoch) as RFC 3339 UTC."""
    if not isinstance(ns, int) or isinstance(ns, bool):
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def int_or_none(value: Any) -> int | None:
    """``value`` if it is an int (not a bool) in a JSON answer, else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def ordered(found: list[Volume]) -> list[Volume]:
    """Volumes in the order ``nasblade volumes`` lists them: by mode, file system, id."""
    return sorted(found, key=lambda v: (v["mode"], v["fileSystem"] or "", v["id"]))


def volume_of_lu(name: str) -> str | None:
    """The volume id whose LU is ``name`` (``pv-…`` standalone, ``fs-pv-…`` a file system of
    the array), or None."""
    vid = name.removeprefix(lunames.FS_PREFIX)
    return vid if lunames.csi_volume_id(vid) else None


def volumes(*, catalog: dict[str, Any], lus: list[dict[str, Any]], file_systems: list[FileSystem],
            served: dict[str, dict[str, Any]], snapshots: dict[str, list[str]]) -> tuple[list[Volume], list[str]]:
    """The volumes, and what could not be tied to one (snapshots whose volume is unknown)."""
    vol_recs = {str(r.get("id")): (name, r) for name, r in (catalog.get("volumes") or {}).items()}
    snap_recs = {str(r.get("id")): (name, r) for name, r in (catalog.get("snapshots") or {}).items()}
    fs_by_lu = {f["lu"]: f for f in file_systems}
    fs_by_name = {f["name"]: f for f in file_systems}
    out: dict[str, Volume] = {}
    problems: list[str] = []

    def volume(vid: str, mode: str, *, fs: str | None, lu: str | None, size: int | None) -> Volume:
        name, rec = vol_recs.get(vid, (None, {}))
        where = fs_by_name.get(fs or "")
        v: Volume = {"id": vid, "name": name, "claim": None, "mode": "directory" if mode == "directory" else "filesystem",
                     "fileSystem": fs, "lu": lu, "group": where["group"] if where else None,
                     "blade": where["blade"] if where else None, "size": size, "usedBytes": None, "files": None,
                     "state": rec.get("state"), "snapshots": []}
        return v

    for lu in lus:
        vid = volume_of_lu(str(lu.get("name")))
        if vid is None:
            continue
        own = fs_by_lu.get(str(lu["name"]))
        v = volume(vid, "filesystem", fs=own["name"] if own else None, lu=str(lu["name"]), size=int_or_none(lu.get("size")))
        space = (served.get(v["fileSystem"] or "") or {}).get("space") or {}
        if int_or_none(space.get("totalBytes")) is not None and int_or_none(space.get("freeBytes")) is not None:
            v["usedBytes"] = space["totalBytes"] - space["freeBytes"]
        out[vid] = v
    for fs, answer in sorted(served.items()):
        for d in answer.get("directories") or []:
            if not lunames.csi_volume_id(str(d.get("name"))):
                continue
            v = volume(str(d["name"]), "directory", fs=fs, lu=None, size=int_or_none(d.get("quotaBytes")))
            v["usedBytes"], v["files"] = int_or_none(d.get("usedBytes")), int_or_none(d.get("files"))
            out[v["id"]] = v
    for vid, (_, rec) in vol_recs.items():  # recorded, not found: being made, or not served now
        if vid not in out:
            directory = rec.get("layout") == "directory"
            shared = rec.get("fileSystem") or (rec.get("parameters") or {}).get("fileSystem") if directory else None
            out[vid] = volume(vid, "directory" if directory else "filesystem", fs=shared,
                              lu=None if directory else rec.get("lu") or None, size=int_or_none(rec.get("size")))

    def snapshot(sid: str, *, size: int | None, ready: bool | None) -> None:
        name, rec = snap_recs.get(sid, (None, {}))
        source = rec.get("source")
        if rec:
            ready = rec.get("state") == "ready" if ready is None else ready and rec.get("state") == "ready"
            size = size if size is not None else int_or_none(rec.get("size"))
        s: VolumeSnapshot = {"id": sid, "name": name, "size": size, "ready": ready,
                             "created": nanoseconds_iso(rec.get("created"))}
        if source in out:
            out[source]["snapshots"].append(s)
        else:
            problems.append(f"snapshot {sid} is not of a volume the driver's catalog knows")

    seen: set[str] = set()
    for lu in lus:
        sid = str(lu.get("name"))
        if lunames.csi_snapshot_id(sid):
            seen.add(sid)
            snapshot(sid, size=int_or_none(lu.get("size")), ready=bool(lu.get("readOnly")))
    for names in snapshots.values():
        for sid in names:
            if lunames.csi_snapshot_id(sid) and sid not in seen:
                seen.add(sid)
                snapshot(sid, size=None, ready=None)
    for sid, (_, rec) in snap_recs.items():
        if sid not in seen and (rec.get("layout") != "directory" or rec.get("fileSystem") not in served):
            snapshot(sid, size=None, ready=False if rec.get("state") != "ready" else None)
    for v in out.values():
        v["snapshots"].sort(key=lambda s: (s["created"] or "", s["id"]))
    return ordered(list(out.values())), problems
