"""The block processor (second processor of a blade), as one asyncio object.

Wiring::

    file processor ──NBD/Unix──► ProxyServer ──► UpstreamPool(LU) ──NBD/TCP──► controller
    file processor ──HTTP/Unix─► local API (nasblade.blockproc.api) ──► BlockProcessor
    operator / CLI ──HTTP+token► blade API  (nasblade.blockproc.api) ──► BlockProcessor

What it does besides carrying blocks:

- boot (claim 12): fetches the selected bundle from the program LU, verifies its sha256 and
  installs it for the boot shim (``nasblade.program.install``); a bad bundle leaves the
  installed one in place and is reported in ``status()['software']['error']``.
- processor information (claim 2): ``store_status`` writes the file processor's status into
  this blade's slot of its cluster group's portion (``nasblade.procinfo.PortionStore`` over the
  processor-info LU).
- cache information (claim 3): every write the controller acknowledged into its cache (no FUA)
  is recorded, coalesced every ``record_interval`` seconds, as a dirty record in the control
  store (``POST /v1/cache/records``); the controller drops a record when it destages it.
  Posting is off the I/O path: a FLUSH never waits for an HTTP round trip.
- load (claim 19): polls the controller's load figures and hands them to the file processor.
- fencing: LUs the blade owns are opened with ``LU;holder=BLADE;epoch=N`` after taking the
  reservation through the control API, so writes from a fenced blade are refused (EPERM).
- file-system takeover / release (``take_over_fs``, ``release_fs``) and processor-information
  backups (``backup``) for the blade API; the cluster-group layer (``nasblade.cluster``)
  decides when to call them, and uses this object only through its public interface:
  ``take_over_fs``, ``drop_fs``, ``update_group``, ``open_area``, ``use_area``, ``fail`` and
  the read-only state (``settings``, ``last_status``, ``epochs``, ``load``, ``failed``).

The control API (``nasblade.controller.asyncclient.AsyncControlClient``) is optional
(``control=None``) so the NBD path can be tested against any NBD server (nbdkit) on its own.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasblade import lunames
from nasblade.bladeapi.client import BladeAPIError, FPControlClient
from nasblade.bladeapi.lifeline import Lifeline
from nasblade.blockproc.proxy import Exports, ProxyServer
from nasblade.blockproc.syncdev import PoolDevice
from nasblade.blockproc.upstream import UpstreamPool
from nasblade.controller.apiclient import ControlAPIError
from nasblade.controller.asyncclient import AsyncControlClient
from nasblade.nbd import proto
from nasblade.procinfo.portion import (
    BladeStatus,
    GroupRecord,
    Ownership,
    PortionError,
    PortionStore,
    portion_offset,
)
from nasblade.program import install
from nasblade.program.catalog import ProgramError, ProgramStore

DEFAULT_CONTROLLER_WAIT = 120.0
"""Seconds an LU request waits for a restarting controller (a pod recreated by its StatefulSet,
a process restarted by ``nasblade up``) before it is answered EIO: long enough that a controller
restart is a pause, not a failover; after it, the file processor's commit fails and it gives
the file system up (``nasblade.fileproc.server``), and the blade fails so that a peer takes it
over once the controller is back (docs/cluster-groups.md)."""

LISTEN_KEYS = ("address", "nfsPort", "mountPort", "portmapPort", "advertise")
"""The keys of a file system's spec that say where it is served (``apply_listen``)."""

log = logging.getLogger(__name__)


@dataclass
class Settings:
    blade: str
    group: str
    group_index: int = 0
    slot: int = 0
    controller_host: str | None = "127.0.0.1"
    controller_port: int | None = 10809
    controller_unix: str | None = None
    connections: int = 2
    procinfo_lu: str | None = lunames.PROCINFO
    portion_size: int = 1 << 20
    program_lu: str | None = lunames.PROGRAM
    software_dir: Path | None = None
    software_version: str | None = None
    lus: list[str] = field(default_factory=list)
    owned: list[str] = field(default_factory=list)
    backup_lu: str = lunames.BACKUP
    backup_history: int = 20
    fs_specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """File systems this blade may serve: name → {lu, address, nfsPort, mountPort, portmapPort, exports}."""
    fp_unix: str | None = None
    """The file processor's control socket (``nasblade.fileproc.agent``), for takeover/release."""
    lifeline_unix: str | None = None
    """Where the file processor keeps its lifeline (``nasblade.bladeapi.lifeline``)."""
    record_interval: float = 0.2
    load_interval: float = 1.0
    retry_for: float = DEFAULT_CONTROLLER_WAIT
    """How long an LU request waits for the controller to come back (``--controller-wait``)."""


def coalesce(ranges: list[tuple[int, int]]) -> list[list[int]]:
    """Merge overlapping or touching (offset, length) ranges; sorted output."""
    out: list[list[int]] = []
    for off, length in sorted(ranges):
        if out and off <= out[-1][0] + out[-1][1]:
            out[-1][1] = max(out[-1][1], off + length - out[-1][0])
        else:
            out.append([off, length])
    return out


class BlockProcessor:
    def __init__(self, settings: Settings, *, control: AsyncControlClient | None = None) -> None:
        self.settings = settings
        self.control = control
        self.exports = Exports()
        self.proxy = ProxyServer(self.exports)
        self.epochs: dict[str, int] = {}
        self.portion: PortionStore | None = None
        self.active_area = "primary"
        """Which area ``portion`` is: ``primary`` or ``backup`` (``use_area``)."""
        self._procinfo_pool: UpstreamPool | None = None
        self._area_pools: list[UpstreamPool] = []
        self.software: install.Installed | None = None
        self.software_error: str | None = None
        self.last_status: BladeStatus | None = None
        self.last_status_seq = 0
        self.last_status_time = 0.0
        self.load: dict[str, Any] = {}
        self.load_error: str | None = None
        self.started = time.time()
        self._pending_records: dict[str, list[tuple[int, int]]] = {}
        self.records_posted = 0
        self.ranges_posted = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._slot_lock = asyncio.Lock()
        self._fs_lock = asyncio.Lock()
        self.nbd_unix = ""
        self.handed: dict[str, float] = {}
        """File system -> wall time the file processor was given it: at start-up for the file
        systems this blade owns from the start (``settings.owned``), then by ``take_over_fs``.
        Everything the file processor serves is here, however it came to serve it, and is
        watched the same way (``_check_file_processor``, ``_file_processor_lost``)."""
        self.released_on_request: set[str] = set()
        """File systems ``release_fs`` gave up (the operator's move, through the management API)
        and no ``take_over_fs`` took again since. The group record still names this blade until
        the taker records itself; the cluster member (``nasblade.cluster.takeover``) takes these
        as released, so it does not take them back by itself as their recorded owner."""
        self.lifeline = Lifeline(self._file_processor_lost)
        self.failed: str | None = None
        """Why this blade is failed (its file processor lost a file system it served), or None."""
        self.failed_at = 0.0
        self.exit_requested = asyncio.Event()
        """Set when this process should exit (a failed blade, once its peers had time to take over)."""
        self.takeovers: collections.Counter[str] = collections.Counter()
        """File system -> how many times this blade took it over with a new epoch (``take_over_fs``)."""

    # -- helpers ------------------------------------------------------------------------------

    def _pool(self, export: str, *, lu: str) -> UpstreamPool:
        s = self.settings

        def record(offset: int, length: int) -> None:
            self._pending_records.setdefault(lu, []).append((offset, length))

        return UpstreamPool(
            export=export,
            host=s.controller_host,
            port=s.controller_port,
            unix=s.controller_unix,
            connections=s.connections,
            retry_for=s.retry_for,
            on_cached=record if self.control is not None else None,
        )

    # -- start-up -----------------------------------------------------------------------------

    async def start(self, *, nbd_unix: str) -> None:
        s = self.settings
        self.nbd_unix = nbd_unix
        if self.control is not None:
            await self.control.register_client(s.blade, group=s.group, role="blade")
        await self._boot_software()
        await self._open_procinfo()
        for lu in s.lus:
            await self.add_lu(lu)
        for lu in s.owned:
            await self.take_over(lu)
        now = time.time()
        for name, spec in s.fs_specs.items():  # the file processor is started with these
            if spec.get("lu") in s.owned:
                self.handed[name] = now
        if s.lifeline_unix is not None:
            await self.lifeline.start(s.lifeline_unix)
        await self.proxy.start_unix(nbd_unix)
        if self.control is not None:
            self._tasks.append(asyncio.create_task(self._post_records_forever()))
            self._tasks.append(asyncio.create_task(self._poll_load_forever()))

    async def _boot_software(self) -> None:
        s = self.settings
        if s.software_dir is None:
            return
        with contextlib.suppress(ProgramError):
            self.software = install.current(s.software_dir)
        if s.program_lu is None:
            return
        pool = self._pool(s.program_lu, lu=s.program_lu)
        pool.on_cached = None
        try:
            await pool.start()
            store = ProgramStore(PoolDevice(pool, asyncio.get_running_loop()))
            self.software = await asyncio.to_thread(
                install.install, store, version=s.software_version, software_dir=s.software_dir
            )
            self.software_error = None
            log.info("installed blade software %s", self.software.version)
        except (ProgramError, OSError) as exc:
            kept = self.software.version if self.software else "none"
            self.software_error = f"{exc} (keeping version {kept})"
            log.error("software boot: %s", self.software_error)
        finally:
            await pool.close()

    async def _open_procinfo(self) -> None:
        s = self.settings
        if s.procinfo_lu is None:
            return
        pool = self._pool(s.procinfo_lu, lu=s.procinfo_lu)
        pool.on_cached = None
        await pool.start()
        self._procinfo_pool = pool
        store = PortionStore(
            PoolDevice(pool, asyncio.get_running_loop()),
            offset=portion_offset(s.group_index, s.portion_size),
            size=s.portion_size,
            cas=None if self.control is None else self.control.cas(s.procinfo_lu),
        )
        await asyncio.to_thread(store.open, group=s.group, index=s.group_index)
        if not 0 <= s.slot < store.slot_count:
            raise PortionError(f"slot {s.slot} is outside the portion's {store.slot_count} slots")
        self.portion = store

    async def add_lu(self, lu: str, *, epoch: int | None = None) -> None:
        """Make ``lu`` reachable by the file processor (reserved when ``epoch`` is given)."""
        export = lu if epoch is None else proto.ExportName(lu, self.settings.blade, epoch).encode()
        pool = self._pool(export, lu=lu)
        await pool.start()
        old = self.exports.pools.get(lu)
        self.exports.pools[lu] = pool
        if old is not None:
            await old.close()

    async def take_over(self, lu: str) -> int:
        """Reserve ``lu`` for this blade with a new epoch (fencing the previous holder)."""
        if self.control is None:
            await self.add_lu(lu)
            return 0
        res = await self.control.reserve(lu, self.settings.blade)
        assert res.epoch is not None
        epoch = res.epoch
        # a reservation whose export the controller then refuses (say, an NBD access file that
        # does not list this group's new LU yet) is no hold on the LU: only an opened one counts
        self.epochs.pop(lu, None)
        await self.add_lu(lu, epoch=epoch)
        self.epochs[lu] = epoch
        return epoch

    async def release(self, lu: str) -> None:
        pool = self.exports.pools.pop(lu, None)
        if pool is not None:
            await pool.request(proto.Cmd.FLUSH, 0, 0)
            await pool.close()
        if self.control is not None and lu in self.epochs:
            await self.control.release(lu)
        self.epochs.pop(lu, None)

    # -- file-system takeover / release (blade API) -----------------------------------------

    def define_fs(self, name: str, spec: dict[str, Any]) -> None:
        """Add or replace file system ``name``'s spec (its LU; address, ports and exports as the
        file processor takes them) while the blade runs (``nasblade.cluster.member``, when the
        group's configuration changes). A file system this blade serves keeps its LU; its new
        exports are applied by ``apply_exports``, a new address or ports by ``apply_listen``."""
        lu = spec.get("lu")
        if not isinstance(lu, str) or not lu:
            raise ValueError(f"{name}: the spec names no LU")
        old = self.settings.fs_specs.get(name)
        if old is not None and old.get("lu") != lu and name in self.handed:
            raise ValueError(f"{name} is served from LU {old.get('lu')}: release it before moving it to {lu}")
        self.settings.fs_specs[name] = {k: v for k, v in spec.items() if k != "name"}

    async def apply_exports(self, name: str) -> bool:
        """Give the file processor serving ``name`` its spec's exports now (after ``define_fs``
        changed them); False when this blade does not serve it (they apply at its takeover)."""
        if name not in self.handed or self.settings.fp_unix is None:
            return False
        exports = list(self.settings.fs_specs[name]["exports"])
        await asyncio.to_thread(FPControlClient(self.settings.fp_unix).set_exports, name, exports)
        return True

    async def apply_listen(self, name: str) -> bool:
        """Move the file processor serving ``name`` to its spec's address and ports now (after
        ``define_fs`` changed them: e.g. an operator that gives each file system its own
        ports); False when this blade does not serve it (they apply at its takeover)."""
        if name not in self.handed or self.settings.fp_unix is None:
            return False
        spec = self.settings.fs_specs[name]
        listen = {k: spec[k] for k in LISTEN_KEYS if k in spec}
        await asyncio.to_thread(FPControlClient(self.settings.fp_unix).set_listen, name, listen)
        return True

    def forget_fs(self, name: str) -> None:
        """Drop file system ``name``'s spec; one this blade serves must be released first."""
        if name in self.handed:
            raise ValueError(f"{name} is served by this blade: release it first")
        self.settings.fs_specs.pop(name, None)


    def fp_spec(self, name: str) -> dict[str, Any]:
        """The file processor's JSON for ``name``: the spec with the device through this blade."""
        spec = dict(self.settings.fs_specs[name])
        lu = spec.pop("lu")
        spec["name"] = name
        spec["device"] = f"nbd+unix:///{lu}?socket={self.nbd_unix}"
        return spec

    async def _holds(self, lu: str) -> bool:
        """True when the controller's reservation of ``lu`` is still this blade's."""
        if lu not in self.epochs or lu not in self.exports.pools:
            return False
        if self.control is None:
            return True
        res = await self.control.get_reservation(lu)
        return res.holder == self.settings.blade and res.epoch == self.epochs[lu]

    async def take_over_fs(self, name: str) -> dict[str, Any]:
        """Serve file system ``name``: reserve its LU (new epoch unless already held), have the
        file processor mount (recover) it and listen on its address, record the ownership."""
        if self.settings.fp_unix is None:
            raise RuntimeError("this blade has no file-processor control socket")
        lu = str(self.settings.fs_specs[name]["lu"])
        fp = FPControlClient(self.settings.fp_unix)
        async with self._fs_lock:
            held = await self._holds(lu)
            epoch = self.epochs[lu] if held else await self.take_over(lu)
            if name not in self.handed and name in await asyncio.to_thread(fp.file_systems):
                # the file processor serves it through a block processor that is gone (this one
                # restarted while the file processor lived on): that device is dead, so mount it
                # afresh through this one (a new device, recovery, a new write verifier)
                log.warning("the file processor still serves %s from before this block processor started;"
                            " remounting it", name)
                await asyncio.to_thread(fp.remove, name)
            served = await asyncio.to_thread(fp.add, self.fp_spec(name))
            self.handed[name] = time.time()
            self.released_on_request.discard(name)
            if not held:
                self.takeovers[name] += 1
            await self._set_owner(name, epoch)
        return {"fileSystem": name, "lu": lu, "epoch": epoch, "endpoints": served.get("endpoints", {})}

    async def release_fs(self, name: str) -> dict[str, Any]:
        """Stop serving ``name``: unmount in the file processor, flush, drop the reservation."""
        lu = str(self.settings.fs_specs[name]["lu"])
        async with self._fs_lock:
            self.released_on_request.add(name)
            self.handed.pop(name, None)
            if self.settings.fp_unix is not None:
                try:
                    await asyncio.to_thread(FPControlClient(self.settings.fp_unix).remove, name)
                except BladeAPIError as exc:
                    if exc.status != 404:
                        raise
            held = await self._holds(lu)
            pool = self.exports.pools.pop(lu, None)
            if pool is not None:
                await asyncio.wait_for(pool.request(proto.Cmd.FLUSH, 0, 0), 30.0)
                await pool.close()
            if self.control is not None and (held or await self._reserved_to_me(lu)):
                await self.control.release(lu)
            self.epochs.pop(lu, None)
            await self._set_owner(name, None)
        return {"fileSystem": name, "lu": lu, "released": True}

    async def _reserved_to_me(self, lu: str) -> bool:
        """Whether the controller's reservation of ``lu`` names this blade although it holds no
        open export of it: a takeover attempt whose export the controller refused reserved it
        (``take_over``). Releasing a file system must drop that too, or the LU stays reserved
        for nobody (a CSI volume deleted while its takeover was refused could not be deleted)."""
        assert self.control is not None
        try:
            res = await self.control.get_reservation(lu)
        except (OSError, ControlAPIError) as exc:  # cannot tell: the release goes on without it
            log.warning("the reservation of %s could not be read: %s", lu, exc)
            return False
        return res.holder == self.settings.blade

    async def _set_owner(self, name: str, epoch: int | None) -> None:
        if self.portion is None:
            return
        me = self.settings.blade

        def change(group: GroupRecord) -> None:
            current = group.ownership.get(name)
            if epoch is not None:
                if current is None or current.epoch <= epoch:  # never over a newer takeover
                    group.ownership[name] = Ownership(blade=me, epoch=epoch)
            elif current is not None and current.blade == me:
                del group.ownership[name]

        await self.update_group(change)

    # -- what the cluster member (``nasblade.cluster``) does through the block processor -----

    async def update_group(self, change: Callable[[GroupRecord], None],
                           store: PortionStore | None = None) -> GroupRecord:
        """Read-modify-write the group record in ``store`` (default: the active area) under the
        lock that orders every write of this blade's portion (slot and group record)."""
        target = self.portion if store is None else store
        if target is None:
            raise PortionError("this block processor has no processor-information portion")
        async with self._slot_lock:
            return await asyncio.to_thread(target.update_group, change)

    async def open_area(self, lu: str, *, offset: int, size: int) -> PortionStore:
        """A processor-information area on ``lu`` (``offset``, ``size``) through one more NBD
        connection to the controller, written by compare-and-write; closed with the block processor."""
        s = self.settings
        if self.control is None:
            raise RuntimeError("processor-information areas need the control API")
        pool = UpstreamPool(export=lu, host=s.controller_host, port=s.controller_port, unix=s.controller_unix,
                            connections=1, retry_for=5.0)
        await pool.start()
        self._area_pools.append(pool)
        return PortionStore(PoolDevice(pool, asyncio.get_running_loop()), offset=offset, size=size,
                            cas=self.control.cas(lu))

    def use_area(self, store: PortionStore, name: str) -> None:
        """From now on this blade's slot and group record live in ``store`` (area ``name``:
        ``primary`` or ``backup``), as the cluster member's area failover decided."""
        self.portion, self.active_area = store, name

    async def drop_fs(self, name: str, lu: str, *, flush: bool) -> None:
        """Stop serving ``name`` (on ``lu``) without touching its reservation (it may be another
        blade's now): the file processor unmounts (its last commit is refused if this blade was
        fenced), then the NBD pool goes (flushed first when ``flush``: this blade still holds
        the LU)."""
        self.handed.pop(name, None)
        if self.settings.fp_unix is not None:
            try:
                await asyncio.to_thread(FPControlClient(self.settings.fp_unix, timeout=30.0).remove, name)
            except Exception as exc:  # dead file processor, or it already let go: nothing to undo
                log.info("the file processor did not unmount %s: %s", name, exc)
        pool = self.exports.pools.pop(lu, None)
        self.epochs.pop(lu, None)
        if pool is not None:
            if flush:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pool.request(proto.Cmd.FLUSH, 0, 0), 10.0)
            await pool.close()

    # -- claims 4, 8, 9: processor-information backups ------------------------------------------

    async def backup(self, portions: list[int], *, trigger: str) -> dict[str, Any]:
        """Have the controller's copy engine copy each portion into its backup area (block by
        block, point in time) and record the outcome in this group's record."""
        s = self.settings
        if self.control is None or self._procinfo_pool is None or s.procinfo_lu is None:
            raise RuntimeError("backups need the control API and the processor-information LU")
        count = self._procinfo_pool.size // s.portion_size
        for idx in portions:
            if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < count:
                raise ValueError(f"portions: {idx!r} is not a portion index in 0..{count - 1}")
        jobs, failed = [], []
        for idx in portions:
            offset = portion_offset(idx, s.portion_size)
            job = await self.control.copy(s.procinfo_lu, s.backup_lu, s.portion_size,
                                          source_offset=offset, target_offset=offset)
            done = await self.control.wait_copy(job.id, timeout=120.0)
            jobs.append({"portion": idx, "job": done.id, "state": done.state, "error": done.error})
            if done.state != "succeeded":
                failed.append(f"portion {idx}: {done.state} {done.error or ''}".strip())
        result = "Failed" if failed else "Succeeded"
        entry = {"time": time.time(), "blade": s.blade, "trigger": trigger, "result": result,
                 "portions": list(portions), "jobs": [j["job"] for j in jobs]}
        if self.portion is not None:

            def add(group: GroupRecord) -> None:
                group.backups = [*group.backups, entry][-s.backup_history :]

            await self.update_group(add)
        message = "; ".join(failed) if failed else f"copied portions {list(portions)} to their backup areas"
        return {"result": result, "message": message, "jobs": jobs}

    # -- claim 2: processor information -------------------------------------------------------

    async def store_status(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Write the file processor's status into this blade's slot; return what was written."""
        if self.portion is None:
            raise PortionError("this block processor has no processor-information portion")
        s = self.settings
        d = dict(fields)
        d["blade"] = s.blade
        d.setdefault("heartbeat", {"time": time.time(), "counter": 0})
        if self.software is not None:
            d.setdefault("softwareVersion", self.software.version)
        d["activeArea"] = self.active_area
        d["load"] = {k: float(v) for k, v in self.load.items() if isinstance(v, int | float)}
        status = BladeStatus.from_json(d)
        lost = self._lost_file_systems(status)
        if lost:
            await self.fail(f"the file processor no longer serves {', '.join(lost)}"
                            " (it restarted or crashed while serving)")
        if self.failed is not None:  # no more heartbeats: peers and the operator see a dead blade
            return {"slot": s.slot, "seq": self.last_status_seq, "status": status.to_json(), "failed": self.failed}
        async with self._slot_lock:
            seq = await asyncio.to_thread(self.portion.write_slot, s.slot, status)
        self.last_status, self.last_status_seq, self.last_status_time = status, seq, time.time()
        return {"slot": s.slot, "seq": seq, "status": status.to_json()}

    def _lost_file_systems(self, status: BladeStatus) -> list[str]:
        """The file systems the file processor was handed and no longer serves.

        That happens when the file processor crashed and was restarted (its container, or the
        standalone supervisor): whatever it had not committed is gone and its clients hold a
        write verifier nobody will honour. Only a status composed after the hand-over counts
        (its clock is the file processor's, on the same host). The lifeline usually says it
        first (``_file_processor_lost``); this catches a restart the lifeline missed.
        """
        if self.failed is not None:
            return []
        return sorted(fs for fs, at in self.handed.items()
                      if fs not in status.file_systems and status.heartbeat_time > at + 0.5)

    async def _file_processor_lost(self, pid: int | None) -> None:
        """The lifeline of file processor ``pid`` ended without a goodbye: its process is gone."""
        if self.handed:
            await self.fail(f"the file processor (pid {pid}) exited while serving {', '.join(sorted(self.handed))}")
        else:
            log.warning("the file processor (pid %s) exited; it served nothing", pid)

    async def fail(self, reason: str) -> None:
        """Give this blade up at once: a NAS blade whose file-serving side crashed is a failed blade.

        It stops heartbeating, and its last slot says ``state: failed``, so its peers see it dead
        at their next look (``nasblade.cluster.core.Liveness``) instead of after the failure
        timeout, and take its file systems over with a new epoch and a new write verifier (the
        operator, on Kubernetes, moves the NFS Service). Its readiness turns 503. It stays failed
        until restarted; it then rejoins as a standby (``nasblade.cluster.member``)."""
        if self.failed is not None:
            return
        async with self._slot_lock:
            if self.failed is not None:
                return
            log.error("blade %s failed: %s", self.settings.blade, reason)
            if self.portion is not None:
                last = self.last_status or BladeStatus(blade=self.settings.blade)
                final = dataclasses.replace(last, state="failed", heartbeat_time=time.time(),
                                            heartbeat_counter=last.heartbeat_counter + 1, file_systems=[])
                try:
                    self.last_status_seq = await asyncio.to_thread(self.portion.write_slot,
                                                                   self.settings.slot, final)
                except (OSError, PortionError) as exc:  # the peers fall back on the failure timeout
                    log.warning("the failed state could not be written to the slot: %s", exc)
            self.failed, self.failed_at = reason, time.monotonic()

    async def read_slot(self, slot: int | None = None) -> dict[str, Any] | None:
        if self.portion is None:
            return None
        st = await asyncio.to_thread(self.portion.read_slot, self.settings.slot if slot is None else slot)
        return None if st is None else st.to_json()

    # -- claim 3: cache information -----------------------------------------------------------

    async def post_records(self) -> None:
        pending, self._pending_records = self._pending_records, {}
        for lu, ranges in pending.items():
            merged = coalesce(ranges)
            try:
                assert self.control is not None
                await self.control.add_cache_records(self.settings.blade, lu, merged)
                self.records_posted += 1
                self.ranges_posted += len(merged)
            except Exception as exc:  # the control API is best effort for records; keep them
                log.warning("recording cache ranges of %s failed: %s", lu, exc)
                self._pending_records.setdefault(lu, []).extend((o, n) for o, n in merged)
                raise

    async def _post_records_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.record_interval)
            with contextlib.suppress(Exception):
                await self.post_records()

    # -- claim 19: controller load ------------------------------------------------------------

    async def _poll_load_forever(self) -> None:
        while True:
            try:
                assert self.control is not None
                self.load = dict(await self.control.load())
                self.load_error = None
            except Exception as exc:  # report, keep the last figures
                self.load_error = str(exc)
            await asyncio.sleep(self.settings.load_interval)

    async def file_processor_calls(self) -> dict[str, Any]:
        """The file processor's RPC call figures (``FileProcessor.call_stats``), asked for now
        over its control socket; ``OSError`` or ``BladeAPIError`` when it cannot answer."""
        if self.settings.fp_unix is None:
            raise OSError("this blade has no file-processor control socket")
        return await asyncio.to_thread(FPControlClient(self.settings.fp_unix, timeout=5.0).calls)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = self.settings
        st = self.last_status
        now = time.time()
        return {
            "blade": s.blade,
            "group": s.group,
            "slot": s.slot,
            "version": self.software.version if self.software else None,
            "software": {
                "version": self.software.version if self.software else None,
                "sha256": self.software.sha256 if self.software else None,
                "error": self.software_error,
            },
            "fileSystems": st.file_systems if st else [],
            "exports": st.exports if st else [],
            "reservations": {lu: {"holder": s.blade, "epoch": e} for lu, e in sorted(self.epochs.items())},
            "lus": sorted(self.exports.pools),
            "knownFileSystems": sorted(s.fs_specs),
            "heartbeatAge": (now - st.heartbeat_time) if st else None,
            "heartbeatCounter": st.heartbeat_counter if st else None,
            "slotSeq": self.last_status_seq,
            "failed": self.failed,
            "clients": st.clients if st else 0,
            "activeArea": self.active_area,
            "load": self.load,
            "nbdConnections": self.proxy.connections,
            "nbdBusySeconds": round(self.proxy.busy.seconds(), 6),
            "upstream": {
                lu: {
                    "reconnects": p.stats.reconnects,
                    "retried": p.stats.retried,
                    "replayedWrites": p.stats.replayed_writes,
                    "journalBytes": p.journal_bytes,
                    "requests": dict(p.stats.by_command),
                    "readahead": {"issued": p.stats.readahead_issued, "hits": p.stats.readahead_hits},
                    "controllerBusySeconds": round(p.busy.seconds(), 6),
                }
                for lu, p in sorted(self.exports.pools.items())
            },
            "cacheRecords": {"posted": self.records_posted, "rangesPosted": self.ranges_posted},
            "uptime": now - self.started,
        }

    async def close(self) -> None:
        await self.lifeline.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self.proxy.close()
        for pool in list(self.exports.pools.values()):
            # a clean stop leaves nothing only in the controller's cache that we still track
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pool.request(proto.Cmd.FLUSH, 0, 0), 10.0)
            await pool.close()
        if self.control is not None:
            with contextlib.suppress(Exception):
                await self.post_records()
        for area in self._area_pools:
            await area.close()
        if self._procinfo_pool is not None:
            await self._procinfo_pool.close()
