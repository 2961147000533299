"""The cluster-group configuration a block processor is started with (``--cluster-config FILE``).

Written by whoever starts the blade (``nasblade.standalone.array`` in standalone mode, the
operator from the ClusterGroup resource in Kubernetes) and read by
``nasblade.cluster.member.ClusterMember``. JSON; durations in seconds, sizes in bytes::

    {"group": "g1", "groupIndex": 0, "members": ["g1-0", "g1-1"],
     "heartbeatInterval": 0.2, "failureTimeout": 2.0,
     "procinfoLu": "procinfo", "backupLu": "backup", "portionSize": 1048576,
     "backup": {"interval": 600, "loadThreshold": 0.8, "maxAge": 3600, "throttleRate": 8388608,
                "crossGroup": [{"group": "g2", "index": 1}]},
     "fileSystems": [{"name": "fs1", "lu": "fs-fs1", "home": "g1-0",
                      "serve": {"address": "127.0.0.2", "nfsPort": 2049, "mountPort": 20048,
                                "portmapPort": null, "exports": [...]}}],
     "chassis": "/data/run/chassis.sock"}

``chassis`` (optional) is the Unix socket of the chassis API (``nasblade.standalone.chassis``):
when set, a blade taking a file system over from a silent peer first asks the chassis to
power that peer off (power fencing), so the peer's address is free before it is bound.

``serve`` (optional, informational) is the file system's address, ports and exports; the block
processor serves what its ``--fs-spec`` flags say (``nasblade.blockproc``), so whichever blade
serves a file system serves it on the same address with the same exports.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasblade import lunames
from nasblade.cluster.core import BackupPolicy, FsPolicy


class ClusterConfigError(ValueError):
    """The cluster configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class CrossGroup:
    group: str
    index: int


@dataclass(frozen=True)
class FsConfig:
    policy: FsPolicy
    serve: dict[str, Any]


@dataclass(frozen=True)
class ClusterConfig:
    group: str
    group_index: int
    members: tuple[str, ...]
    heartbeat_interval: float
    failure_timeout: float
    procinfo_lu: str
    backup_lu: str
    portion_size: int
    backup: BackupPolicy
    cross_group: tuple[CrossGroup, ...]
    file_systems: tuple[FsConfig, ...] = field(default=())
    chassis: str | None = None

    def fs(self, name: str) -> FsConfig | None:
        return next((f for f in self.file_systems if f.policy.name == name), None)

    @property
    def policies(self) -> list[FsPolicy]:
        return [f.policy for f in self.file_systems]

    def to_json(self) -> dict[str, Any]:
        return {
            "group": self.group, "groupIndex": self.group_index, "members": list(self.members),
            "heartbeatInterval": self.heartbeat_interval, "failureTimeout": self.failure_timeout,
            "procinfoLu": self.procinfo_lu, "backupLu": self.backup_lu, "portionSize": self.portion_size,
            "backup": {"interval": self.backup.interval, "loadThreshold": self.backup.load_threshold,
                       "maxAge": self.backup.max_age, "throttleRate": self.backup.throttle_rate,
                       "crossGroup": [{"group": c.group, "index": c.index} for c in self.cross_group]},
            "fileSystems": [{"name": f.policy.name, "lu": f.policy.lu, "home": f.policy.home, "serve": f.serve}
                            for f in self.file_systems],
            **({"chassis": self.chassis} if self.chassis else {}),
        }


def _get(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    if key not in d:
        if default is None:
            raise ClusterConfigError(f"{where}.{key}: required")
        return default
    value = d[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ClusterConfigError(f"{where}.{key}: {value!r} has the wrong type")
    return value


def parse(data: Any) -> ClusterConfig:
    if not isinstance(data, dict):
        raise ClusterConfigError("cluster config: expected a JSON object")
    w = "cluster"
    members = tuple(str(m) for m in _get(data, "members", list, w))
    if not members or len(set(members)) != len(members):
        raise ClusterConfigError(f"{w}.members: must be a non-empty list of unique blade names")
    hb = float(_get(data, "heartbeatInterval", (int, float), w, 0.2))
    ft = float(_get(data, "failureTimeout", (int, float), w, 2.0))
    if hb <= 0 or ft <= hb:
        raise ClusterConfigError(f"{w}.failureTimeout: must be longer than heartbeatInterval ({hb}s)")
    b = _get(data, "backup", dict, w, {})
    policy = BackupPolicy(
        interval=float(_get(b, "interval", (int, float), f"{w}.backup", 600.0)),
        load_threshold=float(_get(b, "loadThreshold", (int, float), f"{w}.backup", 0.8)),
        max_age=float(_get(b, "maxAge", (int, float), f"{w}.backup", 3600.0)),
        throttle_rate=int(_get(b, "throttleRate", int, f"{w}.backup", 8 << 20)),
    )
    cross = tuple(
        CrossGroup(group=str(_get(c, "group", str, f"{w}.backup.crossGroup[{i}]")),
                   index=int(_get(c, "index", int, f"{w}.backup.crossGroup[{i}]")))
        for i, c in enumerate(_get(b, "crossGroup", list, f"{w}.backup", []))
    )
    fss = []
    for i, f in enumerate(_get(data, "fileSystems", list, w, [])):
        fw = f"{w}.fileSystems[{i}]"
        if not isinstance(f, dict):
            raise ClusterConfigError(f"{fw}: expected an object")
        home = str(_get(f, "home", str, fw))
        if home not in members:
            raise ClusterConfigError(f"{fw}.home: {home!r} is not a member of the group")
        fss.append(FsConfig(policy=FsPolicy(name=str(_get(f, "name", str, fw)), lu=str(_get(f, "lu", str, fw)),
                                            home=home),
                            serve=dict(_get(f, "serve", dict, fw, {}))))
    return ClusterConfig(
        group=str(_get(data, "group", str, w)),
        group_index=int(_get(data, "groupIndex", int, w, 0)),
        members=members,
        heartbeat_interval=hb,
        failure_timeout=ft,
        procinfo_lu=str(_get(data, "procinfoLu", str, w, lunames.PROCINFO)),
        backup_lu=str(_get(data, "backupLu", str, w, lunames.BACKUP)),
        portion_size=int(_get(data, "portionSize", int, w, 1 << 20)),
        backup=policy,
        cross_group=cross,
        file_systems=tuple(fss),
        chassis=None if data.get("chassis") is None else str(_get(data, "chassis", str, w)),
    )


def load(path: str | Path) -> ClusterConfig:
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as exc:
        raise ClusterConfigError(f"{path}: not JSON: {exc}") from exc
    return parse(data)


def from_standalone(config: Any, group: str, *, chassis: str | None = None) -> ClusterConfig:
    """The cluster configuration of ``group`` in a standalone ``nasblade.standalone.config.Config``."""
    names = [g.name for g in config.groups]
    g = config.groups[names.index(group)]
    return ClusterConfig(
        group=g.name,
        group_index=names.index(group),
        members=tuple(g.blades),
        heartbeat_interval=g.heartbeat_interval,
        failure_timeout=g.failure_timeout,
        procinfo_lu=lunames.PROCINFO,
        backup_lu=lunames.BACKUP,
        portion_size=config.portion_size,
        backup=BackupPolicy(interval=g.backup.interval, load_threshold=g.backup.load_threshold,
                            max_age=g.backup.max_age),
        cross_group=tuple(CrossGroup(group=c, index=names.index(c)) for c in g.backup.cross_group),
        file_systems=tuple(
            FsConfig(policy=FsPolicy(name=fs.name, lu=lunames.fs_lu(fs.name), home=fs.preferred_blade), serve={})
            for fs in config.file_systems if fs.cluster_group == group
        ),
        chassis=chassis if g.power_fencing else None,
    )


def save(cfg: ClusterConfig, path: Path, *, writer: str = "") -> None:
    """Write ``cfg`` as JSON at ``path``, atomically (a temporary file named for ``writer``,
    then a rename): several blades of a group may write the same file."""
    tmp = path.with_name(f".{path.name}.{writer or os.getpid()}.tmp")
    tmp.write_text(json.dumps(cfg.to_json(), indent=1, sort_keys=True))
    os.replace(tmp, path)


def write_standalone(config: Any, group: str, path: Path, *, chassis: str | None = None) -> Path:
    """Write ``group``'s cluster configuration as JSON at ``path`` (for ``--cluster-config``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save(from_standalone(config, group, chassis=chassis), path)
    return path
