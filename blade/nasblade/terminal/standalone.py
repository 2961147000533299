"""The standalone array as a data source: a ``nasblade up`` data directory and its endpoints.

Where things come from (see docs/blade.md, "Standalone array"):

- tokens: ``DATA/secrets/controller-token`` and ``DATA/secrets/blade-token``;
- endpoints: ``DATA/endpoints.json`` when present (the ``endpoints`` object of ``nasblade up``'s
  ready line), else the array's configuration (``--config``, the same file given to
  ``nasblade up``; its defaults otherwise): controller API and NBD addresses, blade API ports
  ``bladeApiPort + i`` in configuration order; ``--controller URL`` overrides the API address.
  Each blade's management API address is then taken from the controller's client registry
  (``attrs.api``, registered by the block processor), which is right even with port 0;
- state: the controller's control API (``ControlClient``: array, LUs, cache, load, copy jobs),
  each blade's management API (``BladeClient.status``) and each group's processor-information
  portion read over NBD (``PortionStore``: slots with heartbeats, the ownership record), so a
  blade that is down still shows its last heartbeat and who owns its file systems.

Operations go where the system does them, the cluster-group routes of a blade's management
API (``nasblade.cluster.api``): ``POST /v1/cluster/backups`` on a live blade of the group
(progress meanwhile from the controller's copy jobs), ``POST /v1/cluster/filesystems/{fs}/
takeover`` on the target blade (graceful: a live owner releases first), and
``GET /v1/cluster/check-takeover`` for the target blade's own verdict in dry runs. The backup
history is the group record's (read from the portion), so it survives every blade. What the
blades do not offer raises ``NotAvailable`` (exit 2) with the reason.

The CSI driver's volumes (``volumes``) come from its catalog LU (``csi-catalog``, read over NBD),
the controller's LU listing and the serving blades' directory routes
(``GET /v1/filesystems/{fs}/directories``, ``…/snapshots``); ``nasblade.terminal.volumes`` puts
them together.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from nasblade import csicatalog, lunames, tls
from nasblade.terminal import health
from nasblade.terminal import volumes as csivolumes
from nasblade.terminal.errors import NotAvailable, TerminalError, Timeout, Unreachable, UsageError
from nasblade.terminal.model import (
    LU,
    Area,
    ArrayView,
    Backup,
    Blade,
    Device,
    Event,
    Extent,
    FileSystem,
    Group,
    LUKind,
    Snapshot,
    VolumeList,
    area_word,
    fill_health,
)
from nasblade.terminal.source import BackupProgress, BackupRequest

PROGRAM_LU = lunames.PROGRAM
PROCINFO_LU = lunames.PROCINFO
BACKUP_LU = lunames.BACKUP
FS_PREFIX = lunames.FS_PREFIX


def _device(d: dict[str, Any], array: dict[str, Any]) -> Device:
    """A device of the controller's ``GET /v1/array``, with its redundancy state."""
    dev = Device(index=d["index"], size=d["size"], free=d.get("free", 0), path=d.get("path"))
    fill_health(dev, d, array.get("rebuild", []))
    return dev


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
class PortionView:
    """What a group's processor-information area says (``area``: the LU it was read from)."""

    slots: dict[str, tuple[int, dict[str, Any]]]
    ownership: dict[str, dict[str, Any]]
    backups: list[dict[str, Any]]
    area: str | None
    error: str | None


@dataclass
class Endpoints:
    api: str
    nbd: str
    blades: list[BladeEndpoint]


def iso(t: Any) -> str | None:
    if not isinstance(t, int | float):
        return None
    return dt.datetime.fromtimestamp(float(t), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        admin_tls = data_dir / "tls" / "admin"
        if self.config.network.nbd_tls and admin_tls.is_dir():
            # NBD over TLS: this process opens LUs with the array's admin certificate
            # (nasblade.standalone.credentials); an explicit NASBLADE_NBD_TLS_DIR wins
            os.environ.setdefault(tls.ENV_DIR, str(admin_tls))
        self.timeout = timeout
        self.token = self._secret("controller-token")
        self.blade_token = self._secret("blade-token", required=False)
        self.endpoints = self._endpoints(controller)
        self._apis_fresh = False
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

    def _refresh_blade_apis(self) -> None:
        """Blade API addresses from the controller's client registry (``attrs.api``)."""
        from nasblade.controller.apiclient import ControlAPIError

        try:
            clients = self.control().list_clients()
        except (ControlAPIError, OSError):
            return  # the snapshot reports the controller; keep what the configuration says
        known = {b.name: b for b in self.endpoints.blades}
        for c in clients:
            api = (c.get("attrs") or {}).get("api")
            if c.get("role") != "blade" or not api:
                continue
            if c["name"] in known:
                known[c["name"]].api = str(api)
        self._apis_fresh = True

    def control(self) -> Any:
        from nasblade.controller.apiclient import ControlClient

        return ControlClient(self.endpoints.api, self.token, timeout=self.timeout)

    def blade_client(self, name: str) -> Any:
        from nasblade.bladeapi.client import BladeClient

        if not self._apis_fresh:
            self._refresh_blade_apis()
        ep = next((b for b in self.endpoints.blades if b.name == name), None)
        if ep is None:
            raise UsageError(f"no blade {name!r} in this array")
        if ep.api is None:
            raise NotAvailable(f"blade {name} has not registered its management API with the controller "
                               "and the configuration does not fix it (bladeApiPort: 0)")
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
        self._refresh_blade_apis()
        lus = self._call("LUs", ctl.list_lus)
        cache = self._call("cache", ctl.cache)
        load = self._call("load", ctl.load)
        jobs = self._call("copy jobs", ctl.list_copy_jobs)
        portion_size = self.config.portion_size
        group_names = [g.name for g in self.config.groups]
        portions = self._read_portions()
        blade_status = {b.name: self._blade_status(b) for b in self.endpoints.blades}

        recorded = [self._recorded_backup(r) for _, pv in sorted(portions.items()) for r in pv.backups]
        seen_jobs = {b["id"] for b in recorded}
        running = [self._backup(j, group_names) for j in jobs
                   if j.get("source") == PROCINFO_LU and j.get("state") == "running" and j.get("id") not in seen_jobs]
        backups = sorted(recorded + running, key=lambda b: b["started"] or "")
        cluster = {b.name: self._cluster_status(b) for b in self.endpoints.blades
                   if blade_status.get(b.name, (None, None))[1]}
        groups: list[Group] = []
        file_systems: list[FileSystem] = []
        lu_by_name = {lu["name"]: lu for lu in lus}
        for gi, g in enumerate(self.config.groups):
            pv = portions.get(g.name) or PortionView(slots={}, ownership={}, backups=[], area=None, error="not read")
            slots, ownership = pv.slots, pv.ownership
            members: list[Blade] = []
            for i, name in enumerate(g.blades):
                st, reachable = blade_status.get(name, (None, None))
                slot = slots.get(name)
                member = self._blade(name, g.name, status=st, reachable=reachable, slot=slot,
                                     failure_timeout=g.failure_timeout, default_slot=i)
                area = area_word((cluster.get(name) or {}).get("activeArea"))
                if area:
                    member["activeArea"] = area
                members.append(member)
            fss = [fs for fs in self.config.file_systems if fs.cluster_group == g.name]
            for fs in fss:
                owner = ownership.get(fs.name)
                holder = (lu_by_name.get(f"{FS_PREFIX}{fs.name}", {}).get("reservation") or {})
                serving = next((b["name"] for b in members if fs.name in b["fileSystems"] and b["state"] != "dead"), None)
                blade = (owner or {}).get("blade") or serving or holder.get("holder")
                epoch = (owner or {}).get("epoch") or holder.get("epoch")
                file_systems.append({
                    "name": fs.name, "group": g.name, "lu": f"{FS_PREFIX}{fs.name}", "size": fs.size,
                    "blade": blade, "homeBlade": fs.preferred_blade, "pinnedTo": None, "epoch": epoch,
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
            "devices": [_device(d, array) for d in array.get("devices", [])],
            "redundancy": {k: array.get(k) for k in ("protection", "state", "repairedBlocks", "lostBlocks")},
            "lus": [LU(name=lu["name"], kind=lu_kind(lu["name"]), size=lu["size"], devices=list(lu.get("devices", [])),
                       extents=[Extent(device=int(e["device"]), offset=int(e["offset"]), length=int(e["length"]),
                                       segment=int(e.get("segment", 0))) for e in lu.get("extents", [])],
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

    def _read_portions(self) -> dict[str, PortionView]:
        """Per group: its portion (or, when that is unreadable, its backup area), read over NBD."""
        from nasblade.nbd.client import NBDBlockDevice
        from nasblade.procinfo.portion import PortionError, PortionStore

        out: dict[str, PortionView] = {}
        size = self.config.portion_size
        for gi, g in enumerate(self.config.groups):
            errors: list[str] = []
            for lu in (PROCINFO_LU, BACKUP_LU):
                try:
                    with NBDBlockDevice.connect(f"nbd://{self.endpoints.nbd}/{lu}") as dev:
                        store = PortionStore(dev, offset=gi * size, size=size)
                        slots = {st.blade: (i, st.to_json()) for i, st in enumerate(store.slots()) if st is not None}
                        record = store.read_group().to_json()
                except (PortionError, OSError) as exc:
                    errors.append(f"{lu}: {exc}")
                    continue
                out[g.name] = PortionView(slots=slots, ownership=record.get("ownership", {}),
                                          backups=list(record.get("backups", [])), area=lu, error="; ".join(errors) or None)
                break
            else:
                out[g.name] = PortionView(slots={}, ownership={}, backups=[], area=None, error="; ".join(errors))
        return out

    def _cluster_status(self, ep: BladeEndpoint) -> dict[str, Any] | None:
        from nasblade.bladeapi.client import BladeAPIError, BladeClient

        if ep.api is None:
            return None
        try:
            result: dict[str, Any] = BladeClient(ep.api, self.blade_token, timeout=self.timeout).cluster()
            return result
        except (BladeAPIError, OSError):
            return None

    def _recorded_backup(self, rec: dict[str, Any]) -> Backup:
        """A copy recorded in a group record by ``nasblade.cluster.member`` (claim 13)."""
        result = rec.get("result")
        return {"id": rec.get("jobId") or rec.get("id"), "group": str(rec.get("portion", "?")),
                "source": str(rec.get("source", "")), "target": str(rec.get("target", "")),
                "state": str(result or "running"), "bytesDone": int(rec.get("bytes") or 0),
                "bytesTotal": self.config.portion_size, "started": iso(rec.get("start")), "finished": iso(rec.get("end")),
                "trigger": f"{rec.get('trigger')} by {rec.get('requestedBy')}" if rec.get("requestedBy") else rec.get("trigger"),
                "error": rec.get("error")}

    def _blade(self, name: str, group: str, *, status: dict[str, Any] | None, reachable: bool | None,
               slot: tuple[int, dict[str, Any]] | None, failure_timeout: float, default_slot: int) -> Blade:
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
                "activeArea": area_word((status or {}).get("activeArea") or rec.get("activeArea")),
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
        """``POST /v1/cluster/backups`` on a live blade of ``group``; the call returns when the
        copies are done, so it runs in a thread while ``backup_progress`` reads the copy jobs."""
        snap = self.snapshot()
        names = [g["name"] for g in snap["groups"]]
        for name in (group, *cross_groups):
            if name not in names:
                raise UsageError(f"no cluster group {name!r} (known: {', '.join(names)})")
        blade = self._live_blade(snap, group)
        client = self.blade_client(blade)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backup")
        since = time.time()
        future = pool.submit(client.backup, cross_group=list(cross_groups))
        pool.shutdown(wait=False)
        return BackupRequest(group=group, groups=[group, *cross_groups], since=since,
                             detail={"blade": blade, "future": future})

    def _backup_result(self, request: BackupRequest) -> list[dict[str, Any]] | None:
        """The blade's answer once it came (None while the copies run); errors as TerminalError."""
        from nasblade.bladeapi.client import BladeAPIError

        future: Future[Any] = request.detail["future"]
        if not future.done():
            return None
        blade = request.detail["blade"]
        try:
            answer = future.result()
        except BladeAPIError as exc:
            if exc.status in (404, 501):
                raise NotAvailable(f"blade {blade} does not offer on-demand backups ({exc.message})") from exc
            if exc.status == 400:
                raise UsageError(f"blade {blade} refused the backup: {exc.message}") from exc
            raise TerminalError(f"blade {blade} refused the backup: {exc.message}") from exc
        except OSError as exc:
            raise Unreachable(f"blade {blade} does not answer: {exc}") from exc
        records: list[dict[str, Any]] = list((answer or {}).get("backups", []))
        return records

    def backup_progress(self, request: BackupRequest) -> BackupProgress:
        records = self._backup_result(request)
        ctl = self.control()
        load = self._call("load", ctl.load)
        if records is not None:
            copies = [self._recorded_backup(r) for r in records]
            failed = [c for c in copies if c["state"] != "succeeded"]
            total = sum(c["bytesTotal"] for c in copies)
            done_bytes = sum(c["bytesDone"] for c in copies)
            if not copies:
                return BackupProgress(done=True, succeeded=False, bytes_done=0, bytes_total=0, load=load,
                                      message="the blade made no copy", copies=[])
            message = ("; ".join(f"{c['group']}: {c['state']} {c['error'] or ''}".strip() for c in failed)
                       if failed else f"{len(copies)} copies succeeded through {request.detail['blade']}")
            return BackupProgress(done=True, succeeded=not failed, bytes_done=done_bytes, bytes_total=total,
                                  load=load, message=message, copies=copies)
        jobs = self._call("copy jobs", ctl.list_copy_jobs)
        names = [g.name for g in self.config.groups]
        mine = [self._backup(j, names) for j in jobs
                if j.get("source") == PROCINFO_LU and (parse_iso(j.get("created")) or 0) >= request.since - 1.0]
        total = self.config.portion_size * len(request.groups)
        done_bytes = sum(b["bytesDone"] for b in mine if b["group"] in request.groups)
        return BackupProgress(done=False, succeeded=None, bytes_done=min(done_bytes, total), bytes_total=total,
                              load=load, message=f"{len(mine)} copy job(s) started", copies=mine)

    def remote_check(self, fs: str, *, to: str) -> dict[str, Any] | None:
        """The target blade's own check-takeover verdict for ``fs`` (None when it cannot be asked)."""
        from nasblade.bladeapi.client import BladeAPIError

        try:
            report = self.blade_client(to).check_takeover()
        except (BladeAPIError, OSError, NotAvailable):
            return None
        for entry in (report or {}).get("fileSystems", []):
            if entry.get("fileSystem") == fs:
                result: dict[str, Any] = entry
                return result
        return None

    def move(self, fs: str, *, to: str, snapshot: Snapshot) -> dict[str, Any]:
        """``POST /v1/cluster/filesystems/{fs}/takeover`` on ``to``: graceful (a live owner
        releases first), then ``to`` reserves the LU with a new epoch and serves it."""
        from nasblade.bladeapi.client import BladeAPIError

        try:
            answer = self.blade_client(to).take_over_fs(fs)
        except BladeAPIError as exc:
            if exc.status == 501 or (exc.status == 404 and exc.message == "Not Found"):
                raise NotAvailable(f"blade {to} does not offer file-system takeover ({exc.message})") from exc
            raise TerminalError(f"blade {to} refused to take over {fs}: {exc.message}") from exc
        except OSError as exc:
            raise Unreachable(f"blade {to} does not answer: {exc}") from exc
        result: dict[str, Any] = {"fileSystem": fs, "to": to, "answer": answer}
        return result

    def move_refused(self, move: dict[str, Any]) -> str | None:
        return None  # ``move`` asked the target blade itself, which refuses with an error at once

    def rollout(self, version: str, *, array: str | None, force: bool = False) -> dict[str, Any]:
        raise NotAvailable("a standalone array rolls its blades with `nasblade software rollout "
                           f"{version} --data-dir {self.data_dir}` (rolling_restart), not by a request")

    def rolling_restart(self, version: str, *, progress: Any, timeout_per_blade: float) -> dict[str, Any]:
        """Roll every blade to ``version`` one at a time (``nasblade.standalone.rollout``) through
        the chassis of ``nasblade up`` (``DATA/run/chassis.sock``), then select ``version`` in the
        program catalog so a later ``nasblade up`` boots it. A version not in the catalog is
        refused before anything is touched."""
        from nasblade.bladeapi.chassis import ChassisClient
        from nasblade.nbd.client import NBDBlockDevice
        from nasblade.program.catalog import ProgramError, ProgramStore
        from nasblade.standalone.rollout import BladeRef, RolloutError, RolloutTimeout, roll

        software = self._software()
        if software["error"]:
            raise TerminalError(f"cannot read the program catalog: {software['error']}")
        if version not in software["versions"]:
            raise UsageError(f"version {version} is not in the program catalog (available: "
                             f"{', '.join(software['versions']) or 'none'}); push it first with "
                             f"`nasblade software --program nbd://{self.endpoints.nbd}/{PROGRAM_LU} push BUNDLE`")
        sock = self.data_dir / "run" / "chassis.sock"
        if not sock.exists():
            raise Unreachable(f"no chassis at {sock}: is `nasblade up --data-dir {self.data_dir}` running?")
        self._refresh_blade_apis()
        refs = [BladeRef(b.name, b.group) for b in self.endpoints.blades]
        try:
            results = roll(version=version, blades=refs, api=self, progress=progress,
                           chassis=ChassisClient(str(sock), timeout=180.0), timeout_per_blade=timeout_per_blade)
        except RolloutTimeout as exc:
            raise Timeout(f"rollout to {version} stopped: {exc}") from exc
        except RolloutError as exc:
            raise TerminalError(f"rollout to {version} stopped: {exc}") from exc
        try:
            with NBDBlockDevice.connect(f"nbd://{self.endpoints.nbd}/{PROGRAM_LU}") as dev:
                ProgramStore(dev).select(version)
        except (ProgramError, OSError) as exc:
            raise TerminalError(f"every blade runs {version}, but selecting it in the program catalog "
                                f"failed: {exc}") from exc
        return {"version": version, "selected": True,
                "blades": {r.blade: r.after for r in results},
                "steps": [{"blade": r.blade, "from": r.before, "to": r.after, "moved": r.moved,
                           "skipped": r.skipped, "seconds": r.seconds} for r in results]}

    def volumes(self, snapshot: Snapshot) -> VolumeList:
        """The CSI driver's volumes on this array (``nasblade.terminal.volumes``): its catalog
        read over NBD, the controller's LUs, and each served file system's directory volumes
        and snapshots from the blade serving it (``GET /v1/filesystems/{fs}/directories``,
        ``…/snapshots``). A blade that does not answer leaves its file system's directory
        volumes out, and says so in ``problems``."""
        from nasblade.bladeapi.client import BladeAPIError, BladeClient

        lus = self._call("LUs", self.control().list_lus)
        problems: list[str] = []
        catalog = self._csi_catalog(lus, problems)
        apis = {b["name"]: b["api"] for g in snapshot["groups"] for b in g["blades"]}
        served: dict[str, dict[str, Any]] = {}
        snapshots: dict[str, list[str]] = {}
        for f in snapshot["fileSystems"]:
            api = apis.get(f["blade"] or "")
            if api is None:
                problems.append(f"file system {f['name']}: no blade serves it now, its directory volumes are not listed")
                continue
            client = BladeClient(api, self.blade_token, timeout=self.timeout)
            try:
                served[f["name"]] = client.directories(f["name"])
                snapshots[f["name"]] = list(client.snapshots(f["name"]).get("snapshots") or [])
            except (BladeAPIError, OSError) as exc:
                problems.append(f"file system {f['name']}: blade {f['blade']} did not list its directories: {exc}")
        found, unknown = csivolumes.volumes(catalog=catalog, lus=lus, file_systems=snapshot["fileSystems"],
                                            served=served, snapshots=snapshots)
        return {"target": snapshot["target"], "time": snapshot["time"], "volumes": found,
                "problems": problems + unknown}

    def _csi_catalog(self, lus: list[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
        """The CSI driver's records (``nasblade.csicatalog``), read over NBD; empty when the
        driver never ran here."""
        from nasblade.nbd.client import NBDBlockDevice

        if not any(lu.get("name") == lunames.CSI_CATALOG for lu in lus):
            return csicatalog.empty()
        try:
            with NBDBlockDevice.connect(f"nbd://{self.endpoints.nbd}/{lunames.CSI_CATALOG}") as dev:
                return csicatalog.decode(dev.pread(0, csicatalog.RECORD))
        except (OSError, ValueError) as exc:
            problems.append(f"the CSI driver's catalog ({lunames.CSI_CATALOG}) could not be read: {exc}; "
                            "volumes are listed without their CSI names and snapshots without their volumes")
            return csicatalog.empty()

    def events(self, snapshot: Snapshot) -> list[Event]:
        """What the array has recorded: processor-information copies (group records), the
        takeovers, releases and fencings each blade did, processor-information area switches,
        and who serves each file system now."""
        out: list[Event] = []
        for b in snapshot["backups"]:
            err = f": {b['error']}" if b["error"] else ""
            out.append({"time": b["started"] or snapshot["time"], "kind": "Backup", "object": b["group"],
                        "message": f"backup {b['source']} -> {b['target']} {b['state']} "
                                   f"({b['bytesDone']}/{b['bytesTotal']} bytes, {b['trigger'] or 'job'}){err}"})
        seen: set[tuple[Any, ...]] = set()
        for ep in self.endpoints.blades:
            status = self._cluster_status(ep)
            for t in (status or {}).get("takeovers", []):
                key: tuple[Any, ...] = ("t", t.get("time"), t.get("fileSystem"), t.get("event"), t.get("blade"))
                if key in seen:
                    continue
                seen.add(key)
                prev = t.get("previous") or {}
                was = f" from {prev.get('blade')}" if prev.get("blade") else ""
                out.append({"time": iso(t.get("time")) or snapshot["time"], "kind": str(t.get("event", "takeover")).capitalize(),
                            "object": str(t.get("fileSystem")),
                            "message": f"{t.get('fileSystem')} {t.get('event')} by {t.get('blade')}{was}"
                                       f" (epoch {t.get('epoch')}): {t.get('reason', '')}".rstrip(": ")})
            for a in (status or {}).get("areaEvents", []):
                key = ("a", a.get("time"), ep.name, a.get("to"))
                if key in seen:
                    continue
                seen.add(key)
                out.append({"time": iso(a.get("time")) or snapshot["time"], "kind": "ActiveArea", "object": ep.group,
                            "message": f"{ep.name} runs from the {area_word(a.get('to')) or a.get('to')} area of {ep.group}: {a.get('reason')}"})
        out.sort(key=lambda e: e["time"])
        for f in snapshot["fileSystems"]:
            out.append({"time": snapshot["time"], "kind": "Owner", "object": f["name"],
                        "message": f"{f['name']} served by {f['blade'] or '-'} (epoch {f['epoch']}, home {f['homeBlade']})"})
        return out
