"""File-processor configuration: which file systems to serve, from which devices, to whom.

Format (YAML or JSON; a list of these, or ``{"fileSystems": [...]}``)::

    fsName: fs1
    device: nbd+unix:///fs1?socket=/run/nasblade/bp.sock   # or nbd://host:port/LU, or a path
    exports:
      - path: /fs1              # what MOUNT is asked for
        subdir: /               # directory inside the file system (default /)
        clients: [10.0.0.0/8]   # CIDR allow-list, checked on every call
        access: rw              # rw | ro
        rootSquash: true        # default true
        allSquash: false
        anonuid: 65534
        anongid: 65534
    listen: {host: 127.0.0.1, nfsPort: 2049, mountPort: 20048, portmapPort: 111,
             advertise: {nfsPort: 2049, mountPort: 20048, portmapPort: 111}}   # optional

A port of 0 picks a free port; ``portmapPort: null`` runs no portmapper. ``advertise`` is what
the portmapper answers when the clients reach the listeners through a port mapping (a
Kubernetes Service maps the standard ports onto each file system's own container ports, so
that one blade pod can serve several file systems); each port defaults to the bound one. Errors name the
field (``fileSystems[0].exports[1].clients``). ``nasblade.fileproc.server`` consumes
``FsSpec``; the blade (``nasblade.blockproc``/standalone) builds these from its own config.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from nasblade.nfs.exports import Export


class ConfigError(ValueError):
    """Invalid configuration; the message starts with the field path."""


@dataclasses.dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    nfs_port: int = 2049
    mount_port: int = 20048
    portmap_port: int | None = 111
    #: (nfs, mount, portmap) as the clients see them, when not the bound ports
    advertise: tuple[int, int, int] | None = None


@dataclasses.dataclass(frozen=True)
class FsSpec:
    name: str
    device: str
    exports: tuple[Export, ...]
    listen: Listen = Listen()


def _int(v: Any, where: str, *, lo: int = 0, hi: int = 65535) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(f"{where}: expected an integer in [{lo}, {hi}], got {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def parse_export(raw: Any, where: str) -> Export:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    clients = raw.get("clients")
    if not isinstance(clients, list) or not all(isinstance(c, str) for c in clients) or not clients:
        raise ConfigError(f"{where}.clients: expected a non-empty list of CIDR strings")
    try:
        return Export.build(
            str(raw.get("path", "")),
            clients,
            subdir=str(raw.get("subdir", "/")),
            access=str(raw.get("access", "rw")),
            root_squash=_bool(raw.get("rootSquash", True), f"{where}.rootSquash"),
            all_squash=_bool(raw.get("allSquash", False), f"{where}.allSquash"),
            anonuid=_int(raw.get("anonuid", 65534), f"{where}.anonuid", hi=0xFFFFFFFF),
            anongid=_int(raw.get("anongid", 65534), f"{where}.anongid", hi=0xFFFFFFFF),
        )
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from exc


def _advertise(raw: Any, where: str) -> tuple[int, int, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"nfsPort", "mountPort", "portmapPort"}:
        raise ConfigError(f"{where}: expected a mapping of nfsPort, mountPort and portmapPort")
    nfs, mnt, pm = (_int(raw.get(k), f"{where}.{k}", lo=1) for k in ("nfsPort", "mountPort", "portmapPort"))
    return nfs, mnt, pm


def parse_fs(raw: Any, where: str) -> FsSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    name = raw.get("fsName")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.fsName: required")
    device = raw.get("device")
    if not isinstance(device, str) or not device:
        raise ConfigError(f"{where}.device: required (nbd://host:port/LU, nbd+unix:///LU?socket=PATH or a path)")
    exports_raw = raw.get("exports")
    if not isinstance(exports_raw, list) or not exports_raw:
        raise ConfigError(f"{where}.exports: expected a non-empty list")
    exports = tuple(parse_export(e, f"{where}.exports[{i}]") for i, e in enumerate(exports_raw))
    return FsSpec(name=name, device=device, exports=exports,
                  listen=parse_listen(raw.get("listen", {}) or {}, f"{where}.listen"))


def parse_listen(lraw: Any, where: str) -> Listen:
    """A file system's ``listen`` mapping (also what ``PUT /v1/filesystems/{name}/listen`` takes)."""
    if not isinstance(lraw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    pm = lraw.get("portmapPort", 111)
    return Listen(
        host=str(lraw.get("host", "127.0.0.1")),
        nfs_port=_int(lraw.get("nfsPort", 2049), f"{where}.nfsPort"),
        mount_port=_int(lraw.get("mountPort", 20048), f"{where}.mountPort"),
        portmap_port=None if pm is None else _int(pm, f"{where}.portmapPort"),
        advertise=_advertise(lraw.get("advertise"), f"{where}.advertise"),
    )


def parse(raw: Any) -> list[FsSpec]:
    if isinstance(raw, dict) and "fileSystems" in raw:
        raw = raw["fileSystems"]
        prefix = "fileSystems"
    else:
        prefix = ""
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise ConfigError("expected a list of file systems")
    specs = [parse_fs(r, f"{prefix}[{i}]") for i, r in enumerate(raw)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{prefix}: duplicate fsName")
    return specs


def load(path: str | Path) -> list[FsSpec]:
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    return parse(data)
