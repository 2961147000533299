"""The data plane's figures as Prometheus metrics, exported by the operator.

The operator polls every controller (``diskarray/handlers.refresh_figures``: load and cache
figures, LU layout, the devices' health) and every blade (``clustergroup/daemon``: heartbeat ages, owners) anyway;
these gauges publish what it last saw, labelled by namespace, array, group, blade and file
system, on the operator's ``/metrics`` (``metrics.REGISTRY``). The chart's PrometheusRule and
Grafana dashboard use them (docs/operator.md, "Metrics"). A deleted DiskArray or ClusterGroup
takes its series with it (``forget``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import prometheus_client as prom

from nasblade_operator import conditions
from nasblade_operator.metrics import REGISTRY

_A = ["namespace", "array"]
_G = ["namespace", "group"]
_B = ["namespace", "group", "blade"]

CONTROLLER_UP = prom.Gauge("nasblade_controller_up", "1 when the operator's last poll of the controller's API answered", _A,
                           registry=REGISTRY)
CONTROLLER_IOPS = prom.Gauge("nasblade_controller_iops", "NBD requests per second at the controller (short window)", _A,
                             registry=REGISTRY)
CONTROLLER_BYTES = prom.Gauge("nasblade_controller_bytes_per_second", "Bytes per second read or written at the controller",
                              [*_A, "direction"], registry=REGISTRY)
CONTROLLER_QUEUE = prom.Gauge("nasblade_controller_queue_depth", "Outstanding NBD requests at the controller", _A,
                              registry=REGISTRY)
CACHE_BYTES = prom.Gauge("nasblade_controller_cache_bytes", "Controller cache: size, used and dirty bytes", [*_A, "kind"],
                         registry=REGISTRY)
CACHE_DIRTY = prom.Gauge("nasblade_controller_cache_dirty_ratio", "Dirty share of the controller cache (0-1)", _A,
                         registry=REGISTRY)
CACHE_HIT = prom.Gauge("nasblade_controller_cache_hit_ratio", "Cache hit ratio of the controller (0-1)", _A,
                       registry=REGISTRY)
LUS = prom.Gauge("nasblade_controller_lus", "LUs on the controller", _A, registry=REGISTRY)
ARRAY_DEGRADED = prom.Gauge("nasblade_array_degraded", "1 while a device of the array is failed or rebuilding", _A,
                            registry=REGISTRY)
DEVICE_FAILED = prom.Gauge("nasblade_array_device_failed", "1 when the device is failed", [*_A, "device"],
                           registry=REGISTRY)
DEVICE_REBUILT = prom.Gauge("nasblade_array_device_rebuilt_ratio",
                            "Share of the device that holds its data (1 ok, 0 failed, the progress while rebuilding)",
                            [*_A, "device"], registry=REGISTRY)
DEVICE_ERRORS = prom.Gauge("nasblade_array_device_errors", "Errors the controller counted on the device since it started",
                           [*_A, "device", "kind"], registry=REGISTRY)
ARRAY_BLOCKS = prom.Gauge("nasblade_array_blocks", "Blocks repaired from another copy, lost (no copy held them"
                          " correctly), and parity found disagreeing with its data (parity levels)",
                          [*_A, "kind"], registry=REGISTRY)
ARRAY_CONDITION = prom.Gauge("nasblade_diskarray_condition", "DiskArray conditions (1 True, 0 otherwise)",
                             [*_A, "condition"], registry=REGISTRY)
GROUP_CONDITION = prom.Gauge("nasblade_clustergroup_condition", "ClusterGroup conditions (1 True, 0 otherwise)",
                             [*_G, "condition"], registry=REGISTRY)
BLADE_UP = prom.Gauge("nasblade_blade_up", "1 when the blade is Running (pod Ready, heartbeat fresh)", _B,
                      registry=REGISTRY)
BLADE_HEARTBEAT = prom.Gauge("nasblade_blade_heartbeat_age_seconds", "Age of the blade's last heartbeat in its portion",
                             _B, registry=REGISTRY)
BLADE_FILESYSTEMS = prom.Gauge("nasblade_blade_filesystems", "File systems the blade owns", _B, registry=REGISTRY)
FS_SERVED = prom.Gauge("nasblade_filesystem_served",
                       "1 when the file system's owner blade is Running (its NFS Service has an endpoint to serve it)",
                       ["namespace", "array", "group", "filesystem"], registry=REGISTRY)
BACKUP_LAST_SUCCESS = prom.Gauge("nasblade_backup_last_success_timestamp_seconds",
                                 "Unix time of the group's last successful backup", _G, registry=REGISTRY)
BACKUP_MAX_AGE = prom.Gauge("nasblade_backup_max_age_seconds", "spec.backup.maxAge of the group", _G, registry=REGISTRY)

#: (kind, namespace, name) -> the (gauge, label values) this module set for it, to remove them
_series: dict[tuple[str, str, str], set[tuple[prom.Gauge, tuple[str, ...]]]] = {}


def _set(key: tuple[str, str, str], gauge: prom.Gauge, labels: Sequence[str], value: float) -> None:
    gauge.labels(*labels).set(value)
    _series.setdefault(key, set()).add((gauge, tuple(labels)))


def controller_figures(namespace: str, array: str, f: Any, *, lus: int) -> None:
    """What ``arrayapi.ArrayAPI.figures`` answered (an ``arrayapi.Figures``) and the LU count."""
    key, a = ("DiskArray", namespace, array), (namespace, array)
    _set(key, CONTROLLER_UP, a, 1)
    _set(key, CONTROLLER_IOPS, a, f.iops)
    _set(key, CONTROLLER_BYTES, (*a, "read"), f.read_mbps * 1e6)
    _set(key, CONTROLLER_BYTES, (*a, "write"), f.write_mbps * 1e6)
    _set(key, CONTROLLER_QUEUE, a, f.queue_depth)
    for kind, v in (("size", f.cache_size), ("used", f.cache_used), ("dirty", f.dirty_bytes)):
        _set(key, CACHE_BYTES, (*a, kind), v)
    _set(key, CACHE_DIRTY, a, f.dirty_ratio)
    _set(key, CACHE_HIT, a, f.hit_ratio)
    _set(key, LUS, a, lus)


def array_health(namespace: str, array: str, answer: Mapping[str, Any]) -> None:
    """The controller's ``GET /v1/array`` answer (``arrayapi.ArrayAPI.array``): degraded, and per
    device failed, rebuilt share and error counters."""
    key, a = ("DiskArray", namespace, array), (namespace, array)
    _set(key, ARRAY_DEGRADED, a, 1 if answer.get("state", "ok") != "ok" else 0)
    for kind, field in (("repaired", "repairedBlocks"), ("lost", "lostBlocks"), ("parity-mismatch", "parityMismatches")):
        _set(key, ARRAY_BLOCKS, (*a, kind), float(answer.get(field, 0)))
    rebuild = {int(r["device"]): r for r in answer.get("rebuild") or []}
    for d in answer.get("devices") or []:
        i = int(d["index"])
        device = (*a, str(i))
        state = d.get("state", "ok")
        _set(key, DEVICE_FAILED, device, 1 if state == "failed" else 0)
        r = rebuild.get(i)
        rebuilt = 1.0 if state == "ok" else (int(r["done"]) / max(int(r["total"]), 1) if r and state == "rebuilding" else 0.0)
        _set(key, DEVICE_REBUILT, device, rebuilt)
        for kind, field in (("read", "readErrors"), ("write", "writeErrors"), ("checksum", "checksumErrors")):
            _set(key, DEVICE_ERRORS, (*device, kind), float(d.get(field, 0)))


def controller_unreachable(namespace: str, array: str) -> None:
    _set(("DiskArray", namespace, array), CONTROLLER_UP, (namespace, array), 0)


def array_status(namespace: str, array: str, status: Mapping[str, Any]) -> None:
    """The DiskArray's conditions (called with every event of it)."""
    for c in status.get("conditions", []) or []:
        if isinstance(c, Mapping) and c.get("type"):
            _set(("DiskArray", namespace, array), ARRAY_CONDITION, (namespace, array, str(c["type"])),
                 1 if c.get("status") == "True" else 0)


def group_status(namespace: str, group: str, *, array: str, status: Mapping[str, Any],
                 heartbeats: Mapping[str, float], backup_max_age: float) -> None:
    """A ClusterGroup's status as a daemon pass built it, and the heartbeat ages it heard."""
    key, g = ("ClusterGroup", namespace, group), (namespace, group)
    before = _series.pop(key, set())
    running: set[str] = set()
    for b in status.get("blades", []):
        name = str(b["name"])
        up = b.get("state") == "Running"
        if up:
            running.add(name)
        _set(key, BLADE_UP, (*g, name), 1 if up else 0)
        _set(key, BLADE_FILESYSTEMS, (*g, name), len(b.get("fileSystems", [])))
        if name in heartbeats:
            _set(key, BLADE_HEARTBEAT, (*g, name), heartbeats[name])
    for fs in status.get("fileSystems", []):
        _set(key, FS_SERVED, (namespace, array, group, str(fs["name"])), 1 if fs.get("blade") in running else 0)
    for c in status.get("conditions", []):
        _set(key, GROUP_CONDITION, (*g, str(c["type"])), 1 if c.get("status") == "True" else 0)
    last = conditions.parse_time((status.get("backups") or {}).get("lastSuccessful"))
    if last is not None:
        _set(key, BACKUP_LAST_SUCCESS, g, last.timestamp())
    _set(key, BACKUP_MAX_AGE, g, backup_max_age)
    for gauge, labels in before - _series.get(key, set()):  # a blade or file system gone
        _remove(gauge, labels)


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop every series of a deleted DiskArray or ClusterGroup."""
    for gauge, labels in _series.pop((kind, namespace, name), set()):
        _remove(gauge, labels)


def _remove(gauge: prom.Gauge, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)
