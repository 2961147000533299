"""Parse and validate a DiskArray ``spec`` into a frozen ``DiskArraySpec``.

Input: the ``spec`` mapping kopf hands the handlers (defaults already applied by the API
server from crds/diskarray.yaml). Output: typed records the builders and handlers use, or
``validation.InvalidSpec`` listing every wrong field by path. The CRD refuses most bad input
with CEL; this module repeats those checks (the operator must not trust its input) and adds
the ones CEL cannot express, such as whether everything fits on the devices.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

from nasblade import csitopology
from nasblade.controller import redundancy
from nasblade.fs import layout as fs_layout

from nasblade_operator import naming, podspec, validation

MIB = 2**20
#: Space the controller keeps per device for its own metadata (superblock, LU table, journal).
#: Conservative; the controller's own answer (409 with reason NoSpace) is the final word.
DEVICE_OVERHEAD = 16 * MIB
MIN_PORTION = 1 * MIB
_DRIVER_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?")

DeletionPolicy = Literal["Retain", "Delete"]
Access = Literal["rw", "ro"]
Squash = Literal["root", "all", "none"]


@dataclasses.dataclass(frozen=True)
class Devices:
    count: int
    size: int
    size_text: str
    storage_class: str | None
    #: the controller's protection level (``nasblade.controller.redundancy``): none, mirror-2,
    #: mirror-3, parity-1, parity-2
    protection: str = "none"

    @property
    def copies(self) -> int:
        return redundancy.parse(self.protection).copies

    @property
    def data_devices(self) -> int:
        """Devices' worth of LU data after the protection overhead."""
        return redundancy.parse(self.protection).data_devices(self.count)


@dataclasses.dataclass(frozen=True)
class Controller:
    cache_size: int
    resources: Mapping[str, Any]
    placement: podspec.Placement = podspec.DEFAULT_PLACEMENT
    #: ``spec.controller.faultInjection``: the controller runs with ``--faults`` (tests only)
    fault_injection: bool = False


@dataclasses.dataclass(frozen=True)
class Areas:
    program_size: int
    processor_info_size: int
    backup_size: int
    portions: int

    @property
    def portion_size(self) -> int:
        """Bytes of one portion (and of one backup area), a multiple of 4 KiB."""
        return (self.processor_info_size // self.portions) // 4096 * 4096


@dataclasses.dataclass(frozen=True)
class Export:
    clients: tuple[str, ...]
    access: Access
    squash: Squash


@dataclasses.dataclass(frozen=True)
class FileSystem:
    name: str
    size: int
    cluster_group: str
    exports: tuple[Export, ...]


@dataclasses.dataclass(frozen=True)
class Csi:
    """``spec.csi``: the CSI driver's controller plugin the operator runs for the array."""

    enabled: bool = False
    #: the ClusterGroup serving volumes whose StorageClass names none
    cluster_group: str = ""
    #: the client CIDRs a volume is exported to when its StorageClass names none
    clients: tuple[str, ...] = ()
    #: the CSI driver name, when not the array's own (``naming.csi_driver_name``)
    driver_name: str = ""
    #: the deletion policy of the array's VolumeSnapshotClass
    snapshot_deletion_policy: str = "Delete"
    #: the topology segments the array is reachable from (empty: every node)
    topology: tuple[Mapping[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class DiskArraySpec:
    devices: Devices
    controller: Controller
    areas: Areas
    file_systems: tuple[FileSystem, ...]
    software_version: str
    deletion_policy: DeletionPolicy
    csi: Csi = Csi()

    @property
    def capacity(self) -> int:
        """Bytes the LUs may use: device files are 97 % of a PVC, less the controller's overhead
        and checksum area (1/512), one copy's worth of the devices."""
        d = self.devices
        per_device = d.size * 97 // 100 - DEVICE_OVERHEAD - d.size // 512
        return d.data_devices * max(0, per_device)

    @property
    def requested(self) -> int:
        """Bytes of every LU the spec asks for."""
        a = self.areas
        return a.program_size + a.processor_info_size + a.backup_size + sum(f.size for f in self.file_systems)

    def file_systems_of(self, group: str) -> tuple[FileSystem, ...]:
        """The file systems a ClusterGroup serves, in spec order."""
        return tuple(f for f in self.file_systems if f.cluster_group == group)


def parse(spec: Mapping[str, Any]) -> DiskArraySpec:
    """Parse ``spec``; raise ``validation.InvalidSpec`` naming every wrong field."""
    c = validation.Collector()
    devices = _devices(c, validation.section(spec, "devices"))
    controller = _controller(c, validation.section(spec, "controller"))
    areas = _areas(c, validation.section(spec, "areas"))
    file_systems = _file_systems(c, spec.get("fileSystems") or [])
    version = str(validation.section(spec, "software").get("version") or "0.1.0")
    policy = c.choice("spec.deletionPolicy", spec.get("deletionPolicy", "Retain"), ("Retain", "Delete"))
    csi = _csi(c, validation.section(spec, "csi"))
    c.check()
    parsed = DiskArraySpec(
        devices=devices,
        controller=controller,
        areas=areas,
        file_systems=file_systems,
        software_version=version,
        deletion_policy="Delete" if policy == "Delete" else "Retain",
        csi=csi,
    )
    if parsed.requested > parsed.capacity:
        c.add(
            "spec.fileSystems",
            f"the areas and file systems need {parsed.requested // MIB} MiB but "
            f"{devices.count} devices of {devices.size_text} hold {parsed.capacity // MIB} MiB "
            f"after the controller's overhead and protection {devices.protection}: add devices (a new DiskArray) or shrink the file systems",
        )
    c.check()
    return parsed


def _csi(c: validation.Collector, d: Mapping[str, Any]) -> Csi:
    enabled = d.get("enabled", False)
    if not isinstance(enabled, bool):
        c.add("spec.csi.enabled", "must be true or false")
        enabled = False
    group = str(d.get("clusterGroup") or "")
    if enabled and not group:
        c.add("spec.csi.clusterGroup", "is required when csi.enabled is true")
    clients = tuple(c.cidr(f"spec.csi.clients[{i}]", v) for i, v in enumerate(d.get("clients") or []))
    driver = str(d.get("driverName") or "")
    if driver and not (len(driver) <= naming.CSI_DRIVER_MAX and _DRIVER_NAME.fullmatch(driver)):
        c.add("spec.csi.driverName", "must be at most 63 lowercase letters, digits, '-' and '.', "
                                     "beginning and ending with a letter or digit")
    policy = str(d.get("snapshotDeletionPolicy") or "Delete")
    if policy not in ("Delete", "Retain"):
        c.add("spec.csi.snapshotDeletionPolicy", "must be Delete or Retain")
    raw_topology = d.get("topology") or []
    segments: list[Mapping[str, str]] = []
    if not isinstance(raw_topology, list):
        c.add("spec.csi.topology", "must be a list of {label key: value} maps")
        raw_topology = []
    for i, segment in enumerate(raw_topology):
        try:
            segments.append(csitopology.check_segment(segment, f"spec.csi.topology[{i}]"))
        except ValueError as exc:
            c.add(f"spec.csi.topology[{i}]", str(exc).removeprefix(f"spec.csi.topology[{i}]: "))
    return Csi(enabled=enabled, cluster_group=group, clients=clients, driver_name=driver,
               snapshot_deletion_policy=policy, topology=tuple(segments))


def _devices(c: validation.Collector, d: Mapping[str, Any]) -> Devices:
    count = c.integer("spec.devices.count", d.get("count", 2), low=1, high=16)
    size_text = str(d.get("size", ""))
    size = c.quantity("spec.devices.size", size_text)
    if size and size <= DEVICE_OVERHEAD:
        c.add("spec.devices.size", f"must be larger than {DEVICE_OVERHEAD // MIB}Mi (the controller's per-device overhead)")
    sc = d.get("storageClassName")
    protection = "none"
    try:
        level = redundancy.parse(d.get("protection", "none"))
        level.check(count)
        protection = level.name
    except redundancy.ProtectionError as exc:
        c.add("spec.devices.protection", str(exc))
    return Devices(count=count, size=size, size_text=size_text, storage_class=str(sc) if sc else None,
                   protection=protection)


def _controller(c: validation.Collector, d: Mapping[str, Any]) -> Controller:
    cache = c.quantity("spec.controller.cacheSize", d.get("cacheSize", "256Mi"))
    if cache and cache < MIB:
        c.add("spec.controller.cacheSize", "must be at least 1Mi")
    resources = d.get("resources") or {}
    placement = podspec.parse_placement(c, "spec.controller", d, spread=False)
    faults = d.get("faultInjection", False)
    if not isinstance(faults, bool):
        c.add("spec.controller.faultInjection", "must be true or false")
    return Controller(cache_size=cache, resources=dict(resources) if isinstance(resources, Mapping) else {},
                      placement=placement, fault_injection=faults is True)


def _areas(c: validation.Collector, d: Mapping[str, Any]) -> Areas:
    areas = Areas(
        program_size=c.quantity("spec.areas.programSize", d.get("programSize", "256Mi")),
        processor_info_size=c.quantity("spec.areas.processorInfoSize", d.get("processorInfoSize", "64Mi")),
        backup_size=c.quantity("spec.areas.backupSize", d.get("backupSize", "64Mi")),
        portions=c.integer("spec.areas.portions", d.get("portions", 8), low=1, high=64),
    )
    if areas.processor_info_size and areas.portions and areas.portion_size < MIN_PORTION:
        c.add(
            "spec.areas.processorInfoSize",
            f"gives portions of {areas.portion_size} bytes; each of the {areas.portions} portions needs at least 1Mi",
        )
    if areas.backup_size < areas.processor_info_size:
        c.add("spec.areas.backupSize", "must be at least processorInfoSize (one backup area per portion)")
    return areas


def _file_systems(c: validation.Collector, items: Any) -> tuple[FileSystem, ...]:
    if not isinstance(items, list):
        c.add("spec.fileSystems", "must be a list")
        return ()
    out: list[FileSystem] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        path = f"spec.fileSystems[{i}]"
        if not isinstance(item, Mapping):
            c.add(path, "must be an object")
            continue
        name = str(item.get("name", ""))
        if not name or not all(("0" <= ch <= "9") or ("a" <= ch <= "z") or ch == "-" for ch in name) or name[0] == "-" or name[-1] == "-":
            c.add(f"{path}.name", f"{name!r} must be lower-case letters, digits and '-' (a DNS label)")
        elif len(name) > 40:
            c.add(f"{path}.name", "must be at most 40 characters")
        if name in seen:
            c.add(f"{path}.name", f"{name!r} is declared twice")
        seen.add(name)
        size = c.quantity(f"{path}.size", item.get("size", ""))
        if size and size < fs_layout.MIN_SIZE:
            c.add(f"{path}.size", f"must be at least {fs_layout.MIN_SIZE // MIB}Mi (the file system's metadata and journal regions)")
        group = str(item.get("clusterGroup") or "")
        if not group:
            c.add(f"{path}.clusterGroup", "names the ClusterGroup that serves this file system; it is required")
        exports = _exports(c, path, item.get("exports") or [])
        out.append(FileSystem(name=name, size=size, cluster_group=group, exports=exports))
    return tuple(out)


def _exports(c: validation.Collector, path: str, items: Any) -> tuple[Export, ...]:
    out: list[Export] = []
    for j, e in enumerate(items if isinstance(items, list) else []):
        epath = f"{path}.exports[{j}]"
        if not isinstance(e, Mapping):
            c.add(epath, "must be an object")
            continue
        clients_in = e.get("clients") or []
        if not clients_in:
            c.add(f"{epath}.clients", "needs at least one CIDR (there is no export to everyone by default)")
        clients = tuple(c.cidr(f"{epath}.clients[{k}]", v) for k, v in enumerate(clients_in))
        access = c.choice(f"{epath}.access", e.get("access", "rw"), ("rw", "ro"))
        squash = c.choice(f"{epath}.squash", e.get("squash", "root"), ("root", "all", "none"))
        out.append(
            Export(
                clients=clients,
                access="ro" if access == "ro" else "rw",
                squash="all" if squash == "all" else "none" if squash == "none" else "root",
            )
        )
    return tuple(out)
