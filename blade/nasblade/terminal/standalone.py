"""The standalone array as a data source: a ``nasblade up`` data directory and its endpoints.

Where things come from (see docs/blade.md, "Standalone array"):

- tokens: ``DATA/secrets/controller-token`` and ``DATA/secrets/blade-token``;
- endpoints: ``DATA/endpoints.json`` when present (the ``endpoints`` object of ``nasblade up``'s
  ready line), else the array's configuration (``--config``, the same file given to
  ``nasblade up``; its defaults otherwise): controller API and NBD addresses, blade API ports
  ``bladeApiPort + i`` in configuration order; ``--controller URL`` overrides the API address;
- state: the controller's control API (``ControlClient``: array, LUs, cache, load, copy jobs),
  each blade's management API (``BladeClient.status``) and each group's processor-information
  portion read over NBD (``PortionStore``: slots with heartbeats, the ownership record), so a
  blade that is down still shows its last heartbeat and who owns its file systems.

Operations go where the system does them: backups and file-system moves through a blade's
management API, progress from the controller's copy jobs. What the blades do not offer yet
raises ``NotAvailable`` (exit 2) with the reason.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nasblade.terminal import health
from nasblade.terminal.errors import NotAvailable, TerminalError, Unreachable, UsageError
from nasblade.terminal.model import (
    LU,
    Area,
    ArrayView,
    Backup,
    Blade,
    Device,
    Event,
    FileSystem,
    Group,
    LUKind,
    Snapshot,
)
from nasblade.terminal.source import BackupProgress, BackupRequest

PROGRAM_LU = "program"
PROCINFO_LU = "procinfo"
BACKUP_LU = "backup"
FS_PREFIX = "fs-"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def lu_kind(name: str) -> LUKind:
    if name == PROGRAM_LU:
        return "program"
    if name == PROCINFO_LU:
        return "processorInfo"
    if name == BACKUP_LU:
        return "backup"
    if name.startswith(FS_PREFIX):
        return "fileSystem"
    return "other"


@dataclass
class BladeEndpoint:
    name: str
    group: str
    api: str | None


@dataclass
class Endpoints:
    api: str
    nbd: str
    blades: list[BladeEndpoint]


class StandaloneSource:
    """Reads and drives the array of one data directory (see the module docstring)."""

    def __init__(self, data_dir: Path, *, config: Path | None = None, controller: str | None = None,
                 timeout: float = 5.0) -> None:
        from nasblade.standalone.config import ConfigError, load

        self.data_dir = data_dir
        if not (data_dir / "secrets").is_dir():
            raise UsageError(f"{data_dir} is not the data directory of an array (no secrets/ in it); "
                             f"start one with: nasblade up --data-dir {data_dir}")
        try:
            self.config = load(config)
        except (ConfigError, OSError) as exc:
            raise UsageError(f"array configuration: {exc}") from exc
        self.timeout = timeout
        self.token = self._secret("controller-token")
        self.blade_token = self._secret("blade-token", required=False)
        self.endpoints = self._endpoints(controller)
        self.description = f"standalone array in {data_dir} (controller {self.endpoints.api})"

    # -- wiring ------------------------------------------------------------------------------

    def _secret(self, name: str, *, required: bool = True) -> str:
        path = self.data_dir / "secrets" / name
        try:
            return path.read_text().strip()
        except OSError as exc:
            if required:
                raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
            return ""

    def _endpoints(self, controller: str | None) -> Endpoints:
        saved = self.data_dir / "endpoints.json"
        if saved.exists():
            try:
                ep = json.loads(saved.read_text())
                saved_blades = [BladeEndpoint(str(b["name"]), str(b["group"]), b.get("api")) for b in ep.get("blades", [])]
                return Endpoints(api=controller or str(ep["controller"]["api"]),
                                 nbd=str(ep["controller"]["nbd"]), blades=saved_blades)
            except (ValueError, KeyError, TypeError) as exc:
                raise UsageError(f"{saved} is not an endpoints file: {exc}") from exc
        net = self.config.network
        if controller is None and net.api_port == 0:
            raise UsageError("the array's configuration does not fix the control API port (apiPort: 0); "
                             "pass --controller URL")
        api = controller or f"http://{net.controller_address}:{net.api_port}"
        host = urlparse(api).hostname or net.controller_address
        blades: list[BladeEndpoint] = []
        port = net.blade_api_port
        for group in self.config.groups:
            for blade in group.blades:
                blades.append(BladeEndpoint(blade, group.name, f"http://{net.controller_address}:{port}" if port else None))
                if port:
                    port += 1
        return Endpoints(api=api, nbd=f"{host}:{net.nbd_port}", blades=blades)

    def control(self) -> Any:
        from nasblade.controller.apiclient import ControlClient

        return ControlClient(self.endpoints.api, self.token, timeout=self.timeout)

    def blade_client(self, name: str) -> Any:
        from nasblade.bladeapi.client import BladeClient

        ep = next((b for b in self.endpoints.blades if b.name == name), None)
        if ep is None:
            raise UsageError(f"no blade {name!r} in this array")
        if ep.api is None:
            raise NotAvailable(f"blade {name} has no fixed management API port in the configuration (bladeApiPort: 0)")
        return BladeClient(ep.api, self.blade_token, timeout=max(self.timeout, 120.0))

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from nasblade.controller.apiclient import ControlAPIError

        try:
            return fn(*args, **kwargs)
        except ControlAPIError as exc:
            raise TerminalError(f"controller {self.endpoints.api}: {what}: {exc.message}") from exc
        except OSError as exc:
            raise Unreachable(f"controller {self.endpoints.api} does not answer ({what}): {exc}; "
                              f"is `nasblade up --data-dir {self.data_dir}` running?") from exc

    # -- snapshot ----------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        ctl = self.control()
        array = self._call("array", ctl.array)
        lus = self._call("LUs", ctl.list_lus)
        cache = self._call("cache", ctl.cache)
        load = self._call("load", ctl.load)
        jobs = self._call("copy jobs", ctl.list_copy_jobs)
        portion_size = self.config.portion_size
        group_names = [g.name for g in self.config.groups]
        portions = self._read_portions()
        blade_status = {b.name: self._blade_status(b) for b in self.endpoints.blades}

        backups = [self._backup(j, group_names) for j in jobs if j.get("source") == PROCINFO_LU]
        backups.sort(key=lambda b: b["started"] or "")
        groups: list[Group] = []
        file_systems: list[FileSystem] = []
        lu_by_name = {lu["name"]: lu for lu in lus}
        for gi, g in enumerate(self.config.groups):
            slots, ownership, _ = portions.get(g.name, ({}, {}, None))
            members: list[Blade] = []
            for i, name in enumerate(g.blades):
                st, reachable = blade_status.get(name, (None, None))
                slot = slots.get(name)
                members.append(self._blade(name, g.name, st, reachable, slot, g.failure_timeout, default_slot=i))
            fss = [fs for fs in self.config.file_systems if fs.cluster_group == g.name]
            for fs in fss:
                owner = ownership.get(fs.name)
                holder = (lu_by_name.get(f"{FS_PREFIX}{fs.name}", {}).get("reservation") or {})
                serving = next((b["name"] for b in members if fs.name in b["fileSystems"] and b["state"] != "dead"), None)
                blade = (owner or {}).get("blade") or serving or holder.get("holder")
                epoch = (owner or {}).get("epoch") or holder.get("epoch")
                file_systems.append({
                    "name": fs.name, "group": g.name, "lu": f"{FS_PREFIX}{fs.name}", "size": fs.size,
                    "blade": blade, "homeBlade": fs.preferred_blade, "epoch": epoch,
                    "endpoint": f"{fs.address}:{self.config.network.nfs_port}",
                })
            mine = [b for b in backups if b["group"] == g.name]
            active = next((b["activeArea"] for b in members if b["activeArea"]), None)
            groups.append({
                "name": g.name, "array": self.array_name, "portion": gi, "activeArea": active,
                "failureTimeout": g.failure_timeout, "blades": members,
                "fileSystems": [fs.name for fs in fss],
                "lastBackup": mine[-1] if mine else None, "rollout": None,
            })
        areas: list[Area] = []
        for gi, name in enumerate(group_names):
            areas.append({"lu": PROCINFO_LU, "group": name, "index": gi, "offset": gi * portion_size,
                          "size": portion_size, "role": "portion"})
            areas.append({"lu": BACKUP_LU, "group": name, "index": gi, "offset": gi * portion_size,
                          "size": portion_size, "role": "backup"})
        fs_of_lu = {f["lu"]: f["name"] for f in file_systems}
        view: ArrayView = {
            "name": self.array_name,
            "ready": True,
            "size": array.get("size"),
            "free": array.get("free"),
            "devices": [Device(index=d["index"], size=d["size"], free=d.get("free", 0), path=d.get("path"))
                        for d in array.get("devices", [])],
            "lus": [LU(name=lu["name"], kind=lu_kind(lu["name"]), size=lu["size"], devices=list(lu.get("devices", [])),
                       fileSystem=fs_of_lu.get(lu["name"]), reservation=lu.get("reservation"))
                    for lu in lus],
            "areas": areas,
            "cache": cache,
            "load": load,
            "software": self._software(),
            "controller": self.endpoints.api,
        }
        return {"target": {"kind": "standalone", "dataDir": str(self.data_dir), "controller": self.endpoints.api},
                "time": now_iso(), "arrays": [view], "groups": groups, "fileSystems": file_systems,
                "backups": backups}

    @property
    def array_name(self) -> str:
        return self.data_dir.name

    def _backup(self, job: dict[str, Any], groups: list[str]) -> Backup:
        index = int(job.get("sourceOffset", 0)) // self.config.portion_size
        group = groups[index] if 0 <= index < len(groups) else f"portion-{index}"
        return {"id": job.get("id"), "group": group, "source": f"{job['source']}[{index}]",
                "target": f"{job['target']}[{int(job.get('targetOffset', 0)) // self.config.portion_size}]",
                "state": str(job.get("state")), "bytesDone": int(job.get("bytesDone") or 0),
                "bytesTotal": int(job.get("bytesTotal") or job.get("length") or 0),
                "started": job.get("started") or job.get("created"), "finished": job.get("finished"),
                "trigger": None, "error": job.get("error")}

    def _blade_status(self, ep: BladeEndpoint) -> tuple[dict[str, Any] | None, bool | None]:
        from nasblade.bladeapi.client import BladeAPIError, BladeClient

        if ep.api is None:
            return None, None
        try:
            st: dict[str, Any] = BladeClient(ep.api, self.blade_token, timeout=self.timeout).status()
            return st, True
        except BladeAPIError as exc:
            if exc.status == 401:
                raise UsageError(f"blade {ep.name} refused {self.data_dir}/secrets/blade-token") from exc
            return None, False
        except OSError:
            return None, False

    def _read_portions(self) -> dict[str, tuple[dict[str, tuple[int, dict[str, Any]]], dict[str, dict[str, Any]], str | None]]:
        """Per group: slots by blade name, the ownership record, and an error (if unreadable)."""
        from nasblade.nbd.client import NBDBlockDevice
        from nasblade.procinfo.portion import PortionError, PortionStore

        out: dict[str, tuple[dict[str, tuple[int, dict[str, Any]]], dict[str, dict[str, Any]], str | None]] = {}
        try:
            dev = NBDBlockDevice.connect(f"nbd://{self.endpoints.nbd}/{PROCINFO_LU}")
        except OSError as exc:
            return {g.name: ({}, {}, str(exc)) for g in self.config.groups}
        try:
            for gi, g in enumerate(self.config.groups):
                store = PortionStore(dev, offset=gi * self.config.portion_size, size=self.config.portion_size)
                try:
                    slots = {s.blade: (i, s.to_json()) for i, s in enumerate(store.slots()) if s is not None}
                    group = store.read_group().to_json()
                    out[g.name] = (slots, group.get("ownership", {}), None)
                except (PortionError, OSError) as exc:
                    out[g.name] = ({}, {}, str(exc))
        finally:
            dev.close()
        return out

    def _blade(self, name: str, group: str, status: dict[str, Any] | None, reachable: bool | None,
               slot: tuple[int, dict[str, Any]] | None, failure_timeout: float, *, default_slot: int) -> Blade:
        rec = slot[1] if slot else {}
        hb = (rec.get("heartbeat") or {}).get("time")
        age: float | None = None
        if status is not None and status.get("heartbeatAge") is not None:
            age = float(status["heartbeatAge"])
        elif hb:
            age = max(0.0, time.time() - float(hb))
        state, reason = health.blade_state(slot_state=rec.get("state"), heartbeat_age=age,
                                           reachable=reachable, failure_timeout=failure_timeout)
        ep = next((b for b in self.endpoints.blades if b.name == name), None)
        file_systems = list(status.get("fileSystems", [])) if status else list(rec.get("fileSystems", []))
        version = (status or {}).get("version") or rec.get("softwareVersion")
        return {"name": name, "group": group, "state": state, "reason": reason, "fileSystems": file_systems,
                "heartbeatAge": None if age is None else round(age, 3), "softwareVersion": version,
                "activeArea": (status or {}).get("activeArea") or rec.get("activeArea"),
                "slot": slot[0] if slot else (status or {}).get("slot", default_slot),
                "api": ep.api if ep else None}

    def _software(self) -> dict[str, Any]:
        from nasblade.nbd.client import NBDBlockDevice
        from nasblade.program.catalog import ProgramError, ProgramStore

        try:
            with NBDBlockDevice.connect(f"nbd://{self.endpoints.nbd}/{PROGRAM_LU}") as dev:
                catalog = ProgramStore(dev).catalog()
        except (ProgramError, OSError) as exc:
            return {"current": None, "versions": [], "error": str(exc)}
        return {"current": catalog.current, "versions": catalog.versions(), "error": None}

    # -- operations --------------------------------------------------------------------------

    def _live_blade(self, snap: Snapshot, group: str) -> str:
        for g in snap["groups"]:
            if g["name"] == group:
                for b in g["blades"]:
                    if b["state"] == "ok" and b["api"]:
                        return b["name"]
                raise TerminalError(f"no blade of cluster group {group} is up to run the backup")
        raise UsageError(f"no cluster group {group!r}")

    def request_backup(self, group: str, *, cross_groups: list[str]) -> BackupRequest:
        from nasblade.bladeapi.client import BladeAPIError

        snap = self.snapshot()
        names = [g["name"] for g in snap["groups"]]
        for name in (group, *cross_groups):
            if name not in names:
                raise UsageError(f"no cluster group {name!r} (known: {', '.join(names)})")
        blade = self._live_blade(snap, group)
        client = self.blade_client(blade)
        ask = getattr(client, "backup", None)
        if ask is None:
            raise NotAvailable("on-demand backups are not in the blade management API of this release "
                               "(nasblade.bladeapi.client.BladeClient has no backup(); POST /v1/backups answers 501)")
        since = time.time()
        try:
            detail = ask(groups=[group, *cross_groups])
        except BladeAPIError as exc:
            if exc.status == 501:
                raise NotAvailable(f"blade {blade}: on-demand backups are not implemented in this release ({exc.message})") from exc
            raise TerminalError(f"blade {blade} refused the backup: {exc.message}") from exc
        except OSError as exc:
            raise Unreachable(f"blade {blade} does not answer: {exc}") from exc
        return BackupRequest(group=group, groups=[group, *cross_groups], since=since,
                             detail=detail if isinstance(detail, dict) else {})

    def backup_progress(self, request: BackupRequest) -> BackupProgress:
        ctl = self.control()
        jobs = self._call("copy jobs", ctl.list_copy_jobs)
        load = self._call("load", ctl.load)
        names = [g.name for g in self.config.groups]
        mine = [self._backup(j, names) for j in jobs
                if j.get("source") == PROCINFO_LU and (parse_iso(j.get("created")) or 0) >= request.since - 1.0]
        mine = [b for b in mine if b["group"] in request.groups]
        done_groups = {b["group"] for b in mine}
        running = [b for b in mine if b["state"] == "running"]
        failed = [b for b in mine if b["state"] in ("failed", "cancelled")]
        total = sum(b["bytesTotal"] for b in mine)
        done_bytes = sum(b["bytesDone"] for b in mine)
        if not mine or (set(request.groups) - done_groups and not failed):
            waiting = ", ".join(sorted(set(request.groups) - done_groups))
            return BackupProgress(done=False, succeeded=None, bytes_done=done_bytes, bytes_total=total,
                                  load=load, message=f"waiting for the copy of {waiting} to start", copies=mine)
        if running:
            return BackupProgress(done=False, succeeded=None, bytes_done=done_bytes, bytes_total=total,
                                  load=load, message=f"{len(running)} copy job(s) running", copies=mine)
        if failed:
            errs = "; ".join(f"{b['group']}: {b['state']} {b['error'] or ''}".strip() for b in failed)
            return BackupProgress(done=True, succeeded=False, bytes_done=done_bytes, bytes_total=total,
                                  load=load, message=errs, copies=mine)
        return BackupProgress(done=True, succeeded=True, bytes_done=done_bytes, bytes_total=total,
                              load=load, message="all copies succeeded", copies=mine)

    def move(self, fs: str, *, to: str, snapshot: Snapshot) -> dict[str, Any]:
        """A planned move of ``fs`` to blade ``to``: the owner releases it (when it is up), then
        ``to`` takes it over with a new reservation epoch (which fences the owner if it is not)."""
        from nasblade.bladeapi.client import BladeAPIError

        record = next(f for f in snapshot["fileSystems"] if f["name"] == fs)
        owner = record["blade"]
        steps: list[dict[str, Any]] = []
        owner_up = any(b["name"] == owner and b["state"] == "ok" for g in snapshot["groups"] for b in g["blades"])
        target = self.blade_client(to)
        take = getattr(target, "take_over_fs", None)
        if take is None:
            raise NotAvailable("file-system takeover is not in the blade management API client of this release "
                               "(nasblade.bladeapi.client.BladeClient has no take_over_fs())")
        try:
            if owner and owner != to and owner_up:
                release = self.blade_client(owner).release_fs
                steps.append({"blade": owner, "release": release(fs)})
            steps.append({"blade": to, "takeover": take(fs)})
        except BladeAPIError as exc:
            if exc.status == 501:
                raise NotAvailable(f"file-system takeover is not implemented by the blades yet ({exc.message})") from exc
            raise TerminalError(f"{fs}: {exc.message} (steps done: {json.dumps(steps)})") from exc
        except OSError as exc:
            raise Unreachable(f"{fs}: a blade does not answer: {exc} (steps done: {json.dumps(steps)})") from exc
        return {"fileSystem": fs, "from": owner, "to": to, "steps": steps}

    def rollout(self, version: str, *, array: str | None) -> dict[str, Any]:
        raise NotAvailable(
            "a standalone array has no rolling restart of its blades: select the version with "
            f"`nasblade software --program nbd://{self.endpoints.nbd}/{PROGRAM_LU} select {version}` "
            "and restart `nasblade up` (rollouts are done by the operator on Kubernetes)")

    def events(self, snapshot: Snapshot) -> list[Event]:
        """What the array has recorded: processor-information copies and file-system owners."""
        out: list[Event] = []
        for b in snapshot["backups"]:
            err = f": {b['error']}" if b["error"] else ""
            out.append({"time": b["started"] or snapshot["time"], "kind": "Backup", "object": b["group"],
                        "message": f"backup {b['source']} -> {b['target']} {b['state']} "
                                   f"({b['bytesDone']}/{b['bytesTotal']} bytes){err}"})
        for f in snapshot["fileSystems"]:
            out.append({"time": snapshot["time"], "kind": "Owner", "object": f["name"],
                        "message": f"{f['name']} served by {f['blade'] or '-'} (epoch {f['epoch']}, home {f['homeBlade']})"})
        return out
