"""The standalone array's configuration: YAML in, validated dataclasses out.

Format (every key optional; the defaults are one array, one cluster group of two blades and
one exported file system)::

    array:
      devices: {count: 2, size: 1G}
      protection: none                  # none | mirror (2 copies) | mirror-3: device count a
                                        # multiple of the copies; parity-1 (>= 3 devices) |
                                        # parity-2 (>= 4); fixed when the array is made
      cacheSize: 256M
      areas: {programSize: 64M, procInfoPortionSize: 1M, backupSize: 4M}
      faultInjection: false             # true: the admin token may inject I/O errors (tests)
    clusterGroups:
      - name: g1
        blades: 2                       # or a list of names
        heartbeatInterval: 200ms
        failureTimeout: 2s
        powerFencing: true              # a blade taking over powers the silent one off first
        controllerWait: 2m              # how long blade I/O waits for a restarting controller;
                                        # beyond it the file system is given up (taken over)
        readCache: 128M                 # file data each file processor keeps in memory, for all
                                        # the file systems it serves together (0: none)
        backup: {interval: 10m, loadThreshold: 0.8, maxAge: 1h, crossGroup: []}
    fileSystems:
      - name: fs1
        size: 512M
        clusterGroup: g1
        preferredBlade: g1-0
        address: 127.0.0.2              # the file system's own loopback address
        exports: [{path: /, clients: [127.0.0.0/8], access: rw, rootSquash: true}]
        rootMode: "1777"                # mode of a new file system's root directory: with root
                                        # squash on, squashed clients can still create files
    software: {version: null}           # null: the version pushed at first start
    network: {controllerAddress: 127.0.0.1, nbdPort: 10809, apiPort: 10880,
              bladeApiPort: 10900, nfsPort: 2049, mountPort: 20048, portmapPort: 111,
              nbdTLS: true}             # false: plaintext NBD open to every local process
                                        # (benchmarks only; docs/controller.md "Security")

Validation is strict: unknown keys, wrong types, impossible sizes, duplicate names, unknown
references and addresses outside 127.0.0.0/8 are refused with the field path, e.g.
``fileSystems[0].size: 5T is larger than the array's free space 2G``. ``nasblade.standalone.
array`` consumes ``Config``; the block processor reuses ``parse_size``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nasblade import units
from nasblade.controller import redundancy
from nasblade.units import format_size


class ConfigError(ValueError):
    """An invalid configuration; ``path`` is the offending field (``fileSystems[0].size``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


def usable_bytes(count: int, size: int, protection: str) -> int:
    """What LUs can use: one copy's worth of the devices (the data devices with parity), less
    the per-device overhead and the checksum area (8 bytes per 4 KiB block)."""
    data = redundancy.parse(protection).data_devices(count)
    return data * max(size - DEVICE_OVERHEAD - size // 512, 0)


_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
# overhead the controller keeps per device for its own metadata (labels, LU table, journals)
DEVICE_OVERHEAD = 16 << 20


def parse_size(value: Any, path: str = "") -> int:
    """``512M``, ``1Gi``, ``1G``, ``1073741824`` → bytes (``nasblade.units``, binary letters)."""
    try:
        return units.parse_size(value)
    except units.UnitError as exc:
        raise ConfigError(path, str(exc)) from None


def parse_duration(value: Any, path: str) -> float:
    """``200ms``, ``2s``, ``1h30m``, ``5`` → seconds (``nasblade.units``)."""
    try:
        return units.parse_duration(value)
    except units.UnitError as exc:
        raise ConfigError(path, str(exc)) from None


@dataclass(frozen=True)
class Export:
    path: str = "/"
    clients: tuple[str, ...] = ("127.0.0.0/8",)
    access: str = "rw"
    root_squash: bool = True


@dataclass(frozen=True)
class FileSystem:
    name: str
    size: int
    cluster_group: str
    preferred_blade: str
    address: str
    exports: tuple[Export, ...]
    root_mode: int = 0o1777


@dataclass(frozen=True)
class Backup:
    interval: float = 600.0
    load_threshold: float = 0.8
    max_age: float = 3600.0
    cross_group: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterGroup:
    name: str
    blades: tuple[str, ...]
    heartbeat_interval: float = 0.2
    failure_timeout: float = 2.0
    backup: Backup = field(default_factory=Backup)
    power_fencing: bool = True
    controller_wait: float = 120.0
    read_cache: int = 128 << 20


@dataclass(frozen=True)
class Network:
    controller_address: str = "127.0.0.1"
    nbd_port: int = 10809
    api_port: int = 10880
    blade_api_port: int = 10900
    nfs_port: int = 2049
    mount_port: int = 20048
    portmap_port: int | None = 111
    #: NBD over TLS with mutual certificates and per-group LU access (``DATA/tls``)
    nbd_tls: bool = True


@dataclass(frozen=True)
class Config:
    device_count: int
    device_size: int
    cache_size: int
    program_size: int
    portion_size: int
    backup_size: int
    groups: tuple[ClusterGroup, ...]
    file_systems: tuple[FileSystem, ...]
    software_version: str | None
    network: Network
    #: the array's protection level (``nasblade.controller.redundancy``): none, mirror-2, mirror-3,
    #: parity-1, parity-2
    protection: str = "none"
    #: the controller's fault injection (``--faults``): off unless the configuration asks
    fault_injection: bool = False

    @property
    def procinfo_size(self) -> int:
        return self.portion_size * len(self.groups)

    @property
    def usable(self) -> int:
        return usable_bytes(self.device_count, self.device_size, self.protection)

    def group(self, name: str) -> ClusterGroup:
        return next(g for g in self.groups if g.name == name)

    def group_index(self, name: str) -> int:
        return [g.name for g in self.groups].index(name)


class _Reader:
    """Walks one mapping, remembering which keys were used, to refuse unknown ones."""

    def __init__(self, data: Any, path: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
        self.data = data
        self.path = path
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                raise ConfigError(self.sub(str(key)), "unknown key")


def _int(value: Any, path: str, *, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"{value!r} is not an integer")
    if not lo <= value <= hi:
        raise ConfigError(path, f"{value} is outside {lo}..{hi}")
    return value


def _name(value: Any, path: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ConfigError(path, f"{value!r} is not a valid name (lower-case letters, digits, '-', up to 32)")
    return value


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, "must be true or false")
    return value


def _loopback(value: Any, path: str) -> str:
    try:
        addr = ipaddress.IPv4Address(str(value))
    except ValueError as exc:
        raise ConfigError(path, f"{value!r} is not an IPv4 address") from exc
    if not addr.is_loopback:
        raise ConfigError(path, f"{value} is not a loopback address (127.0.0.0/8) in standalone mode")
    return str(addr)


def _export(data: Any, path: str) -> Export:
    r = _Reader(data, path)
    ex_path = r.get("path", "/")
    if not isinstance(ex_path, str) or not ex_path.startswith("/"):
        raise ConfigError(r.sub("path"), f"{ex_path!r} must be an absolute path")
    clients = r.get("clients", ["127.0.0.0/8"])
    if not isinstance(clients, list) or not clients:
        raise ConfigError(r.sub("clients"), "must be a non-empty list of CIDRs")
    for i, c in enumerate(clients):
        try:
            ipaddress.ip_network(str(c), strict=False)
        except ValueError as exc:
            raise ConfigError(f"{r.sub('clients')}[{i}]", f"{c!r} is not a CIDR") from exc
    access = r.get("access", "rw")
    if access not in ("rw", "ro"):
        raise ConfigError(r.sub("access"), f"{access!r} must be rw or ro")
    root_squash = r.get("rootSquash", True)
    if not isinstance(root_squash, bool):
        raise ConfigError(r.sub("rootSquash"), f"{root_squash!r} must be true or false")
    r.done()
    return Export(path=ex_path, clients=tuple(str(c) for c in clients), access=access, root_squash=root_squash)


def _group(data: Any, path: str, index: int) -> ClusterGroup:
    r = _Reader(data, path)
    name = _name(r.get("name", f"g{index + 1}"), r.sub("name"))
    blades_raw = r.get("blades", 2)
    if isinstance(blades_raw, int) and not isinstance(blades_raw, bool):
        blades = tuple(f"{name}-{i}" for i in range(_int(blades_raw, r.sub("blades"), lo=1, hi=16)))
    elif isinstance(blades_raw, list) and blades_raw:
        blades = tuple(_name(b, f"{r.sub('blades')}[{i}]") for i, b in enumerate(blades_raw))
        if len(set(blades)) != len(blades):
            raise ConfigError(r.sub("blades"), "blade names must be unique")
    else:
        raise ConfigError(r.sub("blades"), f"{blades_raw!r} must be a count (1-16) or a list of names")
    hb = parse_duration(r.get("heartbeatInterval", "200ms"), r.sub("heartbeatInterval"))
    ft = parse_duration(r.get("failureTimeout", "2s"), r.sub("failureTimeout"))
    if hb <= 0:
        raise ConfigError(r.sub("heartbeatInterval"), "must be positive")
    if ft <= hb:
        raise ConfigError(r.sub("failureTimeout"), f"must be longer than heartbeatInterval ({hb}s)")
    controller_wait = parse_duration(r.get("controllerWait", "2m"), r.sub("controllerWait"))
    if controller_wait <= 0:
        raise ConfigError(r.sub("controllerWait"), "must be positive")
    read_cache = parse_size(r.get("readCache", "128M"), r.sub("readCache"))
    power_fencing = r.get("powerFencing", True)
    if not isinstance(power_fencing, bool):
        raise ConfigError(r.sub("powerFencing"), f"{power_fencing!r} must be true or false")
    br = _Reader(r.get("backup"), r.sub("backup"))
    threshold = br.get("loadThreshold", 0.8)
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
        raise ConfigError(br.sub("loadThreshold"), f"{threshold!r} must be a number in 0..1")
    cross = br.get("crossGroup", [])
    if not isinstance(cross, list):
        raise ConfigError(br.sub("crossGroup"), "must be a list of cluster group names")
    backup = Backup(
        interval=parse_duration(br.get("interval", "10m"), br.sub("interval")),
        load_threshold=float(threshold),
        max_age=parse_duration(br.get("maxAge", "1h"), br.sub("maxAge")),
        cross_group=tuple(_name(c, f"{br.sub('crossGroup')}[{i}]") for i, c in enumerate(cross)),
    )
    br.done()
    r.done()
    return ClusterGroup(name=name, blades=blades, heartbeat_interval=hb, failure_timeout=ft, backup=backup,
                        power_fencing=power_fencing, controller_wait=controller_wait, read_cache=read_cache)


def parse(data: Any) -> Config:
    """Validate a decoded YAML document and return the configuration."""
    top = _Reader(data, "")
    arr = _Reader(top.get("array"), "array")
    dev = _Reader(arr.get("devices"), "array.devices")
    count = _int(dev.get("count", 2), "array.devices.count", lo=1, hi=64)
    dsize = parse_size(dev.get("size", "1G"), "array.devices.size")
    if dsize < 2 * DEVICE_OVERHEAD:
        raise ConfigError("array.devices.size", f"{format_size(dsize)} is too small (at least {format_size(2 * DEVICE_OVERHEAD)})")
    dev.done()
    try:
        protection = redundancy.parse(arr.get("protection", "none"))
        protection.check(count)
    except redundancy.ProtectionError as exc:
        raise ConfigError("array.protection", f"{exc} (array.devices.count is {count})") from None
    cache = parse_size(arr.get("cacheSize", "256M"), "array.cacheSize")
    if cache < 1 << 20:
        raise ConfigError("array.cacheSize", f"{format_size(cache)} is too small (at least 1M)")
    areas = _Reader(arr.get("areas"), "array.areas")
    program = parse_size(areas.get("programSize", "64M"), "array.areas.programSize")
    portion = parse_size(areas.get("procInfoPortionSize", "1M"), "array.areas.procInfoPortionSize")
    from nasblade.procinfo.portion import MIN_PORTION_SIZE

    if portion < MIN_PORTION_SIZE or portion % 4096:
        raise ConfigError("array.areas.procInfoPortionSize", f"{format_size(portion)} must be a multiple of 4K and at least {format_size(MIN_PORTION_SIZE)}")
    if program < 1 << 20:
        raise ConfigError("array.areas.programSize", f"{format_size(program)} is too small (at least 1M)")
    backup_raw = areas.get("backupSize")
    areas.done()
    fault_injection = _flag(arr.get("faultInjection", False), "array.faultInjection")
    arr.done()

    groups_raw = top.get("clusterGroups", [{}])
    if not isinstance(groups_raw, list) or not groups_raw:
        raise ConfigError("clusterGroups", "must be a non-empty list")
    groups = tuple(_group(g, f"clusterGroups[{i}]", i) for i, g in enumerate(groups_raw))
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise ConfigError("clusterGroups", "cluster group names must be unique")
    all_blades = [b for g in groups for b in g.blades]
    if len(set(all_blades)) != len(all_blades):
        raise ConfigError("clusterGroups", "blade names must be unique across groups")
    for i, g in enumerate(groups):
        for j, c in enumerate(g.backup.cross_group):
            if c not in names:
                raise ConfigError(f"clusterGroups[{i}].backup.crossGroup[{j}]", f"no cluster group {c!r}")

    if backup_raw is None:
        backup = portion * len(groups)
    else:
        backup = parse_size(backup_raw, "array.areas.backupSize")
    if backup < portion * len(groups):
        raise ConfigError("array.areas.backupSize", f"{format_size(backup)} cannot hold one backup area of {format_size(portion)} per cluster group ({len(groups)})")

    net = _Reader(top.get("network"), "network")
    network = Network(
        controller_address=_loopback(net.get("controllerAddress", "127.0.0.1"), "network.controllerAddress"),
        nbd_port=_int(net.get("nbdPort", 10809), "network.nbdPort", lo=0, hi=65535),
        api_port=_int(net.get("apiPort", 10880), "network.apiPort", lo=0, hi=65535),
        blade_api_port=_int(net.get("bladeApiPort", 10900), "network.bladeApiPort", lo=0, hi=65535),
        nfs_port=_int(net.get("nfsPort", 2049), "network.nfsPort", lo=1, hi=65535),
        mount_port=_int(net.get("mountPort", 20048), "network.mountPort", lo=1, hi=65535),
        portmap_port=None if (pm := net.get("portmapPort", 111)) is None else _int(pm, "network.portmapPort", lo=1, hi=65535),
        nbd_tls=_flag(net.get("nbdTLS", True), "network.nbdTLS"),
    )
    net.done()

    free = usable_bytes(count, dsize, protection.name) - program - portion * len(groups) - backup
    fs_raw = top.get("fileSystems", [{}])
    if not isinstance(fs_raw, list):
        raise ConfigError("fileSystems", "must be a list")
    fss: list[FileSystem] = []
    used_addresses = {network.controller_address}
    for i, raw in enumerate(fs_raw):
        p = f"fileSystems[{i}]"
        r = _Reader(raw, p)
        name = _name(r.get("name", f"fs{i + 1}"), r.sub("name"))
        if any(f.name == name for f in fss):
            raise ConfigError(r.sub("name"), f"file system {name!r} is defined twice")
        size_raw = r.get("size", "512M")
        size = parse_size(size_raw, r.sub("size"))
        if size < 16 << 20:
            raise ConfigError(r.sub("size"), f"{format_size(size)} is too small (at least 16M)")
        if size > free:
            raise ConfigError(r.sub("size"), f"{size_raw} is larger than the array's free space {format_size(max(free, 0))}")
        free -= size
        group_name = r.get("clusterGroup", groups[0].name)
        if group_name not in names:
            raise ConfigError(r.sub("clusterGroup"), f"no cluster group {group_name!r}")
        group = groups[names.index(group_name)]
        preferred = r.get("preferredBlade", group.blades[i % len(group.blades)])
        if preferred not in group.blades:
            raise ConfigError(r.sub("preferredBlade"), f"{preferred!r} is not a blade of {group_name} ({', '.join(group.blades)})")
        address = _loopback(r.get("address", f"127.0.0.{i + 2}"), r.sub("address"))
        if address in used_addresses:
            raise ConfigError(r.sub("address"), f"{address} is already used")
        used_addresses.add(address)
        exports_raw = r.get("exports", [{}])
        if not isinstance(exports_raw, list) or not exports_raw:
            raise ConfigError(r.sub("exports"), "must be a non-empty list")
        exports = tuple(_export(e, f"{r.sub('exports')}[{j}]") for j, e in enumerate(exports_raw))
        mode_raw = r.get("rootMode", "1777")
        try:
            root_mode = int(str(mode_raw), 8)
        except ValueError:
            root_mode = -1
        if not 0 <= root_mode <= 0o7777:
            raise ConfigError(r.sub("rootMode"), f"{mode_raw!r} is not an octal mode such as 1777 or 755")
        r.done()
        fss.append(FileSystem(name=name, size=size, cluster_group=group_name, preferred_blade=preferred,
                              address=address, exports=exports, root_mode=root_mode))

    sw = _Reader(top.get("software"), "software")
    version = sw.get("version")
    if version is not None and not isinstance(version, str | int | float):
        raise ConfigError("software.version", f"{version!r} must be a string")
    sw.done()
    top.done()
    return Config(
        device_count=count,
        device_size=dsize,
        cache_size=cache,
        program_size=program,
        portion_size=portion,
        backup_size=backup,
        groups=groups,
        file_systems=tuple(fss),
        software_version=None if version is None else str(version),
        network=network,
        protection=protection.name,
        fault_injection=fault_injection,
    )


def load(path: Path | None) -> Config:
    """Read and validate ``path`` (the defaults when ``None``)."""
    if path is None:
        return parse({})
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from exc
    return parse(data)
