"""The snapshot of an array that every command reads and ``-o json`` prints.

Both sources (``standalone``, ``kube``) fill these records from what the system reports;
``render``, ``svgmap`` and ``plan`` only read them. Field names follow the control API and the
CRD status (camelCase), so the JSON an administrator scripts against looks like the rest of
the system. Sizes are bytes; ages are seconds; times are RFC 3339 UTC strings.
"""

from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

LUKind = Literal["program", "processorInfo", "backup", "fileSystem", "other"]
ActiveArea = Literal["portion", "backup"]

#: Where a cluster group keeps its processor information, in the ClusterGroup status's words
#: (``status.activeArea``: ``portion`` or ``backup``). The blades' own API
#: (``GET /v1/cluster/area``, ``/v1/status``) says ``primary`` for the portion; ``area_word``
#: translates, so the standalone and the Kubernetes snapshots print the same JSON.
_AREA_WORDS: dict[str, ActiveArea] = {"portion": "portion", "primary": "portion", "backup": "backup"}


def area_word(raw: object) -> ActiveArea | None:
    """The snapshot's word for an active area reported as ``raw`` (``None`` if unknown)."""
    return _AREA_WORDS.get(raw) if isinstance(raw, str) else None
BladeState = Literal["ok", "suspect", "dead", "stopped", "unknown"]


class Device(TypedDict):
    index: int
    size: int
    free: int
    path: str | None
    #: ok | rebuilding | failed (with protection; the controller's ``GET /v1/array``)
    state: NotRequired[str]
    #: why it failed, or the rebuild progress ("rebuilding 40%")
    detail: NotRequired[str]



def fill_health(dev: Device, entry: dict[str, Any], rebuild: list[dict[str, Any]]) -> None:
    """Fill ``dev``'s ``state`` and ``detail`` from a device entry of the controller's
    ``GET /v1/array`` (or the DiskArray's ``status.devices``, the operator's copy of it) and its
    ``rebuild`` list: why a failed device failed, how far a rebuilding one is."""
    if "state" not in entry:
        return
    dev["state"] = str(entry["state"])
    if entry["state"] == "failed":
        dev["detail"] = str(entry.get("reason") or "")
    elif entry["state"] == "rebuilding":
        total = next((int(r.get("total") or 0) for r in rebuild if r.get("device") == entry.get("index")), 0)
        dev["detail"] = f"{100 * int(entry.get('rebuilt') or 0) / max(total, 1):.0f}%"

class Extent(TypedDict):
    """One contiguous run of an LU on one device, as the controller's LU listing gives it."""

    device: int
    offset: int  # bytes from the start of the device
    length: int
    segment: int


class LU(TypedDict):
    name: str
    kind: LUKind
    size: int
    devices: list[int]
    extents: list[Extent]  # empty when the source does not know the placement (no DiskArray status.lus)
    fileSystem: str | None
    reservation: dict[str, Any] | None


class Area(TypedDict):
    """One portion of the processor-info LU or one backup area of the backup LU."""

    lu: str
    group: str
    index: int
    offset: int
    size: int
    role: Literal["portion", "backup"]


class Blade(TypedDict):
    name: str
    group: str
    state: BladeState
    reason: str
    fileSystems: list[str]
    heartbeatAge: float | None
    softwareVersion: str | None
    activeArea: ActiveArea | None
    slot: int | None
    api: str | None


class FileSystem(TypedDict):
    name: str
    group: str
    lu: str
    size: int
    blade: str | None
    homeBlade: str | None
    pinnedTo: str | None  # Kubernetes: a planned move pinned it there (give-back returns it there, not home)
    epoch: int | None
    endpoint: str | None


class Backup(TypedDict):
    """One processor-information copy (a controller copy job or a status history entry)."""

    id: str | None
    group: str
    source: str
    target: str
    state: str
    bytesDone: int
    bytesTotal: int
    started: str | None
    finished: str | None
    trigger: str | None
    error: str | None


class Group(TypedDict):
    name: str
    array: str
    portion: int | None
    activeArea: ActiveArea | None
    failureTimeout: float
    blades: list[Blade]
    fileSystems: list[str]
    lastBackup: Backup | None
    rollout: dict[str, Any] | None


class ArrayView(TypedDict):
    name: str
    ready: bool | None
    size: int | None
    free: int | None
    #: protection level, ``ok``/``degraded``, repaired and lost blocks (standalone arrays)
    redundancy: NotRequired[dict[str, Any]]
    devices: list[Device]
    lus: list[LU]
    areas: list[Area]
    cache: dict[str, Any]
    load: dict[str, Any]
    software: dict[str, Any]
    controller: str | None
    #: the array's CSI driver name (Kubernetes, ``spec.csi.enabled``: ``status.csi.driver``)
    csiDriver: NotRequired[str]


class Snapshot(TypedDict):
    target: dict[str, Any]
    time: str
    arrays: list[ArrayView]
    groups: list[Group]
    fileSystems: list[FileSystem]
    backups: list[Backup]


class Event(TypedDict):
    time: str
    kind: str
    object: str
    message: str


VolumeMode = Literal["filesystem", "directory"]


class VolumeSnapshot(TypedDict):
    """A snapshot of a CSI volume: an LU ``sn-…`` (file-system volumes) or a copy of the
    directory in the shared file system's ``/.snapshots`` (directory volumes)."""

    id: str
    name: str | None  # the CSI name (``snapshot-<uid>``) when the driver's catalog records it
    size: int | None  # bytes: the LU, or the volume's size when it was taken (restore size)
    ready: bool | None
    created: str | None


class Volume(TypedDict):
    """A volume of the CSI driver (``nasblade volumes``): a file system of its own
    (``filesystem``) or a directory with a tree quota in a shared file system (``directory``)."""

    id: str  # ``pv-`` and 24 hex digits
    name: str | None  # the CSI name (``pvc-<uid>``, the PersistentVolume's) when known
    claim: str | None  # the PersistentVolumeClaim bound to it, ``namespace/name`` (Kubernetes)
    mode: VolumeMode
    fileSystem: str | None  # the volume's own file system, or the shared one holding the directory
    lu: str | None  # the LU of a file-system volume; None for a directory volume
    group: str | None  # the cluster group serving that file system
    blade: str | None  # the blade serving it now
    size: int | None  # bytes: the file system's size, or the directory's quota
    usedBytes: int | None  # what the serving blade reports (None when not asked or not served)
    files: int | None  # files, directories and links (directory volumes)
    state: str | None  # the driver's record: creating | formatted | ready (None: not recorded)
    snapshots: list[VolumeSnapshot]


class VolumeList(TypedDict):
    """What ``nasblade volumes -o json`` prints."""

    target: dict[str, Any]
    time: str
    volumes: list[Volume]
    #: what could not be read (a blade that did not answer, no catalog): the list may be short
    problems: list[str]
